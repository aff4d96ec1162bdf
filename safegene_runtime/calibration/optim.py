"""Calibration's optimisers over the λ vector, and the rule that picks among several starts."""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch


class SharedAdam:
    """Adam with one second moment for the whole λ vector (the mean square of its gradient) *(ours)*.

    Per-coordinate Adam divides each λ's step by that λ's own gradient size, so from a common start every λ with a
    gradient moves at about ``lr`` per step, however weakly the loss depends on it: on SmolLM2, calibrating from
    λ = 0 spread λ flat over layers 0–22, and on 15 layers all λ ended at lr·steps (docs/study-log.md). Sharing the
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


class StoppingRule:
    """When one optimisation stops: after ``max_steps`` steps, or earlier once the loss has flattened *(ours)*.

    Why: with a fixed budget λ saturates against it (on SmolLM2 every λ ended at lr·steps from λ = 0,
    docs/study-log.md), so the budget, not the loss, decided where λ ended. The rule compares the mean loss of the
    last ``patience`` steps with the mean of the ``patience`` steps before: stop once it fell by less than ``tol``
    relative to the earlier mean (a rise counts as no improvement). Window means, not single steps, because each
    step's loss is over a different minibatch. ``tol = 0`` never stops early (the fixed budget).
    :meth:`update` takes each step's loss and says whether to stop; :attr:`reason` and :meth:`record` say why."""

    def __init__(self, max_steps: int, tol: float = 0.0, patience: int = 10) -> None:
        if max_steps < 0 or tol < 0 or patience < 1:
            raise ValueError(f"bad stopping rule: max_steps={max_steps}, tol={tol}, patience={patience}")
        self.max_steps, self.tol, self.patience = max_steps, tol, patience
        self.losses: list[float] = []
        self.improvement: float | None = None
        self.reason: str | None = "max_steps" if max_steps == 0 else None

    def update(self, loss: float) -> bool:
        """Record one step's loss; True when the optimisation should stop after this step."""
        self.losses.append(float(loss))
        n, p = len(self.losses), self.patience
        if self.tol > 0 and n >= 2 * p:
            before = sum(self.losses[-2 * p : -p]) / p
            last = sum(self.losses[-p:]) / p
            self.improvement = (before - last) / max(abs(before), 1e-12)
            if self.improvement < self.tol:
                self.reason = "plateau"
                return True
        if n >= self.max_steps:
            self.reason = "max_steps"
            return True
        return False

    def record(self) -> dict[str, Any]:
        """Why and when it stopped, for the coefficients' meta."""
        return {"reason": self.reason, "steps": len(self.losses), "max_steps": self.max_steps, "tol": self.tol,
                "patience": self.patience,
                "last_improvement": None if self.improvement is None else round(self.improvement, 6)}


def best_start(losses: Sequence[float]) -> int:
    """Which of several calibrations from different starts to keep: the lowest loss over all shots (ties: the
    first). The same rule for ``CalibrationConfig(init=(...))`` and for picking among calibrations already on disk."""
    if not losses:
        raise ValueError("no calibrations to choose from")
    return min(range(len(losses)), key=lambda i: losses[i])


__all__ = ["SharedAdam", "StoppingRule", "best_start"]
