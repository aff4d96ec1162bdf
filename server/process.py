"""Run an OpenAI-compatible server (``safegene serve`` or plain vLLM) as a child process: the one launcher that the
demo, the tests, the benchmarks and the study share.

Why a child process: vLLM's engine spawns its own engine-core process and installs signal handlers, so a server is
started as ``python -m ...`` in a session of its own (one process group), and stopping it stops the whole group,
engine core included. Every started server is remembered and stopped when the interpreter exits, so an interrupted
run never leaves an engine behind. Readiness is ``GET /health`` answering 200 (both servers have it; ours opens the
port only once every variant is registered).

Nothing here imports vLLM.
"""

from __future__ import annotations

import atexit
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Callable, Sequence

#: how long a server may take to become healthy (a safeguard: ~20-60 s on 2 idle cores, minutes when merging)
START_TIMEOUT_S = float(os.environ.get("SAFEGENE_SERVER_START_TIMEOUT", "600"))
Argv = Sequence[str] | Callable[[int], Sequence[str]]


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago (another process may still take it: see ``start``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def safegene_serve_argv(config: str | Path) -> list[str]:
    """The command line of ``safegene serve --config <config>`` in this interpreter."""
    return [sys.executable, "-m", "safegene_runtime.cli", "serve", "--config", str(config)]


def vllm_serve_argv(model: str | Path, port: int, *flags: str) -> list[str]:
    """Plain vLLM's OpenAI server (its module: the ``vllm`` console script crashes on some CPU hosts)."""
    return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--host", "127.0.0.1",
            "--port", str(port), *flags]


def server_env(kvcache_gib: str | None = "1", **overrides: str) -> dict[str, str]:
    """The environment a server gets: offline, vLLM's runtime-LoRA routes off, and a fixed CPU KV cache size
    (``kvcache_gib=None`` leaves ``VLLM_CPU_KVCACHE_SPACE`` out: set, it overrides ``--kv-cache-memory-bytes``)."""
    env = dict(os.environ)
    if kvcache_gib is None:
        env.pop("VLLM_CPU_KVCACHE_SPACE", None)
    else:
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", kvcache_gib)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["HF_HUB_OFFLINE"] = env["TRANSFORMERS_OFFLINE"] = "1"
    env.pop("VLLM_ALLOW_RUNTIME_LORA_UPDATING", None)
    env.update(overrides)
    return env


_LIVE: list["ServerProcess"] = []


def stop_all() -> None:
    """Stop every server this process started and has not stopped yet."""
    for s in list(_LIVE):
        s.stop()


atexit.register(stop_all)


class ServerProcess:
    """One server child process on 127.0.0.1.

    ``argv`` is a command line, or a function of the port: then the port is picked just before the start and picked
    again when another process took it in between (ports chosen up front get stolen on a busy machine). With a fixed
    command line, ``port`` must be the one it listens on. ``log_path`` receives stdout and stderr (None: this
    process's own)."""

    def __init__(self, argv: Argv, *, port: int | None = None, log_path: Path | None = None,
                 env: dict[str, str] | None = None, cwd: Path | None = None, label: str = "server"):
        if not callable(argv) and port is None:
            raise ValueError("a fixed command line needs the port it listens on")
        self.argv_fn = argv if callable(argv) else (lambda _port, a=list(argv): a)
        self.fixed_port = None if callable(argv) else port
        self.port = port or 0
        self.log_path, self.env, self.cwd, self.label = log_path, env or server_env(), cwd, label
        self.argv: list[str] = []
        self.proc: subprocess.Popen | None = None
        self.start_seconds = math.nan
        self._log: IO[bytes] | None = None

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI base URL (``.../v1``)."""
        return f"{self.root_url}/v1"

    def start(self, timeout: float = START_TIMEOUT_S, attempts: int = 3) -> "ServerProcess":
        """Start and wait for ``/health``; RuntimeError with the log's tail when it exits or times out first."""
        for attempt in range(attempts):
            try:
                return self._start_once(timeout)
            except RuntimeError:
                retry = self.fixed_port is None and "Address already in use" in self.tail(200)
                if attempt + 1 < attempts and retry:
                    self.stop()
                    continue
                raise
        raise AssertionError("unreachable")

    def _start_once(self, timeout: float) -> "ServerProcess":
        import httpx  # lazy: only a starting server needs an HTTP client

        self.port = self.fixed_port or free_port()
        self.argv = [str(a) for a in self.argv_fn(self.port)]
        self._log = open(self.log_path, "wb") if self.log_path is not None else None
        t0 = time.monotonic()
        self.proc = subprocess.Popen(self.argv, cwd=str(self.cwd) if self.cwd else None, env=self.env,
                                     stdout=self._log, stderr=subprocess.STDOUT if self._log else None,
                                     start_new_session=True)
        _LIVE.append(self)
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"[{self.label}] exited with code {self.proc.returncode} before it was healthy"
                                   + self._where())
            try:
                if httpx.get(f"{self.root_url}/health", timeout=2).status_code == 200:
                    self.start_seconds = time.monotonic() - t0
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"[{self.label}] not healthy after {timeout:.0f}s" + self._where())

    def _where(self) -> str:
        return f"; log {self.log_path}:\n{self.tail()}" if self.log_path is not None else " (see its output above)"

    def tail(self, n: int = 80) -> str:
        if self.log_path is None:
            return ""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def rss_mb(self) -> float:
        """Resident memory of the server and all its children (API process + engine core), MiB."""
        if self.proc is None or self.proc.poll() is not None:
            return math.nan
        import psutil  # lazy: a vLLM dependency, needed only by the benchmarks

        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return math.nan
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total / 2**20

    def stop(self, timeout: float = 60) -> int | None:
        """SIGINT (graceful), then SIGTERM, then SIGKILL of the whole process group; returns the exit code."""
        if self.proc is None:
            return None
        proc = self.proc
        for sig, wait in ((signal.SIGINT, timeout), (signal.SIGTERM, 15)):
            if proc.poll() is not None:
                break
            try:
                proc.send_signal(sig)
                proc.wait(wait)
            except subprocess.TimeoutExpired:
                continue
            except ProcessLookupError:
                break
        try:  # the engine core lives in the same session: make sure none outlives the server
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if proc.poll() is None:
            proc.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None
        if self in _LIVE:
            _LIVE.remove(self)
        return proc.returncode
