"""Memory planning: refuse a config whose engines (weights + KV cache each) would not fit, before anything starts.

The server runs one engine for the base model (with every LoRA variant) plus one per ``mode: merged`` variant; a
merged checkpoint has the base's size, so the plan is known from the config before anything is merged.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .config import ConfigError, ServerConfig
from .hardware import on_gpu
from .records import TaskRecord, served_name

GiB = 1 << 30
#: vLLM's default --gpu-memory-utilization (on CPU: the fraction of RAM an engine reserves when no KV size is set)
DEFAULT_UTILIZATION = 0.92


def _gib(n: float) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB / 10 else f"{n / (1 << 20):.1f} MiB"


def weights_bytes(model: Path) -> int:
    """Bytes of a model folder's weight files (what an engine holds for weights)."""
    files = list(Path(model).glob("*.safetensors")) or list(Path(model).glob("*.bin"))
    return sum(f.stat().st_size for f in files)


def _meminfo() -> dict[str, int]:
    out = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            k, _, rest = line.partition(":")
            out[k] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return out


def _kv_bytes(cfg: ServerConfig) -> int | None:
    """The KV cache size each engine allocates when it is set explicitly (VLLM_CPU_KVCACHE_SPACE or flag)."""
    extra = cfg.engine.extra_args
    for i, a in enumerate(extra):
        if a.startswith("--kv-cache-memory-bytes"):
            v = a.split("=", 1)[1] if "=" in a else (extra[i + 1] if i + 1 < len(extra) else "")
            m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)i?[bB]?", v.strip())
            if m:
                mult = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": GiB, "t": 1 << 40}[m.group(2).lower()]
                return int(float(m.group(1)) * mult)
    env = os.environ.get("VLLM_CPU_KVCACHE_SPACE", "")
    if env.strip().isdigit():
        return int(env) * GiB
    return None


def check_memory(cfg: ServerConfig, engines: list[tuple[str, int]], *, runtime: bool = False) -> None:
    """Refuse (ConfigError naming the engines and numbers) when ``engines`` [(label, weight bytes)] do not fit.

    Each engine needs its weights plus its KV cache. On CPU the KV size is VLLM_CPU_KVCACHE_SPACE (or
    ``--kv-cache-memory-bytes``); without it vLLM reserves gpu_memory_utilization x total RAM per engine. The budget
    is ``server.memory_budget_gb`` or MemAvailable. On a GPU every engine claims gpu_memory_utilization of the card,
    so their sum must stay <= 1. ``runtime``: a later engine, checked against what is free now.
    """
    util = cfg.engine.gpu_memory_utilization or DEFAULT_UTILIZATION
    what = "server" if runtime else str(cfg.path)
    if on_gpu() and len(engines) > 1 and util * len(engines) > 1.0 and not cfg.memory_budget_gb:
        raise ConfigError(
            f"{what}: does not fit in GPU memory: {len(engines)} engines ({', '.join(n for n, _ in engines)}) each "
            f"claim engine.gpu_memory_utilization={util} of the GPU ({util * len(engines):.2f} > 1); set "
            f"engine.gpu_memory_utilization <= {1 / len(engines):.2f} or serve fewer variants with mode: merged")
    mem = _meminfo()
    kv = _kv_bytes(cfg)
    if kv is None and len(engines) == 1 and not runtime and cfg.memory_budget_gb is None:
        return  # one engine sizing itself from RAM: vLLM checks that itself (per NUMA node, which we cannot see)
    needs = []
    for label, w in engines:
        need = w + kv if kv is not None else max(w, int(util * mem.get("MemTotal", 0)))
        needs.append((label, w, need))
    total = sum(n for _, _, n in needs)
    if cfg.memory_budget_gb is not None:
        budget, source = cfg.memory_budget_gb * GiB, "server.memory_budget_gb"
    elif on_gpu() or "MemAvailable" not in mem:
        return  # GPU weights/KV live on the card (checked above); no /proc/meminfo: nothing to compare against
    else:
        budget, source = mem["MemAvailable"], "MemAvailable in /proc/meminfo"
    if total <= budget:
        return
    kv_txt = (f"KV cache {_gib(kv)} each" if kv is not None else
              f"no VLLM_CPU_KVCACHE_SPACE set, so each engine reserves gpu_memory_utilization {util} x "
              f"{mem.get('MemTotal', 0) / GiB:.1f} GiB RAM")
    detail = "; ".join(f"{label}: weights {_gib(w)}, needs {_gib(n)}" for label, w, n in needs)
    raise ConfigError(
        f"{what}: does not fit in memory: {len(needs)} engine(s) need about {_gib(total)} ({detail}; "
        f"{kv_txt}) but only {_gib(budget)} is available ({source}). Serve fewer variants with mode: merged, "
        + ("lower VLLM_CPU_KVCACHE_SPACE" if kv is not None else
           "set VLLM_CPU_KVCACHE_SPACE (GiB of KV cache per engine) or lower engine.gpu_memory_utilization")
        + ", or raise server.memory_budget_gb if the detected memory is wrong")


def planned_engines(cfg: ServerConfig, records: dict[str, TaskRecord] | None = None) -> list[tuple[str, int]]:
    """The base engine plus one per merged variant (from built records, else from the config's task entries).

    A merged checkpoint has the base's weight size, so this works before anything is merged."""
    w = weights_bytes(cfg.base_model)
    out = [(f"base {cfg.served_name!r}", w)]
    if records is not None:
        names = [v.served_name for r in records.values() for v in r.variants.values() if v.mode == "merged"]
    else:
        names = [served_name(t.name, v) for t in cfg.tasks for v in t.variants if t.mode_of(v) == "merged"]
    return out + [(f"merged {n!r}", w) for n in names]
