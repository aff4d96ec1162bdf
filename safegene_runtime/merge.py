"""Fold a task delta and the λ-scaled safety delta into a full checkpoint.

``W' = W + s_T B_T A_T + λ_l B_S A_S`` for every module either adapter touches; all other tensors are copied
bit for bit. The base is rewritten shard by shard with the same shard names and index, so memory stays near one
shard (and the deltas are computed one module at a time, in fp32, then cast back to the base weight's dtype).
Config, tokenizer, chat-template and generation files are copied, so the result is a servable HF model folder.

Used for serving without LoRA (one merged model per variant) and as the reference in stacking tests.

The manifest's ``delta_retention`` says how much of the delta survived the cast back to the base dtype. In bf16 a
safety delta from a short, low-lr fine-tune is about one rounding step of W, so part of it rounds away: measured
on the SmolLM2 demo family, the stacked variant (LoRA applied at run time) refused a prompt that the bf16 merged
one answered (`bench/merged_bf16.py`). Serve stacked, or merge with ``dtype="float32"`` (every
floating tensor written in fp32, config updated; an engine run in fp32 then applies the delta exactly), when it is low.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from .adapters import AdapterError, layer_index, load_adapter, module_group
from .artifacts import (MANIFEST, ArtifactWriter, built_from, canonical_json, describe_input, record_built_from,
                        sha256_bytes)
from .checkpoints import INDEX_FILE, Checkpoint, check_adapter_fits, check_same_base, resolve_dtype, weights_fingerprint
from .coefficients import Coefficients, load_coefficients
from .paths import artifacts_dir
from .stack import check_coefficients
from .threads import single_thread

#: bump when the same inputs would merge into other bytes: a store merge is reused by its inputs (lineage) and this
MERGE_FORMAT = 1
#: weight files of other formats: never copied next to the merged safetensors (they would hold stale weights)
_WEIGHT_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".ckpt"}


def merge_checkpoint(
    base: Path,
    *,
    task: Path | None = None,
    safety: Path | None = None,
    coefficients: Coefficients | Path | dict | None = None,
    out: Path | None = None,
    store: Path | None = None,
    name: str = "merged",
    progress: bool = True,
    dtype: str | torch.dtype | None = None,
) -> Path:
    """Write ``base + ΔT + λ·ΔS`` as a full HF checkpoint folder and return it (``out``, or ``store/<name>-<id12>``,
    default store the artifacts dir). ``task`` or ``safety`` (with ``coefficients``) may be given alone. A store
    merge whose inputs (the lineage: each input's id or content hash, λ, dtype) and name match one made before
    returns that folder without merging again (:func:`~.artifacts.built_from`).

    ``dtype`` (e.g. ``"float32"``) writes every floating tensor in that dtype and says so in config.json; the
    default keeps each tensor's own. A float32 merge of a bf16 base keeps all of a delta smaller than bf16's step."""
    with single_thread():  # per-module adds and casts: OpenMP hand-offs only slow them down (see threads.single_thread)
        return _merge(base, task=task, safety=safety, coefficients=coefficients, out=out, store=store, name=name,
                      progress=progress, dtype=resolve_dtype(dtype))


def _merge(base, *, task, safety, coefficients, out, store, name, progress, dtype) -> Path:
    if task is None and safety is None:
        raise ValueError("nothing to merge: give a task adapter, a safety adapter (with coefficients), or both")
    if safety is not None and coefficients is None:
        raise ValueError("a safety adapter needs coefficients (λ per layer; for λ=1 everywhere use {\"default\": 1.0})")
    if safety is None and coefficients is not None:
        raise ValueError("coefficients given without a safety adapter")
    ck = Checkpoint(base)
    base_fp = weights_fingerprint(ck.path)
    t_ad = load_adapter(task) if task is not None else None
    s_ad = load_adapter(safety) if safety is not None else None
    coeffs = load_coefficients(coefficients) if coefficients is not None else None
    if coeffs is not None:
        check_coefficients(coeffs, str(coefficients) if isinstance(coefficients, (str, Path)) else "coefficients")
    for who, ad in (("task", t_ad), ("safety", s_ad)):
        if ad is not None:
            check_same_base(ad, f"{who} adapter", ck, base_fp=base_fp, but=f"the base to merge into is {ck.path}",
                            refusing="refusing to merge into another model")
            check_adapter_fits(ck, ad, f"{who} adapter")

    def delta(module: str) -> torch.Tensor | None:
        d = None
        if t_ad is not None and module in t_ad.weights:
            d = t_ad.delta(module)
        if s_ad is not None and module in s_ad.weights:
            lam = coeffs.of(layer_index(module), module_group(module))  # type: ignore[union-attr]
            if lam != 0.0:
                sd = s_ad.delta(module) * lam
                d = sd if d is None else d + sd
        return d

    touched = set(t_ad.weights if t_ad else ()) | set(s_ad.weights if s_ad else ())
    lineage = [describe_input(ck.path, "base")]
    if task is not None:
        lineage.append(describe_input(task, "task"))
    if safety is not None:
        lineage.append(describe_input(safety, "safety"))
        lineage.append({"role": "coefficients", "digest": coeffs.digest()})  # type: ignore[union-attr]
    if dtype is not None:
        lineage.append({"role": "dtype", "dtype": str(dtype).removeprefix("torch.")})
    reuse_key = None
    if out is None:  # a store merge is deterministic in its inputs: the same ones give the folder made before
        store = store if store is not None else artifacts_dir()
        reuse_key = sha256_bytes(canonical_json({"lineage": lineage, "name": name, "format": MERGE_FORMAT}).encode())
        found = built_from(store, reuse_key)
        if found is not None:
            return found

    merged: list[str] = []
    dtypes: Counter[str] = Counter()
    # How much of the delta survives the cast back to the base dtype: Σ<round(W+Δ) − W, Δ> / Σ|Δ|². A safety
    # delta from a short fine-tune is about one bf16 step of W, so a bf16 merge keeps only part of it (1.0 = all).
    kept, total = 0.0, 0.0
    nbytes = 0
    with ArtifactWriter(out, store=store if out is None else None, name=name, kind="merged_model",
                        lineage=lineage) as w:
        assert w.tmp is not None
        bar = None
        if progress:
            from tqdm import tqdm  # lazy: only with a progress bar

            bar = tqdm(total=len(ck), desc="merge", unit="tensor", leave=False)
        for shard in ck.shards():
            tensors: dict[str, torch.Tensor] = {}
            for key in ck.shard_keys(shard):
                t = ck.get(key)
                if dtype is not None and t.is_floating_point():
                    t = t.to(dtype)
                module = key[: -len(".weight")] if key.endswith(".weight") else None
                if module in touched:
                    d = delta(module)
                    if d is not None:
                        new = t.to(torch.float32) + d
                        if not torch.isfinite(new).all():
                            raise AdapterError(f"merging into {key} gives NaN/Inf (check λ and the adapters)")
                        cast = new.to(t.dtype)
                        kept += float(((cast.to(torch.float32) - t.to(torch.float32)) * d).sum())
                        total += float((d * d).sum())
                        t = cast
                        merged.append(module)
                        dtypes[str(t.dtype).removeprefix("torch.")] += 1
                tensors[key] = t.contiguous()
                nbytes += t.numel() * t.element_size()
                if bar is not None:
                    bar.update(1)
            save_file(tensors, str(w.tmp / shard), metadata=ck.shard_metadata(shard) or {"format": "pt"})
            del tensors
        if bar is not None:
            bar.close()
        for p in sorted(ck.path.iterdir()):
            if p.is_file() and p.name != MANIFEST and not p.name.startswith(".") and (
                p.suffix not in _WEIGHT_SUFFIXES or p.name == INDEX_FILE
            ) and not (w.tmp / p.name).exists():
                shutil.copy2(p, w.tmp / p.name)
        if dtype is not None:
            _write_config_dtype(w.tmp / "config.json", dtype)
            if (w.tmp / INDEX_FILE).is_file():  # the shard index's total_size follows the new element size
                idx = json.loads((w.tmp / INDEX_FILE).read_text())
                idx.setdefault("metadata", {})["total_size"] = nbytes
                (w.tmp / INDEX_FILE).write_text(json.dumps(idx, indent=2) + "\n")
        info: dict[str, Any] = {"merged_modules": len(merged), "dtype": dict(dtypes),
                                "delta_retention": round(kept / total, 4) if total > 0 else 1.0}
        if coeffs is not None:
            info["coefficients"] = {"digest": coeffs.digest(), "layers": coeffs.to_dict()["layers"],
                                    "default": coeffs.default,
                                    **({"groups": coeffs.to_dict()["groups"]} if coeffs.groups else {})}
        w.manifest.update(method={"name": "merge", "formula": "W + s_T*B_T@A_T + lambda_l*B_S@A_S"},
                          base_model={"path": str(ck.path.resolve()), "weights_fingerprint": base_fp,
                                      **{k: ck.config[k] for k in ("model_type", "hidden_size", "num_hidden_layers")
                                         if k in ck.config}},
                          **info)
    assert w.path is not None
    if reuse_key is not None:
        record_built_from(store, reuse_key, w.path)
    return w.path


def _write_config_dtype(path: Path, dtype: torch.dtype) -> None:
    """Record the written dtype in config.json (``torch_dtype``, and ``dtype`` where newer transformers put it), so
    an engine run with ``dtype=auto`` loads what is on disk."""
    cfg = json.loads(path.read_text())
    name = str(dtype).removeprefix("torch.")
    cfg["torch_dtype"] = name
    if "dtype" in cfg:
        cfg["dtype"] = name
    path.write_text(json.dumps(cfg, indent=2) + "\n")
