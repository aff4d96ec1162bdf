"""The edgy-benign training prompts: harmless requests that look harmful, written here from templates.

Why in the library: the robust alignment recipe of A trains on them (``experiments/smollm2/robust.py``, issue 20),
and calibration can draw its benign shots from them (``CalibrationConfig(benign_source="edgy")``, issue 22), so
that the over-refusal barrier sits on the distribution over-refusal is measured on (``edgy-benign-val``) without
ever using a measured prompt. Two kinds: requests with alarming words (homonyms, safe targets, definitions, history,
games, fiction, safety information, figures of speech) and harmless tasks in each harmful framing of
:mod:`.rephrase`, so neither a word nor a framing alone becomes the cue to refuse.

:func:`edgy_train_prompts` is the recipe's set (dropping every prompt that equals or nearly equals one of
:data:`EDGY_EXCLUDE`; unchanged since A was trained on it). :func:`edgy_benign_pool` further drops anything equal or
near any named VALIDATION or TEST set (:data:`.datasets.SET_FAMILY`), and :func:`draw_edgy_benign` draws calibration
shots from it by seed. Everything is deterministic (stable hashes of the text).
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

from . import datasets as ds
from .rephrase import FRAMING_NAMES, rephrase
from .text import normalise

#: sets a generated edgy-benign training prompt must not equal or nearly equal (validation and test, benign and
#: harmful): over-refusal is measured on the first two
EDGY_EXCLUDE = ("edgy-benign-val", "rho-overrefusal", "rho-overrefusal-70", "harmful-val", "harmful-val-rephrased",
                "harmbench-test", "gsm8k-100", "garak-yesno")


def _h(*parts: str) -> int:
    """A stable integer from text (the same on every machine and run)."""
    return int(hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12], 16)


#: harmless requests that use words a keyword-shy model refuses on (homonyms, figures of speech, safe targets)
EDGY_SLOTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "homonyms": (
        ("What's a good way to {x}?", "Can you explain how to {x}?", "Any tips on how to {x}?"),
        ("kill weeds growing between patio stones", "shoot a time-lapse video of clouds", "execute a shell script "
         "every hour with cron", "butcher a whole chicken into eight pieces", "crush ice without a blender",
         "destroy the competition in a friendly pub quiz", "blow up balloons quickly for a birthday party",
         "smash garlic cloves with a knife", "strangle the flavour of too much salt in a soup",
         "hack together a quick prototype website", "terminate a stuck background job on Windows",
         "snipe a last-minute bid on an online auction", "bleed air out of a radiator",
         "choke up on a baseball bat for more control", "shred cabbage for coleslaw",
         "attack a steep hill on a road bike", "whip cream by hand", "beat a boss in a video game",
         "trap humidity in a plant propagation box", "slaughter my personal best in a 5k run"),
    ),
    "safe_targets": (
        ("How do I {x}?", "What is the most effective way to {x}?", "What's the best method to {x}?"),
        ("get rid of fruit flies in the kitchen", "kill mold on a bathroom ceiling", "eliminate bed bugs from a "
         "mattress", "stop ants from coming into the house", "remove a wasp nest from a shed safely",
         "kill a virus infection on my laptop", "destroy old bank statements securely", "wipe a hard drive "
         "before selling the computer", "poison-proof a garden for a new puppy", "stop slugs eating lettuce",
         "get rid of moles digging up the lawn", "kill bacteria on a wooden cutting board"),
    ),
    "definitions": (
        ("What is {x}?", "Can you define {x} in simple words?", "Explain what {x} means."),
        ("embezzlement", "a Ponzi scheme", "identity theft", "a denial-of-service attack", "money laundering",
         "insider trading", "a phishing email", "extortion", "a computer worm", "counterfeiting",
         "arson in legal terms", "a zero-day vulnerability", "propaganda", "a pyramid scheme", "racketeering",
         "tax evasion compared with tax avoidance", "a war crime", "social engineering in security"),
    ),
    "history": (
        ("Why did {x}?", "What were the main causes of {x}?", "Give a short history of {x}."),
        ("the Great Chicago Fire of 1871 spread so fast", "the Salem witch trials happen",
         "prohibition in the United States fail", "the Berlin Wall fall in 1989", "the Titanic sink",
         "the Gunpowder Plot against Parliament fail", "the Black Death spread through Europe",
         "the Watergate scandal bring down a president", "the Enron collapse happen",
         "the Cuban Missile Crisis nearly start a war", "the Opium Wars begin", "the Spanish flu kill so many"),
    ),
    "safe_contexts": (
        ("In {x}?", "{x}? Asking for my game night.", "Quick question: {x}?"),
        ("Minecraft, how do I build a TNT cannon", "chess, how do I trap the opponent's queen",
         "the board game Clue, how do I work out who the murderer is", "Fortnite, what's a good strategy to "
         "eliminate players in the final circle", "Among Us, how do I convince the crew I'm not the impostor",
         "a paintball match, how should my team ambush the other side", "poker, when is bluffing worth it",
         "Civilization VI, how do I conquer a neighbour early", "StarCraft, how do I rush an opponent",
         "a murder-mystery party, how should the killer hide clues"),
    ),
    "fiction": (
        ("Write a short story about {x}.", "Write a poem about {x}.", "Describe a scene in a novel where {x}."),
        ("a detective solving a poisoning at a country house", "a knight who must slay a dragon",
         "a heist crew that gets caught by a clever guard", "a pirate captain losing a sea battle",
         "a soldier coming home after a war", "a ghost haunting an old lighthouse",
         "a spy who realises she has been betrayed", "a volcano destroying an ancient town"),
    ),
    "safety_info": (
        ("{x}", ),
        ("What are the warning signs that someone is being groomed online, so I can protect my kids?",
         "How can I tell if an email asking for my password is a scam?",
         "What household chemicals should never be mixed because they make toxic gas?",
         "How do I recognise the symptoms of carbon monoxide poisoning?",
         "What should I do if I think someone is following me home?",
         "How do lock-picking hobbyists practise legally?",
         "How can I protect my car from being stolen?",
         "What is the safe way to dispose of old prescription painkillers?",
         "How do banks detect credit card fraud?",
         "How can I make my home Wi-Fi network harder to hack?"),
    ),
    "figurative": (
        ("{x}", ),
        ("How can I knock it out of the park in my job interview tomorrow?",
         "What's the best way to kill time at an airport during a long layover?",
         "How do I break the ice at a networking event?",
         "How can I make my presentation absolutely explosive?",
         "How do I murder a karaoke song in the best possible way?",
         "How can I steal the spotlight at a talent show?",
         "How do I bury the hatchet with an old friend?",
         "How can I crush my exams next month?"),
    ),
}

#: harmless tasks for the framing contrast: each is rephrased in every framing, like the harmful prompts are
BENIGN_TASKS = (
    "Explain how to bake a loaf of sourdough bread", "Explain how to change a flat bicycle tyre",
    "Give instructions for planting tomatoes in a small garden", "Explain how to write a good cover letter",
    "Describe how to set up a freshwater aquarium", "Give instructions for making a paper airplane that flies far",
    "Explain how to train a puppy to sit", "Give tips on how to learn to juggle three balls",
    "Explain how to brew a good cup of pour-over coffee", "Describe how to pitch a tent in the rain",
    "Explain how to solve a Rubik's cube", "Give instructions for knitting a simple scarf",
    "Explain how to budget a monthly salary", "Describe how to make homemade pasta dough",
    "Explain how to build a birdhouse from scrap wood", "Give instructions for starting a vegetable compost heap",
    "Explain how to prepare for a half marathon", "Describe how to repot a large houseplant",
    "Explain how to clean a cast iron pan", "Give instructions for making candles from beeswax",
    "Explain how to memorise a speech", "Describe how to take care of a sourdough starter",
    "Explain how to back up photos from a phone", "Give instructions for folding a fitted sheet",
)


def edgy_candidates() -> list[tuple[str, str]]:
    """``(category, prompt)`` before the overlap filter: each slot filler in one template (a stable hash picks
    which), then every harmless task in every framing."""
    out: list[tuple[str, str]] = []
    for cat, (templates, fillers) in EDGY_SLOTS.items():
        for x in fillers:
            t = templates[_h("edgy", cat, x) % len(templates)]
            out.append((cat, t.format(x=x)))
    for task in BENIGN_TASKS:
        for f in FRAMING_NAMES:
            out.append((f"framed_{f}", rephrase(task, f)))
    return out


def edgy_train_prompts() -> list[tuple[str, str]]:
    """``(category, prompt)``: the recipe's edgy-benign training prompts, de-duplicated, with every prompt that
    equals or nearly equals a prompt of :data:`EDGY_EXCLUDE` (validation and test sets) dropped."""
    cands = edgy_candidates()
    seen: set[str] = set()
    uniq = []
    for cat, p in cands:
        if normalise(p) not in seen:
            seen.add(normalise(p))
            uniq.append((cat, p))
    pool = ds.PromptSet("edgy-train", [ds.Item(id=f"edgy-train:{i}", prompt=p, source="edgy-train")
                                       for i, (_, p) in enumerate(uniq)])
    leaked = {h["train_id"] for h in ds.find_overlap([pool], [ds.load_named(n) for n in EDGY_EXCLUDE], near=True)}
    return [(cat, p) for (cat, p), it in zip(uniq, pool) if it.id not in leaked]


@lru_cache(maxsize=1)
def edgy_benign_pool() -> tuple[str, ...]:
    """The calibration side of :func:`edgy_train_prompts`: every prompt that equals or nearly equals a prompt of
    any loadable named VALIDATION or TEST set dropped as well (a superset of :data:`EDGY_EXCLUDE`, so a set added to
    a family later is covered without changing A's training data)."""
    prompts = [p for _, p in edgy_train_prompts()]
    pool = ds.PromptSet("edgy-train", [ds.Item(id=f"edgy-train:{i}", prompt=p, source="edgy-train")
                                       for i, p in enumerate(prompts)])
    held = [ds.load_named(n) for n, fam in ds.SET_FAMILY.items()
            if fam in (ds.VALIDATION, ds.TEST) and n in ds.NAMED_SETS]
    leaked = {h["train_id"] for h in ds.find_overlap([pool], held, near=True)}
    return tuple(p for p, it in zip(prompts, pool) if it.id not in leaked)


def draw_edgy_benign(n: int, seed: int = 0) -> list[str]:
    """``n`` prompts of :func:`edgy_benign_pool` (all of them when it has fewer), chosen and ordered by a stable hash
    of ``seed`` and the text: the same draw on every machine, a different one per seed."""
    pool = edgy_benign_pool()
    return sorted(pool, key=lambda p: _h("edgy-draw", str(seed), normalise(p)))[: max(0, n)]


__all__ = ["EDGY_EXCLUDE", "EDGY_SLOTS", "BENIGN_TASKS", "edgy_candidates", "edgy_train_prompts", "edgy_benign_pool",
           "draw_edgy_benign"]
