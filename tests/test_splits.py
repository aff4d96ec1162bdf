"""The split families on the shipped data: every set has a family, no two families share a prompt or a near
duplicate, the harmful split and its rephrasings come from the right side, and the guard refuses misuse."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from experiments.smollm2 import tasks
from safegene_runtime import datasets as ds
from safegene_runtime import splits
from safegene_runtime.datasets import NAMED_SETS, OverlapError, find_overlap, load_named, normalise
from safegene_runtime.rephrase import FRAMING_NAMES, UNSEEN_FRAMING_NAMES, rephrase_all
from safegene_runtime.splits import SplitError, check_families, require_split, counts_as_test


def _task_items() -> dict[str, tuple[str, list[str]]]:
    """The study's task test and validation items under their set names, as ``check_families`` extras."""
    return {**{name: ("test", [r["prompt"] for r in tasks.generate(task)[1]])
               for name, task in splits.STUDY_TASK_TEST_SETS.items()},
            **{name: ("validation", [r["prompt"] for r in tasks.generate_val(task)])
               for name, task in splits.STUDY_TASK_VAL_SETS.items()}}


def test_every_named_set_has_a_family_and_the_task_set_names_match_the_study():
    assert set(NAMED_SETS) <= set(splits.SET_FAMILY)
    assert set(splits.SET_FAMILY) - set(NAMED_SETS) == {*splits.STUDY_TASK_TEST_SETS, *splits.STUDY_TASK_VAL_SETS}
    assert ds.STUDY_TASKS == tuple(tasks.TASKS)
    assert set(splits.STUDY_TASK_TEST_SETS.values()) == set(splits.STUDY_TASK_VAL_SETS.values()) == set(tasks.TASKS)
    assert {splits.family_of(n) for n in splits.STUDY_TASK_TEST_SETS} == {"test"}
    assert {splits.family_of(n) for n in splits.STUDY_TASK_VAL_SETS} == {"validation"}
    assert splits.sets_of("validation", loadable=True) == [n for n in splits.sets_of("validation") if n in NAMED_SETS]
    assert set(splits.SET_FAMILY.values()) == set(splits.FAMILIES)
    # the tuners' name check (datasets.TEST_SETS) is the test family plus the source pool that holds test items
    assert ds.TEST_SETS == {n for n in splits.sets_of("test") if n in NAMED_SETS} | {"harmbench-standard"}
    assert splits.sets_of("test")[:4] == ["harmbench-test", "harmbench-test-standard", "rho-overrefusal",
                                          "rho-overrefusal-70"]


def test_no_two_families_share_a_prompt_or_a_near_duplicate_on_the_shipped_data():
    counts = check_families(_task_items())
    # every set of the three families was compared (the task items travel in as extra test and validation sets)
    assert counts["test"] == 240 + 159 + 150 + 70 + 100 + 3 * 200
    named_val = splits.sets_of("validation", loadable=True)
    assert counts["validation"] == sum(len(load_named(n)) for n in named_val) + 3 * 100
    assert counts["align-train"] == sum(len(load_named(n)) for n in splits.sets_of("align-train"))


def test_check_families_compares_one_tasks_validation_and_test_items_by_their_content():
    test = [r["prompt"] for r in tasks.generate("reverse")[1]]
    val = [r["prompt"] for r in tasks.generate_val("reverse")]
    instruction, content = test[0].split("\n")
    field, words = content.split(": ", 1)
    reordered = f"{instruction}\n{field}: {' '.join(reversed(words.split()))}"  # another item, the same words
    # as whole prompts every validation item is near a test item (the shared instruction), and that is no leak ...
    assert find_overlap([val], [test], near=True)
    check_families({"task-reverse-test": ("test", test), "task-reverse-val": ("validation", val)})
    # ... but a test item again, or its words reordered, is
    with pytest.raises(OverlapError) as e:
        check_families({"task-reverse-test": ("test", test),
                        "task-reverse-val": ("validation", val + ["  " + test[0].upper(), reordered])})
    msg = str(e.value)
    assert msg.startswith("2 pair(s) of prompts from different split families")
    assert "task-reverse-val (validation) /task-reverse-val:100 == task-reverse-test (test) /task-reverse-test:0" in msg
    assert "task-reverse-val (validation) /task-reverse-val:101 ~ task-reverse-test (test) /task-reverse-test:0" in msg
    # a set under another name is compared as whole prompts, like any set
    with pytest.raises(OverlapError):
        check_families({"task-reverse-test": ("test", test), "my-val": ("validation", val)})


def test_check_families_names_an_exact_and_a_near_leak_with_their_families():
    test_prompt = load_named("harmbench-test-standard").items[3].prompt
    near = load_named("rho-overrefusal").items[0].prompt + " Please"
    with pytest.raises(OverlapError) as e:
        check_families({"my-val": ("validation", ["  " + test_prompt.upper() + "!!"]),
                        "my-train": ("align-train", [near])})
    msg = str(e.value)
    # the test prompt is in harmbench-test and in harmbench-test-standard: two pairs
    assert msg.startswith("3 pair(s) of prompts from different split families are equal or near duplicates")
    assert "my-train (align-train) /my-train:0 ~ rho-overrefusal (test)" in msg
    assert "my-val (validation) /my-val:0 == harmbench-test (test)" in msg
    assert "my-val (validation) /my-val:0 == harmbench-test-standard (test)" in msg


def test_harmful_split_is_deterministic_disjoint_and_covers_the_pool():
    sp = ds.harmful_split()
    assert sp == ds.harmful_split()
    al, val, dropped = (list(sp[k]) for k in ("align-train", "validation", "dropped"))
    (pool,), _ = ds.dedup([ds.PromptSet("p", [it for n in ds.HARMFUL_POOL_SOURCES for it in load_named(n)])])
    assert sorted(it.id for it in al + val + dropped) == sorted(it.id for it in pool)
    assert not {it.id for it in al} & {it.id for it in val}
    # the documented fraction, by cluster (so not exact), and both sources on both sides
    assert abs(len(val) / (len(al) + len(val)) - ds.HARMFUL_VAL_FRACTION) < 0.03
    assert {it.source for it in val} == {it.source for it in al} == {"harmbench-val", "advbench"}
    # what was dropped is a near duplicate of a test prompt, and nothing kept is
    tests = [load_named(n) for n in ds.HARMFUL_POOL_TEST_SETS]
    assert dropped and {h["train_id"] for h in find_overlap([dropped], tests, near=True)} == {it.id for it in dropped}
    assert not find_overlap([al, val], tests, near=True)
    # a near-duplicate cluster never straddles the split (AdvBench's many rewordings of one request)
    assert not find_overlap([val], [al], near=True)
    assert [it.id for it in load_named("harmful-val")] == [it.id for it in val]


@pytest.mark.parametrize("name,framings,spread", [("harmful-val-rephrased", FRAMING_NAMES, 1),
                                                   ("harmful-val-unseen", UNSEEN_FRAMING_NAMES, 2)])
def test_harmful_val_rephrased_is_built_from_validation_prompts_only(name, framings, spread):
    """Both framed validation sets: every harmful-val prompt once, framings dealt evenly (a repeat moves to the next
    framing, hence the spread), no rephrasing equal to its source or to a training augmentation."""
    reph = load_named(name)
    val = {it.id: it for it in load_named("harmful-val")}
    train_ids = {it.id for it in load_named("harmful-align-train")}
    sources = [it.meta["source_id"] for it in reph]
    assert sorted(sources) == sorted(val) and not set(sources) & train_ids
    counts = Counter(it.meta["framing"] for it in reph)
    assert set(counts) == set(framings) and max(counts.values()) - min(counts.values()) <= spread
    assert all(normalise(it.prompt) != normalise(val[it.meta["source_id"]].prompt) for it in reph)
    assert all(it.id.startswith(f"{name}:{it.meta['framing']}:") for it in reph)
    assert [it.prompt for it in reph] == [it.prompt for it in load_named(name)]
    assert len({normalise(it.prompt) for it in reph}) == len(reph)
    # issue 20's augmentations (every framing of every align-train prompt) never give a validation rephrasing's
    # text: prompts that ask the same request once the wrapper is read off share a side of the split
    aug = [text for it in load_named("harmful-align-train") for text in rephrase_all(it.prompt).values()]
    val_all = [text for it in val.values() for text in rephrase_all(it.prompt).values()]
    assert find_overlap([aug], [val_all]) == [] and find_overlap([aug], [[it.prompt for it in reph]]) == []


def test_edgy_benign_val_ships_in_the_package_and_shares_nothing_with_the_test_over_refusal_set():
    path = ds.shipped_path("edgy_benign_val")
    assert path.parent.name == "data" and path.parent.parent.name == "safegene_runtime"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    s = load_named("edgy-benign-val")
    assert len(s) == len(rows) >= 150 and s.kind == "benign"
    cats = Counter(r["category"] for r in rows)
    assert set(cats) == {"homonyms", "figurative_language", "safe_targets", "safe_contexts", "definitions",
                         "history", "public_figures", "fictional_privacy"}
    assert min(cats.values()) >= 15
    assert len({it.id for it in s}) == len(s)
    self_hits = find_overlap([s], [s], near=True)  # no two of our prompts are the same prompt or near it
    assert len(self_hits) == len(s) and all(h["train_id"] == h["eval_id"] for h in self_hits)
    for test_set in ("rho-overrefusal", "rho-overrefusal-70"):
        assert find_overlap([s], [load_named(test_set)], near=True) == []


def test_require_split_accepts_the_family_and_names_the_set_when_it_refuses(tmp_path):
    require_split("harmful-val", "validation")
    require_split("edgy-benign-val", "validation")
    require_split("harmful-align-train", "align-train")
    require_split("harmbench-test", "test")
    with pytest.raises(SplitError, match=r"set 'harmbench-test' is in the TEST family \(evaluated only for "
                                         r"procedures frozen beforehand.*cannot be used as VALIDATION data"):
        require_split("harmbench-test", "validation")
    with pytest.raises(SplitError, match=r"'harmful-val' is in the VALIDATION family .* as ALIGN-TRAIN data"):
        require_split("harmful-val", "align-train")
    with pytest.raises(SplitError, match=r"'advbench' is in the SOURCE family"):
        require_split("advbench", "align-train")
    with pytest.raises(SplitError, match="neither a named set with a family nor a file"):
        require_split("no-such-set", "validation")
    clean = tmp_path / "shots.jsonl"
    clean.write_text(json.dumps({"prompt": "Summarise the plot of a film you like in two sentences."}) + "\n")
    require_split(clean, "validation")
    leaked = tmp_path / "leaked.jsonl"
    leaked.write_text(json.dumps({"prompt": load_named("rho-overrefusal").items[5].prompt + " thanks"}) + "\n")
    with pytest.raises(SplitError, match=r"leaked.jsonl: 1 prompt\(s\) equal or nearly equal prompts of sets outside "
                                         r"the VALIDATION family, e.g. leaked:0 ~ rho-overrefusal/"):
        require_split(leaked, "validation")
    with pytest.raises(SplitError, match="a file is not a TEST set"):
        require_split(clean, "test")


def test_counts_as_test_by_name_and_by_content(tmp_path):
    assert counts_as_test("harmbench-test-standard") == "harmbench-test-standard is a TEST set"
    assert counts_as_test("harmful-val") is None and counts_as_test("advbench") is None
    f = tmp_path / "harmful-val.jsonl"  # a file named like a validation set still counts by what it holds
    f.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in
                         ["How do I bake bread?", load_named("harmbench-test").items[0].prompt]))
    assert counts_as_test(f) == f"{f} shares 1 prompt(s) with the test set(s) harmbench-test, harmbench-test-standard"
    f.write_text(json.dumps({"prompt": "How do I bake bread?"}) + "\n")
    assert counts_as_test(f) is None
    held = tmp_path / "sentiment-heldout.jsonl"  # how the study writes its task test items
    held.write_text(json.dumps({"prompt": "How do I bake bread?"}) + "\n")
    assert counts_as_test(held) == f"{held} is named like a test file (*test*, *heldout*)"
    assert counts_as_test("gsm8k-100") == "gsm8k-100 is a TEST set"
