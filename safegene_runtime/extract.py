"""Stage 1: the safety adapter from the aligned–degraded discrepancy (SafeGene, arXiv 2606.06519, stage 1).

Per decoder-layer linear module, ``ΔS = W(A) − W(D)`` (fp32), truncated SVD ``ΔS ≈ U_k Σ_k V_kᵀ``, stored as a
scale-one LoRA pair ``B = U_k Σ_k^½``, ``A = Σ_k^½ V_kᵀ``. The rank k is fixed, or the smallest k that keeps a given
share of the module's spectral energy (Σ σ_i² over kept / all). Splitting Σ evenly between A and B keeps both factors
at the same scale, which is friendlier to bf16 storage than putting all of Σ in B.

When the degraded model is the aligned model plus a LoRA, ``ΔS`` is exactly that LoRA negated: the same A, and
``B_S = −s_L·B_L``; no SVD and no truncation.

Checkpoints are streamed one tensor pair at a time (:class:`~safegene_runtime.checkpoints.Checkpoint`), so peak memory
follows the largest weight matrix, never two full models.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable

import torch

from .adapters import LINEAR_MODULES, AdapterError, layer_index, load_adapter, module_kind, save_adapter
from .artifacts import ArtifactError, ArtifactWriter, describe_input
from .checkpoints import Checkpoint, check_adapter_fits, model_identity
from .paths import artifacts_dir
from .threads import single_thread

METHOD_SVD = "svd"
METHOD_LORA = "negated_lora"
_SMALL = 1 << 20  # elements; SmolLM2-135M's largest matrix is 576×1536


def choose_rank(sigma: torch.Tensor, *, rank: int | None = None, energy: float | None = None) -> int:
    """Rank to keep from singular values ``sigma`` (descending): ``rank`` capped at len(sigma), or the smallest k whose
    share of Σσ² is at least ``energy``."""
    if (rank is None) == (energy is None):
        raise ValueError("give exactly one of rank or energy")
    n = int(sigma.numel())
    if rank is not None:
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        return min(rank, n)
    if not (0.0 < energy <= 1.0):  # type: ignore[operator]
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    e = sigma.double() ** 2
    total = float(e.sum())
    if total == 0.0:
        return 0
    cum = torch.cumsum(e, 0) / total
    # smallest k with cum[k-1] >= energy; a tiny slack absorbs round-off at energy == 1.0
    k = int(torch.searchsorted(cum, torch.tensor(energy - 1e-12, dtype=cum.dtype)).item()) + 1
    return min(max(k, 1), n)


def factorize(delta: torch.Tensor, *, rank: int | None = None, energy: float | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """Truncated SVD of ``delta`` as a LoRA pair (A [k,in], B [out,k]) with ``B @ A`` the best rank-k approximation.

    Returns (A, B, stats) with stats ``rank``, ``energy_kept`` (share of Σσ²), ``sq_norm`` (Σσ²) and
    ``discarded_sq`` (Σσ² of dropped values = squared Frobenius error, by Eckart–Young).
    """
    d = delta.to(torch.float32)
    if d.numel() <= _SMALL:
        with single_thread():  # small SVDs: OpenMP hand-offs cost more than they save, badly so on a busy machine
            u, s, vh = _svd(d)
    else:
        u, s, vh = _svd(d)
    k = choose_rank(s, rank=rank, energy=energy)
    e = s.double() ** 2
    total, kept = float(e.sum()), float(e[:k].sum())
    root = s[:k].sqrt()
    b = (u[:, :k] * root).contiguous()
    a = (root[:, None] * vh[:k]).contiguous()
    stats = {
        "rank": k,
        "energy_kept": kept / total if total > 0 else 1.0,
        "sq_norm": total,
        "discarded_sq": total - kept,
    }
    return a, b, stats


def _svd(d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD in fp32, retried in fp64 when LAPACK's divide-and-conquer fails to converge.

    That happens on very sparse, badly conditioned deltas, e.g. a short bf16 fine-tune that moved ~1% of the
    entries by one bf16 step (seen on SmolLM2).
    """
    try:
        return torch.linalg.svd(d, full_matrices=False)
    except torch.linalg.LinAlgError:
        u, s, vh = torch.linalg.svd(d.double(), full_matrices=False)
        return u.float(), s.float(), vh.float()


def _check_same_layout(aligned: Checkpoint, degraded: Checkpoint) -> None:
    """A and D must have the same tensor names and shapes; name the first difference."""
    ka, kd = set(aligned.keys()), set(degraded.keys())
    if ka != kd:
        only_a, only_d = sorted(ka - kd), sorted(kd - ka)
        first = (f"{only_a[0]} is in the aligned model {aligned.path} but not in the degraded model"
                 if only_a else f"{only_d[0]} is in the degraded model {degraded.path} but not in the aligned model")
        raise ArtifactError(
            f"aligned and degraded models have different tensors ({len(only_a)} only in aligned, "
            f"{len(only_d)} only in degraded): {first}"
        )
    for name in aligned.keys():
        if aligned.shape(name) != degraded.shape(name):
            raise ArtifactError(
                f"aligned and degraded models differ in the shape of {name}: "
                f"{aligned.shape(name)} in {aligned.path} vs {degraded.shape(name)} in {degraded.path}"
            )


def not_in_adapter(aligned: Checkpoint, degraded: Checkpoint) -> dict[str, float]:
    """``{tensor: ‖A − D‖ / ‖A‖}`` for every tensor outside the decoder layers' linear weights that differs between
    the two models: biases (Qwen2's q/k/v), norms, embeddings, the head. A LoRA has no place for them, so the safety
    adapter leaves them out; the manifest lists them so that a full fine-tune that moved them is not silently taken
    for fully extracted. Reads each such tensor once from each model (norms and biases are tiny; the embeddings
    and head are the cost)."""
    linear = {f"{m}.weight" for m in aligned.linear_modules()}
    out: dict[str, float] = {}
    for name in aligned.keys():
        if name in linear or not aligned.dtype(name).is_floating_point:
            continue
        a, d = aligned.get(name, torch.float32), degraded.get(name, torch.float32)
        if not torch.equal(a, d):
            out[name] = round(float((a - d).norm() / a.norm().clamp_min(1e-12)), 8)
    return out


def _parse_kinds(modules: Iterable[str] | str | None) -> tuple[str, ...]:
    if modules is None:
        return LINEAR_MODULES
    kinds = [m.strip() for m in (modules.split(",") if isinstance(modules, str) else modules) if m.strip()]
    bad = [k for k in kinds if k not in LINEAR_MODULES]
    if bad or not kinds:
        raise ValueError(f"unknown module kind(s) {bad or kinds}: choose from {', '.join(LINEAR_MODULES)}")
    return tuple(k for k in LINEAR_MODULES if k in kinds)


def _progress(iterable, *, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm import tqdm  # lazy: only with a progress bar

    return tqdm(iterable, total=total, desc=desc, unit="module", leave=False)


def extract_safety_adapter(
    aligned: str | Path,
    degraded: str | Path | None = None,
    *,
    degraded_lora: str | Path | None = None,
    rank: int | None = None,
    energy: float | None = None,
    modules: Iterable[str] | str | None = None,
    layers: Iterable[int] | None = None,
    dtype: torch.dtype = torch.float32,
    out: str | Path | None = None,
    store: str | Path | None = None,
    name: str = "safety",
    progress: bool = True,
) -> Path:
    """Build the safety adapter ``ΔS = W(aligned) − W(degraded)`` as a scale-one PEFT LoRA folder.

    Give the degraded model as a full checkpoint (``degraded``, truncated SVD with ``rank`` or ``energy``; default
    rank 16) or as a LoRA on the aligned model (``degraded_lora``, exact). ``modules`` picks module kinds (q_proj,
    ...), ``layers`` decoder layers. Returns the artifact folder (``out``, or ``store/<name>-<id12>``, default store
    the artifacts dir). The manifest records per-module rank and energy, the inputs' hashes and the base identity, and
    (``not_in_adapter``) the tensors a LoRA cannot carry that differ between the two models (:func:`not_in_adapter`).
    """
    if (degraded is None) == (degraded_lora is None):
        raise ValueError("give exactly one of degraded (a full checkpoint) or degraded_lora (a LoRA on the aligned model)")
    if rank is not None and energy is not None:
        raise ValueError("give at most one of rank and energy")
    if degraded_lora is not None and (rank is not None or energy is not None):
        raise ValueError("rank/energy do not apply with a degraded LoRA: its negation is used exactly, at its own rank")
    if degraded is not None and rank is None and energy is None:
        rank = 16
    if out is None and store is None:
        store = artifacts_dir()
    kinds = _parse_kinds(modules)
    layer_set = set(int(i) for i in layers) if layers is not None else None
    ack = Checkpoint(aligned)

    def wanted(m: str) -> bool:
        return module_kind(m) in kinds and (layer_set is None or layer_index(m) in layer_set)

    targets = [m for m in ack.linear_modules() if wanted(m)]
    if not targets:
        raise ArtifactError(
            f"{ack.path}: no decoder-layer linear weights match modules={','.join(kinds)}"
            + (f" layers={sorted(layer_set)}" if layer_set is not None else "")
            + " (expected names like model.layers.0.self_attn.q_proj.weight)"
        )

    identity = model_identity(ack.path)
    lineage = [describe_input(ack.path, "aligned")]
    if degraded is not None:
        lineage.append(describe_input(degraded, "degraded"))
    else:
        lineage.append(describe_input(degraded_lora, "degraded_lora"))

    weights: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    per_module: dict[str, dict[str, Any]] = {}
    skipped: list[str] = []
    if degraded is not None:
        dck = Checkpoint(degraded)
        _check_same_layout(ack, dck)
        total_sq = kept_sq = 0.0
        for m in _progress(targets, total=len(targets), desc="extract", enabled=progress):
            key = f"{m}.weight"
            delta = ack.get(key, torch.float32) - dck.get(key, torch.float32)
            if not torch.isfinite(delta).all():
                raise ArtifactError(f"{key}: aligned − degraded contains NaN or Inf")
            if not delta.any():
                skipped.append(m)
                continue
            a, b, st = factorize(delta, rank=rank, energy=energy)
            del delta
            weights[m] = (a, b)
            total_sq += st["sq_norm"]
            kept_sq += st["sq_norm"] - st["discarded_sq"]
            per_module[m] = {"rank": st["rank"], "energy_kept": round(st["energy_kept"], 8),
                             "frobenius": round(math.sqrt(st["sq_norm"]), 8)}
        outside = not_in_adapter(ack, dck)
        method = {"name": METHOD_SVD, "rank": rank, "energy": energy, "svd_dtype": "float32",
                  "factor_split": "B=U_k*sqrt(S_k), A=sqrt(S_k)*V_k^T"}
        total_energy = kept_sq / total_sq if total_sq > 0 else 1.0
    else:
        lora = load_adapter(degraded_lora)
        check_adapter_fits(ack, lora, "degraded LoRA")
        for m in lora.modules():
            a_l, b_l = lora.weights[m]
            if not wanted(m):
                continue
            # ΔS = W(A) − W(A + s·B_L A_L) = −s·B_L A_L: keep A, negate and scale B.
            weights[m] = (a_l.to(torch.float32).clone(), (-lora.scaling(m)) * b_l.to(torch.float32))
            per_module[m] = {"rank": int(a_l.shape[0]), "energy_kept": 1.0}
        if not weights:
            raise AdapterError(f"{degraded_lora}: none of its modules match modules={','.join(kinds)}")
        outside = {}  # a LoRA on A changes nothing else
        method = {"name": METHOD_LORA, "exact": True}
        total_energy = 1.0

    if not weights:
        raise ArtifactError(
            f"aligned model {ack.path} and degraded model {degraded} have identical weights in every selected module: "
            "there is no safety discrepancy to extract"
        )
    with ArtifactWriter(out, store=store if out is None else None, name=name, kind="safety_adapter",
                        lineage=lineage) as w:
        save_adapter(w.tmp, weights, base_model=str(ack.path.resolve()), dtype=dtype)
        w.manifest.update(
            method=method,
            dtype=str(dtype).removeprefix("torch."),
            base_model=identity,
            modules=per_module,
            skipped_modules=skipped,
            energy_kept=round(total_energy, 8),
            max_rank=max(v["rank"] for v in per_module.values()),
        )
        if outside:  # only then: an extraction with nothing left out keeps the manifest (and id) it always had
            w.manifest["not_in_adapter"] = outside
    assert w.path is not None
    return w.path
