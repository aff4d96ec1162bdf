"""``mode: merged``: a variant served from its merged checkpoint by its own vLLM engine, in the same process.

Why: on vLLM-CPU a LoRA request runs ~7x slower than the same model with the deltas merged in
(docs pilot-findings), so a hot variant can be served at full speed from ``base + ΔT (+ λ·ΔS)``
(``safegene_runtime.merge.merge_checkpoint``, content-addressed under ``<state_dir>/merged``).

How it fits the rest of the server without changing it:

* the registry builds the merged folder instead of a LoRA folder (:func:`build_merged_variant`) and hands it to the
  engine ops like any variant; :class:`DispatchOps` sees a full checkpoint and starts an engine for it
  (:class:`MergedEngines`: AsyncLLM + vLLM's OpenAI app state, LoRA off, served-model-name = the variant name),
  so admin add / retire / swap start and stop engines through the same code paths as LoRA variants;
* the middleware routes a request whose ``model`` is a merged variant to that engine's app, so auth, validation,
  metrics (``mode="merged"`` in ``safegene_adapter_info``) and judge accounting apply unchanged;
* ``/v1/models`` merges every engine's cards, each with the same ``safegene`` lineage field.

The extra engines run with ``--disable-log-stats``: vLLM's Prometheus logger unregisters every ``vllm:*`` collector
when it starts, which would wipe the base engine's series; our ``safegene_*`` series cover merged variants.

:func:`check_memory` refuses a config whose engines (weights + KV cache each) would not fit in memory.
"""

from __future__ import annotations

import logging
import os
import re
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import ConfigError, ServerConfig

log = logging.getLogger("safegene.server.merged")
GiB = 1 << 30
#: vLLM's default --gpu-memory-utilization (on CPU: the fraction of RAM an engine reserves when no KV size is set)
DEFAULT_UTILIZATION = 0.92
#: flags of the LoRA engine that make no sense for a merged engine (dropped; flag name -> takes a value)
_LORA_FLAGS = {"--model": True, "--served-model-name": True, "--enable-lora": False, "--max-lora-rank": True,
               "--max-loras": True, "--max-cpu-loras": True, "--lora-dtype": True}


# --- building ----------------------------------------------------------------------------------------------------


def build_merged_variant(ctx: Any, task: str, version: str, variant: str, plain_dir: Path,
                         coefficients: dict[str, Any] | None, served: str) -> dict[str, Any]:
    """Merge the task adapter (and for ``safe`` the λ-scaled safety adapter) into the base; the registry record.

    ``path`` is the merged checkpoint (its manifest carries the lineage); ``adapter_path`` the task snapshot.
    """
    from safegene_runtime.merge import merge_checkpoint

    kw: dict[str, Any] = {"task": plain_dir}
    if variant == "safe":
        kw.update(safety=ctx.safety_path, coefficients=coefficients)
    name = served.replace("+", "-")  # folder name; the served name stays the variant's
    # An engine run in float32 gets a float32 merge: rounding W + ΔT + λ·ΔS back to a bf16 base would drop part of
    # a small safety delta that the fp32 engine could have applied exactly. Other engine dtypes keep the base's.
    if str(ctx.cfg.engine.dtype).lower() in ("float32", "float"):
        kw["dtype"] = "float32"
    path = merge_checkpoint(ctx.cfg.base_model, store=ctx.cfg.state_dir / "merged", name=f"{name}-{version}",
                            progress=False, **kw)
    from safegene_runtime.artifacts import read_manifest

    kept = read_manifest(path).get("delta_retention", 1.0)
    if kept < 0.9:
        log.warning("merged %s keeps only %.0f%% of its adapter delta after rounding to the base dtype: serve it "
                    "stacked (mode: stacked) or with engine.dtype float32 (then merged in float32) for the exact "
                    "weights", served, 100 * kept)
    return {"served_name": served, "path": str(path), "rank": 0, "mode": "merged", "adapter_path": str(plain_dir)}


def is_merged_checkpoint(path: Path) -> bool:
    p = Path(path)
    return (p / "config.json").is_file() and not (p / "adapter_config.json").is_file()


# --- memory check ------------------------------------------------------------------------------------------------


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


def _on_gpu() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # pragma: no cover - torch always importable here
        return False


def check_memory(cfg: ServerConfig, engines: list[tuple[str, int]], *, runtime: bool = False) -> None:
    """Refuse (ConfigError naming the engines and numbers) when ``engines`` [(label, weight bytes)] do not fit.

    Each engine needs its weights plus its KV cache. On CPU the KV size is VLLM_CPU_KVCACHE_SPACE (or
    ``--kv-cache-memory-bytes``); without it vLLM reserves gpu_memory_utilization x total RAM per engine. The budget
    is ``server.memory_budget_gb`` or MemAvailable. On a GPU every engine claims gpu_memory_utilization of the card,
    so their sum must stay <= 1. ``runtime``: a later engine, checked against what is free now.
    """
    util = cfg.engine.gpu_memory_utilization or DEFAULT_UTILIZATION
    what = "server" if runtime else str(cfg.path)
    if _on_gpu() and len(engines) > 1 and util * len(engines) > 1.0 and not cfg.memory_budget_gb:
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
    elif _on_gpu() or "MemAvailable" not in mem:
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


def planned_engines(cfg: ServerConfig, records: dict[str, dict[str, Any]] | None = None) -> list[tuple[str, int]]:
    """The base engine plus one per merged variant (from built records, else from the config's task entries).

    A merged checkpoint has the base's weight size, so this works before anything is merged."""
    w = weights_bytes(cfg.base_model)
    out = [(f"base {cfg.served_name!r}", w)]
    if records is not None:
        names = [v["served_name"] for r in records.values() for v in r["variants"].values()
                 if v.get("mode") == "merged"]
    else:
        from .registry import served_name

        names = [served_name(t.name, v) for t in cfg.tasks for v in t.variants if t.mode_of(v) == "merged"]
    return out + [(f"merged {n!r}", w) for n in names]


# --- engines -----------------------------------------------------------------------------------------------------


def merged_argv(cfg: ServerConfig, name: str, path: Path) -> list[str]:
    """The LoRA engine's flags (dtype, context, eager, seed, extra_args, ...) minus LoRA, for one merged model."""
    from .engine import engine_argv

    base = engine_argv(cfg, 8, 0)
    argv, i = [], 0
    while i < len(base):
        flag = base[i]
        if flag in _LORA_FLAGS:
            i += 2 if _LORA_FLAGS[flag] else 1
            continue
        argv.append(flag)
        i += 1
    return ["--model", str(path), "--served-model-name", name, "--disable-log-stats"] + argv


@dataclass
class MergedEngine:
    name: str
    path: Path
    client: Any
    app: Any
    stack: AsyncExitStack


class MergedEngines:
    """One vLLM engine + OpenAI app per merged variant, keyed by served name."""

    def __init__(self, cfg: ServerConfig):
        self.cfg = cfg
        self.engines: dict[str, MergedEngine] = {}

    def app_for(self, name: str) -> Any:
        e = self.engines.get(name)
        return e.app if e is not None else None

    async def start(self, name: str, path: Path) -> None:
        from vllm.entrypoints.launchers.api_server.app_state import init_app_state
        from vllm.entrypoints.launchers.api_server.entry import build_async_engine_client
        from vllm.entrypoints.launchers.app import build_app

        from .engine import parse_engine_args

        if name in self.engines:
            raise RuntimeError(f"an engine for {name!r} is already running")
        w = weights_bytes(path)
        if self.cfg.memory_budget_gb is not None:  # the budget covers every engine: count the running ones too
            running = [(f"base {self.cfg.served_name!r}", weights_bytes(self.cfg.base_model))]
            running += [(f"merged {n!r}", weights_bytes(e.path)) for n, e in self.engines.items()]
            check_memory(self.cfg, running + [(f"merged {name!r}", w)], runtime=True)
        else:  # MemAvailable already reflects the running engines
            check_memory(self.cfg, [(f"merged {name!r}", w)], runtime=True)
        args = parse_engine_args(merged_argv(self.cfg, name, Path(path)))
        stack = AsyncExitStack()
        try:
            client = await stack.enter_async_context(build_async_engine_client(args))
            supported = await client.get_supported_tasks()
            app = build_app(args, supported, client.model_config)
            await init_app_state(client, app.state, args, supported)
        except BaseException:
            await stack.aclose()
            raise
        self.engines[name] = MergedEngine(name, Path(path), client, app, stack)
        log.info("merged engine for %s started from %s", name, path)

    async def stop(self, name: str) -> None:
        e = self.engines.pop(name, None)
        if e is not None:
            await e.stack.aclose()
            log.info("merged engine for %s stopped", name)

    async def close(self) -> None:
        for name in list(self.engines):
            try:
                await self.stop(name)
            except Exception:  # pragma: no cover - shutting down anyway
                log.exception("stopping merged engine %s failed", name)

    async def cards(self, registry: Any) -> list[dict[str, Any]]:
        out = []
        for name, e in self.engines.items():
            s = registry.served.get(name)
            if s is None or s.state == "retiring":
                continue  # staging engine during a swap, or a variant being retired
            listing = (await e.app.state.openai_serving_models.show_available_models()).model_dump()
            for card in listing["data"]:
                if card["id"] == name:
                    card["safegene"] = s.lineage()
                    out.append(card)
        return out


class DispatchOps:
    """:class:`server.registry.EngineOps` that sends LoRA folders to the shared engine and merged checkpoints to
    their own engines, so the registry's add / swap / retire logic is the same for both modes."""

    def __init__(self, lora_ops: Any, merged: MergedEngines):
        self.lora = lora_ops
        self.merged = merged

    async def load(self, name: str, path: Path) -> None:
        if is_merged_checkpoint(path):
            await self.merged.start(name, path)
        else:
            await self.lora.load(name, path)

    async def unload(self, name: str) -> None:
        if name in self.merged.engines:
            await self.merged.stop(name)
        else:
            await self.lora.unload(name)

    async def list_models(self, registry: Any) -> dict[str, Any]:
        listing = await self.lora.list_models(registry)
        listing["data"] = listing["data"] + await self.merged.cards(registry)
        return listing
