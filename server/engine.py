"""vLLM engine + OpenAI app assembly: the module that touches vLLM internals (with `merged.py` for merged-mode engines).

We assemble vLLM's own OpenAI server in-process (what ``run_server_worker`` does in
``vllm/entrypoints/launchers/api_server/entry.py``) so that adapters are registered through
``app.state.openai_serving_models`` without vLLM's unauthenticated runtime-LoRA routes, and our middleware wraps the
app. These are internal APIs that moved in 0.30 and 0.33: vLLM is pinned exactly (pyproject: vllm[-cpu]==0.32.0).

Order: parse engine args → bind the socket (not listening yet) → start the engine → build the app and its state →
register every variant → add our middleware → listen. Clients can only connect once everything is registered.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from .accounting import JudgeQueue
from .config import ServerConfig
from .registry import Registry

log = logging.getLogger("safegene.server.engine")


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
        "--dtype", e.dtype,
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


def parse_engine_args(argv: list[str]) -> Any:
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = make_arg_parser(FlexibleArgumentParser(prog="safegene serve (vLLM engine)"))
    args = parser.parse_args(argv)
    validate_parsed_serve_args(args)
    return args


class VllmOps:
    """:class:`server.registry.EngineOps` over vLLM's serving-models object and engine client."""

    def __init__(self, serving_models: Any, engine_client: Any, base_name: str):
        self.models = serving_models
        self.engine = engine_client
        self.base_name = base_name

    async def load(self, name: str, path: Path) -> None:
        from vllm.entrypoints.serve.engine.protocol import ErrorResponse
        from vllm.entrypoints.serve.lora.protocol import LoadLoRAAdapterRequest

        res = await self.models.load_lora_adapter(
            LoadLoRAAdapterRequest(lora_name=name, lora_path=str(Path(path).resolve())),
            base_model_name=self.base_name,
        )
        if isinstance(res, ErrorResponse):
            raise RuntimeError(res.error.message)

    async def unload(self, name: str) -> None:
        from vllm.entrypoints.serve.lora.protocol import UnloadLoRAAdapterRequest

        req = self.models.lora_requests.get(name)
        await self.models.unload_lora_adapter(UnloadLoRAAdapterRequest(lora_name=name))
        if req is not None:  # vLLM's unload only forgets the name; free the engine's cached weights too
            try:
                await self.engine.remove_lora(req.lora_int_id)
            except Exception as e:  # pragma: no cover - the name is gone already, which is what matters
                log.warning("remove_lora(%s) failed: %s", name, e)

    async def list_models(self, registry: Registry) -> dict[str, Any]:
        """vLLM's /v1/models cards for served names only, each with a ``safegene`` lineage field."""
        listing = (await self.models.show_available_models()).model_dump()
        cards = []
        for card in listing["data"]:
            s = registry.served.get(card["id"])
            if s is None or s.state == "retiring":
                continue  # staging names during a swap, or a variant being retired
            card["safegene"] = s.lineage()
            cards.append(card)
        listing["data"] = cards
        return listing


async def serve(cfg: ServerConfig, registry: Registry, judge_queue: JudgeQueue | None) -> None:
    """Start the engine, register everything, then listen until SIGINT/SIGTERM."""
    os.environ.pop("VLLM_ALLOW_RUNTIME_LORA_UPDATING", None)  # keep vLLM's unauthenticated LoRA routes off
    import vllm.envs as envs
    from vllm.entrypoints.launchers.api_server.app_state import init_app_state
    from vllm.entrypoints.launchers.api_server.entry import build_async_engine_client
    from vllm.entrypoints.launchers.app import build_app
    from vllm.entrypoints.launchers.launcher import serve_http, setup_server

    from .app import SafeGeneMiddleware
    from .merged import DispatchOps, MergedEngines

    args = parse_engine_args(engine_argv(cfg, registry.max_lora_rank, registry.variant_count()))
    _listen, sock = setup_server(args, reuse_port=False)  # bound (fails fast if taken), not yet listening
    merged = MergedEngines(cfg)  # one engine per `mode: merged` variant (server/merged.py)
    try:
        async with build_async_engine_client(args) as engine_client:
            supported = await engine_client.get_supported_tasks()
            app = build_app(args, supported, engine_client.model_config)
            await init_app_state(engine_client, app.state, args, supported)
            ops = DispatchOps(VllmOps(app.state.openai_serving_models, engine_client, cfg.served_name), merged)
            await registry.attach(ops)
            if judge_queue is not None:
                judge_queue.start()

            async def models_handler() -> dict[str, Any]:
                return await ops.list_models(registry)

            # build_app's sagemaker bootstrap already built Starlette's middleware stack; nothing has been served
            # yet, so dropping it (it is rebuilt on the first request) lets ours go on as the outermost layer
            app.middleware_stack = None
            app.add_middleware(
                SafeGeneMiddleware, cfg=cfg, registry=registry, judge_queue=judge_queue,
                models_handler=models_handler, max_model_len=engine_client.model_config.max_model_len,
                router=merged.app_for,
            )
            names = ", ".join(registry.served)
            print(f"SafeGene server ready on http://{cfg.host}:{cfg.port}/v1 serving: {names}", flush=True)
            shutdown_task = await serve_http(
                app, sock=sock, host=args.host, port=args.port, log_level=args.uvicorn_log_level,
                access_log=False, timeout_keep_alive=envs.VLLM_HTTP_TIMEOUT_KEEP_ALIVE,
            )
        await shutdown_task
    finally:
        await merged.close()
        sock.close()
        if judge_queue is not None:
            judge_queue.stop()
