"""``safegene``: one subcommand per pipeline step.

Each subcommand lives in its own module and exposes ``register(subparsers) -> None``, which adds its parser and sets
``func`` (called with the parsed args, returns an exit code). The method's steps are modules of
``safegene_runtime.cli``; the server's (``serve``, ``demo``) live in the ``server`` package and are found through
the ``safegene.commands`` entry points (pyproject.toml), so this package never imports the server. Modules import
their heavy dependencies (torch, transformers, vLLM) inside ``func`` so that ``safegene --help`` stays instant and
never imports vLLM.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from importlib.metadata import entry_points
from typing import Any, Callable

from .. import __version__

#: entry-point group through which other installed packages (the server) add subcommands
PLUGIN_GROUP = "safegene.commands"
#: subcommand names, in the order of the pipeline (shown in this order by --help); a module of this package, or an
#: entry point of PLUGIN_GROUP
COMMAND_MODULES = (
    "models",     # models prepare: the demo model from its shipped GGUF
    "extract",    # stage 1: aligned - degraded -> safety adapter
    "select",     # stage 2: data-aware layer selection
    "calibrate",  # stage 3: few-shot per-layer coefficients
    "stack",      # task + scaled safety -> one LoRA (exact, or within a rank budget)
    "merge",      # fold deltas into a full checkpoint
    "baseline",   # uniform, RESTA+DARE, Safe LoRA, SafeMERGE, and their tuner
    "serve",      # the OpenAI-compatible server (server package; imports vLLM)
    "eval",       # evaluation harness against any OpenAI-compatible endpoint
    "decide",     # the decision rule: is SafeGene beaten by a baseline on all three numbers (paired tests)
    "gate",       # the safety gate: may a new task-adapter version serve (plain, safe only, or not at all)
    "judge",      # judges: train the prompt-harm head, judge a file
    "demo",       # the README's demo (server package)
)


def _registrar(name: str, plugins: dict[str, Any]) -> Callable[[Any], None] | None:
    """The ``register`` function of subcommand ``name``: an entry point, else a module here (None: not installed)."""
    if name in plugins:
        return plugins[name].load()
    try:
        return importlib.import_module(f"{__name__}.{name}").register
    except ModuleNotFoundError as e:
        if e.name == f"{__name__}.{name}":
            return None  # neither built in nor installed (e.g. the server package is absent)
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="safegene",
        description=(
            "SafeGene Serve: build a reusable safety adapter once per model family, calibrate it per task adapter "
            "with a few shots, and serve task adapters with safety stacked in, behind an OpenAI-compatible API."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Pipeline: extract -> select -> calibrate -> stack|merge -> serve -> eval. "
        "Run 'safegene <command> --help' for each step.",
    )
    parser.add_argument("--version", action="version", version=f"safegene {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    plugins = {ep.name: ep for ep in entry_points(group=PLUGIN_GROUP)}
    for name in COMMAND_MODULES:
        register = _registrar(name, plugins)
        if register is not None:
            register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # user-facing errors: one clear line, no traceback, unless SAFEGENE_DEBUG is set
        from ..artifacts import ArtifactError  # lazy: artifacts imports nothing heavy, but only errors need it

        if os.environ.get("SAFEGENE_DEBUG") or not isinstance(e, (ArtifactError, ValueError, FileNotFoundError)):
            raise
        print(f"safegene {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
