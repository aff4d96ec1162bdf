"""The `safegene` CLI: every pipeline step is a subcommand, --help is instant and never imports vLLM."""

import subprocess
import sys

from safegene_runtime.cli import COMMAND_MODULES, build_parser


def test_every_subcommand_is_registered_with_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert sorted(sub.choices) == sorted(COMMAND_MODULES)
    for name, p in sub.choices.items():
        assert p.description or p.format_help().strip(), name


def test_help_does_not_import_vllm():
    code = "import sys; from safegene_runtime.cli import build_parser; build_parser(); print('vllm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_runtime_imports_without_vllm():
    # safegene_runtime must run the method with torch/safetensors/transformers alone: block vllm and import all of it.
    code = (
        "import sys, importlib, pkgutil; sys.modules['vllm'] = None\n"
        "import safegene_runtime\n"
        "for m in pkgutil.walk_packages(safegene_runtime.__path__, 'safegene_runtime.'):\n"
        "    if not m.name.endswith('__main__'): importlib.import_module(m.name)\n"
        "print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_no_command_prints_help_and_fails(run_cli):
    r = run_cli()
    assert r.code == 2 and "Pipeline: extract" in r.out
