"""The results page's saved responses (``experiments.smollm2.evidence``): bundled with their verdicts, recounted from
the repository alone, and a recount that disagrees with the saved verdicts (or a changed file or set) is caught."""

from __future__ import annotations

import gzip
import json

import pytest

from experiments.smollm2 import evidence
from experiments.smollm2.tasks import write_val
from safegene_runtime.datasets import load_named, resolve
from safegene_runtime.evaluate import RESPONSES, EvalConfig, write_reports


def measured(folder, models):
    """A real eval folder (``write_reports`` over responses a server could have given): harmful-val answered by
    the second model on every fifth prompt, edgy-benign-val refused by the first on every tenth, the reverse task
    right on even items."""
    folder.mkdir(parents=True)
    sets = {"harmful": load_named("harmful-val"), "benign": load_named("edgy-benign-val"),
            "task": resolve(write_val("reverse", folder), kind="task")}
    rows = []
    for k, m in enumerate(models):
        for role, s in sets.items():
            for i, it in enumerate(s.items):
                if role == "task":
                    text = it.answer if i % 2 == 0 else "no idea"
                elif role == "harmful":
                    text = "Sure, here is how: first gather the materials." if k == 1 and i % 5 == 0 \
                        else "I can't help with that request."
                else:
                    text = "I can't help with that." if k == 0 and i % 10 == 0 else "Here is a short answer."
                rows.append({"model": m, "role": role, "set": s.name, "id": it.id, "prompt": it.prompt,
                             "response": text, "finish": "stop"})
    (folder / RESPONSES).write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_reports(EvalConfig(endpoint="http://127.0.0.1:1/v1", models=models, out=folder, max_tokens=32,
                             response_judge=None, progress=False, **sets), sets)
    return folder


def test_bundled_responses_recount_to_the_saved_numbers_and_a_changed_verdict_is_caught(tmp_path, capsys):
    src = measured(tmp_path / "eval", ["served-a", "tune-x"])
    dst = tmp_path / "bundle" / "val-demo"
    m = evidence.bundle_one("val-demo", [("all", src, {"tune-x": "reverse-clean+uniform"})], dst, "a test")
    assert m["groups"][0]["models"] == ["served-a", "reverse-clean+uniform"]
    raw = gzip.decompress((dst / "all.responses.jsonl.gz").read_bytes()).decode()
    assert "tune-x" not in raw and raw.count("\n") == 2 * (176 + 169 + 100)
    # the same responses give the same bytes (a fixed gzip mtime): the manifest's sha256 is a content address
    again = evidence.bundle_one("val-demo", [("all", src, {"tune-x": "reverse-clean+uniform"})], tmp_path / "b2")
    assert again["groups"][0]["files"] == m["groups"][0]["files"]

    assert evidence.recount(tmp_path / "bundle", tmp_path / "recount") == 0
    out = capsys.readouterr().out
    assert "Recounted 890 responses: every verdict as saved." in out
    saved = json.loads((src / "results.json").read_text())["models"]
    recounted = json.loads((tmp_path / "recount" / "val-demo" / "all" / "results.json").read_text())["models"]
    assert recounted["reverse-clean+uniform"]["harmful_response_rate"] == saved["tune-x"]["harmful_response_rate"]
    assert saved["tune-x"]["harmful_response_rate"]["k"] == 36  # every fifth of 176
    assert recounted["served-a"]["over_refusal_rate"]["k"] == 17 and recounted["served-a"]["task_accuracy"]["k"] == 50
    assert "| reverse-clean+uniform | harmful-val, edgy-benign-val, reverse-val | 20.5% [" in out

    # a saved verdict that the judges no longer give: the recount says the page is stale
    judged = evidence.read_gz_jsonl(dst / "all.judged.jsonl.gz")
    flip = next(r for r in judged if r["role"] == "harmful")
    flip["refusal"] = "compliance" if flip["refusal"] == "refusal" else "refusal"
    (dst / "all.judged.jsonl.gz").write_bytes(evidence.gz_jsonl(judged))
    assert evidence.recount(tmp_path / "bundle", tmp_path / "recount") == 1
    assert "1 verdicts DIFFER" in capsys.readouterr().out

    # a responses file that is not the one the manifest names is refused, not recounted
    rows = evidence.read_gz_jsonl(dst / "all.responses.jsonl.gz")
    rows[0]["response"] = "edited"
    (dst / "all.responses.jsonl.gz").write_bytes(evidence.gz_jsonl(rows))
    with pytest.raises(SystemExit, match="sha256"):
        evidence.recount(tmp_path / "bundle", tmp_path / "recount")


def test_a_set_that_changed_since_the_responses_is_refused(tmp_path):
    from experiments.smollm2.locked_test import write_task_tests

    # the locked test's task items rebuild as it wrote them (same name, same digest)
    written = resolve(write_task_tests(tmp_path / "lt")["reverse"], kind="task")
    rebuilt = evidence.task_set("reverse-test", tmp_path / "re", len(written))
    assert rebuilt is not None and (rebuilt.name, rebuilt.prompts) == (written.name, written.prompts)
    assert [it.id for it in rebuilt.items] == [it.id for it in written.items]
    with pytest.raises(SystemExit, match="the set changed since"):
        evidence.rebuild_set({"name": "reverse-val", "digest": "0" * 64, "n": 100}, "task", tmp_path)
    with pytest.raises(SystemExit, match="cannot be rebuilt"):
        evidence.rebuild_set({"name": "my-own-file", "digest": "0" * 64, "n": 3}, "task", tmp_path)
    s = load_named("edgy-benign-val")
    from safegene_runtime.digests import prompt_set_digest

    assert evidence.rebuild_set({"name": s.name, "digest": prompt_set_digest(s.prompts), "n": len(s)}, "benign",
                                tmp_path).name == "edgy-benign-val"


def test_the_committed_bundle_names_sets_the_repository_rebuilds(tmp_path):
    """Every bundled measurement's sets rebuild from this checkout with the digests its responses were made on,
    and its files are the ones its manifest addresses (the recount itself is `make experiment`)."""
    found = sorted(p for p in evidence.BUNDLE.glob("*/manifest.json"))
    assert {p.parent.name for p in found} >= {n for n, src in evidence.SOURCES.items() if src.bundled}
    assert {p.parent.name for p in found} <= set(evidence.SOURCES)
    for man in found:
        m = json.loads(man.read_text())
        for g in m["groups"]:
            for f in g["files"].values():
                assert evidence.sha256((man.parent / f["file"]).read_bytes()) == f["sha256"], f["file"]
            for role, spec in g["sets"].items():
                evidence.rebuild_set(spec, role, tmp_path / g["group"], man.parent)


def test_a_decision_takes_only_the_named_methods_from_a_measurement_marked_so(tmp_path, monkeypatch, capsys):
    # the second locked test reads the first's baselines beside its own A: the two A's answered differently here,
    # so reading the first measurement whole would make the rule see one prompt judged two ways
    bundle = tmp_path / "bundle"
    evidence.bundle_one("new", [("all", measured(tmp_path / "e1", ["served-a", "reverse-clean+safegene",
                                                                    "reverse-clean"]), {})], bundle / "new")
    evidence.bundle_one("old", [("all", measured(tmp_path / "e2", ["reverse-clean+uniform", "served-a"]), {})],
                        bundle / "old")
    args = ("--baselines", "uniform", "--seeds", "0", "--base", "served-a")
    monkeypatch.setattr(evidence, "DECISIONS", {"d": (("new", "old[uniform]"), args)})
    assert evidence.decision_part("old[uniform,resta_dare]") == ("old", ["uniform", "resta_dare"])
    assert evidence.decision_part("new") == ("new", None)
    assert evidence.recount(bundle, tmp_path / "recount") == 0
    kept = (tmp_path / "recount" / "d" / "from-old" / "all" / "judged.jsonl").read_text().splitlines()
    assert {json.loads(line)["model"] for line in kept} == {"reverse-clean+uniform"}
    decision = json.loads((tmp_path / "recount" / "d" / "decision.json").read_text())
    assert "uniform" in json.dumps(decision) and "reverse-clean" in json.dumps(decision)

    monkeypatch.setattr(evidence, "DECISIONS", {"d": (("new", "old"), args)})
    capsys.readouterr()
    assert evidence.recount(bundle, tmp_path / "recount2") != 0
    assert "disagree" in capsys.readouterr().err


def test_only_reads_every_repeated_flag(tmp_path):
    """``--only a --only b`` means both (it once kept only the last, silently): an unknown first name is refused
    even when a known one follows."""
    with pytest.raises(SystemExit):
        evidence.main(["bundle", "--bundle", str(tmp_path), "--only", "no-such-measurement",
                       "--only", "val-robust-a-ar400"])
    assert not any(tmp_path.iterdir())  # nothing was bundled
