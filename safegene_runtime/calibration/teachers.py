"""Calibration's teachers: the shot record, greedy teacher answers, and the keyword judge on them.

The teacher targets (greedy generations of the aligned base A and of the task model A+T) are computed once per
calibration and cached on the shots; teacher generation uses a larger batch than the optimisation
(``gen_batch_size``: decoding is memory-bound, so wider batches are nearly free). Layer selection's
``refusal_gradient`` scorer uses the same teachers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..judges.refusal import refusal_match
from ..lora_forward import left_pad


@dataclass
class Shot:
    prompt: list[int]
    target: list[int]
    teacher: torch.Tensor | None = None  # [len(target), vocab] log-probs of the teacher (KL terms only)
    negative: list[int] | None = None  # refusal margin: the task model's compliant answer; benign: A's refusal
    stop: tuple[int, ...] = ()  # benign margin: the EOS ids an empty reply starts with


def eos_ids(model, tok) -> set[int]:
    """Every EOS id of a model: the tokenizer's and the generation config's (one id or a list)."""
    ids = {tok.eos_token_id} if tok.eos_token_id is not None else set()
    g = getattr(model.generation_config, "eos_token_id", None)
    ids |= set(g) if isinstance(g, (list, tuple)) else ({g} if g is not None else set())
    return ids


@torch.no_grad()
def generate(model, tok, prompts: list[list[int]], *, max_new_tokens: int, batch_size: int, desc: str,
             progress: bool) -> list[list[int]]:
    """Greedy continuations (cut after the first EOS, which is kept), batched with left padding."""
    from tqdm.auto import tqdm  # lazy: only needed once a model runs

    dev = next(model.parameters()).device
    eos = eos_ids(model, tok)
    pad = tok.pad_token_id
    out: list[list[int]] = []
    for start in tqdm(range(0, len(prompts), batch_size), desc=desc, unit="batch", leave=False, disable=not progress):
        chunk = prompts[start : start + batch_size]
        ids, mask = left_pad(chunk, pad)
        width = ids.shape[1]
        gen = model.generate(
            input_ids=ids.to(dev), attention_mask=mask.to(dev), max_new_tokens=max_new_tokens, do_sample=False,
            num_beams=1, pad_token_id=pad, eos_token_id=sorted(eos) or None, temperature=None, top_p=None, top_k=None,
        )
        for row in gen[:, width:].tolist():
            cut: list[int] = []
            for t in row:
                cut.append(t)
                if t in eos:
                    break
            out.append(cut)
    return out


def refuses(tok, ids: list[int]) -> bool:
    """The keyword judge on a decoded teacher answer."""
    return refusal_match(tok.decode(ids, skip_special_tokens=True)) is not None


def says_refusal(tok, ids: list[int]) -> bool:
    """The keyword judge's refusal phrases on a decoded answer, an empty reply *not* counted as a refusal.

    Why not :func:`refuses`: the judge (:func:`~safegene_runtime.judges.refusal.refusal_match`) files an empty
    answer under refusals ("empty"), and the on-policy term must push empty replies down like any other
    non-refusal (on SmolLM2 much of what stayed "harmful" after calibration was fragments and empty replies)."""
    match = refusal_match(tok.decode(ids, skip_special_tokens=True))
    return match is not None and match != "empty"


def onpolicy_shots(refusals: list[Shot], answers: list[list[int]], *, tok, margin_tokens: int) -> list[Shot]:
    """The on-policy refusal term's shots: for each harmful shot whose regenerated answer (``answers``, paired by
    index with A's ``refusals``) is not a refusal phrase — a compliance, a fragment, a deflection or an empty reply
    (an immediate EOS, kept as that one token) — A's refusal as target and that answer as negative, both cut to
    ``margin_tokens``. Shots where A itself did not refuse carry no refusal to prefer and are left out."""
    if len(refusals) != len(answers):
        raise ValueError(f"{len(answers)} regenerated answers for {len(refusals)} harmful shots")
    return [Shot(r.prompt, r.target[:margin_tokens], negative=a[:margin_tokens])
            for r, a in zip(refusals, answers)
            if r.target and a and says_refusal(tok, r.target) and not says_refusal(tok, a)]


def benign_onpolicy_shots(answers: list[Shot], own: list[list[int]], *, tok, margin_tokens: int) -> list[Shot]:
    """The on-policy benign term's shots, the mirror of :func:`onpolicy_shots`: for each benign shot the base answers
    (its teacher answer, ``answers``, is neither a refusal nor empty) whose regenerated answer (``own``, paired by
    index) the keyword judge calls a refusal or is empty, the base's answer as target and that refusal as negative,
    both cut to ``margin_tokens``. Why on-policy: the benign contrast's negative is one of the base's refusals to a
    harmful prompt, fixed before the steps; an over-refusing model words its refusals its own way (and stops), and
    on SmolLM2 a calibrated λ that kept the contrast small still refused about half of the edgy-benign training
    pool (docs/results.md)."""
    if len(answers) != len(own):
        raise ValueError(f"{len(own)} regenerated answers for {len(answers)} benign shots")
    return [Shot(b.prompt, b.target[:margin_tokens], negative=a[:margin_tokens])
            for b, a in zip(answers, own)
            if b.target and a and not refuses(tok, b.target) and refuses(tok, a)]


def benign_contrast_shots(answers: list[Shot], refusals: list[list[int]], *, tok, stop: tuple[int, ...],
                          margin_tokens: int) -> list[Shot]:
    """The benign contrast's shots (also layer selection's benign margin): the benign prompts A answers (no refusal,
    no immediate EOS), cut to ``margin_tokens``, each with one of A's own refusals as negative (paired by index)."""
    opening = [r[:margin_tokens] for r in refusals if r and refuses(tok, r)]
    answered = [b for b in answers if b.target and b.target[0] not in stop and not refuses(tok, b.target)]
    if not opening:
        return []
    return [Shot(b.prompt, b.target[:margin_tokens], stop=stop, negative=opening[i % len(opening)])
            for i, b in enumerate(answered)]


__all__ = ["Shot", "eos_ids", "generate", "refuses", "says_refusal", "onpolicy_shots", "benign_onpolicy_shots",
           "benign_contrast_shots"]
