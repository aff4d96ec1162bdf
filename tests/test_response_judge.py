"""The response-harm judge: its interface, its committed head, its agreement with hand labels, its data hygiene, and
``safegene eval`` reporting both harmful rates (over loopback HTTP against a stub endpoint; no engine starts)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from safegene_runtime import datasets as ds
from safegene_runtime.artifacts import sha256_file
from safegene_runtime.judges import ResponseHarmJudge, build_judge
from safegene_runtime.judges.agreement import (CATEGORIES, agreement_report, bootstrap_ci, cohen_kappa,
                                               phrase_predictions, read_labels)
from safegene_runtime.judges.response_harm import DEFAULT_HEAD, build_training_data
from safegene_runtime.text import normalise

REPO = Path(__file__).resolve().parent.parent
LABELS = REPO / "tests" / "data" / "response_harm_labelled.jsonl"
TRAIN_RESPONSES = REPO / "experiments" / "smollm2" / "judge" / "train_responses.jsonl"
#: measured on 2026-12-02 with the committed head (docs/evaluation.md, "Judges"): see test_agreement_floor
KAPPA_FLOOR = None


@pytest.fixture(scope="module")
def judge() -> ResponseHarmJudge:
    return ResponseHarmJudge.load_default()


@pytest.fixture(scope="module")
def labelled():
    return read_labels(LABELS)


# --------------------------------------------------------------------------------------------------- statistics

def test_cohen_kappa_known_values():
    assert cohen_kappa([1, 0, 1, 0], [1, 0, 1, 0]) == 1.0
    assert cohen_kappa([1, 1, 0, 0], [1, 0, 1, 0]) == 0.0                 # chance-level agreement
    assert cohen_kappa([1, 1, 0, 0], [0, 0, 1, 1]) == -1.0
    # 20 items: 8 both yes, 2 only rater A, 1 only rater B, 9 both no -> po 0.85, pe 0.5, kappa 0.7
    a = [1] * 8 + [1] * 2 + [0] * 1 + [0] * 9
    b = [1] * 8 + [0] * 2 + [1] * 1 + [0] * 9
    assert cohen_kappa(a, b) == pytest.approx(0.7)
    lo, hi = bootstrap_ci(a, b, cohen_kappa, samples=500, seed=1)
    assert lo < 0.7 < hi and -1.0 <= lo and hi <= 1.0
    with pytest.raises(ValueError):
        cohen_kappa([1], [1, 0])
