"""The locked test's plan (``experiments.smollm2.locked_test``), without an engine: every model it serves has a name
the server accepts, every name maps to the one the decision rule reads, and nothing runs while a piece is missing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments.smollm2 import baselines, locked_test
from safegene_runtime.decision import DecisionConfig, parse_model
from server.config import NAME_RE


def _family(root: Path, names: dict[str, str]) -> Path:
    for name, task in names.items():
        d = root / "tasks" / name
        d.mkdir(parents=True)
        (d / "adapter_model.safetensors").write_bytes(b"x")  # placeholder: nothing is loaded
        (d / "task.json").write_text(json.dumps({"task": task}))
    return root


def test_every_served_model_maps_to_the_rules_name_and_missing_pieces_are_listed(tmp_path):
    assets = _family(tmp_path / "fam", {"sentiment-clean": "sentiment", "topic-mix10": "topic"})
    sweep, tuned = tmp_path / "sweep", tmp_path / "tuned"
    for k in (0, 1):  # seed 2 is not calibrated, uniform is the only tuned baseline, of one adapter
        f = sweep / "v2a" / (f"seed{k}" if k else "") / "sentiment-clean" / "coefficients.json"
        f.parent.mkdir(parents=True)
        f.write_text("{}")
    (baselines.tuned_dir(tuned, "uniform", "sentiment-clean")).mkdir(parents=True)
    (baselines.tuned_dir(tuned, "uniform", "sentiment-clean") / "manifest.json").write_text("{}")
    entries, missing = locked_test.pieces(assets, sweep, tuned)

    names = locked_test.renames(entries)
    cfg = DecisionConfig()
    parsed = {parse_model(v, cfg) for v in names.values()}
    want = {(a, "safegene", k) for a in ("sentiment-clean", "topic-mix10") for k in (0, 1, 2)}
    want |= {(a, b, None) for a in ("sentiment-clean", "topic-mix10") for b in baselines.STUDY if b != "resta_dare"}
    want |= {(a, "resta_dare", k) for a in ("sentiment-clean", "topic-mix10") for k in (0, 1, 2)}
    assert parsed == want and len(names) == len(want)  # one served model per (adapter, method, seed)
    for e in entries:  # task names the server accepts; plain adapters keep their own name (the adapter alone)
        assert NAME_RE.match(e["name"]), e["name"]
        assert ("plain" in e["variants"]) != (e["coefficients"] is not None and e["variants"] == ["safe"])
    assert {e["name"] for e in entries if "safe" in e["variants"] and "plain" in e["variants"]} == {
        "sentiment-clean", "topic-mix10"}

    assert "sentiment-clean: v2a seed 2 (python -m experiments.smollm2.v2_sweep cal v2a --seed 2)" in missing
    assert not any(m.startswith("sentiment-clean: v2a seed 1") or m.startswith("sentiment-clean: baseline uniform")
                   for m in missing)
    assert len(missing) == 1 + (len(baselines.STUDY) - 1) + 3 + len(baselines.STUDY)


def test_run_refuses_while_the_procedure_is_incomplete(tmp_path):
    assets = _family(tmp_path / "fam", {"sentiment-clean": "sentiment"})
    with pytest.raises(SystemExit, match="not built yet, so the test does not run"):
        locked_test.run(tmp_path / "out", assets, tmp_path / "sweep", tmp_path / "tuned")
    assert not (tmp_path / "out").exists()  # nothing staged, nothing recorded
