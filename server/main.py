"""Process entry for ``safegene serve``: validate + build first (fast, no engine), then start serving."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from .config import load_config
from .registry import Registry


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(asctime)s %(name)s: %(message)s",
                        stream=sys.stderr)


def prepare(config: str | Path, *, host: str | None = None, port: int | None = None) -> Registry:
    """Load the config and build every variant. Raises ConfigError (a ValueError) naming the faulty entry."""
    from .merged import check_memory, planned_engines

    cfg = load_config(config, host=host, port=port)
    check_memory(cfg, planned_engines(cfg))  # before building: merging a large model takes minutes
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    registry = Registry(cfg)
    registry.build_startup()
    check_memory(cfg, planned_engines(cfg, registry.records))  # restored admin entries included
    return registry


def run_server(config: str | Path, *, host: str | None = None, port: int | None = None,
               check_only: bool = False) -> int:
    _setup_logging()
    registry = prepare(config, host=host, port=port)
    cfg = registry.cfg
    for name, rec in registry.records.items():
        for variant, v in rec["variants"].items():
            mode = v.get("mode", "lora")
            print(f"built {v['served_name']:<32} {variant:<5} {mode:<6} rank {v['rank']:<4} {v['path']}", flush=True)
    print(f"max_lora_rank {registry.max_lora_rank}; registry {registry.file}", flush=True)
    if check_only:
        return 0

    from .accounting import JudgeQueue
    from .engine import serve

    judge_queue = None
    if cfg.judges.names:
        from safegene_runtime.judges import build_judges

        names = list(cfg.judges.names)
        judge_queue = JudgeQueue(lambda: build_judges(names), maxsize=cfg.judges.queue_size,
                                 batch_size=cfg.judges.batch_size)
    import uvloop

    uvloop.run(serve(cfg, registry, judge_queue))
    print("SafeGene server stopped", flush=True)
    return 0
