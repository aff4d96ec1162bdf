"""Safe LoRA (Hsu et al., NeurIPS 2024) as a baseline, and the projection/similarity helpers SafeMERGE reuses.

Per module, with the alignment matrix ``V`` (one of three sources, :func:`safety_vectors`):

* ``safety_adapter``: the safety adapter's ``ΔS`` (low-rank, never densified);
* ``aligned_minus_original``: ``W(aligned) − W(original)``, the paper's own choice (the aligned chat model minus the
  pre-trained model it was aligned from; PEFT's ``peft.utils.safelora`` uses ``W(base) − W(aligned)``, which gives
  the same projector because ``C`` is even in ``V``);
* ``aligned_minus_degraded``: ``W(aligned) − W(degraded)`` (this project's pair: A and the degraded copy D),

the paper's projection is

    C = V Vᵀ / ‖V‖_F                                            (projection="paper", default)

(``projection="orthogonal"`` uses the exact orthogonal projector onto V's column space instead). The task
update ``ΔT = s_T B_T A_T`` is replaced by ``C ΔT`` when the cosine similarity
``<ΔT, CΔT>_F / (‖ΔT‖_F ‖CΔT‖_F)`` is below the threshold τ (or, with ``top_fraction``, for that fraction of modules
with the lowest similarity). The result stays a LoRA of the same rank: ``C ΔT = (C s_T B_T) A_T``, so the projected
module is ``B' = C·(s_T B_T)``, ``A' = A_T``; other modules are ``(A_T, s_T B_T)`` unchanged. Written with a
scale-one config.

Differences from PEFT's reference code, none of which changes a projected weight: PEFT rounds the cosine to 5
decimals and projects when ``cos <= τ`` (we compare the unrounded value with ``< τ``: the paper's wording); PEFT pairs
V with LoRA modules by the order of the checkpoint's keys (we pair by module name); PEFT keeps the LoRA scale in the
config (we fold it into B: scale-one config, the same ΔW).

Everything is computed in factor space (never an out×out or out×in matrix when V is a LoRA), in float64.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Protocol

import torch

from ..adapters import AdapterError, LoraAdapter, load_adapter, save_adapter
from ..artifacts import ArtifactWriter, describe_input
from ..checkpoints import Checkpoint

PAPER_THRESHOLD = 0.35
PROJECTIONS = ("paper", "orthogonal")
#: where V comes from (manifest ``baseline.source``)
SOURCES = ("safety_adapter", "aligned_minus_original", "aligned_minus_degraded")


class SafetyVector(Protocol):
    """One module's alignment matrix V: its shape, Frobenius norm, and ``project(x)`` = C x for x [out, r]."""

    shape: tuple[int, int]
    norm: float

    def project(self, x: torch.Tensor, projection: str) -> torch.Tensor: ...


class LowRankV:
    """V = s·Bv Av (from the safety adapter), kept in factor space."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor, scale: float) -> None:
        self.a, self.b = a.double(), b.double() * scale
        self.norm = math.sqrt(max(float(((self.b.T @ self.b) * (self.a @ self.a.T)).sum()), 0.0))
        self.shape = (self.b.shape[0], self.a.shape[1])

    def project(self, x: torch.Tensor, projection: str) -> torch.Tensor:
        """C x for x [out, r]."""
        if projection == "orthogonal":
            q, r = torch.linalg.qr(self.b)  # col-space of B A is span(B) when A has full row rank
            q = q[:, r.diagonal().abs() > r.diagonal().abs().max() * 1e-10]
            return q @ (q.T @ x)
        return self.b @ ((self.a @ self.a.T) @ (self.b.T @ x)) / self.norm


class DenseV:
    """V = W_1 − W_2 (full matrix of one module, read on demand from two checkpoints)."""

    def __init__(self, v: torch.Tensor) -> None:
        self.v = v.double()
        self.norm = float(self.v.norm())
        self.shape = tuple(self.v.shape)

    def project(self, x: torch.Tensor, projection: str) -> torch.Tensor:
        """C x for x [out, r]."""
        if projection == "orthogonal":
            u, s, _ = torch.linalg.svd(self.v, full_matrices=False)
            u = u[:, s > s.max() * 1e-10] if s.numel() else u
            return u @ (u.T @ x)
        return self.v @ (self.v.T @ x) / self.norm


def lora_cosine(x: torch.Tensor, y: torch.Tensor, gram: torch.Tensor) -> float:
    """cos between X A and Y A in the Frobenius inner product, with gram = A Aᵀ (never forms X A).

    A zero update is "similar" (1.0): there is nothing to project."""
    dot = float(((x.T @ y) * gram).sum())
    nx = math.sqrt(max(float(((x.T @ x) * gram).sum()), 0.0))
    ny = math.sqrt(max(float(((y.T @ y) * gram).sum()), 0.0))
    return dot / (nx * ny) if nx > 0 and ny > 0 else 1.0


class _CheckpointDiff(dict):
    """module -> DenseV of ``W(plus) − W(minus)``, read lazily (one module in memory at a time)."""

    def __init__(self, plus: Path, minus: Path, names: tuple[str, str]) -> None:
        super().__init__()
        self.cp, self.cm, self.names = Checkpoint(plus), Checkpoint(minus), names

    def get(self, m, default=None):  # type: ignore[override]
        key = f"{m}.weight"
        if key not in self.cp or key not in self.cm:
            return default
        wp, wm = self.cp.get(key, torch.float64), self.cm.get(key, torch.float64)
        if wp.shape != wm.shape:
            raise AdapterError(f"{key}: {self.names[0]} {tuple(wp.shape)} vs {self.names[1]} {tuple(wm.shape)} "
                               "differ in shape")
        return DenseV(wp - wm)


def check_source(safety: Any, aligned: Any, degraded: Any, original: Any) -> str:
    """Which V source the arguments name; refuses anything but exactly one complete source."""
    given = {"safety": safety is not None, "aligned": aligned is not None, "degraded": degraded is not None,
             "original": original is not None}
    if given["safety"] and not any(given[k] for k in ("aligned", "degraded", "original")):
        return "safety_adapter"
    if not given["safety"] and given["aligned"] and given["degraded"] != given["original"]:
        return "aligned_minus_degraded" if given["degraded"] else "aligned_minus_original"
    raise ValueError("give V as a safety adapter (--safety), or --aligned with one of --degraded / --original")


def safety_vectors(*, safety: str | Path | None = None, aligned: str | Path | None = None,
                   degraded: str | Path | None = None, original: str | Path | None = None
                   ) -> tuple[Mapping[str, SafetyVector], str]:
    """module -> V (``.get(module)`` is None where V has no such module), and the source's name (:data:`SOURCES`)."""
    source = check_source(safety, aligned, degraded, original)
    if source == "safety_adapter":
        s = load_adapter(safety)  # type: ignore[arg-type]
        return {m: LowRankV(a, b, s.scaling(m)) for m, (a, b) in s.weights.items()}, source
    other, name = (degraded, "degraded") if source == "aligned_minus_degraded" else (original, "original")
    return _CheckpointDiff(Path(aligned), Path(other), ("aligned", name)), source  # type: ignore[arg-type]


def source_lineage(safety: Any, aligned: Any, degraded: Any, original: Any) -> list[dict[str, Any]]:
    """Lineage entries of V's inputs."""
    if safety is not None:
        return [describe_input(safety, "safety")]
    other = (degraded, "degraded") if degraded is not None else (original, "original")
    return [describe_input(aligned, "aligned"), describe_input(other[0], other[1])]


def folded(t: LoraAdapter, m: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(A_T, s_T·B_T) of one module, the scale folded exactly as stacking folds it."""
    a, b = t.weights[m]
    return a, (b.to(torch.float32) * t.scaling(m)).to(dtype)


def adapter_dtype(*adapters: LoraAdapter) -> torch.dtype:
    """The adapters' common weight dtype, or float32 when they differ."""
    dtypes = {x.dtype for ad in adapters for pair in ad.weights.values() for x in pair}
    return dtypes.pop() if len(dtypes) == 1 else torch.float32


def similarities(t: LoraAdapter, vs: Mapping[str, SafetyVector], projection: str = "paper"
                 ) -> tuple[dict[str, dict[str, Any]], dict[str, torch.Tensor]]:
    """Per task module: ``{"similarity": cos(ΔT, CΔT) or None, "reason"?}``, and ``C·(s_T B_T)`` (float64) for every
    module that has a non-zero V. The Safe LoRA criterion, shared by Safe LoRA and SafeMERGE."""
    if projection not in PROJECTIONS:
        raise ValueError(f"projection must be one of {PROJECTIONS} (got {projection!r})")
    per: dict[str, dict[str, Any]] = {}
    projected: dict[str, torch.Tensor] = {}
    for m in t.modules():
        a, b = t.weights[m]
        v = vs.get(m)
        if v is None:
            per[m] = {"similarity": None, "reason": "no safety vector for this module"}
            continue
        if v.shape != (b.shape[0], a.shape[1]):
            raise AdapterError(f"module {m}: task delta {(b.shape[0], a.shape[1])} does not match the safety vector")
        if v.norm == 0.0:
            per[m] = {"similarity": None, "reason": "safety vector is zero"}
            continue
        xd, ad = b.double() * t.scaling(m), a.double()
        y = v.project(xd, projection)
        per[m] = {"similarity": lora_cosine(xd, y, ad @ ad.T)}
        projected[m] = y
    return per, projected


def low_similarity(per: Mapping[str, Mapping[str, Any]], *, threshold: float | None = None,
                   top_fraction: float | None = None) -> list[str]:
    """Modules whose similarity is below ``threshold`` (or the ``top_fraction`` with the lowest similarity;
    ties broken by module name), in the order of ``per``. Modules without a similarity are never chosen."""
    if top_fraction is not None and not 0.0 <= top_fraction <= 1.0:
        raise ValueError(f"top_fraction must be in [0, 1] (got {top_fraction})")
    if top_fraction is None and (threshold is None or not math.isfinite(threshold)):
        raise ValueError("give a finite threshold or a top_fraction")
    scored = sorted((m for m in per if per[m]["similarity"] is not None), key=lambda m: (per[m]["similarity"], m))
    if top_fraction is not None:
        chosen = set(scored[: int(round(top_fraction * len(scored)))])
    else:
        chosen = {m for m in scored if per[m]["similarity"] < threshold}
    return [m for m in per if m in chosen]


def safe_lora(
    task: str | Path,
    *,
    safety: str | Path | None = None,
    aligned: str | Path | None = None,
    degraded: str | Path | None = None,
    original: str | Path | None = None,
    threshold: float | None = PAPER_THRESHOLD,
    top_fraction: float | None = None,
    projection: str = "paper",
    out: str | Path | None = None,
    store: str | Path | None = None,
    name: str | None = None,
) -> Path:
    """Write the Safe LoRA-projected task adapter and return its folder (default: beside ``task`` as
    ``<task>-safelora-<id12>``). V: ``safety``, or ``aligned`` with ``degraded`` or ``original``; ``threshold`` or
    ``top_fraction`` (the latter wins when given)."""
    task = Path(task)
    source = check_source(safety, aligned, degraded, original)
    if projection not in PROJECTIONS:
        raise ValueError(f"projection must be one of {PROJECTIONS} (got {projection!r})")
    if top_fraction is not None:
        threshold = None
    low_similarity({}, threshold=threshold, top_fraction=top_fraction)  # argument check before any work
    t = load_adapter(task)
    vs, _ = safety_vectors(safety=safety, aligned=aligned, degraded=degraded, original=original)
    dtype = adapter_dtype(t)
    per, projected_b = similarities(t, vs, projection)
    chosen = low_similarity(per, threshold=threshold, top_fraction=top_fraction)
    modules: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for m in t.modules():
        a, x = folded(t, m, dtype)
        per[m]["projected"] = m in chosen
        modules[m] = (a, projected_b[m].to(dtype)) if m in chosen else (a, x)
    lineage = [describe_input(task, "task"), *source_lineage(safety, aligned, degraded, original)]
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
            "threshold": threshold,
            "top_fraction": top_fraction,
            "projected": chosen,
            "n_projected": len(chosen),
            "n_modules": len(modules),
            "modules": per,
        }
        w.manifest["task_base_model"] = base_model
    return w.path  # type: ignore[return-value]
