"""The one interface every judge implements (contract 4 of the team brief).

A judge looks at (prompt, response) pairs and returns one :class:`Verdict` per pair. Judges are batched because
the server runs them off the hot path on every response and the eval harness judges thousands at once; a judge
that only needs one side (the prompt-harm judge reads only the prompt) simply ignores the other.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Verdict:
    """One judge's decision on one (prompt, response) pair.

    ``label`` is the judge's class name (e.g. "refusal"/"compliance"), ``score`` its confidence or probability for
    the *positive* class of that judge (refusal, harmful, unsafe) in [0, 1], ``details`` anything that explains it
    (matched phrase, raw model output, ...).
    """

    judge: str
    label: str
    score: float
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Judge:
    """Base class: subclasses set ``name`` and implement :meth:`judge_batch`."""

    name: str = "judge"
    #: labels this judge can return, positive class first
    labels: tuple[str, ...] = ()

    def judge_batch(self, prompts: list[str], responses: list[str]) -> list[Verdict]:  # pragma: no cover - abstract
        raise NotImplementedError

    def judge(self, prompt: str, response: str = "") -> Verdict:
        """Judge a single pair (convenience wrapper over :meth:`judge_batch`)."""
        return self.judge_batch([prompt], [response])[0]

    @staticmethod
    def _check_lengths(prompts: list[str], responses: list[str]) -> None:
        if len(prompts) != len(responses):
            raise ValueError(f"judge_batch: {len(prompts)} prompts but {len(responses)} responses")
