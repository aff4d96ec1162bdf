"""Calibration's optimisers over the λ vector, and the rule that picks among several starts."""

from __future__ import annotations

import math
from typing import Sequence

import torch


class SharedAdam:
    """Adam with one second moment for the whole λ vector (the mean square of its gradient) *(ours)*.

    Per-coordinate Adam divides each λ's step by that λ's own gradient size, so from a common start every λ with a
    gradient moves at about ``lr`` per step, however weakly the loss depends on it: on SmolLM2, calibrating from
    λ = 0 spread λ flat over layers 0–22, and on 15 layers all λ ended at lr·steps (docs/results.md). Sharing the
    normaliser keeps the gradient's relative sizes across layers (the first step is ``−lr·g/rms(g)``), so layers the
    loss barely depends on barely move, while the overall step stays scale-free like Adam's."""

    def __init__(self, param: torch.Tensor, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        self.param, self.lr, self.betas, self.eps = param, lr, betas, eps
        self.m = torch.zeros_like(param)
        self.v = 0.0
        self.t = 0

    def zero_grad(self) -> None:
        self.param.grad = None

    @torch.no_grad()
    def step(self) -> None:
        g = self.param.grad
        if g is None:
            return
        b1, b2 = self.betas
        self.t += 1
        self.m.mul_(b1).add_(g, alpha=1 - b1)
        self.v = b2 * self.v + (1 - b2) * float((g.double() ** 2).mean())
        m_hat = self.m / (1 - b1**self.t)
        v_hat = self.v / (1 - b2**self.t)
        self.param.sub_(self.lr * m_hat / (math.sqrt(v_hat) + self.eps))


def best_start(losses: Sequence[float]) -> int:
    """Which of several calibrations from different starts to keep: the lowest loss over all shots (ties: the
    first). The same rule for ``CalibrationConfig(init=(...))`` and for picking among calibrations already on disk."""
    if not losses:
        raise ValueError("no calibrations to choose from")
    return min(range(len(losses)), key=lambda i: losses[i])


__all__ = ["SharedAdam", "best_start"]
