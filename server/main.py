"""Process entry for ``safegene serve``: validate and build first (fast, no engine), then start serving.

Order: load the config → check memory → build every variant (``build.py``) → parse the engine flags → bind the socket
(not listening yet) → start the engine and its app (``engine.py``) → register every variant (``registry.py``) →
start the judges and, with a shared registry, the follower (``reconcile.py``) → put our middleware around the app
(``app.py``) → listen. Clients can only connect once everything is registered; ``/ready`` answers 200 once the
judges run and the replica serves its registry's newest generation.
"""

from __future__ import annotations

import logging
import sys
from functools import partial
from pathlib import Path
from typing import Any

from safegene_runtime.judges import build_judges

from .accounting import JudgeQueue
from .app import SafeGeneMiddleware, internal_completer
from .config import ServerConfig, load_config
from .engine import (DispatchOps, LoraOps, MergedEngines, bind_socket, engine_argv, engine_environment,
                     open_engine_app, parse_engine_args, serve_http, wrap_app)
from .memory import check_memory, planned_engines
from .reconcile import Follower
from .registry import Registry


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(asctime)s %(name)s: %(message)s",
                        stream=sys.stderr)


def prepare(config: str | Path, *, host: str | None = None, port: int | None = None) -> Registry:
    """Load the config and build every variant. Raises ConfigError (a ValueError) naming the faulty entry."""
    cfg = load_config(config, host=host, port=port)
    check_memory(cfg, planned_engines(cfg))  # before building: merging a large model takes minutes
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    registry = Registry(cfg)
    registry.build_startup()
    check_memory(cfg, planned_engines(cfg, registry.records))  # restored admin entries included
    return registry


def judge_queue_for(cfg: ServerConfig) -> JudgeQueue | None:
    """The bounded judge queue of the configured judges (None: judging off). The judges load in its process."""
    if not cfg.judges.names:
        return None
    return JudgeQueue(partial(build_judges, list(cfg.judges.names)), maxsize=cfg.judges.queue_size,
                      batch_size=cfg.judges.batch_size, tokenizer=str(cfg.base_model))


async def serve(cfg: ServerConfig, registry: Registry, judge_queue: JudgeQueue | None) -> None:
    """Start the engine, register everything, then listen until SIGINT/SIGTERM."""
    engine_environment(cfg)
    args = parse_engine_args(engine_argv(cfg, registry.max_lora_rank, registry.variant_count()))
    sock = bind_socket(args)
    merged = MergedEngines(cfg)  # one engine per `mode: merged` variant
    follower = Follower(registry, cfg.registry.poll_s) if registry.shared else None
    try:
        async with open_engine_app(args) as (client, app):
            ops = DispatchOps(LoraOps(client, app, cfg.served_name), merged)
            await registry.attach(ops)
            if judge_queue is not None:
                judge_queue.start()
            if follower is not None:  # catch up with changes committed while this replica was loading
                follower.start()

            async def models_handler() -> dict[str, Any]:
                return await ops.list_models(registry.lineage_of)

            wrap_app(app, SafeGeneMiddleware, cfg=cfg, registry=registry, judge_queue=judge_queue,
                     models_handler=models_handler, max_model_len=client.model_config.max_model_len,
                     router=merged.app_for)
            registry.enable_gate(internal_completer(app), cfg.engine.max_num_seqs)
            names = ", ".join(registry.served)
            print(f"SafeGene server ready on http://{cfg.host}:{cfg.port}/v1 serving: {names}", flush=True)
            shutdown_task = await serve_http(app, sock, args, cfg.keep_alive_s)
        await shutdown_task
    finally:
        if follower is not None:
            await follower.stop()
        await merged.close()
        registry.jobs.shutdown()
        sock.close()
        if judge_queue is not None:
            judge_queue.stop()


def run_server(config: str | Path, *, host: str | None = None, port: int | None = None,
               check_only: bool = False) -> int:
    _setup_logging()
    registry = prepare(config, host=host, port=port)
    for rec in registry.records.values():
        for variant, v in rec.variants.items():
            print(f"built {v.served_name:<32} {variant:<5} {v.mode:<6} rank {v.rank:<4} {v.path}", flush=True)
    print(f"max_lora_rank {registry.max_lora_rank}; registry {registry.store.where}", flush=True)
    if check_only:
        return 0
    import uvloop  # lazy: a vLLM dependency that only a serving process needs

    uvloop.run(serve(registry.cfg, registry, judge_queue_for(registry.cfg)))
    print("SafeGene server stopped", flush=True)
    return 0
