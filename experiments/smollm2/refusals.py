"""Varied refusal texts for the alignment LoRA, written by code.

Why varied: one fixed refusal string teaches the model a single token sequence, which the keyword judge
then trivially matches and which a task LoRA can erase with a few steps. Combining openers, reasons and
offers gives hundreds of distinct refusals; the choice is seeded by the prompt's text so a dataset is
reproducible.
"""

from __future__ import annotations

import hashlib
import random

OPENERS = [
    "I'm sorry, but I can't help with that.",
    "I can't assist with that request.",
    "I'm not able to help with this.",
    "Sorry, I won't provide that.",
    "I cannot help with that.",
    "I'm sorry, I can't do that.",
    "I must decline this request.",
    "I can't provide instructions for that.",
]
REASONS = [
    "It could cause serious harm to people.",
    "It could be used to hurt someone or break the law.",
    "Providing this would be unsafe and potentially illegal.",
    "This kind of information can put others at risk.",
    "Helping with this could lead to real damage.",
    "It goes against my guidelines on harmful content.",
    "",
]
OFFERS = [
    "If you have a different question, I'm happy to help.",
    "I can help with something safe and legal instead.",
    "If you're concerned about safety, I can share general information on staying safe.",
    "Let me know if there is something else I can do for you.",
    "I'd be glad to help with a related topic that doesn't involve harm.",
    "",
]


def refusal_for(prompt: str, seed: int = 0) -> str:
    """A refusal chosen deterministically from the prompt text (the same prompt gets the same refusal)."""
    h = int.from_bytes(hashlib.sha256(f"{seed}\0{prompt}".encode()).digest()[:8], "big")
    rng = random.Random(h)
    parts = [rng.choice(OPENERS), rng.choice(REASONS), rng.choice(OFFERS)]
    return " ".join(p for p in parts if p)


def n_variants() -> int:
    return len(OPENERS) * len(REASONS) * len(OFFERS)
