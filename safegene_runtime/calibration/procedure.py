"""Stage 3: few-shot layer-wise coefficient calibration (SafeGene, arXiv 2606.06519).

For a task adapter T and a safety adapter S (with its selected layers), learn one ``λ_l ≥ 0`` per selected layer:

    W_l = W_l(A) + ΔT_l + λ_l · B_S,l A_S,l

    L(λ) = mean_{x∈H'} R_λ(x)                        refusal term (below)
         + β · mean_{x∈T} KL(p_T(·|x) ‖ p_λ(·|x))     task term: over T's own greedy answer tokens
         + γ · mean_{x∈B} KL(p_A(·|x) ‖ p_λ(·|x))     benign term: over A's own greedy answer tokens
         + δ · mean_{x∈B'} C_λ(x)                     benign contrast (below; off when δ = 0)
         + penalty · Σ λ_l²

The benign and task terms let the optimum sit at λ ≈ 0 when T did not erode safety.

Two refusal terms (``refusal_loss``), both over A's own greedy refusal y_A(x) to a harmful shot x:

* ``"margin"`` (default, *ours*): ``softplus(−(ℓ_λ(y_A|x) − ℓ_λ(y_T|x)))`` with ℓ the mean log-prob of the first
  ``margin_tokens`` (4) answer tokens and y_T the task model's own greedy answer, over the shots H' ⊆ H where A+T
  complies (the keyword judge does not call y_T a refusal). It asks for *preferring refusal over the task model's
  compliance* where that choice is made, in the opening tokens, not for A's exact wording; and it saturates once
  refusal is clearly preferred, so the benign and task terms decide how much safety is enough. Averaged over 16
  tokens instead of 4, the teacher-forced continuations dilute the decision and calibration stopped at a margin
  near 0: HR 22% on sentiment-clean (docs/study-log.md). When A+T already refuses every shot, H' is empty, the term
  drops out and λ goes towards 0.
* ``"ce"``: ``CE(y_A(x) | x)`` over all of H, the first formulation. On SmolLM2 it failed on the adapters trained on
  task data only (docs/study-log.md): their refusals are worded differently from A's, so adding safety *raised* the
  CE of A's wording (0.70 → 1.21 at λ = 1) while the refusal rate rose, and calibration chose λ ≈ 0.

Two more knobs, both off by default (measured on SmolLM2 with exact float32 merges, docs/study-log.md):
``margin_target`` τ makes the term ``softplus(τ − margin)`` so it keeps pushing past a tie (τ = 2 moved
reverse-mix10's HR only from 37% to 34%); ``benign_tokens`` restricts the benign KL to the opening N tokens of A's
answers, where an over-refusing model stops (N = 4 made the benign term dominate: topic-clean HR 52% with no
over-refusal, against 6% HR and 25% over-refusal, mostly empty replies, with all 16 tokens).

How it stays cheap on a CPU *(ours)*: the teacher targets and distributions are computed once and cached
(:mod:`.teachers`); each Adam step uses one minibatch per term (``batch_size``, :class:`.objective.Batches`);
sequences are truncated and only the target positions' logits are computed (:mod:`.objective`).
Several starts (``init=[1, 0]``) share the teachers and repeat only the optimisation (:mod:`.optim`).
Backpropagation stops by itself at the lowest selected layer (nothing below it needs a gradient). The model is
frozen in fp32; only λ has a gradient. Same inputs and seed, same λ (deterministic ops, seeded permutations).

The benign contrast *(ours)* ``C_λ(x)`` is the refusal margin's mirror image, over the benign shots B' ⊆ B that A
answers (does not refuse): ``½·softplus(−(ℓ_λ(y_A|x) − ℓ_λ(r|x))) + ½·softplus(−(log p_λ(y_A,1|x) − log p_λ(EOS|x)))``
with ``r`` one of A's own refusals to a harmful shot (paired by index), both cut to ``margin_tokens``. It asks to
*prefer A's answer over a refusal and over stopping at once* in the opening tokens, which is where an over-refusing
model decides. The benign KL alone does not see that decision: averaged over 16 answer tokens, a model that refused
or answered with nothing on 12 of 32 benign shots cost 0.18 nats per token (sentiment-clean over all layers,
docs/study-log.md). Like the refusal margin it saturates once answering is clearly preferred, so it is a barrier,
not a pull towards λ = 0.

Four more pieces *(ours, issue 22; all off by default, so the default procedure is as before them)*:

* the on-policy refusal term (``onpolicy_every`` N > 0): the refusal margin's negative y_T is the task model's answer
  at λ = 0, generated once, so it never sees what the model says *as λ moves*: on SmolLM2 what stayed "harmful" after
  calibration was mostly fragments and empty replies. Every N steps (and before and after each start) the current
  model's greedy answers to the harmful shots are regenerated (``onpolicy_tokens`` tokens); each one the keyword
  judge does not call a refusal (an empty reply counts as a non-refusal here, :func:`.teachers.says_refusal`) becomes
  a shot of ``softplus(τ − (ℓ_λ(y_A|x) − ℓ_λ(y_λ|x)))`` over the first ``margin_tokens`` tokens, weighted by
  ``onpolicy_weight``. ``meta["onpolicy"]`` records how many answers were non-refusals at each regeneration;
* ``benign_source``: the benign shots drawn by seed from the shipped edgy-benign training prompts
  (:mod:`safegene_runtime.edgy_train`: alarming words and harmful framings around harmless requests, none equal or
  near a validation or test prompt), so the benign KL and contrast sit where over-refusal is measured;
* ``granularity="attn-mlp"``: one λ for the attention and one for the MLP modules of each layer, with
  ``group_shrinkage`` ρ · Σ (λ_l,g − mean_g λ_l,g)² pulling the two towards the layer's shared value; the
  coefficients file gets ``groups`` (:mod:`safegene_runtime.coefficients`);
* ``harmful_framed`` *(issue 20; off by default)*: N more harmful shots, the given ones asked in the framings the
  aligned base was trained to refuse (:func:`safegene_runtime.rephrase.framed_shots`). Plain-worded shots only show
  the terms the requests A refuses most easily; λ then stops where a request asked in a story or the past tense is
  answered again (docs/results.md, "Framings A was aligned on less");
* ``benign_onpolicy_weight`` *(issue 20; off by default)*: the on-policy term's mirror on the benign side. At each
  regeneration the current model's greedy answers to the benign shots A answers are regenerated too; each one the
  keyword judge calls a refusal (an empty reply included) becomes a shot of ``softplus(τ − (ℓ_λ(y_A|x) − ℓ_λ(y_λ|x)))``
  (A's answer over the model's own refusal, first ``margin_tokens`` tokens). The benign contrast compares A's answer
  with a refusal A gives to a harmful prompt, fixed before the steps; on SmolLM2 a λ that kept that term small still
  refused about half of the edgy-benign training pool, in the model's own words (docs/results.md). This term is
  nonzero only while a benign shot is refused, so with a large weight it acts as a constraint (keep answering the
  benign shots) more than as a pull towards λ = 0; ``meta["onpolicy"]`` records the benign refusals at each
  regeneration;
* ``stop_tol``: stop a start once the mean loss over the last ``stop_patience`` steps improved by less than
  ``stop_tol`` (relative) on the window before (:class:`.optim.StoppingRule`); ``steps`` is then the cap, and
  ``meta["loss"]["stopped"]`` says why and when each start stopped.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import torch

from ..adapters import MODULE_GROUPS, AdapterError, load_adapter, selection_of
from ..artifacts import describe_input
from ..coefficients import Coefficients, save_coefficients
from ..digests import chat_list_digest
from ..edgy_train import draw_edgy_benign
from ..lora_forward import LoraForward, encode_prompts, load_causal_lm
from ..prompts import load_examples
from ..rephrase import framed_shots
from .config import CalibrationConfig
from .objective import Batches, group_shrinkage, target_logprobs, term_loss
from .optim import SharedAdam, StoppingRule, best_start
from .shrink import shrink_scale
from .teachers import (Shot, benign_contrast_shots, benign_onpolicy_shots, eos_ids, generate, onpolicy_shots,
                       refuses)


def shot_set_info(shots: Sequence) -> dict[str, Any]:
    """Count and sha256 of a shot list (over prompt texts / messages, so it is independent of the file format:
    :func:`~safegene_runtime.digests.chat_list_digest`)."""
    shots = list(shots)
    return {"count": len(shots), "sha256": chat_list_digest(shots)}


def with_framed_shots(harmful: Sequence, cfg: CalibrationConfig) -> tuple[list, list[str]]:
    """The harmful shots a calibration trains on, and the framed ones among them: the given shots plus, with
    ``harmful_framed`` N, N of the text shots asked again in the aligned base's trained framings
    (:func:`~safegene_runtime.rephrase.framed_shots`, drawn with ``cfg.seed``). One place, so that code which
    replays a calibration's shots (the SmolLM2 study's shrink step and training-data checks) asks the same ones."""
    if not cfg.harmful_framed:
        return list(harmful), []
    texts = [h for h in harmful if isinstance(h, str)]
    if not texts:
        raise ValueError("harmful_framed needs harmful shots given as text, not chat messages")
    framed = framed_shots(texts, cfg.harmful_framed, cfg.seed)
    return list(harmful) + framed, framed


def calibrate(
    base: str | Path,
    task: str | Path,
    safety: str | Path,
    harmful: Sequence,
    task_shots: Sequence,
    benign: Sequence | None = None,
    config: CalibrationConfig | None = None,
    *,
    device: str | None = None,
    out: str | Path | None = None,
    progress: bool = True,
    shot_sources: dict[str, dict] | None = None,
    report_losses: bool = False,
    **options: Any,
) -> Coefficients:
    """Learn per-layer λ for (base A, task adapter T, safety adapter S); see the module docstring.

    ``config``: the procedure (:class:`~.config.CalibrationConfig`; None: the default procedure). ``options``:
    CalibrationConfig fields by keyword, applied on top of ``config`` (``calibrate(..., steps=3)`` as before the
    config existed; checked like the config, unknown names refused). What the fields do: their help text, and for
    the objective the module docstring. ``device``, ``out``, ``progress``, ``shot_sources`` (provenance of the
    shot files, merged into ``meta["shots"]``) and ``report_losses`` do not change the λ, so they are not part of
    the config. ``report_losses``: also compute every term over all shots before and after the steps and at λ = 0
    (``meta["loss"]``'s ``before`` / ``after`` / ``at_zero``, None otherwise) with the on-policy regenerations they
    need; diagnostics only, about a third of the calibration time on SmolLM2 (off: the server's load-time path;
    ``after`` is computed anyway when several starts compete on it).

    ``harmful`` / ``benign``: prompts (str or ``Example``); ``task_shots``: ``Example`` or str (only the prompt is
    used: the target is T's own greedy answer). Several starts (``init=(1, 0)``): optimise from each (same teachers,
    same minibatches) and keep the λ with the lowest loss over all shots (``meta["starts"]`` records each). From
    λ = 1 and from λ = 0 the same steps end in different places, and on SmolLM2 neither start was the lower loss on
    every adapter; ``(1, 0)`` met the most targets there (docs/study-log.md).
    Returns :class:`Coefficients` (λ for every layer of S: calibrated on the selected ones, 0.0 elsewhere,
    default 0.0) with the provenance in ``meta`` (``meta["config"]``: the config, ``meta["config_digest"]``: its
    digest); written atomically to ``out`` when given.
    """
    from tqdm.auto import tqdm  # lazy: only needed once a calibration runs

    cfg = config or CalibrationConfig()
    if options:
        cfg = cfg.replace(**options)
    # the knobs as locals: the procedure below reads them as it did when they were keyword arguments
    seed, steps, lr, beta, gamma, penalty = cfg.seed, cfg.steps, cfg.lr, cfg.beta, cfg.gamma, cfg.penalty
    lambda_max, batch_size, gen_batch_size = cfg.lambda_max, cfg.batch_size, cfg.gen_batch_size
    max_new_tokens, max_prompt_tokens = cfg.max_new_tokens, cfg.max_prompt_tokens
    max_target_tokens, benign_tokens = cfg.max_target_tokens, cfg.benign_tokens
    refusal_loss, margin_tokens, margin_target = cfg.refusal_loss, cfg.margin_tokens, cfg.margin_target
    benign_contrast, optimizer, layers = cfg.benign_contrast, cfg.optimizer, cfg.layers
    onpolicy = cfg.onpolicy_every > 0
    benign_onpolicy = onpolicy and cfg.benign_onpolicy_weight > 0
    groups = MODULE_GROUPS if cfg.granularity == "attn-mlp" else None
    starts = [cfg.init] if isinstance(cfg.init, float) else list(cfg.init)
    base, task, safety = Path(base), Path(task), Path(safety)
    if not harmful:
        raise ValueError("calibration needs at least one harmful shot")
    if not task_shots:
        raise ValueError("calibration needs at least one task shot")
    harmful, framed = with_framed_shots(harmful, cfg)
    benign = list(benign or [])
    given_benign = len(benign)
    edgy: list[str] = []
    if cfg.benign_source != "given":
        # drawn by seed from the edgy-benign training pool (no validation or test prompt: edgy_train)
        edgy = draw_edgy_benign(cfg.benign_edgy_shots, seed)
        benign = (benign if cfg.benign_source == "given+edgy" else []) + edgy
    task_ad = load_adapter(task)
    safety_ad = load_adapter(safety)
    sel = selection_of(safety)
    if layers == "all":
        chosen, origin = safety_ad.layers(), "all layers (argument)"
    elif layers is not None:
        chosen, origin = list(layers), "argument"
    elif sel is not None:
        chosen, origin = sorted(sel["selected"]), "manifest"
    else:
        chosen, origin = safety_ad.layers(), "all layers (no selection in the safety manifest)"
    missing = sorted(set(chosen) - set(safety_ad.layers()))
    if missing:
        raise AdapterError(f"{safety}: selected layer(s) {missing} have no modules in the safety adapter")
    if not chosen:
        raise AdapterError(f"{safety}: no layers to calibrate")

    t0 = time.monotonic()
    # where the time goes (meta["method"]["timing"]): calibration is the server's load-time path, with a budget
    timing: dict[str, float] = {"load": 0.0, "teachers": 0.0, "steps": 0.0, "regenerate": 0.0, "full_loss": 0.0}
    torch.manual_seed(seed)
    det_before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        model, tok = load_causal_lm(base, device=device)
        timing["load"] = time.monotonic() - t0
        pad = tok.pad_token_id
        with LoraForward(model, fixed=task_ad, scaled=safety_ad, layers=chosen, init=starts[0], groups=groups) as lf:
            enc = lambda xs: encode_prompts(tok, xs, max_tokens=max_prompt_tokens)  # noqa: E731
            gen_kw = dict(max_new_tokens=cfg.teacher_tokens, batch_size=gen_batch_size, progress=progress)
            data: dict[str, list[Shot]] = {}
            # Teachers: A (no deltas) refuses harmful shots and answers benign ones; A+T answers task shots.
            def teach(prompts, desc: str) -> list[Shot]:
                p = enc(prompts)
                return [Shot(a, cfg.target(b)) for a, b in zip(p, generate(model, tok, p, desc=desc, **gen_kw))]

            with lf.mode(fixed=False, scaled=False):
                refusals = teach(harmful, "refusals (A)")
                benign_answers = (teach(benign, "benign (A)")
                                  if benign and (gamma > 0 or benign_contrast > 0 or benign_onpolicy) else [])
            # the benign shots A answers: the on-policy benign term regenerates the model's answers to these
            answered = [b for b in benign_answers if b.target and not refuses(tok, b.target)] if benign_onpolicy else []
            if benign_answers and gamma > 0:
                data["benign_kl"] = [Shot(b.prompt, b.target[:benign_tokens] if benign_tokens else b.target)
                                     for b in benign_answers]
            with lf.mode(fixed=True, scaled=False):
                if beta > 0:
                    data["task_kl"] = teach(task_shots, "task (A+T)")
                if refusal_loss == "margin":
                    answers = teach(harmful, "harmful (A+T)")
            if benign_answers and benign_contrast > 0:
                stop = tuple(sorted(eos_ids(model, tok)))
                shots = benign_contrast_shots(benign_answers, [r.target for r in refusals], tok=tok, stop=stop,
                                               margin_tokens=margin_tokens)
                if shots and stop:
                    data["benign_margin"] = shots
            if refusal_loss == "ce":
                data["refusal_ce"] = refusals
            else:
                # Only shots where the task model complies carry a contrast; its refusals are left out.
                kept = [Shot(r.prompt, r.target[:margin_tokens], negative=a.target[:margin_tokens])
                        for r, a in zip(refusals, answers)
                        if a.target and not refuses(tok, a.target)]
                if kept:
                    data["refusal_margin"] = kept
            with torch.no_grad():
                for term, teacher_mode in (("task_kl", (True, False)), ("benign_kl", (False, False))):
                    if term not in data:
                        continue
                    with lf.mode(fixed=teacher_mode[0], scaled=teacher_mode[1]):
                        for i in range(0, len(data[term]), batch_size):
                            chunk = data[term][i : i + batch_size]
                            for s, lp in zip(chunk, target_logprobs(model, chunk, pad)):
                                s.teacher = lp.detach()
            timing["teachers"] = time.monotonic() - t0 - timing["load"]
            weights = {"refusal_ce": 1.0, "refusal_margin": 1.0, "task_kl": beta, "benign_kl": gamma,
                       "benign_margin": benign_contrast, "refusal_onpolicy": cfg.onpolicy_weight,
                       "benign_onpolicy": cfg.benign_onpolicy_weight}

            def regenerate() -> dict[str, list[Shot]]:
                """The on-policy terms' shots at the current λ: the model's own greedy answers to the harmful
                shots, those the keyword judge does not call refusals (:func:`.teachers.onpolicy_shots`), and with
                the benign term its answers to the benign shots that it refuses
                (:func:`.teachers.benign_onpolicy_shots`)."""
                t = time.monotonic()
                gen = dict(max_new_tokens=cfg.onpolicy_tokens, batch_size=gen_batch_size, progress=False)
                with lf.mode(fixed=True, scaled=True):
                    own = generate(model, tok, [r.prompt for r in refusals], desc="on-policy answers", **gen)
                    out = {"refusal_onpolicy": onpolicy_shots(refusals, own, tok=tok, margin_tokens=margin_tokens)}
                    if benign_onpolicy:
                        mine = generate(model, tok, [b.prompt for b in answered], desc="on-policy benign", **gen)
                        out["benign_onpolicy"] = benign_onpolicy_shots(answered, mine, tok=tok,
                                                                       margin_tokens=margin_tokens)
                timing["regenerate"] += time.monotonic() - t
                return out

            def seen_at(step: int, live: dict[str, list[Shot]]) -> dict[str, int]:
                """What a regeneration found (``meta["onpolicy"]``): harmful non-refusals, benign refusals."""
                return {"step": step, "non_refusals": len(live["refusal_onpolicy"]),
                        **({"benign_refusals": len(live["benign_onpolicy"])} if "benign_onpolicy" in live else {})}

            def regularisers() -> torch.Tensor:
                """penalty·Σλ² (+ group_shrinkage·Σ(λ − the layer's mean)² with one λ per module group)."""
                reg = penalty * (lf.lambdas**2).sum()
                if groups:
                    reg = reg + cfg.group_shrinkage * group_shrinkage(lf.lambdas, len(groups))
                return reg

            def full_loss(live: dict[str, list[Shot]] | None = None) -> dict[str, float]:
                """Every term over all shots at the current λ (no grad): the numbers reported before/after.
                ``live``: the on-policy shots at this λ (an empty set counts 0)."""
                t = time.monotonic()
                res: dict[str, float] = {}
                terms = {**data, **(live or {})}
                with torch.no_grad():
                    for term, shots in terms.items():
                        if not shots:
                            res[term] = 0.0
                            continue
                        chunks = [shots[i : i + batch_size] for i in range(0, len(shots), batch_size)]
                        res[term] = sum(float(term_loss(model, term, c, pad, margin_target)) * len(c)
                                        for c in chunks) / len(shots)
                    res["penalty"] = float(penalty * (lf.lambdas**2).sum())
                    if groups:
                        res["shrinkage"] = float(cfg.group_shrinkage * group_shrinkage(lf.lambdas, len(groups)))
                res["total"] = sum(weights[t] * res[t] for t in terms) + res["penalty"]
                if groups:
                    res["total"] += res["shrinkage"]
                timing["full_loss"] += time.monotonic() - t
                return res

            def descend(start: float) -> dict[str, Any]:
                """One optimisation from every λ = ``start``; same minibatches for every start (seeded here)."""
                lf.set_lambdas(start)
                live = regenerate() if onpolicy else {}
                seen = [seen_at(0, live)] if onpolicy else []
                before = full_loss(live) if report_losses else None
                gen = torch.Generator().manual_seed(seed)
                batches = {t: Batches(len(s), batch_size, gen) for t, s in data.items()}
                # the on-policy set changes as λ moves: its own seeded order, so the other terms' is as without it
                live_gen = torch.Generator().manual_seed(seed + 1)
                live_batches = {t: Batches(len(s), batch_size, live_gen) for t, s in live.items()}
                opt = torch.optim.Adam([lf.lambdas], lr=lr) if optimizer == "adam" else SharedAdam(lf.lambdas, lr)
                rule = StoppingRule(steps, cfg.stop_tol, cfg.stop_patience)
                history: list[float] = []
                t_steps, regen_before = time.monotonic(), timing["regenerate"]
                for step in tqdm(range(steps), desc=f"calibrate from {start:g}", unit="step", leave=False,
                                 disable=not progress):
                    if onpolicy and step and step % cfg.onpolicy_every == 0:
                        live = regenerate()
                        seen.append(seen_at(step, live))
                        live_batches = {t: Batches(len(s), batch_size, live_gen) for t, s in live.items()}
                    opt.zero_grad()
                    loss = regularisers()
                    for term in data:
                        idx = batches[term].next()
                        loss = loss + weights[term] * term_loss(model, term, [data[term][i] for i in idx], pad,
                                                                 margin_target)
                    for term, shots in live.items():
                        if shots:
                            idx = live_batches[term].next()
                            loss = loss + weights[term] * term_loss(model, term, [shots[i] for i in idx], pad,
                                                                     margin_target)
                    loss.backward()
                    opt.step()
                    with torch.no_grad():
                        lf.lambdas.clamp_(0.0, lambda_max)
                    history.append(float(loss.detach()))
                    if rule.update(history[-1]):
                        break
                # the optimisation steps alone: the regenerations inside the loop are counted under "regenerate"
                timing["steps"] += time.monotonic() - t_steps - (timing["regenerate"] - regen_before)
                scored = report_losses or len(starts) > 1  # the after-loss: reported, or the starts compete on it
                if onpolicy and scored:
                    live = regenerate()
                    seen.append(seen_at(len(history), live))
                return {"init": start, "before": before, "after": full_loss(live) if scored else None,
                        "history": history,
                        "lambdas": lf.lambda_dict(), "groups": lf.group_dict(), "stopped": rule.record(),
                        "onpolicy": seen, "raw": lf.lambdas.detach().clone()}

            runs = [descend(start) for start in starts]
            best = best_start([r["after"]["total"] for r in runs]) if len(runs) > 1 else 0
            learned, learned_groups = runs[best]["lambdas"], runs[best]["groups"]
            shrunk: dict[str, Any] | None = None
            if cfg.shrink_step > 0:
                t = time.monotonic()
                with torch.no_grad():
                    lf.lambdas.copy_(runs[best]["raw"])

                def answer() -> list[list[int]]:
                    with lf.mode(fixed=True, scaled=True):
                        return generate(model, tok, [r.prompt for r in refusals], max_new_tokens=cfg.onpolicy_tokens,
                                        batch_size=gen_batch_size, desc="shrink answers", progress=False)

                _, shrunk = shrink_scale(lf.lambdas, answer, tok, refusals, cfg.shrink_step, cfg.shrink_tolerance)
                learned, learned_groups = lf.lambda_dict(), lf.group_dict()
                timing["shrink"] = time.monotonic() - t
            lf.set_lambdas(0.0)
            zero_live = regenerate() if onpolicy and report_losses else {}
            at_zero = full_loss(zero_live) if report_losses else None
    finally:
        torch.use_deterministic_algorithms(det_before)

    all_layers = {l: 0.0 for l in safety_ad.layers()}
    all_layers.update(learned)
    shots_meta = {"harmful": shot_set_info(harmful), "task": shot_set_info(task_shots), "benign": shot_set_info(benign)}
    if refusal_loss == "margin":
        # How many harmful shots the task model complied with: the only ones the margin term trains on.
        shots_meta["harmful"]["task_model_complied"] = len(data.get("refusal_margin", []))
    if benign_contrast > 0:
        shots_meta["benign"]["base_answered"] = len(data.get("benign_margin", []))
    if framed:
        shots_meta["harmful"]["framed"] = {**shot_set_info(framed), "framings": "rephrase.FRAMINGS"}
    if cfg.benign_source != "given":
        shots_meta["benign"].update(source=cfg.benign_source, edgy={**shot_set_info(edgy), "pool": "edgy_train"},
                                    given_used=given_benign if cfg.benign_source == "given+edgy" else 0)
    for k, v in (shot_sources or {}).items():
        shots_meta.setdefault(k, {}).update(v)
    objective = (("softplus(-(logp(A refusal) - logp(A+T answer)), first margin_tokens tokens) over harmful"
                  " shots A+T complies with"
                  if refusal_loss == "margin" else "CE(A refusals | harmful)")
                 + (" + w*softplus(tau - (logp(A refusal) - logp(own answer))) over the harmful shots whose answer,"
                    " regenerated every onpolicy_every steps, is no refusal" if onpolicy else "")
                 + (" + w_b*softplus(tau - (logp(A answer) - logp(own refusal))) over the benign shots whose answer,"
                    " regenerated with them, is a refusal" if benign_onpolicy else "")
                 + " + beta*KL(p_T||p_lambda | task) + gamma*KL(p_A||p_lambda | benign)"
                 + (" + delta*softplus(-(logp(A answer) - logp(A refusal | EOS))) over benign shots A answers"
                    if benign_contrast > 0 else "") + " + penalty*sum(lambda^2)"
                 + (" + rho*sum((lambda_group - lambda_layer mean)^2)" if groups else ""))
    meta: dict[str, Any] = {
        "method": {
            "name": "safegene-calibrate",
            "objective": objective,
            "refusal_loss": refusal_loss, "margin_tokens": margin_tokens if refusal_loss == "margin" else None,
            "margin_target": margin_target if refusal_loss == "margin" else None, "benign_tokens": benign_tokens,
            "benign_contrast": benign_contrast, "seed": seed, "steps": steps, "lr": lr, "beta": beta, "gamma": gamma, "lambda_max": lambda_max,
            "penalty": penalty, "init": starts[0] if len(starts) == 1 else starts, "max_new_tokens": max_new_tokens,
            "max_prompt_tokens": max_prompt_tokens, "max_target_tokens": max_target_tokens,
            "batch_size": batch_size, "gen_batch_size": gen_batch_size, "optimizer": optimizer,
            "granularity": cfg.granularity,
            "device": str(next(model.parameters()).device),
            "seconds": round(time.monotonic() - t0, 2),
            # seconds per phase: loading the model, the teachers' answers and log-probs, the optimisation steps, the
            # on-policy regenerations, the full-set losses reported before / after / at λ = 0
            "timing": {k: round(v, 2) for k, v in timing.items()},
        },
        **({"starts": [{"init": r["init"], "after": r["after"]["total"], "stopped": r["stopped"],
                        "lambdas": {str(l): v for l, v in r["lambdas"].items()},
                        **({"groups": {str(l): g for l, g in r["groups"].items()}} if groups else {})}
                       for r in runs],
            "chosen_init": runs[best]["init"]} if len(runs) > 1 else {}),
        **({"shrink": shrunk} if shrunk is not None else {}),
        **({"onpolicy": {"every": cfg.onpolicy_every, "tokens": cfg.onpolicy_tokens, "weight": cfg.onpolicy_weight,
                         "non_refusals": runs[best]["onpolicy"],
                         "at_zero": len(zero_live["refusal_onpolicy"]) if report_losses else None,
                         "of": len(refusals),
                         **({"benign_weight": cfg.benign_onpolicy_weight, "benign_of": len(answered),
                             "benign_at_zero": len(zero_live.get("benign_onpolicy", [])) if report_losses else None}
                            if benign_onpolicy else {})}} if onpolicy else {}),
        "config": cfg.to_dict(),
        "config_digest": cfg.digest(),
        "selected_layers": chosen,
        "selection_origin": origin,
        "loss": {"before": runs[best]["before"], "after": runs[best]["after"], "at_zero": at_zero,
                 "history": runs[best]["history"], "stopped": runs[best]["stopped"]},
        "shots": shots_meta,
        "base": describe_input(base, "base"),
        "task": describe_input(task, "task"),
        "safety": describe_input(safety, "safety"),
    }
    coeffs = Coefficients(layers=all_layers, default=0.0, meta=meta, groups=learned_groups)
    if out is not None:
        save_coefficients(out, coeffs)
    return coeffs


def load_shots(path: str | Path, *, limit: int | None = None) -> list:
    """Shots from a JSONL/CSV file as ``Example`` objects (errors name the file and line)."""
    return load_examples(path, limit=limit)


__all__ = ["calibrate", "load_shots", "shot_set_info", "with_framed_shots"]
