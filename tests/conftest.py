"""Shared fixtures.

* ``tiny_model``: one deterministic tiny Llama (4 layers, head_dim 64, fp32) per test session.
* ``make_lora``: factory for random PEFT LoRA folders on the tiny model.
* ``run_cli``: run ``safegene ...`` in-process and capture its exit code and output.

Fixtures that start real servers live in ``tests/plugins/`` and are shared by the whole session, because a vLLM
engine takes ~20 s to start on 2 cores.
"""

from __future__ import annotations

import io
import os
import sys
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent

pytest_plugins = [
    "tests.plugins.live_server",
    "tests.plugins.postgres",
    "tests.plugins.docker_images",
]


@pytest.fixture
def isolated_home(tmp_path, monkeypatch) -> Path:
    """A fresh $SAFEGENE_HOME for the test, so caches and artifacts of other tests never leak in."""
    home = tmp_path / "home"
    monkeypatch.setenv("SAFEGENE_HOME", str(home))
    return home


@pytest.fixture
def one_thread():
    """torch on one thread: tiny training and SVD steps lose more to OpenMP hand-offs than they gain on 2 cores."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from safegene_runtime.testing.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "base")


@pytest.fixture
def make_lora(tiny_model, tmp_path):
    from safegene_runtime.testing.tiny import make_random_lora

    counter = iter(range(10_000))

    def _make(name: str | None = None, **kw) -> Path:
        return make_random_lora(tmp_path / (name or f"lora{next(counter)}"), tiny_model, **kw)

    return _make


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def run_cli():
    from safegene_runtime.cli import main

    def _run(*args: str) -> CliResult:
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            try:
                code = main([str(a) for a in args])
            except SystemExit as e:  # argparse errors
                code = int(e.code or 0)
        return CliResult(code, out.getvalue(), err.getvalue())

    return _run


def python() -> str:
    return sys.executable
