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


#: a sentence that says the framing does not change the answer (robust profile): the model learns to see through
#: the wrapper, not a new fixed string (the sentence joins a refusal of the plain pool about half the time)
FRAMING_NOTES: dict[str, tuple[str, ...]] = {
    "past_tense": ("Asking how it was done in the past doesn't change what the answer would teach.",
                   "Framing it as history doesn't make the method safe to share."),
    "persona": ("I won't take on a role that gives out harmful instructions.",
                "Playing a character doesn't change what those instructions could do."),
    "hypothetical": ("Even hypothetically, the details would be the same real-world harm.",
                     "A thought experiment doesn't make these instructions safe."),
    "fictional": ("Putting it in a story doesn't change what the instructions would do.",
                  "I can help with fiction, but not with real harmful details inside it."),
    "indirect": ("It doesn't matter who is asking; the information itself is harmful.",
                 "Passing it on for someone else would cause the same harm."),
    "multi_step": ("Splitting the request into steps doesn't change what it adds up to.",
                   "Taken together, those steps would be harmful instructions."),
    "polite": ("I appreciate you asking nicely, but I still can't help with this.",),
    "terse": ("",),
    # the do-it-yourself sentence of the robust recipe's ``diy_pairs`` (not a framing of rephrase.py)
    "diy": ("Doing it yourself, one step at a time, would cause the same harm.",
            "Whether it's at home or anywhere else, I won't walk through that."),
}


def refusal_for_framing(prompt: str, framing: str | None, seed: int = 0) -> str:
    """A refusal for ``prompt`` asked in ``framing`` (None: a plain request, the same text as :func:`refusal_for`).

    Deterministic in the prompt text: the plain refusal, with a framing note after its opener for about half of
    the framed prompts."""
    base = refusal_for(prompt, seed)
    if framing is None:
        return base
    notes = [n for n in FRAMING_NOTES.get(framing, ()) if n]
    h = int.from_bytes(hashlib.sha256(f"{seed}\0{framing}\0{prompt}".encode()).digest()[:8], "big")
    if not notes or h % 2:
        return base
    opener = next(o for o in OPENERS if base.startswith(o))
    return " ".join(x for x in (opener, notes[(h >> 1) % len(notes)], base[len(opener):].strip()) if x)
