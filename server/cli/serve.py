"""``safegene serve --config FILE``: the OpenAI-compatible server (thin wrapper; the work is in ``server/``)."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve the base model, each task LoRA and its safety-stacked variant behind an OpenAI-compatible API",
        description=(
            "Start one vLLM engine for the base model, build every '<task>+safegene' variant (task LoRA stacked with "
            "the λ-scaled safety adapter) into content-addressed folders, register all variants, then open the "
            "port. Serves /v1/models, /v1/chat/completions, /v1/completions, /health, /metrics and an admin API. "
            "Start-up refuses (exit 1, naming the entry) on any invalid config entry, before the engine starts. "
            "Config schema: docs/server.md; examples: deploy/configs/ and the demo's server/configs/demo-cpu.yaml."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", required=True, help="server YAML config (see docs/server.md)")
    p.add_argument("--host", help="override server.host")
    p.add_argument("--port", type=int, help="override server.port")
    p.add_argument("--check", action="store_true",
                   help="validate the config and build every variant, then exit without starting the engine")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # lazy: `safegene --help` must stay instant; the server pulls in torch (and vLLM once it serves)
    from ..main import run_server

    return run_server(args.config, host=args.host, port=args.port, check_only=args.check)
