"""Engine lifecycle over vLLM: the shared LoRA engine, one engine per merged variant, and their OpenAI apps.

The only module that touches vLLM internals. We assemble vLLM's own OpenAI server in-process (what
``run_server_worker`` does in ``vllm/entrypoints/launchers/api_server/entry.py``) so that adapters are registered
through ``app.state.openai_serving_models`` without vLLM's unauthenticated runtime-LoRA routes, and our middleware
wraps the app. These internal APIs moved in vLLM 0.30 and 0.33: vLLM is pinned exactly (pyproject: vllm[-cpu]==0.32.0).

* :class:`LoraOps` loads and unloads LoRA folders on the shared engine;
* :class:`MergedEngines` starts one engine + OpenAI app per ``mode: merged`` variant (a full checkpoint with the
  deltas folded in), LoRA off, served-model-name = the variant's name;
* :class:`DispatchOps` is the registry's :class:`~server.registry.EngineOps`: a LoRA folder goes to the shared
  engine, a merged checkpoint to its own engine, so add / swap / retire are the same code for both modes.

Merged engines run with ``--disable-log-stats``: vLLM's Prometheus logger unregisters every ``vllm:*`` collector
when it starts, which would wipe the base engine's series; our ``safegene_*`` series cover merged variants.

vLLM itself is imported lazily (``# lazy:``) so that ``server`` can be imported, its config validated and its
variants built (``safegene serve --check``, the tests) without loading vLLM.
"""

from __future__ import annotations

import logging
import os
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Callable

from .config import ServerConfig
from .cpu_lora import ENV as CPU_LORA_ENV
from .hardware import engine_dtype, on_gpu, threads_bind
from .memory import check_memory, weights_bytes

log = logging.getLogger("safegene.server.engine")
#: flags of the LoRA engine that make no sense for a merged engine (dropped; flag name -> takes a value)
_LORA_FLAGS = {"--model": True, "--served-model-name": True, "--enable-lora": False, "--max-lora-rank": True,
               "--max-loras": True, "--max-cpu-loras": True, "--lora-dtype": True}
Lineage = Callable[[str], "dict[str, Any] | None"]


# --- flags -------------------------------------------------------------------------------------------------------


def engine_argv(cfg: ServerConfig, max_lora_rank: int, n_variants: int) -> list[str]:
    """The vLLM serve flags for this config (engine section passed through)."""
    e = cfg.engine
    max_cpu = e.max_cpu_loras or max(e.max_loras, n_variants + 4)
    argv = [
        "--model", str(cfg.base_model),
        "--served-model-name", cfg.served_name,
        "--enable-lora",
        "--max-lora-rank", str(max_lora_rank),
        "--max-loras", str(e.max_loras),
        "--max-cpu-loras", str(max_cpu),
        "--dtype", engine_dtype(e.dtype),
        "--tensor-parallel-size", str(e.tensor_parallel_size),
        "--host", cfg.host,
        "--port", str(cfg.port),
        "--disable-uvicorn-access-log",
        "--disable-fastapi-docs",
    ]
    if e.max_model_len:
        argv += ["--max-model-len", str(e.max_model_len)]
    if e.enforce_eager:
        argv += ["--enforce-eager"]
    if e.gpu_memory_utilization:
        argv += ["--gpu-memory-utilization", str(e.gpu_memory_utilization)]
    if e.max_num_seqs:
        argv += ["--max-num-seqs", str(e.max_num_seqs)]
    if e.seed is not None:
        argv += ["--seed", str(e.seed)]
    if e.lora_dtype:
        argv += ["--lora-dtype", e.lora_dtype]
    return argv + list(e.extra_args)


def merged_argv(cfg: ServerConfig, name: str, path: Path) -> list[str]:
    """The LoRA engine's flags (dtype, context, eager, seed, extra_args, ...) minus LoRA, for one merged model."""
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


def parse_engine_args(argv: list[str]) -> Any:
    """vLLM's own parser and checks over our flags (an invalid ``extra_args`` entry fails here, before any engine)."""
    # lazy: vLLM takes seconds to import; config checks and builds run without it
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = make_arg_parser(FlexibleArgumentParser(prog="safegene serve (vLLM engine)"))
    args = parser.parse_args(argv)
    validate_parsed_serve_args(args)
    return args


def is_merged_checkpoint(path: Path) -> bool:
    p = Path(path)
    return (p / "config.json").is_file() and not (p / "adapter_config.json").is_file()


# --- engines and their apps --------------------------------------------------------------------------------------


@asynccontextmanager
async def open_engine_app(args: Any) -> AsyncIterator[tuple[Any, Any]]:
    """Start an engine and build vLLM's OpenAI app over it; yields ``(engine_client, app)``, stops the engine on exit.
    """
    # lazy: see the module docstring
    from vllm.entrypoints.launchers.api_server.app_state import init_app_state
    from vllm.entrypoints.launchers.api_server.entry import build_async_engine_client
    from vllm.entrypoints.launchers.app import build_app

    async with build_async_engine_client(args) as client:
        supported = await client.get_supported_tasks()
        app = build_app(args, supported, client.model_config)
        await init_app_state(client, app.state, args, supported)
        yield client, app


async def cards_of(app: Any, names: Callable[[str], "dict[str, Any] | None"]) -> list[dict[str, Any]]:
    """vLLM's /v1/models cards of one app, kept where ``names(id)`` gives a lineage (added as the ``safegene`` field).
    """
    listing = (await app.state.openai_serving_models.show_available_models()).model_dump()
    out = []
    for card in listing["data"]:
        lineage = names(card["id"])
        if lineage is None:
            continue  # staging names during a swap, or a variant being retired
        card["safegene"] = lineage
        out.append(card)
    return out


class LoraOps:
    """Load and unload LoRA folders on the shared engine, through vLLM's serving-models object."""

    def __init__(self, client: Any, app: Any, base_name: str):
        self.client = client
        self.app = app
        self.models = app.state.openai_serving_models
        self.base_name = base_name

    async def load(self, name: str, path: Path) -> None:
        # lazy: see the module docstring
        from vllm.entrypoints.serve.engine.protocol import ErrorResponse
        from vllm.entrypoints.serve.lora.protocol import LoadLoRAAdapterRequest

        res = await self.models.load_lora_adapter(
            LoadLoRAAdapterRequest(lora_name=name, lora_path=str(Path(path).resolve())),
            base_model_name=self.base_name,
        )
        if isinstance(res, ErrorResponse):
            raise RuntimeError(res.error.message)

    async def unload(self, name: str) -> None:
        # lazy: see the module docstring
        from vllm.entrypoints.serve.lora.protocol import UnloadLoRAAdapterRequest

        req = self.models.lora_requests.get(name)
        await self.models.unload_lora_adapter(UnloadLoRAAdapterRequest(lora_name=name))
        if req is not None:  # vLLM's unload only forgets the name; free the engine's cached weights too
            try:
                await self.client.remove_lora(req.lora_int_id)
            except Exception as e:  # pragma: no cover - the name is gone already, which is what matters
                log.warning("remove_lora(%s) failed: %s", name, e)


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
            client, app = await stack.enter_async_context(open_engine_app(args))
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

    async def cards(self, lineage_of: Lineage) -> list[dict[str, Any]]:
        out = []
        for name, e in self.engines.items():
            out += await cards_of(e.app, lambda card_id, n=name: lineage_of(n) if card_id == n else None)
        return out


class DispatchOps:
    """The registry's engine ops: LoRA folders go to the shared engine, merged checkpoints to their own engines."""

    def __init__(self, lora: LoraOps, merged: MergedEngines):
        self.lora = lora
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

    async def list_models(self, lineage_of: Lineage) -> dict[str, Any]:
        """/v1/models over every engine: served names only, each card with a ``safegene`` lineage field."""
        listing = (await self.lora.models.show_available_models()).model_dump()
        listing["data"] = await cards_of(self.lora.app, lineage_of) + await self.merged.cards(lineage_of)
        return listing


# --- HTTP --------------------------------------------------------------------------------------------------------


def engine_environment(cfg: ServerConfig) -> None:
    """Environment every engine this process starts inherits (vLLM's engine core is a child process)."""
    os.environ.pop("VLLM_ALLOW_RUNTIME_LORA_UPDATING", None)  # keep vLLM's unauthenticated LoRA routes off
    if not on_gpu():  # read by server.cpu_lora.register, which vLLM runs in the engine core as a plugin
        os.environ[CPU_LORA_ENV] = cfg.engine.cpu_lora_kernels
        bind = threads_bind(cfg.engine.cpu_threads)
        if bind is not None and "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:  # an operator's own setting wins
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = bind
            log.info("CPU engine threads on CPUs %s (engine.cpu_threads: %s)", bind, cfg.engine.cpu_threads)


def bind_socket(args: Any) -> Any:
    """Bind the port now (fails fast if it is taken) without listening: clients connect only once all is loaded."""
    # lazy: see the module docstring
    from vllm.entrypoints.launchers.launcher import setup_server

    _listen, sock = setup_server(args, reuse_port=False)
    return sock


def wrap_app(app: Any, middleware: type, **kw: Any) -> None:
    """Put ``middleware`` outermost around vLLM's app.

    build_app's sagemaker bootstrap already built Starlette's middleware stack; nothing has been served yet, so
    dropping it (it is rebuilt on the first request) lets ours go on as the outermost layer."""
    app.middleware_stack = None
    app.add_middleware(middleware, **kw)


async def serve_http(app: Any, sock: Any, args: Any, keep_alive_s: float) -> Any:
    """Listen on ``sock`` until SIGINT/SIGTERM; returns vLLM's shutdown task. ``keep_alive_s``: see
    :data:`server.config.DEFAULT_KEEP_ALIVE_S` (vLLM's own default, 5 s, races the clients' 5 s)."""
    # lazy: see the module docstring
    from vllm.entrypoints.launchers.launcher import serve_http as vllm_serve_http

    return await vllm_serve_http(
        app, sock=sock, host=args.host, port=args.port, log_level=args.uvicorn_log_level,
        access_log=False, timeout_keep_alive=keep_alive_s,
    )
