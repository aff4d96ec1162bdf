"""Grouped LoRA kernels for vLLM's CPU backend: one dense matmul per adapter in the batch instead of a per-token
gather of the adapter's weights.

Why: vLLM-CPU applies LoRA through ``vllm.lora.ops.torch_ops`` (``PunicaWrapperCPU``). Each op gathers a full copy
of the LoRA matrix for every token (``weights[indices]``: tokens × out × rank) and then runs a batched
matrix-vector product. On SmolLM2-135M with 32 sequences in flight that made a rank-16 adapter ~5× and a rank-32
stack ~9× slower than the base model (docs/benchmarks.md). A batch holds a handful of adapters at most, so grouping
the tokens by adapter and doing one ``x @ Wᵀ`` per adapter computes the same products with dense GEMMs.

Semantics are those of vLLM's torch ops with one exception: a token whose LoRA index is ``-1`` (a request to the
base model) gets no LoRA. The stock ops index ``weights[-1]``, i.e. they apply whatever adapter sits in the last
slot to base-model tokens that share a batch with LoRA requests.

How it is switched on: vLLM loads ``vllm.general_plugins`` entry points in every process it starts (API server,
engine core, workers); :func:`register` (our entry point, pyproject.toml) patches the CPU punica wrapper when
``SAFEGENE_CPU_LORA=grouped`` is set in the environment. ``safegene serve`` sets it for its engines (config
``engine.cpu_lora_kernels``); a plain ``vllm serve`` in the same environment keeps vLLM's own ops unless the variable
is set. The patch targets internals of vLLM 0.32.0, which is pinned exactly (pyproject.toml).
"""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger("vllm.safegene_cpu_lora")  # vLLM configures "vllm.*" loggers in its processes
ENV = "SAFEGENE_CPU_LORA"
#: values of $SAFEGENE_CPU_LORA: "grouped" (these kernels) or "stock" (vLLM's own)
KERNELS = ("grouped", "stock")
_PATCHED = False


def _weights(w: Any) -> Any:
    return w.squeeze(1) if w.dim() == 4 else w


def grouped_matmul(x: Any, weights: Any, indices: Any, dtype: Any) -> Any:
    """``out[t] = x[t] @ weights[indices[t]]ᵀ`` in ``dtype``, one GEMM per distinct index; rows with index < 0 are 0.

    ``x`` [T, in], ``weights`` [L, (1,) out, in], ``indices`` [T] → [T, out]."""
    import torch  # lazy: this module is imported by vLLM's plugin loader in every process, torch or not needed

    w = _weights(weights)
    x = x.to(dtype)
    n = x.shape[0]
    if n == 0:
        return torch.zeros((0, w.shape[1]), dtype=dtype, device=x.device)
    first = int(indices[0])
    if first >= 0 and bool((indices == first).all()):  # the common case: one adapter for the whole batch
        return x @ w[first].to(dtype).t()
    out = torch.zeros((n, w.shape[1]), dtype=dtype, device=x.device)
    for idx in torch.unique(indices).tolist():
        if idx < 0:
            continue
        rows = (indices == idx).nonzero(as_tuple=True)[0]
        out[rows] = x[rows] @ w[idx].to(dtype).t()
    return out


def bgmv_shrink(inputs, lora_a_weights, output_tensor, lora_indices_tensor, scaling: float = 1.0) -> None:
    out = grouped_matmul(inputs, lora_a_weights, lora_indices_tensor, output_tensor.dtype)
    output_tensor[:, : out.shape[1]] = scaling * out


def bgmv_expand(inputs, lora_b_weights, output_tensor, lora_indices_tensor, add_inputs: bool = True) -> None:
    outputs = grouped_matmul(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    limit = output_tensor.shape[0]
    if outputs.shape[0] == 1 and output_tensor.shape[0] != 1:
        limit = 1
    common = min(outputs.shape[1], output_tensor.shape[1])  # adapter and model may pad differently
    if add_inputs:
        output_tensor[:, :common] += outputs[:limit, :common]
    else:
        output_tensor[:, :common] = outputs[:limit, :common]


def bgmv_expand_slice(inputs, lora_b_weights, output_tensor, lora_indices_tensor, slice_offset: int,
                      slice_size: int, add_inputs: bool = True) -> None:
    outputs = grouped_matmul(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    if add_inputs:
        output_tensor[:, slice_offset: slice_offset + slice_size] += outputs
    else:
        output_tensor[:, slice_offset: slice_offset + slice_size] = outputs


def _explode(lora_indices_tensor, seq_len_tensor):
    import torch  # lazy: see grouped_matmul

    return torch.repeat_interleave(lora_indices_tensor, seq_len_tensor)


def sgmv_shrink(inputs, lora_a_weights, output_tensor, b_seq_start_loc, seq_len_tensor, lora_indices_tensor,
                batches, max_seq_length, token_nums, scaling) -> None:
    bgmv_shrink(inputs, lora_a_weights, output_tensor, _explode(lora_indices_tensor, seq_len_tensor), scaling)


def sgmv_expand(inputs, lora_b_weights, output_tensor, b_seq_start_loc, seq_len_tensor, lora_indices_tensor,
                batches, max_seq_length, token_nums, add_inputs: bool = False) -> None:
    bgmv_expand(inputs, lora_b_weights, output_tensor, _explode(lora_indices_tensor, seq_len_tensor), add_inputs)


def sgmv_expand_slice(inputs, lora_b_weights, output_tensor, b_seq_start_loc, seq_len_tensor, lora_indices_tensor,
                      batches, max_seq_length, token_nums, slice_offset, slice_size, add_inputs: bool = False) -> None:
    bgmv_expand_slice(inputs, lora_b_weights, output_tensor, _explode(lora_indices_tensor, seq_len_tensor),
                      slice_offset, slice_size, add_inputs)


OPS = {f.__name__: f for f in (bgmv_shrink, bgmv_expand, bgmv_expand_slice, sgmv_shrink, sgmv_expand,
                               sgmv_expand_slice)}


def patch() -> None:
    """Point vLLM's CPU punica wrapper at the grouped ops (idempotent)."""
    global _PATCHED
    if _PATCHED:
        return
    # lazy: only a process that runs a CPU LoRA engine needs vLLM's LoRA internals
    from vllm.lora.punica_wrapper import punica_cpu

    for name, fn in OPS.items():
        if not callable(getattr(punica_cpu, name, None)):
            raise RuntimeError(f"vllm.lora.punica_wrapper.punica_cpu.{name} is gone: the vLLM pin and {__name__} "
                               "disagree")
        setattr(punica_cpu, name, fn)
    _PATCHED = True
    log.info("CPU LoRA: grouped kernels (one GEMM per adapter in the batch)")


def register() -> None:
    """vLLM plugin entry point: patch when ``$SAFEGENE_CPU_LORA`` asks for the grouped kernels."""
    kernels = os.environ.get(ENV, "stock")
    if kernels not in KERNELS:
        raise ValueError(f"${ENV} must be one of {', '.join(KERNELS)} (got {kernels!r})")
    if kernels == "grouped":
        patch()
