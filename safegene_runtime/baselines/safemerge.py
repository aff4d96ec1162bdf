"""SafeMERGE (Djuhera et al., 2025, "SafeMERGE: Preserving Safety Alignment in Fine-Tuned LLMs via Selective
Layer-Wise Model Merging", arXiv 2503.17239) as a baseline.

What we followed (the paper and its reference code, github.com/aladinD/SafeMERGE):

1. Per LoRA module ("layer" in the paper: every LoRA-wrapped linear), the Safe LoRA criterion: with
   ``C = V Vᵀ / ‖V‖_F`` and ``V = W(aligned) − W(unaligned base)``, the similarity ``ρ = cos(C ΔT, ΔT)`` of the task
   update ``ΔT``. Computed by :func:`.safe_lora.similarities` (one implementation for both baselines).
2. Modules with ``ρ < τ`` (strict, as the reference code) are merged with the safety LoRA: ``(1 − w)·ΔT + w·ΔS``
   (the reference code's ``weights = [1 − w, w]`` for [fine-tuned, safe]; its defaults τ = 0.35, w = 0.2).
3. Every other module keeps the task update unchanged (reference code: weights ``[1, 0]``); here its factors are
   written bit-identical to what Safe LoRA and stacking write for an untouched module, ``(A_T, s_T·B_T)``.

What we had to assume or chose:

* The safety LoRA is this project's safety adapter ΔS (the reference trains a separate LoRA on safety data from
  the aligned model; ours is the low-rank A − D delta every method here shares), and the task adapter was trained
  on the aligned model, as in the paper.
* V: the paper's ``aligned − unaligned base`` is ``aligned=…, original=…``; ``aligned=…, degraded=…`` uses this
  project's A − D; with neither, V is the safety adapter itself (no checkpoints needed).
* Merge arithmetic: ``combination="exact"`` (default) writes ``(1 − w)ΔT + wΔS`` exactly, by concatenating the
  factors along the rank (merged modules get rank r_T + r_S, recorded in ``rank_pattern``). The reference code calls
  PEFT's ``add_weighted_adapter(combination_type="linear")``, which mixes the *factors*
  (``A' = √((1−w)s_T)·A_T + √(w s_S)·A_S``, same for B), so ``B'A'`` also holds cross terms ``B_T A_S``, ``B_S A_T``
  and needs equal ranks; ``combination="peft_linear"`` reproduces that arithmetic for comparison. The paper's text
  describes a linear combination of the layers, which is what "exact" computes.
* ``top_fraction`` (merge that fraction of modules with the lowest ρ) is offered beside τ, as for Safe LoRA.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from ..adapters import AdapterError, build_config, load_adapter, save_adapter
from ..artifacts import ArtifactWriter, describe_input, read_manifest
from ..stack import check_compatible
from ..threads import single_thread
from .safe_lora import (PAPER_THRESHOLD, PROJECTIONS, adapter_dtype, folded, low_similarity, safety_vectors,
                        similarities, source_lineage)

#: the reference code's default weight of the safety LoRA in a merged layer ([0.8, 0.2])
PAPER_WEIGHT = 0.2
COMBINATIONS = ("exact", "peft_linear")


def safemerge(
    task: str | Path,
    safety: str | Path,
    *,
    threshold: float | None = PAPER_THRESHOLD,
    weight: float = PAPER_WEIGHT,
    top_fraction: float | None = None,
    aligned: str | Path | None = None,
    degraded: str | Path | None = None,
    original: str | Path | None = None,
    projection: str = "paper",
    combination: str = "exact",
    out: str | Path | None = None,
    store: str | Path | None = None,
    name: str | None = None,
) -> Path:
    """Write the SafeMERGE adapter and return its folder (default: beside ``task`` as ``<task>-safemerge-<id12>``).

    ``safety`` is the safety LoRA merged into low-similarity modules; V comes from ``aligned`` with ``original`` or
    ``degraded`` when given, else from ``safety``."""
    task, safety = Path(task), Path(safety)
    if not (math.isfinite(weight) and 0.0 <= weight <= 1.0):
        raise ValueError(f"weight w must be in [0, 1] (got {weight})")
    if projection not in PROJECTIONS:
        raise ValueError(f"projection must be one of {PROJECTIONS} (got {projection!r})")
    if combination not in COMBINATIONS:
        raise ValueError(f"combination must be one of {COMBINATIONS} (got {combination!r})")
    if top_fraction is not None:
        threshold = None
    low_similarity({}, threshold=threshold, top_fraction=top_fraction)  # argument check before any work
    models = aligned is not None or degraded is not None or original is not None
    v_args = dict(aligned=aligned, degraded=degraded, original=original) if models else dict(safety=safety)
    t, s = load_adapter(task), load_adapter(safety)
    check_compatible(t, s, read_manifest(safety))
    vs, source = safety_vectors(**v_args)  # type: ignore[arg-type]
    dtype = adapter_dtype(t, s)
    with single_thread():
        per, _ = similarities(t, vs, projection)
        candidates = {m: per[m] for m in per if m in s.weights}
        for m in per:
            if m not in s.weights:
                per[m]["reason"] = "no safety LoRA for this module"
        chosen = low_similarity(candidates, threshold=threshold, top_fraction=top_fraction)
        modules: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for m in t.modules():
            per[m]["merged"] = m in chosen
            if m not in chosen:
                modules[m] = folded(t, m, dtype)
                continue
            (a_t, b_t), (a_s, b_s) = t.weights[m], s.weights[m]
            s_t, s_s = t.scaling(m), s.scaling(m)
            a_t, b_t, a_s, b_s = (x.to(torch.float32) for x in (a_t, b_t, a_s, b_s))
            if combination == "exact":
                a_new = torch.cat([a_t, a_s], 0)
                b_new = torch.cat([b_t * ((1.0 - weight) * s_t), b_s * (weight * s_s)], 1)
            else:
                if a_t.shape[0] != a_s.shape[0]:
                    raise AdapterError(f"module {m}: combination 'peft_linear' needs equal ranks "
                                       f"(task {a_t.shape[0]}, safety {a_s.shape[0]}); use 'exact'")
                ft, sf = math.sqrt((1.0 - weight) * s_t), math.sqrt(weight * s_s)
                a_new, b_new = ft * a_t + sf * a_s, ft * b_t + sf * b_s
            modules[m] = (a_new.to(dtype).contiguous(), b_new.to(dtype).contiguous())
    lineage = [describe_input(task, "task"), describe_input(safety, "safety")]
    if models:
        lineage += source_lineage(None, aligned, degraded, original)
    kw = dict(kind="baseline_adapter", lineage=lineage)
    writer = (ArtifactWriter(dest=out, **kw) if out is not None else
              ArtifactWriter(store=store or task.resolve().parent, name=name or f"{task.name}-safemerge", **kw))
    base_model = t.config.base_model_name_or_path
    info: dict[str, Any] = {
        "name": "safemerge",
        "reference": "Djuhera et al. 2025, SafeMERGE (arXiv 2503.17239)",
        "formula": "rho < threshold: (1-w) * task + w * safety; else task",
        "projection": projection, "source": source, "combination": combination,
        "threshold": threshold, "top_fraction": top_fraction, "weight": float(weight),
        "merged": chosen, "n_merged": len(chosen), "n_modules": len(modules),
        "safety_only_modules_left_out": len(set(s.weights) - set(t.weights)),
        "modules": per,
    }
    with writer as w:
        save_adapter(w.tmp, modules, base_model=base_model, config=build_config(modules, base_model=base_model))
        w.manifest["baseline"] = info
        w.manifest.update(task_base_model=base_model, max_rank=max(a.shape[0] for a, _ in modules.values()))
    return w.path  # type: ignore[return-value]
