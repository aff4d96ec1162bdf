"""Tune a baseline's knobs per task adapter on VALIDATION sets, with a written rule (issue 21: baselines tuned as
fairly as SafeGene).

:func:`tune` builds every candidate of a grid (``uniform``: λ; ``resta_dare``: λ, p; ``safe_lora``: τ or the
projected fraction; ``safemerge``: τ, w), has each evaluated by an *evaluator* — any callable
``adapter folder -> {"harmful_rate", "over_refusal_rate", "task_score"}`` (fractions in [0, 1]; called with ``None``
for the aligned model without an adapter) — picks one with :class:`Rule`, and re-publishes the chosen adapter with
every candidate's numbers and the rule in ``manifest["tuning"]``. The tuner never talks to an engine: the CLI's
evaluator serves candidates through an OpenAI-compatible endpoint (``safegene_runtime.evaluate``), the tests pass a
fake one.

The science rule is enforced here: the set names the evaluator reads are declared (``sets``, and the evaluator's
own ``sets`` attribute when it has one) and any test set (:func:`safegene_runtime.datasets.is_test_set`) is refused
before anything is built.
"""

from __future__ import annotations

import itertools
import math
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch

from ..adapters import CONFIG_FILE, WEIGHTS_FILE, LoraAdapter, load_adapter
from ..artifacts import ArtifactWriter, read_manifest
from ..datasets import SET_FAMILY, VALIDATION, DatasetError, is_test_set
from ..splits import counts_as_test, require_split, sets_of
from .resta import resta_dare
from .safe_lora import safe_lora
from .safemerge import safemerge
from .uniform import uniform_safety

#: what an evaluator returns (fractions in [0, 1])
METRICS = ("harmful_rate", "over_refusal_rate", "task_score")
Evaluator = Callable[[Path | None], Mapping[str, float]]


@dataclass(frozen=True)
class Rule:
    """Lowest validation harmful rate among candidates that keep the task (score ≥ plain − ``task_slack``) and do
    not over-refuse (over-refusal ≤ aligned + ``over_refusal_slack``); ties (equal harmful rate) go to the smallest
    intervention, then to grid order. When no candidate qualifies, the one with the smallest total shortfall (task
    points below its bound + over-refusal points above its bound) wins, ties as above, and the manifest says
    ``feasible: false``."""

    task_slack: float = 0.01
    over_refusal_slack: float = 0.03

    def text(self) -> str:
        return (f"lowest validation harmful_rate subject to task_score >= plain - {self.task_slack * 100:g} points "
                f"and over_refusal_rate <= aligned + {self.over_refusal_slack * 100:g} points; ties -> smallest "
                "intervention (relative Frobenius distance of the adapter's delta from the task adapter's), then "
                "grid order; none qualifies -> smallest total shortfall from the two bounds, ties as above "
                "(recorded as feasible=false)")

    def shortfall(self, m: Mapping[str, float], plain: Mapping[str, float], aligned: Mapping[str, float]) -> float:
        """How far a candidate misses the two bounds (0 when it meets both)."""
        task_bound = plain["task_score"] - self.task_slack
        refusal_bound = aligned["over_refusal_rate"] + self.over_refusal_slack
        eps = 1e-12  # rates are k/N: compare without float noise
        return (max(0.0, task_bound - m["task_score"] - eps) + max(0.0, m["over_refusal_rate"] - refusal_bound - eps))

    def choose(self, rows: list[dict[str, Any]], plain: Mapping[str, float], aligned: Mapping[str, float]
               ) -> tuple[int, bool]:
        """(index of the chosen row, whether it meets both bounds); rows carry ``metrics`` and ``intervention``."""
        if not rows:
            raise ValueError("no candidates to choose from")
        short = [self.shortfall(r["metrics"], plain, aligned) for r in rows]
        feasible = [i for i, s in enumerate(short) if s == 0.0]
        pool = feasible or list(range(len(rows)))
        key = (lambda i: (round(rows[i]["metrics"]["harmful_rate"], 12), rows[i]["intervention"], i)) if feasible \
            else (lambda i: (round(short[i], 12), round(rows[i]["metrics"]["harmful_rate"], 12),
                             rows[i]["intervention"], i))
        best = min(pool, key=key)
        return best, bool(feasible)


def _uniform(task: Path, safety: Path | None, k: Mapping[str, Any], store: Path, src: Mapping[str, Any]) -> Path:
    return uniform_safety(task, _need(safety), float(k["lam"]), store=store)


def _resta(task: Path, safety: Path | None, k: Mapping[str, Any], store: Path, src: Mapping[str, Any]) -> Path:
    return resta_dare(task, _need(safety), float(k["lam"]), p=float(k["p"]), seed=int(k.get("seed", 0)),
                      dare_on=str(k.get("dare_on", "safety")), store=store)


def _safe_lora(task: Path, safety: Path | None, k: Mapping[str, Any], store: Path, src: Mapping[str, Any]) -> Path:
    v = dict(src) if any(x is not None for x in src.values()) else {"safety": _need(safety)}
    return safe_lora(task, **v, threshold=k.get("threshold"), top_fraction=k.get("top_fraction"), store=store)


def _safemerge(task: Path, safety: Path | None, k: Mapping[str, Any], store: Path, src: Mapping[str, Any]) -> Path:
    return safemerge(task, _need(safety), **src, threshold=k.get("threshold"), weight=float(k["weight"]),
                     top_fraction=k.get("top_fraction"), store=store)


def _need(safety: Path | None) -> Path:
    if safety is None:
        raise ValueError("this baseline needs the safety adapter (--safety)")
    return safety


#: method -> (builder, default grid). The grids bracket each paper's defaults (uniform/RESTA λ = 1 or 0.5, Safe LoRA
#: τ = 0.35, SafeMERGE τ = 0.35 and w = 0.2, DARE p up to 0.9).
METHODS: dict[str, tuple[Callable[..., Path], dict[str, list[Any]]]] = {
    "uniform": (_uniform, {"lam": [0.25, 0.5, 0.75, 1.0, 1.5, 2.0]}),
    "resta_dare": (_resta, {"lam": [0.5, 1.0, 2.0], "p": [0.0, 0.3, 0.5, 0.7, 0.9]}),
    "safe_lora": (_safe_lora, {"threshold": [0.1, 0.2, 0.35, 0.5, 0.7]}),
    "safemerge": (_safemerge, {"threshold": [0.2, 0.35, 0.5, 0.7], "weight": [0.1, 0.2, 0.3, 0.5]}),
}


def expand_grid(grid: Mapping[str, Iterable[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, in a fixed order (keys as given, values as given)."""
    keys = list(grid)
    values = [list(grid[k]) for k in keys]
    if any(not v for v in values):
        raise ValueError(f"every grid knob needs at least one value (got {dict(zip(keys, values))})")
    return [dict(zip(keys, combo)) for combo in itertools.product(*values)]


def check_validation_sets(sets: Iterable[str]) -> list[str]:
    """The set names/files, refused (DatasetError) unless each may choose: a named set must be in the VALIDATION
    family (:func:`safegene_runtime.splits.require_split`), a file must not count as a test set
    (:func:`safegene_runtime.splits.counts_as_test`: named like one, or holding test prompts)."""
    names = [str(s) for s in sets]
    if not names:
        raise DatasetError("declare the validation sets the evaluator reads (sets=...), so they can be checked")
    bad = [s for s in names if is_test_set(s)]
    if bad:
        raise DatasetError(f"refusing to tune on test set(s) {bad}: every choice is made on validation data "
                           f"(validation sets: {', '.join(sets_of(VALIDATION, loadable=True))}, or a validation task "
                           "file); test "
                           "sets are evaluated only for procedures frozen beforehand")
    for s in names:
        if s in SET_FAMILY:
            require_split(s, VALIDATION)
        elif Path(s).is_file() and (why := counts_as_test(s)):
            raise DatasetError(f"refusing to tune on {s}: {why}")
    return names


def _factors(ad: LoraAdapter, m: str) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = ad.weights[m]
    return a.double(), b.double() * ad.scaling(m)


def intervention(task: str | Path | LoraAdapter, built: str | Path | LoraAdapter) -> float:
    """``‖ΔW(built) − ΔW(task)‖_F / ‖ΔW(task)‖_F`` over all modules, in factor space (never a dense ΔW): one size
    for every method, so "the smallest intervention" means the same thing for λ, p, τ and w."""
    t = task if isinstance(task, LoraAdapter) else load_adapter(task)
    o = built if isinstance(built, LoraAdapter) else load_adapter(built)
    diff2 = base2 = 0.0
    for m in set(t.weights) | set(o.weights):
        parts = []
        if m in o.weights:
            parts.append(_factors(o, m))
        if m in t.weights:
            a, b = _factors(t, m)
            parts.append((a, -b))
            base2 += float(((b.T @ b) * (a @ a.T)).sum())
        a_cat = torch.cat([p[0] for p in parts], 0)
        b_cat = torch.cat([p[1] for p in parts], 1)
        diff2 += float(((b_cat.T @ b_cat) * (a_cat @ a_cat.T)).sum())
    return math.sqrt(max(diff2, 0.0)) / math.sqrt(base2) if base2 > 0 else math.sqrt(max(diff2, 0.0))


def _metrics(m: Mapping[str, float], what: str) -> dict[str, float]:
    missing = [k for k in METRICS if k not in m]
    if missing:
        raise ValueError(f"the evaluator returned no {missing} for {what} (it must return {list(METRICS)})")
    out = {k: float(m[k]) for k in METRICS}
    if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in out.values()):
        raise ValueError(f"the evaluator returned {out} for {what}: rates must be fractions in [0, 1]")
    return out


def tune(
    method: str,
    task: str | Path,
    evaluator: Evaluator,
    *,
    sets: Iterable[str],
    safety: str | Path | None = None,
    aligned: str | Path | None = None,
    degraded: str | Path | None = None,
    original: str | Path | None = None,
    grid: Mapping[str, Iterable[Any]] | None = None,
    rule: Rule = Rule(),
    reference: Mapping[str, Mapping[str, float]] | None = None,
    out: str | Path | None = None,
    store: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Build and evaluate every candidate of ``grid`` (default: :data:`METHODS`' grid), choose one with ``rule``,
    and write it (default: beside ``task`` as ``<task>-<method>-tuned-<id12>``) with ``manifest["tuning"]``.

    ``reference`` = ``{"plain": metrics, "aligned": metrics}``; when not given the evaluator is asked for the task
    adapter alone (plain) and for ``None`` (the aligned model without an adapter)."""
    if method not in METHODS:
        raise ValueError(f"unknown baseline {method!r}; one of {list(METHODS)}")
    declared = list(sets) + [str(s) for s in getattr(evaluator, "sets", ())]
    names = check_validation_sets(declared)
    default_grid = METHODS[method][1]
    candidates = expand_grid(grid if grid is not None else default_grid)
    task = Path(task)
    src = {"aligned": aligned, "degraded": degraded, "original": original}
    t_ad = load_adapter(task)
    if reference is None:
        reference = {"plain": evaluator(task), "aligned": evaluator(None)}
    plain = _metrics(reference["plain"], "the task adapter alone (plain)")
    aligned_m = _metrics(reference["aligned"], "the aligned model (no adapter)")

    parent = Path(store) if store is not None else task.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    bar = None
    if progress:
        from tqdm import tqdm  # lazy: only with a progress bar

        bar = tqdm(total=len(candidates), desc=f"tune {method}", unit="candidate", dynamic_ncols=True)
    with tempfile.TemporaryDirectory(prefix=f".tune-{method}-", dir=parent) as td:
        try:
            for knobs in candidates:
                built = build(method, task, knobs, store=td, safety=safety, **src)
                rows.append({"knobs": knobs, "candidate_id": read_manifest(built)["id"],
                             "metrics": _metrics(evaluator(built), f"candidate {knobs}"),
                             "intervention": intervention(t_ad, built), "folder": built})
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix_str(" ".join(f"{k}={v:g}" for k, v in knobs.items()))
        finally:
            if bar is not None:
                bar.close()
        best, feasible = rule.choose(rows, plain, aligned_m)
        for r in rows:
            r["shortfall"] = rule.shortfall(r["metrics"], plain, aligned_m)
            r["qualifies"] = r["shortfall"] == 0.0
        tuning = {
            "method": method, "rule": {"name": "min_harm_within_utility", **asdict(rule), "text": rule.text()},
            "validation_sets": names, "reference": {"plain": plain, "aligned": aligned_m},
            "grid": {k: list(v) for k, v in (grid if grid is not None else default_grid).items()},
            "candidates": [{k: v for k, v in r.items() if k != "folder"} for r in rows],
            "chosen": best, "knobs": rows[best]["knobs"], "feasible": feasible,
        }
        return publish(rows[best]["folder"], tuning, out=out, store=parent, name=f"{task.name}-{method}-tuned")


def build(method: str, task: str | Path, knobs: Mapping[str, Any], *, store: str | Path,
          safety: str | Path | None = None, aligned: str | Path | None = None, degraded: str | Path | None = None,
          original: str | Path | None = None) -> Path:
    """One candidate of ``method`` at ``knobs``, built exactly as :func:`tune` builds each grid point (the same
    builder and inputs give the same content id), so a recorded choice can be rebuilt and checked without tuning
    again."""
    if method not in METHODS:
        raise ValueError(f"unknown baseline {method!r}; one of {list(METHODS)}")
    src = {k: v for k, v in {"aligned": aligned, "degraded": degraded, "original": original}.items() if v is not None}
    Path(store).mkdir(parents=True, exist_ok=True)
    return METHODS[method][0](Path(task), Path(safety) if safety is not None else None, knobs, Path(store), src)


def publish(chosen: str | Path, tuning: Mapping[str, Any], *, out: str | Path | None = None,
            store: str | Path | None = None, name: str = "tuned") -> Path:
    """Re-publish a chosen candidate as a ``baseline_adapter`` with ``manifest["tuning"]`` (how it was chosen) and
    the candidate in its lineage: at ``out``, or content-addressed in ``store`` as ``<name>-<id12>``."""
    chosen = Path(chosen)
    man = read_manifest(chosen)
    lineage = list(man.get("lineage", [])) + [{"role": "tuned_candidate", "id": man["id"], "kind": man.get("kind")}]
    kw = dict(kind="baseline_adapter", lineage=lineage)
    if out is None and store is None:
        raise ValueError("publish needs out or store")
    writer = ArtifactWriter(dest=out, **kw) if out is not None else ArtifactWriter(store=store, name=name, **kw)
    with writer as w:
        for f in (CONFIG_FILE, WEIGHTS_FILE):
            shutil.copy2(chosen / f, w.tmp / f)
        for k, v in man.items():
            if k not in ("schema", "kind", "created_by", "lineage", "id", "created_at"):
                w.manifest[k] = v
        w.manifest["tuning"] = dict(tuning)
    return w.path  # type: ignore[return-value]
