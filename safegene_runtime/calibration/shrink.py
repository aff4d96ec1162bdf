"""Shrink the calibrated λ towards 0 as far as the harmful shots allow (``CalibrationConfig.shrink_step``).

Why: an adapter that barely erodes safety (on SmolLM2 the "clean" task adapters) needs little of the safety
adapter, yet the optimisation keeps whatever λ balances its loss terms on a few shots, and on validation those
variants over-refuse benign prompts far more than the base (docs/results.md, "SafeGene v2"). The refusal the
harmful shots ask for is a threshold, not a margin to maximise: past the smallest λ at which the model refuses them,
more λ buys only over-refusal. So after the steps the whole λ vector is scaled by STEP, 2·STEP, … (ascending) and the
first scale is kept at which the model still refuses every harmful shot it refuses at the calibrated λ (greedy
answers, the keyword judge, as the on-policy term reads them); none: the calibrated λ stays. With
``shrink_tolerance`` N a scale is kept when at most N of those shots are answered at it: on SmolLM2 the scale the
strict rule picks hinges on one or two of its 32 shots and swings with the shot draw (docs/results.md, "The second
locked test").

The test is on the calibration's own harmful shots only (never a validation prompt), so whether it helps is a
validation question like every other knob.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from .teachers import Shot, says_refusal


def non_refused(tok, refusals: list[Shot], answers: list[list[int]]) -> set[int]:
    """Indices of the harmful shots A refuses (its teacher answer is a refusal phrase) whose ``answers`` entry is
    not one: the on-policy term's notion of a non-refusal (:func:`.teachers.onpolicy_shots`)."""
    return {i for i, (r, a) in enumerate(zip(refusals, answers))
            if r.target and says_refusal(tok, r.target) and not says_refusal(tok, a)}


def shrink_scale(lambdas: torch.Tensor, answer: Callable[[], list[list[int]]], tok, refusals: list[Shot],
                 step: float, tolerance: int = 0) -> tuple[float, dict[str, Any]]:
    """Scale ``lambdas`` (in place, the calibrated values on entry) to the smallest of ``step``, ``2·step``, … < 1
    at which ``answer()`` (the model's greedy answers to the harmful shots at the current λ) refuses every shot it
    refuses at scale 1 but at most ``tolerance`` (0: all of them; more: one shot alone does not keep λ high);
    returns the scale (1.0: none did) and a record of what was tried."""
    calibrated = lambdas.detach().clone()
    at_one = non_refused(tok, refusals, answer())
    tried = []
    scale = 1.0
    k = 1
    while k * step < 1 - 1e-9:
        c = round(k * step, 6)
        with torch.no_grad():
            lambdas.copy_(calibrated * c)
        new = sorted(non_refused(tok, refusals, answer()) - at_one)
        tried.append({"scale": c, "newly_answered": new})
        if len(new) <= tolerance:
            scale = c
            break
        k += 1
    with torch.no_grad():
        lambdas.copy_(calibrated * scale)
    return scale, {"step": step, "scale": scale, "answered_at_one": sorted(at_one), "of": len(refusals),
                   "tried": tried, **({"tolerance": tolerance} if tolerance else {})}


__all__ = ["non_refused", "shrink_scale"]
