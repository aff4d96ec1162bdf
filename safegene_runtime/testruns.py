"""The record of test-set evaluations: an append-only JSON-lines file in the repo (``docs/test-runs.jsonl``).

Why: a TEST-family set (:mod:`.splits`) may only measure procedures frozen beforehand. Nothing stops a person from
looking at a test number and changing the method; what the record does is make every look visible: each
evaluation that touches a test set appends what it evaluated (the commit and whether the tree had edits, the
config and its digest, the sets and their digests, the frozen procedure in words) *before* the first request, and
its results when it finishes. A run that crashed or was stopped half-way stays on record as ``started``.

``safegene eval`` refuses a test set unless ``--test-run "<frozen procedure>"`` is given, and then writes here;
other code calls :func:`start` and :func:`finish` itself. The file is only ever appended to, one canonical JSON
object per line; ``tests/test_testruns.py`` checks that each committed version extends the one before.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

from . import __version__
from .datasets import PromptSet
from .digests import json_digest, prompt_set_digest
from .splits import SET_FAMILY

SCHEMA = "safegene.test-run/v1"
#: the record, relative to the repository root
LEDGER = Path("docs") / "test-runs.jsonl"
#: the shortest frozen-procedure description accepted: "x" says nothing about what was frozen
MIN_PROCEDURE_WORDS = 3


class LedgerError(ValueError):
    """The record cannot be written (no repository, a torn file, an empty description); the message says why."""


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True).stdout.strip()


def repo_root(start: str | Path | None = None) -> Path:
    """The git work tree holding ``start`` (default: the current directory)."""
    try:
        return Path(_git(Path(start or os.getcwd()), "rev-parse", "--show-toplevel"))
    except (subprocess.CalledProcessError, FileNotFoundError) as e:
        raise LedgerError(f"{start or os.getcwd()} is not inside a git repository: a test run is recorded in the "
                          f"repo ({LEDGER}); run from the checkout or pass the record's path") from e


def default_ledger(start: str | Path | None = None) -> Path:
    """``docs/test-runs.jsonl`` of the repository around ``start`` (default: the current directory)."""
    return repo_root(start) / LEDGER


def git_state(path: Path) -> dict[str, Any]:
    """The commit of the repository that holds the record ``path`` and whether its tree had uncommitted changes
    other than the record itself (then the commit alone does not say what ran)."""
    where = Path(path).resolve().parent
    while not where.is_dir():
        where = where.parent
    root = repo_root(where)
    commit = _git(root, "rev-parse", "HEAD")
    # the record itself does not count: each run appends to it, so the next one would always read "dirty"
    try:
        skip = [f":(exclude){Path(path).resolve().relative_to(root.resolve()).as_posix()}"]
    except ValueError:
        skip = []
    dirty = bool(_git(root, "status", "--porcelain", "--untracked-files=no", "--", ".", *skip))
    return {"commit": commit, "dirty": dirty}


def describe_sets(sets: dict[str, PromptSet]) -> dict[str, dict[str, Any]]:
    """Per role: the set's name, family (None for a file), size and order-free digest of its prompts."""
    return {role: {"name": s.name, "family": SET_FAMILY.get(s.name), "n": len(s),
                   "digest": prompt_set_digest(s.prompts)} for role, s in sets.items()}


def read(path: str | Path) -> list[dict[str, Any]]:
    """The entries of a record (empty when the file does not exist); a malformed line is an error."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise LedgerError(f"{path}:{i}: not valid JSON ({e.msg})") from e
    return rows


def _append(path: Path, entry: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file() and path.stat().st_size and not path.read_bytes().endswith(b"\n"):
        raise LedgerError(f"{path} does not end with a newline (a torn write?); fix it by hand, never rewrite it")
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry, ensure_ascii=False, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def start(path: str | Path, *, procedure: str, reasons: list[str], config: dict[str, Any],
          sets: dict[str, PromptSet]) -> dict[str, Any]:
    """Append the ``started`` entry of a test run and return it (its ``run`` id ties the ``finished`` entry).

    ``procedure``: the frozen procedure in words (what was fixed before, and why it is evaluated now);
    ``reasons``: why this counts as a test run (:func:`.splits.counts_as_test`); ``config``: what the evaluation
    ran with (models, settings), recorded with its :func:`.digests.json_digest`.
    """
    procedure = " ".join(str(procedure or "").split())
    if len(procedure.split()) < MIN_PROCEDURE_WORDS:
        raise LedgerError(f"the frozen procedure needs a description of at least {MIN_PROCEDURE_WORDS} words "
                          f"(what was fixed before this run and why it is evaluated now), got {procedure!r}")
    path = Path(path)
    entry = {"schema": SCHEMA, "run": uuid.uuid4().hex[:16], "status": "started", "timestamp": _now(),
             **git_state(path), "safegene": __version__, "procedure": procedure, "test_sets": list(reasons),
             "config_digest": json_digest(config), "config": config, "sets": describe_sets(sets)}
    _append(path, entry)
    return entry


def finish(path: str | Path, started: dict[str, Any], results: dict[str, Any]) -> dict[str, Any]:
    """Append the ``finished`` entry of the run :func:`start` began: its results per model."""
    entry = {"schema": SCHEMA, "run": started["run"], "status": "finished", "timestamp": _now(),
             "commit": started["commit"], "config_digest": started["config_digest"], "results": results}
    _append(Path(path), entry)
    return entry


__all__ = ["SCHEMA", "LEDGER", "MIN_PROCEDURE_WORDS", "LedgerError", "repo_root", "default_ledger", "git_state",
           "describe_sets", "read", "start", "finish"]
