"""Safe LoRA (Hsu et al., NeurIPS 2024) as a baseline.

Per module, with the alignment matrix ``V = W(aligned) − W(unaligned)`` (here: the safety adapter's ``ΔS``, or
``W(A) − W(D)`` read tensor by tensor from two checkpoints), the paper's projection is

    C = V Vᵀ / ‖V‖_F                                            (projection="paper", default)

(``projection="orthogonal"`` uses the exact orthogonal projector onto V's column space instead). The task
update ``ΔT = s_T B_T A_T`` is replaced by ``C ΔT`` when the cosine similarity
``<ΔT, CΔT>_F / (‖ΔT‖_F ‖CΔT‖_F)`` is below the threshold τ (or, with ``top_fraction``, for that fraction of modules with the lowest similarity). The result
stays a LoRA of the same rank: ``C ΔT = (C s_T B_T) A_T``, so the projected module is ``B' = C·(s_T B_T)``,
``A' = A_T``; other modules are ``(A_T, s_T B_T)`` unchanged. Written with a scale-one config.

Everything is computed in factor space (never an out×out or out×in matrix when V is a LoRA), in float64.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from ..adapters import AdapterError, LoraAdapter, load_adapter, save_adapter
from ..artifacts import ArtifactWriter, describe_input
from ..checkpoints import Checkpoint

PAPER_THRESHOLD = 0.35
PROJECTIONS = ("paper", "orthogonal")


class _LowRankV:
    """V = Bv Av (from the safety adapter)."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor, scale: float) -> None:
        self.a, self.b = a.double(), b.double() * scale
        self.norm = math.sqrt(max(float(((self.b.T @ self.b) * (self.a @ self.a.T)).sum()), 0.0))
        self.shape = (self.b.shape[0], self.a.shape[1])

    def apply(self, x: torch.Tensor, projection: str) -> torch.Tensor:
        """C x for x [out, r]."""
        if projection == "orthogonal":
            q, r = torch.linalg.qr(self.b)  # col-space of B A is span(B) when A has full row rank
            q = q[:, r.diagonal().abs() > r.diagonal().abs().max() * 1e-10]
            return q @ (q.T @ x)
        return self.b @ ((self.a @ self.a.T) @ (self.b.T @ x)) / self.norm


class _DenseV:
    """V = W_A − W_D (full matrix of one module, read on demand)."""

    def __init__(self, v: torch.Tensor) -> None:
        self.v = v.double()
        self.norm = float(self.v.norm())
        self.shape = tuple(self.v.shape)

    def apply(self, x: torch.Tensor, projection: str) -> torch.Tensor:
        if projection == "orthogonal":
            u, s, _ = torch.linalg.svd(self.v, full_matrices=False)
            u = u[:, s > s.max() * 1e-10] if s.numel() else u
            return u @ (u.T @ x)
        return self.v @ (self.v.T @ x) / self.norm


def _cosine(x: torch.Tensor, y: torch.Tensor, gram: torch.Tensor) -> float:
    """cos between X A and Y A in the Frobenius inner product, with gram = A Aᵀ (never forms X A)."""
    dot = float(((x.T @ y) * gram).sum())
    nx = math.sqrt(max(float(((x.T @ x) * gram).sum()), 0.0))
    ny = math.sqrt(max(float(((y.T @ y) * gram).sum()), 0.0))
    return dot / (nx * ny) if nx > 0 and ny > 0 else 1.0


def _vectors(task: LoraAdapter, safety: Path | None, aligned: Path | None, degraded: Path | None):
    """module -> V provider, plus a description of the source."""
    if safety is not None:
        s = load_adapter(safety)
        return {m: _LowRankV(a, b, s.scaling(m)) for m, (a, b) in s.weights.items()}, "safety_adapter"

    ca, cd = Checkpoint(aligned), Checkpoint(degraded)  # type: ignore[arg-type]

    class _Lazy(dict):
        def get(self, m, default=None):  # type: ignore[override]
            key = f"{m}.weight"
            if key not in ca or key not in cd:
                return default
            wa, wd = ca.get(key, torch.float64), cd.get(key, torch.float64)
            if wa.shape != wd.shape:
                raise AdapterError(f"{key}: aligned {tuple(wa.shape)} vs degraded {tuple(wd.shape)} differ in shape")
            return _DenseV(wa - wd)

    return _Lazy(), "aligned_minus_degraded"


def safe_lora(
    task: str | Path,
    *,
    safety: str | Path | None = None,
    aligned: str | Path | None = None,
    degraded: str | Path | None = None,
    threshold: float | None = PAPER_THRESHOLD,
    top_fraction: float | None = None,
    projection: str = "paper",
    out: str | Path | None = None,
    store: str | Path | None = None,
    name: str | None = None,
) -> Path:
    """Write the Safe LoRA-projected task adapter and return its folder (default: beside ``task`` as
    ``<task>-safelora-<id12>``). Give ``safety`` or both ``aligned`` and ``degraded``; ``threshold`` or
    ``top_fraction`` (the latter wins when given)."""
    task = Path(task)
    if (safety is not None) == (aligned is not None or degraded is not None) or (
        safety is None and (aligned is None or degraded is None)
    ):
        raise ValueError("give either a safety adapter or both --aligned and --degraded models")
    if projection not in PROJECTIONS:
        raise ValueError(f"projection must be one of {PROJECTIONS} (got {projection!r})")
    if top_fraction is not None and not 0.0 <= top_fraction <= 1.0:
        raise ValueError(f"top_fraction must be in [0, 1] (got {top_fraction})")
    if top_fraction is None and (threshold is None or not math.isfinite(threshold)):
        raise ValueError("give a finite threshold or a top_fraction")
    t = load_adapter(task)
    vs, source = _vectors(t, Path(safety) if safety else None, Path(aligned) if aligned else None,
                         Path(degraded) if degraded else None)
    dtypes = {x.dtype for pair in t.weights.values() for x in pair}
    dtype = dtypes.pop() if len(dtypes) == 1 else torch.float32

    per: dict[str, dict[str, Any]] = {}
    folded: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    projected_b: dict[str, torch.Tensor] = {}
    for m in t.modules():
        a, b = t.weights[m]
        x = (b.to(torch.float32) * t.scaling(m)).to(dtype)  # s_T B_T, exactly as stacking folds it
        folded[m] = (a, x)
        v = vs.get(m)
        if v is None:
            per[m] = {"similarity": None, "projected": False, "reason": "no safety vector for this module"}
            continue
        if v.shape != (x.shape[0], a.shape[1]):
            raise AdapterError(f"module {m}: task delta {(x.shape[0], a.shape[1])} does not match the safety vector")
        if v.norm == 0.0:
            per[m] = {"similarity": None, "projected": False, "reason": "safety vector is zero"}
            continue
        xd, ad = x.double(), a.double()
        y = v.apply(xd, projection)
        per[m] = {"similarity": _cosine(xd, y, ad @ ad.T), "projected": False}
        projected_b[m] = y
    scored = sorted((m for m in per if per[m]["similarity"] is not None), key=lambda m: (per[m]["similarity"], m))
    if top_fraction is not None:
        chosen = set(scored[: int(round(top_fraction * len(scored)))])
    else:
        chosen = {m for m in scored if per[m]["similarity"] < threshold}
    modules: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for m, (a, x) in folded.items():
        if m in chosen:
            per[m]["projected"] = True
            modules[m] = (a, projected_b[m].to(dtype))
        else:
            modules[m] = (a, x)
    lineage = [describe_input(task, "task")]
    if safety is not None:
        lineage.append(describe_input(safety, "safety"))
    else:
        lineage += [describe_input(aligned, "aligned"), describe_input(degraded, "degraded")]  # type: ignore[arg-type]
    kw = dict(kind="baseline_adapter", lineage=lineage)
    writer = (ArtifactWriter(dest=out, **kw) if out is not None else
              ArtifactWriter(store=store or task.resolve().parent, name=name or f"{task.name}-safelora", **kw))
    base_model = t.config.base_model_name_or_path
    with writer as w:
        save_adapter(w.tmp, modules, base_model=base_model)
        w.manifest["baseline"] = {
            "name": "safe_lora",
            "reference": "Hsu et al., Safe LoRA, NeurIPS 2024",
            "projection": projection,
            "formula": "C = V V^T / ||V||_F" if projection == "paper" else "C = U U^T (orthogonal, col-space of V)",
            "source": source,
            "threshold": None if top_fraction is not None else threshold,
            "top_fraction": top_fraction,
            "projected": sorted(chosen, key=lambda m: list(folded).index(m)),
            "n_projected": len(chosen),
            "n_modules": len(folded),
            "modules": per,
        }
        w.manifest["task_base_model"] = base_model
    return w.path  # type: ignore[return-value]
