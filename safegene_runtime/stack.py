"""Serving: a task adapter and the λ-scaled safety adapter as ONE LoRA, stacked at load time (SafeGene,
arXiv 2606.06519).

vLLM applies one LoRA per request, so per module we concatenate along the rank dimension::

    A_cat = [A_T ; A_S]        B_cat = [s_T·B_T | λ_l·B_S]        B_cat A_cat = s_T B_T A_T + λ_l B_S A_S

with both scales folded into B, written as a scale-one config (``r = lora_alpha`` = largest combined rank, no rsLoRA,
``rank_pattern`` + mirrored ``alpha_pattern`` for modules of another rank) so that vLLM (0.32+) and PEFT both read
it as exactly the sum. A module in only one adapter keeps its own part; a module whose λ is 0 drops the safety part.

With ``rank_budget`` the modules whose exact rank would exceed the budget are re-factorised by SVD of the sum (done in
the rank-r_cat factor space via two thin QRs, never forming the full matrix) into the best rank-``budget``
approximation; the manifest records each such module's relative Frobenius error. Exact concatenation is the default.

Outputs are immutable, content-addressed artifacts: the same task, safety and λ give the same folder.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from .adapters import (AdapterError, LoraAdapter, build_config, layer_index, load_adapter, module_group,
                       save_adapter)
from .artifacts import ArtifactWriter, describe_input, read_manifest
from .checkpoints import Checkpoint, check_adapter_fits, check_same_base, local_model
from .coefficients import Coefficients, load_coefficients
from .paths import artifacts_dir
from .threads import single_thread

#: values vLLM accepts for ``--max-lora-rank``
ALLOWED_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def choose_max_lora_rank(rank: int) -> int:
    """Smallest allowed vLLM ``--max-lora-rank`` that holds an adapter of this rank."""
    for r in ALLOWED_MAX_LORA_RANKS:
        if rank <= r:
            return r
    raise AdapterError(
        f"LoRA rank {rank} exceeds vLLM's largest --max-lora-rank {ALLOWED_MAX_LORA_RANKS[-1]}: "
        "stack with a rank budget (--rank-budget) or merge into a full checkpoint instead"
    )


# --- checks ------------------------------------------------------------------------------------------------------


def _prefix(module: str) -> str:
    """The part of a module name before ``layers.N.`` (``model.``); differs when adapters name modules differently."""
    i = module.find("layers.")
    return module[:i] if i >= 0 else module.rsplit(".", 1)[0] + "."


def check_compatible(task: LoraAdapter, safety: LoraAdapter, safety_manifest: dict[str, Any] | None = None
                     ) -> Checkpoint | None:
    """Refuse a task/safety pair that cannot be summed into one base model. Returns the task's base checkpoint when
    it is a local folder (then every module was also checked against its weight shapes)."""
    safety_manifest = safety_manifest if safety_manifest is not None else read_manifest(safety.path or ".")
    ident = safety_manifest.get("base_model") or {}
    base = local_model(task.config.base_model_name_or_path)

    # 1. Same base model (same weights, however sharded), when both sides say which one.
    if base is not None:
        check_same_base(safety, "safety adapter", base, manifest=safety_manifest,
                        but=f"task adapter {task.path} is for {base.path}",
                        refusing="refusing to stack adapters for different base models")
    if base is not None and ident:
        for k in ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers"):
            if k in ident and k in base.config and ident[k] != base.config[k]:
                raise AdapterError(
                    f"safety adapter {safety.path} was built for a base with {k}={ident[k]} but task adapter "
                    f"{task.path}'s base {base.path} has {k}={base.config[k]}: different base models"
                )

    # 2. Same module naming (otherwise "shared" modules silently stop being shared).
    tp, sp = {_prefix(m) for m in task.weights}, {_prefix(m) for m in safety.weights}
    if not (tp & sp):
        raise AdapterError(
            f"task adapter {task.path} and safety adapter {safety.path} name their modules differently "
            f"(task: {next(iter(sorted(task.weights)))!r}, safety: {next(iter(sorted(safety.weights)))!r}): "
            "they cannot be stacked onto one base model"
        )

    # 3. Shapes of shared modules, and of every module against the base when we have it.
    for m in sorted(set(task.weights) & set(safety.weights)):
        (at, bt), (as_, bs) = task.weights[m], safety.weights[m]
        if at.shape[1] != as_.shape[1] or bt.shape[0] != bs.shape[0]:
            raise AdapterError(
                f"module {m}: task delta is {(bt.shape[0], at.shape[1])} but safety delta is "
                f"{(bs.shape[0], as_.shape[1])}: the adapters were made for different base models"
            )
    if base is not None:
        for who, ad in (("task", task), ("safety", safety)):
            check_adapter_fits(base, ad, f"{who} adapter")
    return base


def check_coefficients(c: Coefficients, source: str = "coefficients") -> None:
    grouped = [(f"{layer}.{g}", lam) for layer, gs in c.groups.items() for g, lam in gs.items()]
    for layer, lam in [*c.layers.items(), *grouped, (None, c.default)]:
        if not isinstance(lam, (int, float)) or not math.isfinite(lam):
            where = f"layer {layer}" if layer is not None else "default"
            raise AdapterError(f"{source}: λ for {where} is {lam!r}; every λ must be a finite number")


# --- the math ------------------------------------------------------------------------------------------------------


def refactorize(a: torch.Tensor, b: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Best rank-``rank`` factorisation of ``b @ a`` (Eckart–Young), computed in factor space.

    ``b = Q_b R_b``, ``aᵀ = Q_a R_a`` → ``b a = Q_b (R_b R_aᵀ) Q_aᵀ``; the SVD of the small core gives the singular
    vectors. Returns (A', B', relative Frobenius error ‖ba − B'A'‖/‖ba‖); scale split evenly as in extraction.
    """
    a, b = a.to(torch.float64), b.to(torch.float64)
    qb, rb = torch.linalg.qr(b)
    qa, ra = torch.linalg.qr(a.T)
    u, s, vh = torch.linalg.svd(rb @ ra.T)
    k = min(rank, int(s.numel()))
    root = s[:k].sqrt()
    b_new = (qb @ u[:, :k]) * root
    a_new = root[:, None] * (vh[:k] @ qa.T)
    total = float((s**2).sum())
    err = math.sqrt(max(total - float((s[:k] ** 2).sum()), 0.0) / total) if total > 0 else 0.0
    return a_new.to(torch.float32).contiguous(), b_new.to(torch.float32).contiguous(), err


def stacked_weights(
    task: LoraAdapter, safety: LoraAdapter, coeffs: Coefficients, *, rank_budget: int | None = None
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], dict[str, dict[str, Any]]]:
    """Per module (A_cat, B_cat) in fp32, plus per-module facts for the manifest. No I/O, no checks."""
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    info: dict[str, dict[str, Any]] = {}
    for m in sorted(set(task.weights) | set(safety.weights), key=_order):
        a_parts, b_parts = [], []
        facts: dict[str, Any] = {"task_rank": 0, "safety_rank": 0}
        if m in task.weights:
            a, b = task.weights[m]
            s_t = task.scaling(m)
            a_parts.append(a.to(torch.float32))
            b_parts.append(b.to(torch.float32) * s_t)
            facts.update(task_rank=int(a.shape[0]), task_scale=s_t)
        if m in safety.weights:
            lam = float(coeffs.of(layer_index(m), module_group(m)))
            facts["lambda"] = lam
            if lam != 0.0:
                a, b = safety.weights[m]
                a_parts.append(a.to(torch.float32))
                b_parts.append(b.to(torch.float32) * (lam * safety.scaling(m)))
                facts["safety_rank"] = int(a.shape[0])
        if not a_parts:
            continue  # safety-only module with λ = 0: nothing to apply
        a_cat = torch.cat(a_parts, 0) if len(a_parts) > 1 else a_parts[0]
        b_cat = torch.cat(b_parts, 1) if len(b_parts) > 1 else b_parts[0]
        facts["rank"] = int(a_cat.shape[0])
        if rank_budget is not None and a_cat.shape[0] > rank_budget:
            a_cat, b_cat, err = refactorize(a_cat, b_cat, rank_budget)
            facts.update(exact_rank=facts["rank"], rank=int(a_cat.shape[0]), relative_error=err)
        weights[m] = (a_cat.contiguous(), b_cat.contiguous())
        info[m] = facts
    return weights, info


def _order(module: str) -> tuple[int, str]:
    i = layer_index(module)
    return (-1 if i is None else i, module)


def _out_dtype(task: LoraAdapter, safety: LoraAdapter) -> torch.dtype:
    dtypes = {t.dtype for ad in (task, safety) for pair in ad.weights.values() for t in pair}
    return dtypes.pop() if len(dtypes) == 1 else torch.float32


# --- the entry point -------------------------------------------------------------------------------------------------


def stack_adapters(
    task: Path,
    safety: Path,
    coefficients: Coefficients | Path | dict,
    *,
    out: Path | None = None,
    store: Path | None = None,
    name: str = "stacked",
    max_lora_rank: int | None = None,
    rank_budget: int | None = None,
) -> Path:
    """Write ``task + λ·safety`` as one PEFT LoRA folder and return it (``out``, or ``store/<name>-<id12>``; default
    store: the artifacts dir). Refuses (leaving no folder) on different bases, shape mismatches, NaN/Inf, or a
    combined rank above ``max_lora_rank``."""
    with single_thread():
        return _stack(task, safety, coefficients, out=out, store=store, name=name, max_lora_rank=max_lora_rank,
                      rank_budget=rank_budget)


def _stack(task, safety, coefficients, *, out, store, name, max_lora_rank, rank_budget) -> Path:
    if max_lora_rank is not None and max_lora_rank not in ALLOWED_MAX_LORA_RANKS:
        raise ValueError(f"max_lora_rank {max_lora_rank} is not one of vLLM's values {ALLOWED_MAX_LORA_RANKS}")
    if rank_budget is not None and rank_budget < 1:
        raise ValueError(f"rank_budget must be >= 1, got {rank_budget}")
    coeffs = load_coefficients(coefficients)
    check_coefficients(coeffs, str(coefficients) if isinstance(coefficients, (str, Path)) else "coefficients")
    t_ad, s_ad = load_adapter(task), load_adapter(safety)
    s_man = read_manifest(safety)
    check_compatible(t_ad, s_ad, s_man)

    weights, info = stacked_weights(t_ad, s_ad, coeffs, rank_budget=rank_budget)
    top = max(a.shape[0] for a, _ in weights.values())
    if max_lora_rank is not None and top > max_lora_rank:
        worst = max(info, key=lambda m: info[m]["rank"])
        raise AdapterError(
            f"stacked rank {top} (module {worst}: task {info[worst]['task_rank']} + safety "
            f"{info[worst]['safety_rank']}) exceeds max_lora_rank {max_lora_rank}: serve with --max-lora-rank "
            f"{choose_max_lora_rank(top)} or stack with --rank-budget {max_lora_rank}"
        )
    refactored = {m: f for m, f in info.items() if "exact_rank" in f}
    method: dict[str, Any] = {"name": "exact_concat"}
    if refactored:
        method = {"name": "rank_budget_svd", "rank_budget": rank_budget,
                  "max_relative_error": max(f["relative_error"] for f in refactored.values()),
                  "refactored_modules": len(refactored)}
    dtype = _out_dtype(t_ad, s_ad)
    base_model = t_ad.config.base_model_name_or_path
    lineage = [
        describe_input(task, "task"),
        describe_input(safety, "safety"),
        {"role": "coefficients", "digest": coeffs.digest()},
    ]
    if out is None and store is None:
        store = artifacts_dir()
    with ArtifactWriter(out, store=store if out is None else None, name=name, kind="stacked_adapter",
                        lineage=lineage) as w:
        save_adapter(w.tmp, weights, base_model=base_model, dtype=dtype,
                     config=build_config(weights, base_model=base_model))
        w.manifest.update(
            method=method,
            coefficients={"digest": coeffs.digest(),
                          **{k: v for k, v in coeffs.to_dict().items() if k in ("layers", "default", "groups")}},
            base_model=s_man.get("base_model") or {"path": base_model},
            task_base_model=base_model,
            dtype=str(dtype).removeprefix("torch."),
            modules=info,
            max_rank=top,
            recommended_max_lora_rank=choose_max_lora_rank(top),
        )
        if "selection" in s_man:
            w.manifest["safety_selection"] = s_man["selection"]
    assert w.path is not None
    return w.path
