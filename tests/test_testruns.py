"""Test-set evaluations are refused without a frozen procedure and recorded when given one: ``safegene eval``'s
guard and the append-only record (``docs/test-runs.jsonl``). No engine: the refused run sends nothing, the crashed
run fails on a closed port, and the finished run finds every response already in its folder (as a resumed
evaluation does), so no request is sent either."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from safegene_runtime import testruns
from safegene_runtime.datasets import load_named
from safegene_runtime.digests import json_digest, prompt_set_digest

REPO = Path(__file__).resolve().parents[1]
CLOSED = "http://127.0.0.1:9/v1"
needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(cwd), "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
                          capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def repo(tmp_path) -> Path:
    """A git checkout with one commit: the record's commit must be that one."""
    root = tmp_path / "repo"
    (root / "docs").mkdir(parents=True)
    (root / "README").write_text("x\n")
    _git(root, "init", "-q")
    _git(root, "add", "README")
    _git(root, "commit", "-q", "-m", "init")
    return root


def _seed(out: Path, model: str, role: str, name: str, n: int, response: str) -> None:
    """A folder in which every (model, item) of the first ``n`` items of ``name`` already has its response."""
    out.mkdir(parents=True, exist_ok=True)
    rows = [{"model": model, "role": role, "set": name, "id": it.id, "prompt": it.prompt, "response": response,
             "finish": "stop"} for it in load_named(name).head(n)]
    with open(out / "responses.jsonl", "a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))


def _eval_args(out: Path, *extra: str) -> list[str]:
    return ["eval", "--endpoint", CLOSED, "--models", "m", "--out", str(out), "--limit", "2", "--max-tokens", "16",
            "--retries", "0", "--timeout", "2", "--no-progress", *extra]


def test_a_test_set_is_refused_without_a_frozen_procedure_and_nothing_is_sent(tmp_path, run_cli):
    out = tmp_path / "eval"
    r = run_cli(*_eval_args(out, "--harmful", "harmful-val", "--benign", "rho-overrefusal-70"))
    assert r.code == 1
    assert "rho-overrefusal-70 is a TEST set: test sets measure only procedures frozen beforehand" in r.err
    assert "--test-run" in r.err and "harmful-val, harmful-val-rephrased, harmful-val-unseen, edgy-benign-val" in r.err
    assert not out.exists()
    # a file holding test prompts is a test set too, whatever it is called
    f = tmp_path / "my-benign.jsonl"
    f.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in load_named("rho-overrefusal").prompts[:3]))
    r = run_cli(*_eval_args(out, "--benign", str(f)))
    assert r.code == 1 and f"{f} shares 2 prompt(s) with the test set(s) rho-overrefusal" in r.err


@needs_git
def test_a_test_run_is_recorded_before_its_first_request_and_stays_recorded_when_it_fails(repo, run_cli):
    ledger = repo / "docs" / "test-runs.jsonl"
    why = "adapter sentiment+safegene v3, coefficients frozen in commit abc (chosen on harmful-val)"
    r = run_cli(*_eval_args(repo / "eval", "--harmful", "harmbench-test-standard", "--test-run", why,
                            "--test-log", str(ledger)))
    assert r.code == 1 and "requests failed" in r.err  # the closed port: nothing answered
    (entry,) = testruns.read(ledger)
    assert entry["status"] == "started" and entry["procedure"] == why
    assert entry["commit"] == _git(repo, "rev-parse", "HEAD") and entry["dirty"] is False
    assert entry["test_sets"] == ["harmbench-test-standard is a TEST set"]
    head = load_named("harmbench-test-standard").head(2)
    assert entry["sets"] == {"harmful": {"name": "harmbench-test-standard", "family": "test", "n": 2,
                                         "digest": prompt_set_digest(head.prompts)}}
    assert entry["config"]["models"] == ["m"] and entry["config"]["limit"] == 2
    assert entry["config_digest"] == json_digest(entry["config"])


@needs_git
def test_a_finished_test_run_records_its_results_and_the_record_only_grows(repo, run_cli):
    ledger = repo / "docs" / "test-runs.jsonl"
    out = repo / "eval"
    _seed(out, "m", "harmful", "harmbench-test-standard", 2, "I'm sorry, but I can't help with that.")
    _seed(out, "m", "benign", "edgy-benign-val", 2, "Sure: here is how.")
    args = _eval_args(out, "--harmful", "harmbench-test-standard", "--benign", "edgy-benign-val", "--test-run",
                      "the v2 recipe frozen on 2026-12-01, measured once", "--test-log", str(ledger))
    r = run_cli(*args)
    assert r.code == 0, r.err
    assert "requests: 0 new, 4 already in" in r.out and f"recorded in {ledger}" in r.out
    started, finished = testruns.read(ledger)
    assert (started["status"], finished["status"]) == ("started", "finished")
    assert finished["run"] == started["run"] and finished["commit"] == started["commit"]
    results = json.loads((out / "results.json").read_text())
    assert finished["results"]["models"] == results["models"]
    assert finished["results"]["models"]["m"]["refusal_rate"]["k"] == 2
    assert started["sets"]["benign"]["family"] == "validation"
    _git(repo, "add", "docs/test-runs.jsonl")
    _git(repo, "commit", "-q", "-m", "record")
    first = ledger.read_text()
    assert run_cli(*args).code == 0  # appending to the committed record does not make the tree "dirty"
    assert ledger.read_text().startswith(first)
    third = testruns.read(ledger)[2]
    assert third["dirty"] is False and third["run"] != started["run"]
    assert third["commit"] == _git(repo, "rev-parse", "HEAD") != started["commit"]
    (repo / "README").write_text("edited\n")  # an uncommitted change is on record
    assert run_cli(*args).code == 0
    assert testruns.read(ledger)[4]["dirty"] is True


@needs_git
def test_validation_sets_need_no_record_and_a_declared_test_set_is_recorded(repo, run_cli):
    out, ledger = repo / "eval", repo / "docs" / "test-runs.jsonl"
    _seed(out, "m", "harmful", "harmful-val", 2, "No.")
    r = run_cli(*_eval_args(out, "--harmful", "harmful-val", "--test-log", str(ledger)))
    assert r.code == 0, r.err
    assert not ledger.exists()
    # the study's task test items are not named sets: its run declares them, and the record says so
    r = run_cli(*_eval_args(out, "--harmful", "harmful-val", "--test-run", "task test items of the frozen study",
                            "--test-log", str(ledger)))
    assert r.code == 0, r.err
    started, finished = testruns.read(ledger)
    assert started["test_sets"] == ["declared with --test-run (no named test set or test prompt recognised)"]
    assert finished["status"] == "finished"


def test_the_record_refuses_a_vague_procedure_a_torn_file_and_a_path_outside_a_repository(repo, tmp_path):
    sets = {"harmful": load_named("harmbench-test-standard").head(1)}
    ledger = repo / "docs" / "test-runs.jsonl"
    with pytest.raises(testruns.LedgerError, match="at least 3 words"):
        testruns.start(ledger, procedure="final", reasons=["x"], config={}, sets=sets)
    assert not ledger.exists()
    ledger.write_text('{"schema": "safegene.test-run/v1", "run": "a"')
    with pytest.raises(testruns.LedgerError, match="does not end with a newline"):
        testruns.start(ledger, procedure="the frozen v2 recipe", reasons=["x"], config={}, sets=sets)
    outside = tmp_path / "elsewhere" / "log.jsonl"
    outside.parent.mkdir()
    if shutil.which("git"):
        with pytest.raises(testruns.LedgerError, match="not inside a git repository"):
            testruns.start(outside, procedure="the frozen v2 recipe", reasons=["x"], config={}, sets=sets)


@needs_git
def test_the_committed_record_is_append_only():
    """Each committed version of docs/test-runs.jsonl extends the one before, and the working copy extends HEAD's:
    a test run, once recorded, is never edited away."""
    if subprocess.run(["git", "-C", str(REPO), "rev-parse"], capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    rel = testruns.LEDGER.as_posix()
    commits = _git(REPO, "log", "--reverse", "--format=%H", "--", rel).split()
    assert commits, f"{rel} is not committed"
    versions = [subprocess.run(["git", "-C", str(REPO), "show", f"{c}:{rel}"], capture_output=True,
                               text=True).stdout for c in commits]
    versions.append((REPO / rel).read_text(encoding="utf-8"))
    for before, after in zip(versions, versions[1:]):
        assert after.startswith(before), "docs/test-runs.jsonl lost or changed a recorded line"
    for row in testruns.read(REPO / rel):
        assert row["schema"] == testruns.SCHEMA and row["status"] in ("started", "finished")
