"""The study's drivers without an engine: the baseline tuner's grids build and its table reads what the tuner wrote
(``experiments.smollm2.baselines``); the locked test (``experiments.smollm2.locked_test``) serves every model under a
name the server accepts, maps each to the name the decision rule reads, and runs nothing while a piece is missing."""

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


def _coefficients(path: Path, seed: int, other: bool = False) -> None:
    """A coefficients file whose config digest says v2a with ``seed`` made it (``other``: another config)."""
    from experiments.smollm2 import v2_sweep

    cfg = v2_sweep.CANDIDATES["v2a"][1].replace(seed=seed)
    cfg = cfg.replace(steps=cfg.steps + 1) if other else cfg
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"layers": {"0": 1.0}, "default": 0.0, "config_digest": cfg.digest()}))


def test_every_served_model_maps_to_the_rules_name_and_missing_pieces_are_listed(tmp_path):
    assets = _family(tmp_path / "fam", {"sentiment-clean": "sentiment", "topic-mix10": "topic"})
    sweep, tuned = tmp_path / "sweep", tmp_path / "tuned"
    # seed 0 is the shipped file; seed 1 is calibrated for sentiment-clean only, seed 2 by another config
    _coefficients(assets / "tasks" / "sentiment-clean" / "coefficients.json", 0)
    _coefficients(locked_test.coefficients_file("sentiment-clean", 1, assets, sweep), 1)
    _coefficients(locked_test.coefficients_file("sentiment-clean", 2, assets, sweep), 2, other=True)
    _coefficients(assets / "tasks" / "topic-mix10" / "coefficients.json", 1)  # the wrong seed is not seed 0
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

    assert f"sentiment-clean: v2a seed 2 (python -m experiments.smollm2.v2_sweep cal v2a --seed 2 --out {sweep})" \
        in missing
    assert "topic-mix10: the shipped coefficients are not v2a's seed 0" in missing
    assert not any(m.startswith("sentiment-clean: v2a seed 1") or m.startswith("sentiment-clean: v2a seed 0")
                   or m.startswith("sentiment-clean: baseline uniform") for m in missing)
    assert len(missing) == 1 + (len(baselines.STUDY) - 1) + 3 + len(baselines.STUDY)


def test_a_saved_partial_run_restores_into_an_empty_work_folder_only(tmp_path):
    out = tmp_path / "run"
    rows = [{"model": "smollm2", "role": "harmful", "set": "harmbench-test-standard", "id": f"h{i}", "response": "x"}
            for i in range(3)]
    (out / "safety").mkdir(parents=True)
    (out / "safety" / "responses.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / "safety" / "run.json").write_text('{"max_tokens": 32}')
    (out / "safety" / "judged.jsonl").write_text("not saved: judged again at the end\n")
    (out / "names.json").write_text('{"a-seed1+safegene": "a+safegene-seed1"}')
    partial = tmp_path / "partial.tar.gz"
    assert locked_test.save(out, partial) == 3

    again = tmp_path / "fresh"
    assert locked_test.restore(again, partial)
    for f in ("safety/responses.jsonl", "safety/run.json", "names.json"):
        assert (again / f).read_bytes() == (out / f).read_bytes(), f
    assert not (again / "safety" / "judged.jsonl").exists()
    assert not locked_test.restore(out, partial)  # a work folder with responses is never overwritten
    with pytest.raises(SystemExit, match="no responses"):
        locked_test.save(tmp_path / "empty", partial)
    assert locked_test.restore(tmp_path / "fresh2", partial)  # the failed save left the archive as it was


def test_recorded_choices_rebuild_bit_for_bit_and_a_wrong_record_is_refused(make_lora, tmp_path, monkeypatch):
    import shutil

    from safegene_runtime.baselines.tune import tune
    from tests.test_baselines import fake_evaluator

    fam = tmp_path / "fam"
    task = make_lora("fam/tasks/x-clean", rank=4, seed=1, magnitude=0.05)
    (task / "task.json").write_text('{"task": "sentiment"}')
    safety = make_lora("fam/safety", rank=8, alpha=8, seed=2, magnitude=0.05)
    out = tmp_path / "study"
    copies = baselines.family_copies(out, fam)
    monkeypatch.setenv("SG_FAKE_EVAL", json.dumps({"task": str(copies / "x-clean"), "safety": str(safety)}))
    tuned = tune("uniform", copies / "x-clean", fake_evaluator, sets=["harmful-val", "edgy-benign-val"],
                 safety=safety, grid=baselines.STUDY["uniform"].grid, out=baselines.tuned_dir(out, "uniform", "x-clean"),
                 store=tmp_path / "store", progress=False)
    t = json.loads((tuned / "manifest.json").read_text())["tuning"]
    weights = (tuned / "adapter_model.safetensors").read_bytes()
    choices = tmp_path / "choices.json"
    (c,) = baselines.freeze(out, choices)["choices"]
    assert c["knobs"] == t["knobs"] and c["candidate_id"] == t["candidates"][t["chosen"]]["candidate_id"]

    shutil.rmtree(out / "tuned")
    (again,) = baselines.rebuild(out, choices, fam)
    man = json.loads((again / "manifest.json").read_text())
    assert (again / "adapter_model.safetensors").read_bytes() == weights
    assert man["tuning"]["knobs"] == t["knobs"] and man["lineage"][-1]["id"] == c["candidate_id"]
    assert baselines.rebuild(out, choices, fam) == [again]  # present: kept as it is

    shutil.rmtree(out / "tuned")
    other = next(v for v in baselines.STUDY["uniform"].grid["lam"] if v != t["knobs"]["lam"])
    choices.write_text(json.dumps({"choices": [{**c, "knobs": {"lam": other}}]}))
    with pytest.raises(SystemExit, match="rebuilt .*, recorded"):
        baselines.rebuild(out, choices, fam)
    assert not baselines.tuned_dir(out, "uniform", "x-clean").exists()  # nothing published


def test_run_refuses_while_the_procedure_is_incomplete(tmp_path):
    assets = _family(tmp_path / "fam", {"sentiment-clean": "sentiment"})
    with pytest.raises(SystemExit, match="not built yet, so the test does not run"):
        locked_test.run(tmp_path / "out", assets, tmp_path / "sweep", tmp_path / "tuned")
    assert not (tmp_path / "out").exists()  # nothing staged, nothing recorded


def test_every_study_grid_builds_and_the_table_reads_what_the_tuner_wrote(make_lora, tmp_path, monkeypatch):
    from safegene_runtime.baselines.tune import build, expand_grid, tune
    from tests.test_baselines import fake_evaluator

    task = make_lora("task", rank=4, seed=1, magnitude=0.05)
    safety = make_lora("safety", rank=8, alpha=8, seed=2, magnitude=0.05)
    for name, spec in baselines.STUDY.items():  # each grid's knobs are what its builder reads
        if spec.v_source == "safety":
            for knobs in expand_grid(spec.grid)[:1] + expand_grid(spec.grid)[-1:]:
                assert (build(spec.method, task, knobs, store=tmp_path / "built", safety=safety) / "manifest.json"
                        ).is_file(), name
    monkeypatch.setenv("SG_FAKE_EVAL", json.dumps({"task": str(task), "safety": str(safety)}))
    out = tmp_path / "study"
    tuned = tune("uniform", task, fake_evaluator, sets=["harmful-val", "edgy-benign-val"], safety=safety,
                 grid=baselines.STUDY["uniform"].grid, out=baselines.tuned_dir(out, "uniform", "x-clean"),
                 store=tmp_path / "store", progress=False)
    t = json.loads((tuned / "manifest.json").read_text())["tuning"]
    cid = t["candidates"][t["chosen"]]["candidate_id"]
    ev = out / "eval" / f"tune-{cid[:12]}"
    ev.mkdir(parents=True)
    (ev / "results.json").write_text(json.dumps({"models": {f"tune-{cid[:12]}": {
        "response_harmful_rate": {"rate": 0.0125, "k": 2, "n": 160}}}}))
    (row,) = baselines.rows(out)
    assert row["knobs"] == t["knobs"] and row["response_hr"]["k"] == 2
    line = baselines.table(out).splitlines()[-1]
    m = t["candidates"][t["chosen"]]["metrics"]
    assert line.startswith(f"| x-clean | uniform | lam={t['knobs']['lam']:g} | {100 * m['harmful_rate']:.1f}% | 1.2% |")
    assert line.endswith("| yes |") == t["feasible"]
    # paired with SafeGene's family check on the same prompts: harmful p1 answered by the baseline only
    rows = lambda model, answered: [{"model": model, "role": "harmful", "set": "harmful-val", "id": i,  # noqa: E731
                                     "refusal": "compliance" if i in answered else "refusal",
                                     "response_judge": "no_harmful_help"} for i in ("p0", "p1", "p2")]
    (ev / "judged.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(f"tune-{cid[:12]}", {"p1"})))
    check = tmp_path / "check" / "x"
    check.mkdir(parents=True)
    (check / "judged.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows("x-clean+safegene", set())))
    (hr,) = [t for t in baselines.against(out, tmp_path / "check") if t["rate"] == "harmful_response_rate"]
    assert (hr["adapter"], hr["baseline"], hr["n"], hr["a"], hr["b"], hr["only_b"]) == ("x-clean", "uniform", 3, 0, 1, 1)
    # the decision rule on the same validation verdicts: the tuned candidate is named as the rule parses it
    assert baselines.decide_val(out, tmp_path / "check", ["uniform"]) == 0
    assert json.loads((out / "decide" / "names.json").read_text()) == {f"tune-{cid[:12]}": "x-clean+uniform"}
    md = (out / "decide" / "decision-val.md").read_text()
    assert "| x-clean | uniform | +33.3 pts" in md  # one prompt of three answered by the baseline only


def _shrunk(path: Path, seed: int) -> None:
    """A coefficients file whose config digest says v2q-shrink with ``seed`` made it."""
    from experiments.smollm2 import v2_sweep

    cfg = v2_sweep.CANDIDATES["v2q-shrink"][1]
    cfg = cfg.replace(seed=seed) if seed else cfg
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"layers": {"0": 0.75}, "default": 0.0, "config_digest": cfg.digest()}))


def test_the_second_procedure_serves_safegene_seeds_only_and_names_how_to_make_what_is_missing(tmp_path):
    assets = _family(tmp_path / "fam", {"sentiment-clean": "sentiment", "topic-mix10": "topic"})
    sweep, first = tmp_path / "sweep", tmp_path / "first"
    for k in (0, 1, 2):
        _shrunk(locked_test.coefficients_file("sentiment-clean", k, assets, sweep, "v2q-shrink"), k)
    _shrunk(locked_test.coefficients_file("topic-mix10", 0, assets, sweep, "v2q-shrink"), 0)
    # the shipped file is v2a's: the second procedure reads every seed from the sweep, seed 0 included
    _coefficients(assets / "tasks" / "topic-mix10" / "coefficients.json", 0)
    entries, missing = locked_test.pieces(assets, sweep, tmp_path / "tuned", "v2q-shrink", first)
    assert {e["coefficients"].parent.parent.name for e in entries} <= {"v2q-shrink", "seed1", "seed2"}
    assert {v for e in entries for v in e["rename"].values()} == {
        f"{a}+safegene-seed{k}" for a in ("sentiment-clean", "topic-mix10") for k in (0, 1, 2)}  # no baseline served
    assert missing[0].startswith(f"the first locked test's bundle {first}")
    assert sorted(missing[1:]) == [
        f"topic-mix10: v2q-shrink seed {k} (python -m experiments.smollm2.v2_sweep cal v2q --seed {k} --out {sweep}; "
        f"then python -m experiments.smollm2.v2_sweep shrink v2q-shrink --seed {k} --out {sweep})" for k in (1, 2)]
    (first).mkdir()
    (first / "manifest.json").write_text("{}")
    _shrunk(locked_test.coefficients_file("topic-mix10", 1, assets, sweep, "v2q-shrink"), 2)  # the wrong seed
    assert len(locked_test.pieces(assets, sweep, tmp_path / "tuned", "v2q-shrink", first)[1]) == 2


def _judged(model: str, role: str, i: int, event: bool) -> dict:
    row = {"model": model, "role": role, "set": f"{role}-set", "id": f"p{i}"}
    if role == "task":
        return row | {"correct": event}
    return row | {"refusal": "compliance" if (event if role == "harmful" else not event) else "refusal"}


def _bundle(folder: Path, rows: list[dict], responses: list[dict] | None = None) -> Path:
    import gzip

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text("{}")
    for group in ("safety", "task-sentiment"):
        mine = [r for r in rows if (r["role"] == "task") == (group != "safety")]
        (folder / f"{group}.judged.jsonl.gz").write_bytes(gzip.compress("".join(json.dumps(r) + "\n"
                                                                               for r in mine).encode()))
    if responses is not None:
        (folder / "safety.responses.jsonl.gz").write_bytes(
            gzip.compress("".join(json.dumps(r) + "\n" for r in responses).encode()))
    return folder


def test_the_second_test_keeps_only_the_first_tests_baseline_rows(tmp_path):
    rows = [_judged(m, role, i, i % 2 == 0) for m in ("smollm2", "ad", "ad+safegene-seed0", "ad+uniform",
                                                       "ad+resta_dare-seed1")
            for role in ("harmful", "benign", "task") for i in range(3)]
    first = _bundle(tmp_path / "first", rows)
    counts = locked_test.keep_rows(first, tmp_path / "kept", ["uniform", "resta_dare"])
    assert counts == {"safety": 12, "task-sentiment": 6}
    kept = [json.loads(line) for f in sorted((tmp_path / "kept").glob("*/judged.jsonl"))
            for line in f.read_text().splitlines()]
    assert {r["model"] for r in kept} == {"ad+uniform", "ad+resta_dare-seed1"}
    assert sorted(json.dumps(r) for r in kept) == sorted(json.dumps(r) for r in rows
                                                          if r["model"] in ("ad+uniform", "ad+resta_dare-seed1"))
    with pytest.raises(SystemExit, match="no judged rows of safemerge"):
        locked_test.keep_rows(first, tmp_path / "none", ["safemerge"])


def test_the_second_test_is_paired_with_the_first_tests_safegene_and_its_repeats_are_counted(tmp_path):
    n = 20
    # the first test's v2a: answers harmful prompts 0-1; the new run's candidate answers 0-9 on every seed
    first_rows = [_judged(f"ad+safegene-seed{k}", "harmful", i, i < 2) for k in (0, 1, 2) for i in range(n)]
    first_rows += [_judged(f"ad+safegene-seed{k}", "benign", i, i < 8) for k in (0, 1, 2) for i in range(n)]
    first_rows += [_judged("ad+uniform", "harmful", i, True) for i in range(n)]
    answers = [{"model": m, "set": "harmful-set", "id": f"p{i}", "response": f"{m} {i}"}
               for m in ("smollm2", "ad", "ad+uniform") for i in range(n)]
    first = _bundle(tmp_path / "first", first_rows, answers)

    out = tmp_path / "run"
    (out / "safety").mkdir(parents=True)
    served = {"ad+safegene": "ad+safegene-seed0", "ad-seed1+safegene": "ad+safegene-seed1",
              "ad-seed2+safegene": "ad+safegene-seed2"}
    (out / "names.json").write_text(json.dumps(served))
    new_rows = [_judged(m, "harmful", i, i < 10) for m in served for i in range(n)]
    new_rows += [_judged(m, "benign", i, i < 2) for m in served for i in range(n)]
    new_rows += [_judged("smollm2", "harmful", i, False) for i in range(n)]
    (out / "safety" / "judged.jsonl").write_text("".join(json.dumps(r) + "\n" for r in new_rows))
    # A repeats the first test's answers but one; the adapter alone was not served in the first test's rows kept
    mine = [{"model": "smollm2", "set": "harmful-set", "id": f"p{i}", "response": f"smollm2 {i}" if i else "new"}
            for i in range(n)]
    (out / "safety" / "responses.jsonl").write_text("".join(json.dumps(r) + "\n" for r in mine))

    table = locked_test.against_first(out, first)
    harm, over = table["harmful_response_rate"], table["over_refusal_rate"]
    assert (harm["n"], harm["a_rate"], harm["b_rate"], harm["a_ahead"], harm["b_ahead"]) == (n, 0.1, 0.5, 8, 0)
    assert harm["worse"] and not harm["better"]  # 8 of 8 discordant pairs against the new run: p = 0.008
    assert (over["a_rate"], over["b_rate"], over["b_ahead"]) == (0.4, 0.1, 6) and over["better"]
    assert table["task_accuracy"] == {}  # no task rows: no comparison rather than a made-up one
    assert json.loads((out / "against-first.json").read_text()) == json.loads(json.dumps(table))
    assert locked_test.same_as_first(out, first) == {"smollm2": {"same": n - 1, "n": n}}


def test_a_candidates_check_folders_name_the_sets_they_measure():
    from experiments.smollm2.v2_sweep import check_name, main

    assert check_name("harmful-val") == "check"
    assert check_name("harmful-val-unseen", ["topic-clean"]) == "check-harmful-val-unseen-topic-clean"
    # another style of over-refusal set, measured alone beside a check whose numbers stand
    assert check_name("harmful-val", None, "rho-questions") == "check-benign-rho-questions"
    assert check_name("harmful-val", ["a", "b"], "rho-questions") == "check-benign-rho-questions-a+b"
    with pytest.raises(SystemExit):  # one set alone or the other, not both
        main(["check", "v2a", "--harmful-only", "--benign-only", "rho-questions"])


def test_a_check_of_one_set_alone_refuses_two_alones(tmp_path):
    from experiments.smollm2.family import check

    with pytest.raises(ValueError, match="exclude each other"):
        check(tmp_path, tmp_path / "out", harmful_only=True, benign_only="rho-questions")
    assert not (tmp_path / "out").exists()  # refused before anything was served or written


def _check(folder: Path, rows: list[dict]) -> None:
    (folder / "all").mkdir(parents=True, exist_ok=True)
    (folder / "all" / "judged.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_means_over_seeds_meet_the_targets_where_one_seed_alone_would_not(tmp_path):
    from experiments.smollm2 import v2_sweep

    out, n = tmp_path / "sweep", 100
    plain = tmp_path / "plain"
    _check(plain, [_judged("ad", "task", i, i < 90) for i in range(n)])  # the adapter alone: 90%
    # A over-refuses 5 of 100; the candidate 2, 20 and 2 by seed (mean 8% <= 5% + 3), task 89% (>= 90% - 1)
    refused = {0: 2, 1: 20, 2: 2}
    for k in (0, 1, 2):
        rows = [_judged("smollm2", "benign", i, i < 5) for i in range(n)]
        rows += [_judged("smollm2", "harmful", i, False) for i in range(n)]
        rows += [_judged("ad+safegene", "benign", i, i < refused[k]) for i in range(n)]
        rows += [_judged("ad+safegene", "harmful", i, i < 6) for i in range(n)]  # answers 6: above A + 5
        rows += [_judged("ad+safegene", "task", i, i < 89) for i in range(n)]
        _check(v2_sweep.sweep_dir(out, "v2q-shrink", k) / "check", rows)
        # the other candidate refuses one benign prompt more than this one on every seed
        rows = [r | ({"refusal": "refusal"} if r["model"] == "ad+safegene" and r["role"] == "benign"
                     and r["id"] == f"p{refused[k]}" else {}) for r in rows]
        _check(v2_sweep.sweep_dir(out, "v2a", k) / "check", rows)

    outcomes = v2_sweep.seed_outcomes("v2q-shrink", out, [0, 1, 2])
    per = v2_sweep.over_seeds(outcomes)
    assert per["ad+safegene"]["over_refusal_rate"]["seeds"] == {0: (2, n), 1: (20, n), 2: (2, n)}
    assert abs(per["ad+safegene"]["over_refusal_rate"]["mean"] - 0.08) < 1e-12
    assert v2_sweep.seed_targets(outcomes, [0, 1, 2], plain) == {"ad+safegene": {"harmful": False, "over_refusal": True,
                                                                 "task": True}}
    # seed 1 alone misses the over-refusal target
    assert v2_sweep.seed_targets(v2_sweep.seed_outcomes("v2q-shrink", out, [1]), [1], plain)["ad+safegene"][
        "over_refusal"] is False
    pooled = v2_sweep.paired_over_seeds("v2a", "v2q-shrink", out, [0, 1, 2])
    over = pooled["over_refusal_rate"]
    # seeds are averaged per prompt before the test: 100 prompts, two of them lower for v2q-shrink (p2 at seeds 0
    # and 2, p20 at seed 1), not three pairs counted as if independent
    assert (over["n"], over["a_ahead"], over["b_ahead"]) == (n, 0, 2) and not over["better"]
    assert abs(over["a_rate"] - over["b_rate"] - 0.01) < 1e-12
    assert pooled["harmful_response_rate"]["n"] == n and pooled["harmful_response_rate"]["p"] == 1.0
    with pytest.raises(SystemExit, match="seed 3: no check/"):
        v2_sweep.seed_outcomes("v2q-shrink", out, [3])
