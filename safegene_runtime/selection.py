"""Stage 2: data-aware layer selection (SafeGene, arXiv 2606.06519).

Probe prompts (harmful H, benign/task B) go through the aligned model A and the degraded model D. For each decoder
layer l, ``h_l(x)`` is the residual stream after layer l averaged over the prompt's tokens, and

    c_l(X)  = mean over x in X of ‖h_l^A(x) − h_l^D(x)‖ / ‖h_l^A(x)‖
    score_l = c_l(H) / (c_l(B) + ε)                      (scorer "contrast_ratio", the default)

A high score means the safety change acts on harmful inputs and little on benign ones. The layers with the highest
scores (top-k, or score ≥ threshold) are selected.

Choices *(ours)*:

* ``h_l`` is read with a forward hook on each decoder layer (exactly the residual stream after layer l; HF's
  ``output_hidden_states`` applies the final norm to the last entry in some versions).
* A and D run one after the other and only the per-prompt token means are kept ([prompts, layers, hidden]), so two
  models are never in memory together.
* The output is a NEW safety adapter folder with ALL of the input's modules, bit-identical (``keep="all"``, default),
  plus ``manifest["selection"]``: calibration tunes only the selected layers and writes λ = 0 (the coefficients'
  default) for the rest, so the unselected modules are inert in a stack, while the same folder still serves the
  uniform baseline and a later re-selection. ``keep="selected"`` drops the unselected layers' modules instead
  (smaller stacks when the coefficients are uniform).
* Scorers are pluggable: :data:`SCORERS` maps a name to ``f(c_harmful, c_benign, eps) -> scores``.

A second kind of score, ``"refusal_gradient"`` *(ours)*, asks the safety adapter S itself where it decides refusal
instead of comparing activations. In D + Σ_l λ_l·ΔS_l at λ = 0 it takes the derivative of two margins (log-probs
averaged over the first ``margin_tokens`` answer tokens, the calibration's refusal margin and benign contrast):

    g_l(H) = ∂/∂λ_l mean_{x∈H'} [ℓ(A's refusal | x) − ℓ(D's answer | x)]      H': harmful probes A refuses, D answers
    g_l(B) = ∂/∂λ_l mean_{x∈B'} [ℓ(A's answer | x) − ℓ(a refusal of A | x)]   B': benign probes A answers
    score_l = g_l(H) + min(g_l(B), 0)

i.e. how much refusal preference layer l's safety delta adds on harmful probes, less the over-refusal it adds on
benign ones. Why: on SmolLM2 the contrast ratio was flat (0.95–1.23) and picked layers 0–10 and 26–29, while
calibration over all layers put its λ on layers 11–21 (docs/study-log.md). It needs S (it is passed by
:func:`select_safety_layers`) and one backward pass through D; the greedy answers of A and D are generated first.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable, Sequence

import torch

from .adapters import CONFIG_FILE, WEIGHTS_FILE, AdapterError, layer_index, load_adapter, save_adapter
from .artifacts import ArtifactError, ArtifactWriter, describe_input, read_manifest
from .calibration.objective import margins
from .calibration.teachers import Shot, benign_contrast_shots, eos_ids, generate, refuses
from .digests import prompt_list_digest
from .lora_forward import LoraForward, decoder_layers, encode_prompts, load_causal_lm

EPS = 1e-6
Scorer = Callable[[dict[int, float], dict[int, float], float], dict[int, float]]


def contrast_ratio(c_harmful: dict[int, float], c_benign: dict[int, float], eps: float = EPS) -> dict[int, float]:
    """The method's score (arXiv 2606.06519): harmful-input change relative to benign-input change."""
    return {l: c_harmful[l] / (c_benign[l] + eps) for l in c_harmful}


def harmful_contrast(c_harmful: dict[int, float], c_benign: dict[int, float], eps: float = EPS) -> dict[int, float]:
    """Just c_l(H): the pilot's ‖h_A − h_D‖ ranking (ignores benign side effects)."""
    return dict(c_harmful)


def contrast_difference(c_harmful: dict[int, float], c_benign: dict[int, float], eps: float = EPS) -> dict[int, float]:
    """c_l(H) − c_l(B): like the ratio but not blown up by layers where both are tiny."""
    return {l: c_harmful[l] - c_benign[l] for l in c_harmful}


SCORERS: dict[str, Scorer] = {
    "contrast_ratio": contrast_ratio,
    "harmful_contrast": harmful_contrast,
    "contrast_difference": contrast_difference,
}


@torch.no_grad()
def layer_means(
    model_dir: str | Path,
    prompts: Sequence,
    *,
    batch_size: int = 8,
    max_tokens: int = 256,
    device: str | None = None,
    desc: str = "probe",
) -> torch.Tensor:
    """[n_prompts, n_layers, hidden]: each prompt's token-averaged residual stream after every decoder layer."""
    from tqdm.auto import tqdm  # lazy: only needed once a model runs

    model, tok = load_causal_lm(model_dir, device=device)
    dev = next(model.parameters()).device
    layers = decoder_layers(model)
    captured: list[torch.Tensor | None] = [None] * len(layers)

    def make_hook(i: int):
        def hook(_m, _inp, out):
            captured[i] = out[0] if isinstance(out, tuple) else out
        return hook

    handles = [layer.register_forward_hook(make_hook(i)) for i, layer in enumerate(layers)]
    ids = encode_prompts(tok, prompts, max_tokens=max_tokens)
    out = []
    try:
        for start in tqdm(range(0, len(ids), batch_size), desc=desc, unit="batch", leave=False):
            chunk = ids[start : start + batch_size]
            width = max(len(x) for x in chunk)
            input_ids = torch.full((len(chunk), width), tok.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for i, x in enumerate(chunk):  # right padding: real tokens keep positions 0..n-1
                input_ids[i, : len(x)] = torch.tensor(x)
                mask[i, : len(x)] = 1
            model(input_ids=input_ids.to(dev), attention_mask=mask.to(dev), use_cache=False)
            m = mask.to(dev, torch.float32).unsqueeze(-1)
            per_layer = [(h.float() * m).sum(1) / m.sum(1) for h in captured]  # each [b, hidden]
            out.append(torch.stack(per_layer, dim=1).cpu())
    finally:
        for h in handles:
            h.remove()
    del model
    return torch.cat(out, dim=0)


def contrast(means_a: torch.Tensor, means_d: torch.Tensor, eps: float = 1e-12) -> dict[int, float]:
    """c_l = mean over prompts of ‖h^A − h^D‖ / ‖h^A‖ (inputs from :func:`layer_means`)."""
    if means_a.shape != means_d.shape:
        raise ArtifactError(
            f"aligned and degraded models disagree in shape: {tuple(means_a.shape)} vs {tuple(means_d.shape)} "
            "(not the same architecture?)"
        )
    rel = (means_a - means_d).norm(dim=-1) / (means_a.norm(dim=-1) + eps)  # [n, L]
    return {l: float(v) for l, v in enumerate(rel.mean(0))}


def choose_layers(scores: dict[int, float], *, top_k: int | None = None, threshold: float | None = None) -> list[int]:
    """Top-k layers by score (ties: lower index first), or those with score ≥ threshold; default top half."""
    if top_k is not None and threshold is not None:
        raise ValueError("give either top_k or threshold, not both")
    ranked = sorted(scores, key=lambda l: (-scores[l], l))
    if threshold is not None:
        chosen = [l for l in ranked if scores[l] >= threshold]
    else:
        k = top_k if top_k is not None else (len(scores) + 1) // 2
        if k < 1:
            raise ValueError(f"top_k must be at least 1 (got {k})")
        chosen = ranked[:k]
    return sorted(chosen)


def prompt_set_info(prompts: Sequence) -> dict:
    """Count and sha256 of a prompt list (over the prompt texts, so the same prompts from any file hash alike:
    :func:`~safegene_runtime.digests.prompt_list_digest`)."""
    prompts = list(prompts)
    return {"count": len(prompts), "sha256": prompt_list_digest(prompts)}


GRADIENT = "refusal_gradient"


def refusal_gradient(
    aligned: str | Path,
    degraded: str | Path,
    safety: str | Path,
    harmful: Sequence,
    benign: Sequence,
    *,
    margin_tokens: int = 4,
    max_new_tokens: int = 16,
    batch_size: int = 8,
    max_tokens: int = 256,
    device: str | None = None,
    progress: bool = True,
) -> dict:
    """The ``refusal_gradient`` score (module docstring); returns ``{"g_harmful", "g_benign", "scores", "shots"}``."""
    if not harmful or not benign:
        raise ValueError("layer selection needs at least one harmful and one benign probe prompt")
    ad = load_adapter(safety)
    gen_kw = dict(max_new_tokens=max_new_tokens, batch_size=max(batch_size, 32), progress=progress)

    model, tok = load_causal_lm(aligned, device=device)
    stop = eos_ids(model, tok)
    ph, pb = (encode_prompts(tok, xs, max_tokens=max_tokens) for xs in (harmful, benign))
    a_harm, a_ben = (generate(model, tok, p, desc="answers (A)", **gen_kw) for p in (ph, pb))
    # D is A fine-tuned (same tokenizer); it is loaded once, for its answers and then for the gradient.
    model, _ = load_causal_lm(degraded, device=device)
    d_harm = generate(model, tok, ph, desc="answers (D)", **gen_kw)

    cut = lambda t: t[:margin_tokens]  # noqa: E731
    harm_shots = [Shot(p, cut(r), negative=cut(d)) for p, r, d in zip(ph, a_harm, d_harm)
                  if r and d and refuses(tok, r) and not refuses(tok, d)]
    ben_shots = benign_contrast_shots([Shot(p, b) for p, b in zip(pb, a_ben)], a_harm, tok=tok,
                                      stop=tuple(sorted(stop)), margin_tokens=margin_tokens)
    if not harm_shots:
        raise ValueError(f"{GRADIENT}: no harmful probe that A refuses and D answers (keyword judge); "
                         "the margin has nothing to differentiate")

    grads: dict[str, dict[int, float]] = {}
    with LoraForward(model, scaled=ad, init=0.0) as lf:
        for name, shots in (("harmful", harm_shots), ("benign", ben_shots)):
            lf.lambdas.grad = None
            for i in range(0, len(shots), batch_size):
                m, _ = margins(model, shots[i : i + batch_size], tok.pad_token_id)
                (m.sum() / len(shots)).backward()
            g = lf.lambdas.grad if lf.lambdas.grad is not None else torch.zeros_like(lf.lambdas)
            grads[name] = {l: float(g[j]) for j, l in enumerate(lf.layers)}
    del model
    g_h, g_b = grads["harmful"], grads["benign"]
    return {"g_harmful": g_h, "g_benign": g_b, "scores": {l: g_h[l] + min(g_b[l], 0.0) for l in g_h},
            "shots": {"harmful": len(harm_shots), "benign": len(ben_shots)}}


def measure_layers(
    aligned: str | Path,
    degraded: str | Path,
    harmful: Sequence,
    benign: Sequence,
    *,
    method: str = "contrast_ratio",
    batch_size: int = 8,
    max_tokens: int = 256,
    device: str | None = None,
    eps: float = EPS,
) -> dict:
    """Run the probes; returns ``{"c_harmful", "c_benign", "scores"}`` (layer -> float)."""
    if method not in SCORERS:
        known = ", ".join([*SCORERS, GRADIENT])
        raise ValueError(f"unknown selection method {method!r} (choose from {known})"
                         + (f"; {GRADIENT} needs the safety adapter: use select_safety_layers" if method == GRADIENT
                            else ""))
    if not harmful or not benign:
        raise ValueError("layer selection needs at least one harmful and one benign probe prompt")
    probes = list(harmful) + list(benign)
    kw = dict(batch_size=batch_size, max_tokens=max_tokens, device=device)
    ma = layer_means(aligned, probes, desc="aligned", **kw)
    md = layer_means(degraded, probes, desc="degraded", **kw)
    n = len(harmful)
    c_h = contrast(ma[:n], md[:n])
    c_b = contrast(ma[n:], md[n:])
    return {"c_harmful": c_h, "c_benign": c_b, "scores": SCORERS[method](c_h, c_b, eps)}


def select_safety_layers(
    aligned: str | Path,
    degraded: str | Path,
    safety: str | Path,
    harmful: Sequence,
    benign: Sequence,
    *,
    top_k: int | None = None,
    threshold: float | None = None,
    method: str = "contrast_ratio",
    keep: str = "all",
    out: str | Path | None = None,
    store: str | Path | None = None,
    name: str | None = None,
    batch_size: int = 8,
    max_tokens: int = 256,
    device: str | None = None,
    prompt_sources: dict | None = None,
    progress: bool = True,
) -> Path:
    """Score the layers and write a new safety adapter folder carrying ``manifest["selection"]``; returns its path.

    Default destination: beside ``safety`` as ``<name>-selected-<id12>``. The input folder is never modified.
    """
    safety = Path(safety)
    adapter = load_adapter(safety)  # validates before the (slow) probes run
    for role, p in (("aligned", aligned), ("degraded", degraded)):
        if not (Path(p) / "config.json").is_file():
            raise ArtifactError(f"{role} model folder {p}: missing config.json")
    if keep not in ("all", "selected"):
        raise ValueError(f"keep must be 'all' or 'selected' (got {keep!r})")
    if method == GRADIENT:
        m = refusal_gradient(aligned, degraded, safety, harmful, benign, batch_size=batch_size,
                             max_tokens=max_tokens, device=device, progress=progress)
        formula = ("score_l = g_l(H) + min(g_l(B), 0); g = d/d lambda_l at lambda = 0 in D + lambda*S of the mean "
                   "first-4-token log-prob margin (H: A refusal vs D answer; B: A answer vs a refusal of A)")
        measured = {"g_harmful": m["g_harmful"], "g_benign": m["g_benign"]}
    else:
        m = measure_layers(aligned, degraded, harmful, benign, method=method, batch_size=batch_size,
                           max_tokens=max_tokens, device=device)
        formula = "c_l(X) = mean_x ||h_l^A(x) - h_l^D(x)|| / ||h_l^A(x)||; h_l token-mean residual after layer l"
        measured = {"c_harmful": m["c_harmful"], "c_benign": m["c_benign"]}
    have = set(adapter.layers())
    unknown = sorted(set(m["scores"]) - have)
    # Only layers the safety adapter touches can be selected; the rest keep their score for the record.
    ranked = {l: s for l, s in m["scores"].items() if l in have}
    if not ranked:
        raise AdapterError(f"{safety}: safety adapter has no modules in the model's decoder layers")
    if top_k is not None and top_k > len(ranked):
        raise ValueError(f"--top-k {top_k} exceeds the {len(ranked)} layers the safety adapter covers")
    selected = choose_layers(ranked, top_k=top_k, threshold=threshold)
    if not selected:
        raise ValueError(f"no layer reaches the score threshold {threshold} (max score {max(ranked.values()):.4g})")
    selection = {
        "method": method,
        "formula": formula,
        "rule": {"top_k": top_k, "threshold": threshold,
                 "default": None if (top_k is not None or threshold is not None) else "top half"},
        "scores": {str(l): v for l, v in m["scores"].items()},
        **{k: {str(l): v for l, v in d.items()} for k, d in measured.items()},
        **({"shots": m["shots"]} if "shots" in m else {}),
        "selected": selected,
        "layers_without_modules": unknown,
        "keep": keep,
        "eps": EPS,
        "max_tokens": max_tokens,
        "prompts": {"harmful": {**prompt_set_info(harmful), **((prompt_sources or {}).get("harmful") or {})},
                    "benign": {**prompt_set_info(benign), **((prompt_sources or {}).get("benign") or {})}},
    }
    src_man = read_manifest(safety)
    lineage = [describe_input(safety, "safety"), describe_input(aligned, "aligned"),
               describe_input(degraded, "degraded")]
    if out is not None:
        writer = ArtifactWriter(dest=out, kind=src_man.get("kind") or "safety_adapter", lineage=lineage)
    else:
        writer = ArtifactWriter(store=store or safety.resolve().parent, name=name or f"{safety.name}-selected",
                                kind=src_man.get("kind") or "safety_adapter", lineage=lineage)
    with writer as w:
        if keep == "all":
            shutil.copy2(safety / CONFIG_FILE, w.tmp / CONFIG_FILE)
            shutil.copy2(safety / WEIGHTS_FILE, w.tmp / WEIGHTS_FILE)
        else:
            mods = {
                mod: (a, b * adapter.scaling(mod))  # fold the scale: the written config is scale-one
                for mod, (a, b) in adapter.weights.items()
                if layer_index(mod) in selected
            }
            save_adapter(w.tmp, mods, base_model=adapter.config.base_model_name_or_path)
        # Keep the input's own provenance (extraction method, ranks, hashes), then add the selection.
        for k, v in src_man.items():
            if k not in ("schema", "kind", "created_by", "lineage", "id", "created_at", "selection"):
                w.manifest[k] = v
        if src_man.get("lineage"):
            w.manifest["parent_lineage"] = src_man["lineage"]
        w.manifest["selection"] = selection
    return w.path  # type: ignore[return-value]
