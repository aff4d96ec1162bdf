"""Uniform safety arithmetic (RESTA-style baseline): ``ΔT + λ·ΔS`` with one global λ on every layer.

Implemented as ``Coefficients.uniform(λ)`` + :func:`safegene_runtime.stack.stack_adapters` (exact concatenation
along the rank), then re-published as a baseline artifact whose manifest says which baseline and λ it is.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path

from ..adapters import CONFIG_FILE, WEIGHTS_FILE
from ..artifacts import ArtifactWriter, describe_input, read_manifest
from ..coefficients import Coefficients
from ..stack import stack_adapters


def uniform_safety(
    task: str | Path,
    safety: str | Path,
    lam: float,
    *,
    out: str | Path | None = None,
    store: str | Path | None = None,
    name: str | None = None,
) -> Path:
    """Write task + λ·safety (every layer of the safety adapter, ignoring any selection) and return the folder.

    Default destination: beside ``task`` as ``<task>-uniform<λ>-<id12>``.
    """

    task, safety = Path(task), Path(safety)
    if not math.isfinite(lam):
        raise ValueError(f"λ must be a finite number (got {lam})")
    coeffs = Coefficients.uniform(lam, method={"name": "uniform", "lambda": float(lam)})
    parent = store or task.resolve().parent
    with tempfile.TemporaryDirectory(prefix=".uniform-", dir=parent if Path(parent).is_dir() else None) as td:
        stacked = stack_adapters(task, safety, coeffs, out=Path(td) / "stacked")
        stack_man = read_manifest(stacked)
        lineage = [describe_input(task, "task"), describe_input(safety, "safety"),
                   {"role": "coefficients", "digest": coeffs.digest()}]
        kw = dict(kind="baseline_adapter", lineage=lineage)
        writer = (ArtifactWriter(dest=out, **kw) if out is not None else
                  ArtifactWriter(store=parent, name=name or f"{task.name}-uniform{lam:g}", **kw))
        with writer as w:
            for f in (CONFIG_FILE, WEIGHTS_FILE):
                shutil.copy2(stacked / f, w.tmp / f)
            w.manifest["baseline"] = {"name": "uniform", "lambda": float(lam),
                                      "description": "task + lambda * safety on every layer (RESTA-style)"}
            for k in ("method", "coefficients", "base_model", "task_base_model", "dtype", "modules", "max_rank",
                      "recommended_max_lora_rank"):
                if k in stack_man:
                    w.manifest[k] = stack_man[k]
    return w.path  # type: ignore[return-value]
