"""RESTA-style safety task arithmetic with DARE (Bhardwaj et al., 2024, "Language Models are Homer Simpson!";
DARE: Yu et al., 2024, "Language Models are Super Mario").

RESTA re-aligns a fine-tuned model by adding a safety vector: ``θ = θ_SFT + λ·δ_safe``. Here the fine-tuned update is
the task adapter and the safety vector is the safety adapter, so without DARE this is exactly :mod:`.uniform`
(``ΔT + λ·ΔS`` on every layer; ``p = 0`` gives the same weights bit for bit, which the tests check).

DARE (drop and rescale) is applied to the *parameters of one adapter* before the sum: every entry of its LoRA
factors A and B is dropped independently with probability ``p`` and the kept entries are multiplied by
``1/(1 − p)``, so the expected update is unchanged (the masks of A and B are independent, hence
``E[B'A'] = E[B']E[A'] = BA``). Which adapter: ``dare_on="safety"`` (default: "the safety delta added with DARE",
as issue 21 asks) or ``dare_on="task"`` (RESTA's own variant drops the fine-tuned model's delta parameters before
adding the safety vector, as we read the paper). What we had to assume: DARE on a LoRA works on its factors (as
PEFT's ``dare_linear`` does for LoRA adapters), not on the dense ``ΔW``, because a dense dropped ``ΔW`` is full rank
and no longer a LoRA of the same format.

Masks are seeded per (seed, module, factor) with a stable hash, so the same seed gives the same adapter whatever
the module order, and the result is a content-addressed folder like every baseline's.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import torch

from ..adapters import LoraAdapter, build_config, load_adapter, save_adapter
from ..artifacts import ArtifactWriter, describe_input, read_manifest
from ..coefficients import Coefficients
from ..stack import check_compatible, stacked_weights
from ..threads import single_thread
from .safe_lora import adapter_dtype

DARE_TARGETS = ("safety", "task")


def dare_seed(seed: int, module: str, factor: str) -> int:
    """The generator seed of one factor's mask: stable across runs, module orders and Python versions."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{module}:{factor}".encode()).digest()[:8], "little") >> 1


def dare(x: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    """Drop each entry with probability ``p`` (seeded), rescale the kept ones by ``1/(1 − p)``; same dtype as ``x``."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"DARE drop rate p must be in [0, 1) (got {p})")
    if p == 0.0:
        return x
    keep = torch.rand(x.shape, generator=torch.Generator().manual_seed(seed)) >= p
    return torch.where(keep, x.to(torch.float32) / (1.0 - p), 0.0).to(x.dtype)


def dare_adapter(ad: LoraAdapter, p: float, seed: int) -> LoraAdapter:
    """A copy of ``ad`` with DARE applied to every factor (A and B of every module); config unchanged."""
    return LoraAdapter(config=ad.config, path=ad.path, weights={
        m: (dare(a, p, dare_seed(seed, m, "A")), dare(b, p, dare_seed(seed, m, "B"))) for m, (a, b) in ad.weights.items()
    })


def resta_dare(
    task: str | Path,
    safety: str | Path,
    lam: float,
    *,
    p: float,
    seed: int = 0,
    dare_on: str = "safety",
    out: str | Path | None = None,
    store: str | Path | None = None,
    name: str | None = None,
) -> Path:
    """Write ``ΔT + λ·DARE_p(ΔS)`` (or ``DARE_p(ΔT) + λ·ΔS`` with ``dare_on="task"``) on every layer and return the
    folder (default: beside ``task`` as ``<task>-resta<λ>-p<p>-<id12>``)."""
    task, safety = Path(task), Path(safety)
    if not math.isfinite(lam):
        raise ValueError(f"λ must be a finite number (got {lam})")
    if not 0.0 <= p < 1.0:
        raise ValueError(f"DARE drop rate p must be in [0, 1) (got {p})")
    if dare_on not in DARE_TARGETS:
        raise ValueError(f"dare_on must be one of {DARE_TARGETS} (got {dare_on!r})")
    t, s = load_adapter(task), load_adapter(safety)
    check_compatible(t, s, read_manifest(safety))
    dtype = adapter_dtype(t, s)
    with single_thread():
        if dare_on == "safety":
            s = dare_adapter(s, p, seed)
        else:
            t = dare_adapter(t, p, seed)
        coeffs = Coefficients.uniform(lam, method={"name": "resta_dare", "lambda": float(lam)})
        weights, info = stacked_weights(t, s, coeffs)
    n = sum(x.numel() for pair in (s if dare_on == "safety" else t).weights.values() for x in pair)
    dropped = sum(int((x == 0).sum()) for pair in (s if dare_on == "safety" else t).weights.values() for x in pair)
    lineage = [describe_input(task, "task"), describe_input(safety, "safety"),
               {"role": "coefficients", "digest": coeffs.digest()}]
    kw = dict(kind="baseline_adapter", lineage=lineage)
    writer = (ArtifactWriter(dest=out, **kw) if out is not None else
              ArtifactWriter(store=store or task.resolve().parent, name=name or f"{task.name}-resta{lam:g}-p{p:g}",
                             **kw))
    base_model = t.config.base_model_name_or_path
    with writer as w:
        save_adapter(w.tmp, weights, base_model=base_model, dtype=dtype,
                     config=build_config(weights, base_model=base_model))
        w.manifest["baseline"] = {
            "name": "resta_dare",
            "reference": "Bhardwaj et al. 2024 (RESTA) + Yu et al. 2024 (DARE)",
            "formula": ("task + lambda * DARE_p(safety)" if dare_on == "safety" else "DARE_p(task) + lambda * safety")
                       + " on every layer; DARE on the LoRA factors A and B, kept entries scaled by 1/(1-p)",
            "lambda": float(lam), "p": float(p), "seed": int(seed), "dare_on": dare_on,
            "zero_entries": {"n": n, "zero": dropped},
            "relation": "p = 0 is the uniform baseline with the same lambda",
        }
        w.manifest.update(task_base_model=base_model, modules=info,
                          max_rank=max(a.shape[0] for a, _ in weights.values()))
    return w.path  # type: ignore[return-value]
