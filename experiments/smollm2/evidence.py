"""The saved responses behind docs/results.md, and the recount that regenerates its numbers from them (issue 21).

    python -m experiments.smollm2.evidence bundle              # copy the measurements' responses into results/
    python -m experiments.smollm2.evidence recount             # re-judge them, print every table, decide (= make experiment)

A *measurement* is a named group of ``safegene eval`` folders whose numbers the results page shows (:data:`SOURCES`:
v2a's validation check, the tuned baselines' chosen candidates, ...). ``bundle`` copies each folder's
``responses.jsonl`` (the raw model answers: nothing judged) and ``judged.jsonl`` (the verdicts the page was written
from) into ``results/smollm2/<measurement>/<group>.{responses,judged}.jsonl.gz`` with a ``manifest.json`` naming
the sets (name, digest, size), the generation settings and every file's sha256; models are renamed to the decision
rule's names (``<adapter>+<method>``). Files are gzip with a fixed mtime, so the same responses give the same bytes.

``recount`` needs only the repository: it rebuilds every set (a shipped named set, or a task set our generators
write, :func:`task_set`), refuses a set whose digest differs from the manifest's, judges every response again with
the judges ``safegene eval`` uses (:func:`safegene_runtime.evaluate.write_reports`: phrase judge, response judge,
task scorers), writes ordinary eval folders under ``--out`` and prints, per measurement, every model's numbers with
Wilson intervals, then the decision rule over the measurements that form one comparison (:data:`DECISIONS`). It
exits 1 when a recounted verdict differs from the saved one: then the page is stale (a judge changed) and says so.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from safegene_runtime.artifacts import atomic_write_bytes, atomic_write_text
from safegene_runtime.datasets import NAMED_SETS, PromptSet, load_file, load_named, resolve
from safegene_runtime.digests import prompt_set_digest
from safegene_runtime.paths import safegene_home

from safegene_runtime.prompts import write_jsonl

from .locked_test import PROCEDURE, PROCEDURES, keep_rows
from .tasks import TASKS, generate, task_file_rows, write_val

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "results" / "smollm2"
A_NAME = "smollm2"  # the aligned base's served name in the demo family (the decisions' --base)
RESPONSE_FIELDS = ("model", "role", "set", "id", "prompt", "response", "finish")
SECOND = PROCEDURES["v2q-shrink"]  # the second locked test's procedure (its decision's arguments)
SETS = "sets"  # a bundle's copies of set files that no generator here rebuilds (e.g. robust.py's train framings)


@dataclass(frozen=True)
class Source:
    """Where a measurement's eval folders are on the machine that measured it, and how its models are named.
    ``folders`` returns (group name, eval folder, {served model name: decision name}) triples."""

    what: str
    folders: Callable[[], list[tuple[str, Path, dict[str, str]]]]
    #: whether results/ must hold it (False: not measured yet, the page says so)
    bundled: bool = True


def _check(candidate: str, folder: str = "check", sweep: str | None = None
           ) -> Callable[[], list[tuple[str, Path, dict[str, str]]]]:
    """The eval folders of one ``v2_sweep check`` (``<v2_sweep OUT>/<candidate>/<folder>/<group>``); ``sweep``: another
    ``--out`` folder, by its name under ``$SAFEGENE_HOME/experiments/smollm2`` (a family rebuilt on another A)."""

    def folders() -> list[tuple[str, Path, dict[str, str]]]:
        from .v2_sweep import OUT

        root = (OUT if sweep is None else safegene_home() / "experiments" / "smollm2" / sweep) / candidate / folder
        return [(p.name, p, {}) for p in sorted(root.iterdir()) if (p / "responses.jsonl").is_file()] \
            if root.is_dir() else []

    return folders


def _folders(root: Path, rename: dict[str, str] | None = None, prefix: str = ""
             ) -> list[tuple[str, Path, dict[str, str]]]:
    """Every eval folder directly under ``root`` (one holding ``responses.jsonl``), as bundle groups."""
    return [(prefix + p.name, p, dict(rename or {})) for p in sorted(root.iterdir())
            if (p / "responses.jsonl").is_file()] if root.is_dir() else []


def _family_check(path: str, label: str) -> Callable[[], list[tuple[str, Path, dict[str, str]]]]:
    """A ``family check --out <path>`` (the plain adapters and the coefficients of that day). Its aligned model and
    its ``+safegene`` variants are renamed ``<name>-<label>`` / ``<adapter>+safegene-<label>``, so they sit beside
    another measurement's A and SafeGene in one decision without being taken for them (the plain adapters keep
    their names: they are the same models)."""

    def folders() -> list[tuple[str, Path, dict[str, str]]]:
        groups = _folders(Path(path))
        for _, folder, rename in groups:
            for m in json.loads((folder / "results.json").read_text())["models"]:
                if "+" in m or m == A_NAME:
                    rename[m] = f"{m}-{label}"
        return groups

    return folders


def _robust_a(split: str) -> list[tuple[str, Path, dict[str, str]]]:
    """The aligned bases of issue 20 measured by ``robust.py`` (``robust-eval`` validation, ``robust-test`` the
    recorded test runs): the shipped A (``align-fd115f978f49``, f3e3v2-ul1w-s400-open), the first frozen recipe
    (``align-96c31d664362``, f3e3v2-ul1w-s400) and the previous A (``a-today``)."""
    names = {"a-robust-fd115f978f49": "A-s400-open", "a-robust-96c31d664362": "A-s400", "a-today": "A-previous"}
    return _robust_evals(names, split)


def _robust_a_arith() -> list[tuple[str, Path, dict[str, str]]]:
    """The validation checks of 2026-12-05 (``robust eval``, arith-val included): the shipped A (served as
    ``a-today-25fcb74d8eb4``, the digest of its alignment LoRA), the A before 2026-12-03 (its LoRA out of git at
    60deea5), the variant f3e4v2-ul2w-s400-open (``align-c3e319a79f68``) and the original model."""
    names = {"a-today-25fcb74d8eb4": "A-s400-open", "a-lora-today-60deea5": "A-previous",
             "a-robust-c3e319a79f68": "A-f3e4v2-ul2w", "original": "original"}
    return _robust_evals(names)


#: the -ar400-diy200 A's two seeds: served name -> bundled name
DIY200 = {"a-robust-e88c879fabd1": "A-diy200-s0", "a-robust-e09eefec5e7e": "A-diy200-s1"}
#: the -ar400-diy200-ms200-pt100 A's two seeds: served name -> bundled name
MS200PT100 = {"a-robust-0bc486336fdf": "A-ms200-pt100-s0", "a-robust-0c07903a9e56": "A-ms200-pt100-s1"}
#: the family rebuilt on that A (docs/results.md), under $SAFEGENE_HOME/experiments/smollm2: its family check
#: (``family check --safe --out``) and its v2_sweep folder (``v2_sweep cal/check --out``)
REBUILT_CHECK = "family-check-ms200-pt100-rc128"
REBUILT_SWEEP = "v2-sweep-ms200-pt100-rc128"


def _robust_evals(names: dict[str, str], split: str = "eval") -> list[tuple[str, Path, dict[str, str]]]:
    """The ``robust eval`` (``split`` "eval"), ``robust test`` ("test") or ``robust probe`` ("probe") folders of
    each A in ``names`` (served name -> the short name it is bundled under), in that order."""
    root = safegene_home() / "experiments" / "smollm2" / "robust" / f"robust-{split}"
    return [g for served, short in names.items() for g in _folders(root / served, {served: short}, f"{short}--")]


def _locked_test(proc: str = "v2a") -> list[tuple[str, Path, dict[str, str]]]:
    """A locked test's eval folders (``safety``, ``task-<task>``), served names mapped by its ``names.json``; rows
    it reuses from another test (judged rows only, no responses) are not its own, so they are not bundled."""
    from .locked_test import out_dir

    out = out_dir(proc)
    names = json.loads((out / "names.json").read_text()) if (out / "names.json").is_file() else {}
    return _folders(out, names)


def _projection_screen() -> list[tuple[str, Path, dict[str, str]]]:
    """The safety projection pilot's screen: per μ, A + S_μ (``zero-l1``) and sentiment-clean + S_μ at λ = 1, its
    models renamed ``<name>-mu<μ>`` so the four screens sit in one measurement (A keeps its name: the same model)."""
    from .safety_projection import OUT

    groups = []
    for run in sorted(OUT.glob("screen-mu*")):
        mu = run.name.removeprefix("screen-")
        for check in ("check", "check-unseen"):
            for group, folder, rename in _folders(run / check, prefix=f"{mu}--{check}--"):
                models = json.loads((folder / "results.json").read_text())["models"]
                groups.append((group, folder, {m: f"{m}-{mu}" for m in models if m != A_NAME}))
    return groups


def _baselines() -> list[tuple[str, Path, dict[str, str]]]:
    from .baselines import OUT, names

    return [(decision.replace("+", "--"), OUT / "eval" / served, {served: decision})
            for served, decision in sorted(names(OUT).items())]


def _candidate(name: str, what: str) -> dict[str, Source]:
    """The three measurements of a candidate of the filtered-safety-adapter pilot (its validation check and its two
    framed harmful checks; docs/results.md, section 'Pilot: a safety adapter filtered ...')."""
    return {
        f"val-{name}-seed0": Source(f"the {name} candidate ({what}) on validation (section 'Pilot: a safety adapter "
                                    "filtered ...')", _check(name)),
        f"val-{name}-rephrased": Source(f"{name} on harmful-val-rephrased",
                                        _check(name, "check-harmful-val-rephrased")),
        f"val-{name}-unseen": Source(f"{name} on harmful-val-unseen", _check(name, "check-harmful-val-unseen")),
    }


def _seeded(candidate: str, check: str, seeds: tuple[int, ...] = (0, 1, 2)
            ) -> Callable[[], list[tuple[str, Path, dict[str, str]]]]:
    """One ``v2_sweep check`` name over several seeds as one measurement: groups ``seed<k>--<group>``, the
    ``+safegene`` variants renamed ``+safegene-seed<k>`` (the decision rule's seed names), A kept once (seed
    ``seeds[0]``'s: the same model at every seed)."""

    def folders() -> list[tuple[str, Path, dict[str, str]]]:
        from .v2_sweep import OUT, sweep_dir

        groups = []
        for k in seeds:
            for group, folder, _ in _folders(sweep_dir(OUT, candidate, k) / check, prefix=f"seed{k}--"):
                if group.endswith("--base") and k != seeds[0]:
                    continue
                models = json.loads((folder / "results.json").read_text())["models"]
                groups.append((group, folder, {m: f"{m}-seed{k}" for m in models if m.endswith("+safegene")}))
        return groups

    return folders


SOURCES: dict[str, Source] = {
    "val-v2a-seed0": Source("SafeGene v2 (v2a, seed 0): A and the six +safegene variants on validation "
                            "(docs/results.md, section SafeGene v2)", _check("v2a")),
    "val-v2a-rephrased": Source("v2a's +safegene variants and A on harmful-val-rephrased (section SafeGene v2, "
                                "'Framings A was aligned on less')", _check("v2a", "check-harmful-val-rephrased")),
    "val-v2a-unseen": Source("A, the six adapters alone and with v2a on harmful-val-unseen, framings nothing trains "
                             "on (section 'SafeGene v2c')", _check("v2a", "check-harmful-val-unseen-plain")),
    "val-v2c-seed0": Source("the v2c candidate (framed harmful shots) on validation (section 'SafeGene v2c')",
                            _check("v2c")),
    "val-v2c-rephrased": Source("v2c on harmful-val-rephrased (section 'SafeGene v2c')",
                                _check("v2c", "check-harmful-val-rephrased")),
    "val-v2c-unseen": Source("v2c on harmful-val-unseen (section 'SafeGene v2c')",
                             _check("v2c", "check-harmful-val-unseen")),
    "val-projection-screen": Source("the safety projection pilot's screen: A + S_mu and sentiment-clean + S_mu at "
                                    "lambda 1, mu 0, 3, 10, 30 (section 'Pilot: a safety adapter filtered ...')",
                                    _projection_screen),
    **_candidate("v2p", "v2a on S_3"),
    **_candidate("v2q", "v2c on S_3"),
    **_candidate("v2r", "v2c on S_10"),
    **_candidate("v2s", "v2q with 32 edgy-benign shots"),
    "val-v2t-seed0": Source("the v2t candidate (v2q with attn-mlp lambdas) on validation (section 'Pilot: a safety "
                            "adapter filtered ...'; its framed checks not run: the targets already failed)",
                            _check("v2t")),
    "val-v2u-seed0": Source("the v2u candidate (v2s with the on-policy benign term at weight 4) on validation "
                            "(section 'Pilot: a safety adapter filtered ...'; its framed checks not run: the targets "
                            "already failed)", _check("v2u")),
    **_candidate("v2q-shrink", "v2q with lambda shrunk to its framed and plain shots' refusal threshold"),
    "val-v2a-seed1": Source("v2a seed 1 on validation (section 'The second locked test', three seeds on "
                            "validation)", _check("v2a", "seed1/check")),
    "val-v2a-seed2": Source("v2a seed 2 on validation (same section)", _check("v2a", "seed2/check")),
    "val-v2q-shrink-seed1": Source("v2q-shrink seed 1 on validation (section 'The second locked test', three "
                                   "seeds on validation)", _check("v2q-shrink", "seed1/check")),
    "val-v2q-shrink-seed2": Source("v2q-shrink seed 2 on validation (same section)",
                                   _check("v2q-shrink", "seed2/check")),
    **{f"val-v2q-shrink-tol1-seed{k}": Source(f"the v2q-shrink-tol1 candidate, seed {k}, on validation (section "
                                              "'v2q-shrink-tol1')", _check("v2q-shrink-tol1",
                                                                         f"seed{k}/check" if k else "check"))
       for k in (0, 1, 2)},
    "val-v2q-shrink-rho-questions": Source("A and v2q-shrink's +safegene variants, seeds 0-2, on rho-questions, an "
                                           "over-refusal set in another style (section 'The second locked test')",
                                           _seeded("v2q-shrink", "check-benign-rho-questions")),
    "val-v2a-rho-questions": Source("A and v2a's +safegene variants, seeds 0-2, on rho-questions (same section)",
                                    _seeded("v2a", "check-benign-rho-questions")),
    "val-v2b": Source("the v2b candidate on the clean adapters (section 'Second candidate: v2b')",
                      _check("v2b", "check-reverse-clean+sentiment-clean+topic-clean")),
    "val-v2a-shrink": Source("the v2a-shrink candidate (section 'Third candidate: v2a-shrink')",
                             _check("v2a-shrink")),
    "val-baselines": Source("every tuned baseline's chosen candidate on validation "
                            "(docs/results.md, section Tuned baselines)", _baselines),
    "test-locked": Source("the locked test of issues 21/22 (experiments/smollm2/locked_test.py PROCEDURE; "
                          "docs/test-runs.jsonl)", _locked_test),
    "test-locked-v2q-shrink": Source("the second locked test (issue 20): v2q-shrink seeds 0-2 on S_3, A and the "
                                     "adapters alone (experiments/smollm2/locked_test.py PROCEDURES['v2q-shrink']; "
                                     "docs/test-runs.jsonl; its baselines are test-locked's rows)",
                                     lambda: _locked_test("v2q-shrink")),
    "val-family": Source("the demo family on validation: A, the six adapters alone and with the coefficients before "
                         "v2a (section 'The demo family', first table)", _family_check("/tmp/runs/family-new-check", "allc0.3")),
    "val-family-previous": Source("the previous family (previous A, three mix10 adapters) measured the same way "
                                  "(section 'The demo family', second table)",
                                  _family_check("/tmp/runs/family-today-check", "previous")),
    "val-robust-a": Source("the aligned bases of issue 20 on validation (section 'Robust aligned base')",
                           lambda: _robust_a("eval")),
    "val-robust-a-arith": Source("the shipped A, the A before 2026-12-03, the variant f3e4v2-ul2w-s400-open and the "
                                 "original model on validation, arith-val included (section 'An over-refusal "
                                 "variant of the frozen recipe')", _robust_a_arith),
    "val-robust-a-notest": Source("the shipped recipe without GSM8K-100's questions among its benign prompts "
                                  "(f3e3v2-ul1w-s400-open-notest, align-5e16007e18db) on validation (section "
                                  "'GSM8K-100 was in A's training data')", lambda: _robust_evals(
                                      {"a-robust-5e16007e18db": "A-s400-open-notest"})),
    "val-robust-a-v3": Source("the recipe on the v3 edgy set (f3e2v3-ul1w-s400-open-notest, seeds 0 and 1), its "
                              "variant whose trained answers end at a sentence (f3e2v3-ul1w-s400-sent-notest) and "
                              "its 200-step diagnostic (f3e2v3-ul1w-s200-open-notest) on "
                              "validation (sections 'More distinct alarming words, not more copies', 'Answers "
                              "that end' and 'Half the steps')", lambda: _robust_evals(
                                  {"a-robust-0b05b472e396": "A-f3e2v3-s0", "a-robust-b3979418426b": "A-f3e2v3-s1",
                                   "a-robust-916615984d4d": "A-f3e2v3-sent-s0",
                                   "a-robust-e4ad89bb8400": "A-f3e2v3-s200-s0"})),
    "val-robust-a-ar400": Source("the v3 recipe with 400 worked word problems of our own in the mix "
                                 "(f3e2v3-ul1w-s400-open-notest-ar400, seeds 0 and 1) on validation (section 'Worked "
                                 "word problems in the mix')", lambda: _robust_evals(
                                     {"a-robust-b9fc180c31a0": "A-ar400-s0", "a-robust-a2b89a25da4d": "A-ar400-s1"})),
    "val-robust-a-at-home": Source("the 'at home' validation probe (robust probe: harmful-val with one sentence "
                                   "appended) on -ar400 seeds 0 and 1, the shipped A and v3 seeds 0 and 1 without the "
                                   "worked problems (section 'A validation probe of the at-home shape')",
                                   lambda: _robust_evals(
                                       {"a-robust-b9fc180c31a0": "A-ar400-s0", "a-robust-a2b89a25da4d": "A-ar400-s1",
                                        "a-robust-fd115f978f49": "A-s400-open", "a-robust-0b05b472e396": "A-f3e2v3-s0",
                                        "a-robust-b3979418426b": "A-f3e2v3-s1"},
                                       "probe")),
    "val-robust-a-diy200": Source("-ar400 with 200 do-it-yourself refusals and 200 how-to counterweights "
                                  "(f3e2v3-ul1w-s400-open-notest-ar400-diy200, seeds 0 and 1) on validation and the "
                                  "at-home probe (section 'Do-it-yourself refusals')", lambda: [
                                      *_robust_evals(DIY200), *_robust_evals(DIY200, "probe")]),
    "val-robust-a-ms200-pt100": Source("-diy200 with 200 three- and four-step worked problems and 100 extra past-tense "
                                       "refusals (f3e2v3-ul1w-s400-open-notest-ar400-diy200-ms200-pt100, seeds 0 and "
                                       "1) on validation and the at-home probe (section 'Longer solutions and "
                                       "past-tense refusals')", lambda: [
                                           *_robust_evals(MS200PT100), *_robust_evals(MS200PT100, "probe")]),
    "test-robust-a-ar400": Source("the frozen -ar400 A's recorded test run (docs/test-runs.jsonl; section 'Frozen: "
                                  "f3e2v3-ul1w-s400-open-notest-ar400')", lambda: _robust_evals(
                                      {"a-robust-b9fc180c31a0": "A-ar400-s0"}, "test")),
    "test-robust-a-diy200": Source("the frozen -diy200 A's recorded test run (docs/test-runs.jsonl; section 'Frozen: "
                                   "f3e2v3-ul1w-s400-open-notest-ar400-diy200')", lambda: _robust_evals(
                                       {"a-robust-e88c879fabd1": "A-diy200-s0"}, "test")),
    "test-robust-a-ms200-pt100": Source("the frozen -ms200-pt100 A's recorded test run (docs/test-runs.jsonl; "
                                        "section 'Frozen: f3e2v3-ul1w-s400-open-notest-ar400-diy200-ms200-pt100')",
                                        lambda: _robust_evals({"a-robust-0bc486336fdf": "A-ms200-pt100-s0"}, "test")),
    "val-family-ms200-pt100": Source("the family rebuilt on the -ms200-pt100 A (reverse-clean 128 steps): A, the six "
                                     "adapters alone and with v2a on validation (section 'The demo family', the "
                                     "table at its head)", lambda: _folders(
                                         safegene_home() / "experiments" / "smollm2" / REBUILT_CHECK)),
    "val-family-ms200-pt100-unseen": Source("the same family on harmful-val-unseen (section 'The demo family'; the "
                                            "demo's chosen probe reads it: experiments/smollm2/demo_probe.py)",
                                            _check("v2a", "check-harmful-val-unseen-plain", REBUILT_SWEEP)),
    "test-robust-a": Source("the aligned bases' recorded test runs (docs/test-runs.jsonl; section 'Robust aligned "
                            "base')", lambda: _robust_a("test")),
}

#: measurements read together by the decision rule: (name, measurements, safegene decide arguments); a
#: measurement written ``name[m1,m2]`` contributes only the rows of methods m1, m2 (:func:`.locked_test.keep_rows`)
DECISIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # the adapters alone come from the family check (the task reference of the targets)
    "val-v2a-vs-baselines": (("val-v2a-seed0", "val-baselines", "val-family"),
                             ("--baselines", ",".join(PROCEDURE["baselines"]), "--seeds", "0", "--base", A_NAME)),
    # the locked test's own verdict: the arguments of ``locked_test decide``
    "test-locked": (("test-locked",), ("--baselines", ",".join(PROCEDURE["baselines"]),
                                       "--seeds", ",".join(map(str, PROCEDURE["seeds"])), "--base", A_NAME)),
    # the second locked test's verdict: its own rows and the first test's baselines (``locked_test decide
    # --procedure v2q-shrink``)
    "test-locked-v2q-shrink": (("test-locked-v2q-shrink", f"test-locked[{','.join(SECOND['baselines'])}]"),
                               ("--baselines", ",".join(SECOND["baselines"]),
                                "--seeds", ",".join(map(str, SECOND["seeds"])), "--base", A_NAME)),
}


def decision_part(part: str) -> tuple[str, list[str] | None]:
    """A :data:`DECISIONS` measurement: (its name, the methods whose rows it contributes, or None for all)."""
    name, bracket, methods = part.partition("[")
    return (name, methods.rstrip("]").split(",")) if bracket else (name, None)


# -------------------------------------------------------------------------------------------------------- sets


def task_set(name: str, work: Path, n: int | None = None) -> PromptSet | None:
    """A task set our generators write, rebuilt into ``work``: ``<task>-val`` (validation items) or
    ``<task>-test`` (the first ``n`` held-out items, as the locked test writes them); None for any other name."""
    task, _, split = name.rpartition("-")
    if task not in TASKS:
        return None
    if split == "val":
        return resolve(write_val(task, work), kind="task")
    if split == "test" and n:
        path = Path(work) / f"{name}.jsonl"
        write_jsonl(path, task_file_rows(generate(task)[1][:n], name))
        return resolve(path, kind="task")
    return None


def rebuild_set(spec: dict[str, Any], role: str, work: Path, bundled: Path | None = None) -> PromptSet:
    """The set a manifest names, rebuilt from the repository (a named set, a task set our generators write, or the
    set file saved in the bundle's ``sets/``); refused when its digest is not the recorded one."""
    name = spec["name"]
    kept = bundled / SETS / f"{name}-{spec['digest'][:12]}.jsonl" if bundled else None
    if name in NAMED_SETS:
        s = load_named(name)
    elif kept is not None and kept.is_file():
        s = load_file(kept, kind=role, name=name)
    else:
        s = task_set(name, work, spec["n"])
    if s is None:
        raise SystemExit(f"set {name!r} ({role}) is neither a shipped named set, a task set this module "
                         "generates nor a file saved in the bundle: it cannot be rebuilt")
    digest = prompt_set_digest(s.prompts)
    if digest != spec["digest"] or len(s) != spec["n"]:
        raise SystemExit(f"set {name!r} rebuilt with digest {digest[:12]} and {len(s)} prompts, but the responses "
                         f"were made on {spec['digest'][:12]} with {spec['n']}: the set changed since; re-measure")
    return s


# ------------------------------------------------------------------------------------------------------- files


def gz_jsonl(rows: Iterable[dict[str, Any]]) -> bytes:
    """JSON lines, gzip-compressed with a fixed mtime (the same rows give the same bytes)."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as f:
        for r in rows:
            f.write((json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8"))
    return buf.getvalue()


def read_gz_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in gzip.decompress(path.read_bytes()).decode("utf-8").splitlines() if line]


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------------------------------ bundle


def bundle_one(name: str, groups: list[tuple[str, Path, dict[str, str]]], dst: Path, what: str = "") -> dict:
    """Copy each eval folder's responses and verdicts into ``dst`` (models renamed); write ``manifest.json`` last,
    so a folder without one is an interrupted bundle."""
    if not groups:
        raise SystemExit(f"{name}: no eval folder found on this machine (measure it first)")
    dst.mkdir(parents=True, exist_ok=True)
    entries = []
    for group, folder, rename in groups:
        results = json.loads((folder / "results.json").read_text())
        keep = lambda r: {k: r[k] for k in RESPONSE_FIELDS if k in r}  # noqa: E731
        responses = [{**keep(r), "model": rename.get(r["model"], r["model"])}
                     for r in _read_jsonl(folder / "responses.jsonl") if r["model"] in results["models"]]
        judged = [{**r, "model": rename.get(r["model"], r["model"])} for r in _read_jsonl(folder / "judged.jsonl")]
        files = {}
        for kind, rows in (("responses", responses), ("judged", judged)):
            data = gz_jsonl(sorted(rows, key=lambda r: (r["model"], r["role"], r["set"], r["id"])))
            atomic_write_bytes(dst / f"{group}.{kind}.jsonl.gz", data)
            files[kind] = {"file": f"{group}.{kind}.jsonl.gz", "sha256": sha256(data), "rows": len(rows)}
        for spec in results["sets"].values():  # a set file beside the eval folder that nothing here regenerates
            sname = spec["name"]
            if sname not in NAMED_SETS and task_set(sname, dst / ".probe", spec["n"]) is None:
                found = [f for f in (folder / f"{sname}.jsonl", folder.parent / f"{sname}.jsonl") if f.is_file()]
                if not found:
                    raise SystemExit(f"{name}/{group}: set {sname!r} is a file that was not kept beside {folder}")
                atomic_write_bytes(dst / SETS / f"{sname}-{spec['digest'][:12]}.jsonl", found[0].read_bytes())
        shutil.rmtree(dst / ".probe", ignore_errors=True)
        cfg = results["config"]
        entries.append({"group": group, "source": str(folder), "files": files,
                        "models": [rename.get(m, m) for m in results["models"]],
                        "sets": {role: {k: s[k] for k in ("name", "digest", "n")} for role, s in results["sets"].items()},
                        "settings": {k: cfg.get(k) for k in ("max_tokens", "temperature", "system_prompt",
                                                              "response_judge")}})
    manifest = {"measurement": name, "what": what, "groups": entries}
    atomic_write_text(dst / "manifest.json", json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    return manifest


# ----------------------------------------------------------------------------------------------------- recount


def recount_one(src: Path, out: Path) -> tuple[list[Path], int, int]:
    """Re-judge one bundled measurement into eval folders under ``out``; (folders, rows compared, rows differing
    from the saved verdicts)."""
    from safegene_runtime.evaluate import RESPONSES, EvalConfig, write_reports

    manifest = json.loads((src / "manifest.json").read_text())
    folders, compared, differ = [], 0, 0
    for g in manifest["groups"]:
        data = (src / g["files"]["responses"]["file"]).read_bytes()
        if sha256(data) != g["files"]["responses"]["sha256"]:
            raise SystemExit(f"{src.name}/{g['group']}: responses file does not match its manifest's sha256")
        work = out / g["group"]
        work.mkdir(parents=True, exist_ok=True)
        sets = {role: rebuild_set(spec, role, work, src) for role, spec in g["sets"].items()}
        atomic_write_text(work / RESPONSES, gzip.decompress(data).decode("utf-8"))
        cfg = EvalConfig(endpoint="(recount of saved responses)", models=g["models"], out=work,
                         max_tokens=g["settings"]["max_tokens"] or 256, system_prompt=g["settings"]["system_prompt"],
                         response_judge=g["settings"]["response_judge"], progress=False, **sets)
        write_reports(cfg, sets)
        key = lambda r: (r["model"], r["role"], r["set"], r["id"])  # noqa: E731
        saved = {key(r): r for r in read_gz_jsonl(src / g["files"]["judged"]["file"])}
        for r in _read_jsonl(work / "judged.jsonl"):
            compared += 1
            s = saved.get(key(r), {})
            if (s.get("refusal"), s.get("correct"), s.get("response_judge")) != \
                    (r.get("refusal"), r.get("correct"), r.get("response_judge")):
                differ += 1
        folders.append(work)
    return folders, compared, differ


def model_rows(folders: list[Path]) -> dict[tuple[str, str], dict[str, Any]]:
    """Per (model, the sets it was measured on in one eval folder), its rates."""
    per: dict[tuple[str, str], dict[str, Any]] = {}
    for f in folders:
        res = json.loads((f / "results.json").read_text())
        sets = ", ".join(res["sets"][role]["name"] for role in ("harmful", "benign", "task") if role in res["sets"])
        for m, r in res["models"].items():
            per[(m, sets)] = {k: v for k, v in r.items() if isinstance(v, dict) and "rate" in v}
    return per


def table(per: dict[tuple[str, str], dict[str, Any]]) -> str:
    """Every model's numbers on each group of sets, with counts and Wilson 95% intervals."""
    cols = (("harmful_response_rate", "HR phrase"), ("response_harmful_rate", "HR response judge"),
            ("over_refusal_rate", "over-refusal"), ("task_accuracy", "task"))

    def cell(r: dict[str, Any] | None) -> str:
        if not r or not r.get("n"):
            return "–"
        lo, hi = r["ci95"]
        return f"{100 * r['rate']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] ({r['k']}/{r['n']})"

    lines = ["| model | sets | " + " | ".join(c for _, c in cols) + " |", "|---" * (len(cols) + 2) + "|"]
    for m, sets in sorted(per):
        lines.append(f"| {m} | {sets} | " + " | ".join(cell(per[(m, sets)].get(k)) for k, _ in cols) + " |")
    return "\n".join(lines)


def recount(bundle: Path, out: Path, only: list[str] | None = None) -> int:
    """Recount every bundled measurement (or ``only``), print its table and the decisions; 1 when stale."""
    from safegene_runtime.cli import main as cli

    names = only or sorted(p.name for p in bundle.iterdir() if (p / "manifest.json").is_file())
    if not names:
        raise SystemExit(f"no bundled measurement under {bundle} (run `bundle` where they were measured)")
    recounted: dict[str, list[Path]] = {}
    stale = 0
    for name in names:
        if not (bundle / name / "manifest.json").is_file():
            raise SystemExit(f"{name}: not bundled under {bundle}")
        folders, compared, differ = recount_one(bundle / name, out / name)
        recounted[name] = folders
        stale += differ
        what = json.loads((bundle / name / "manifest.json").read_text()).get("what", "")
        print(f"\n## {name}\n\n{what}\n\nRecounted {compared} responses: "
              f"{'every verdict as saved' if not differ else f'{differ} verdicts DIFFER from the saved ones'}.\n")
        print(table(model_rows(folders)))
    for dname, (parts, args) in DECISIONS.items():
        if not all(decision_part(p)[0] in recounted for p in parts):
            continue
        dst = out / dname
        dst.mkdir(parents=True, exist_ok=True)
        folders = []
        for p in parts:
            name, methods = decision_part(p)
            if methods is None:
                folders += [str(f) for f in recounted[name]]
            else:  # a copy of the recounted verdicts of those methods only
                keep_rows(out / name, dst / f"from-{name}", methods)
                folders += [str(f) for f in sorted((dst / f"from-{name}").iterdir()) if f.is_dir()]
        print(f"\n## decision: {dname}\n")
        code = cli(["decide", *folders, *args, "--out", str(dst / "decision.md"), "--json", str(dst / "decision.json"),
                    "--tables", str(dst / "tables.md"), "--plot", str(dst / "safety-utility.png")])
        if code:  # the decision's markdown is on stdout already
            return code
    if stale:
        print(f"\n{stale} recounted verdicts differ from the saved ones: a judge or scorer changed since the page "
              "was written; update docs/results.md from the tables above.", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=("bundle", "recount"),
                    help="bundle: copy the measured responses into --bundle (where they were measured); recount: "
                         "re-judge the bundled responses and print every table and decision")
    ap.add_argument("--only", action="append", default=[],
                    help=f"measurements, comma-separated or the flag repeated (default: all; known: "
                         f"{', '.join(SOURCES)})")
    ap.add_argument("--bundle", type=Path, default=BUNDLE, help="the bundle folder (default results/smollm2)")
    ap.add_argument("--out", type=Path, default=None,
                    help="recount: where the recounted eval folders go (default $SAFEGENE_HOME/"
                         "experiments/smollm2/recount)")
    args = ap.parse_args(argv)
    only = [m for part in args.only for m in part.split(",") if m] or None
    if args.command == "bundle":
        for name in only or list(SOURCES):
            if name not in SOURCES:
                ap.error(f"unknown measurement {name!r}; known: {', '.join(SOURCES)}")
            groups = SOURCES[name].folders()
            if not groups and not only:
                print(f"{name}: not measured on this machine; skipped")
                continue
            m = bundle_one(name, groups, args.bundle / name, SOURCES[name].what)
            print(f"{name}: {len(m['groups'])} eval folders, "
                  f"{sum(g['files']['responses']['rows'] for g in m['groups'])} responses -> {args.bundle / name}")
        return 0
    return recount(args.bundle, args.out or safegene_home() / "experiments" / "smollm2" / "recount", only)


if __name__ == "__main__":
    sys.exit(main())
