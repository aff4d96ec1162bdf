"""What the machine can do, for the defaults that depend on it (engine dtype, LoRA kernels, memory checks).

Why the dtype: vLLM's ``--dtype auto`` takes the checkpoint's dtype (bf16 for most instruct models). On a CPU without
native bf16 arithmetic (AVX512-BF16 or AMX) vLLM's bf16 linear layers fall back to slow reference kernels (its log:
"Failed to create oneDNN linear, fallback to torch linear"), so there float32 is the faster choice; with them, bf16
is (docs/benchmarks.md).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import torch

#: CPU flags (/proc/cpuinfo) that give native bf16 matrix arithmetic
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
#: ONEDNN_MAX_CPU_ISA values that stop oneDNN (vLLM's CPU linear layers) short of its bf16 kernels
NO_BF16_ISAS = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI")


#: engine.cpu_threads values (config.py): where a CPU engine computes
CPU_THREADS = ("auto", "all", "vllm")
#: hosts with this many usable CPUs or fewer give the engine every core under "auto": with 2 cores, vLLM's binding
#: (one core kept for the API front end) left the engine half the machine; measured 1.26-1.42x faster with both
#: cores (docs/benchmarks.md). Larger hosts keep vLLM's binding (not measured here).
CPU_ALL_CORES_UP_TO = 2


def on_gpu() -> bool:
    return bool(torch.cuda.is_available())


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The first CPU's feature flags (empty where /proc/cpuinfo cannot be read)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_bf16() -> bool:
    """Native bf16 matrix arithmetic: the CPU has it, and ``ONEDNN_MAX_CPU_ISA`` does not cap oneDNN below it (the cap
    is also how a bf16-capable host measures what a host without it gets: docs/benchmarks.md)."""
    if os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in NO_BF16_ISAS:
        return False
    return any(f in cpu_flags() for f in BF16_FLAGS)


def engine_dtype(requested: str) -> str:
    """The dtype an engine runs in: ``requested``, except that ``auto`` on a CPU means bfloat16 only where the CPU
    computes bf16 natively and float32 elsewhere (on a GPU, ``auto`` stays vLLM's: the checkpoint's dtype)."""
    if requested != "auto" or on_gpu():
        return requested
    return "bfloat16" if cpu_has_bf16() else "float32"


def usable_cpus() -> list[int]:
    """The CPUs this process may run on (a container's or cgroup's share, not the machine's)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return list(range(os.cpu_count() or 1))


def threads_bind(setting: str) -> str | None:
    """The ``VLLM_CPU_OMP_THREADS_BIND`` value for ``engine.cpu_threads`` (None: leave vLLM's default)."""
    cpus = usable_cpus()
    if setting == "all" or (setting == "auto" and len(cpus) <= CPU_ALL_CORES_UP_TO):
        return ",".join(map(str, cpus))
    return None
