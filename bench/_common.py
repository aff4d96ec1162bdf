"""Helpers shared by the benchmark scripts: server processes, free ports, RSS, statistics, load average.

Pure helpers (``percentile``, ``summarize``, ``ratio``, ``median``) import nothing heavy, so the smoke test can use
them without starting anything. Servers run in their own session (process group) so that stopping one also stops
vLLM's engine-core child; every process started here is remembered and killed at exit, so an interrupted benchmark
never leaves a server running.
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
from typing import Any, Callable, Iterable, Sequence

REPO = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------------------------------- statistics
def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method), ``q`` in [0, 100]; NaN for no values."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be in [0, 100], got {q}")
    xs = sorted(float(v) for v in values)
    if not xs:
        return math.nan
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def median(values: Iterable[float]) -> float:
    xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return percentile(xs, 50) if xs else math.nan


def ratio(num: float, den: float) -> float:
    """num/den, NaN when either side is missing or the denominator is zero (never raises mid-report)."""
    if num is None or den is None or math.isnan(num) or math.isnan(den) or den == 0:
        return math.nan
    return num / den


def summarize(samples: Sequence[float]) -> dict[str, float]:
    """p50/p95/mean of latency samples (seconds), plus the count."""
    xs = list(samples)
    return {"n": len(xs), "p50": percentile(xs, 50), "p95": percentile(xs, 95),
            "mean": (sum(xs) / len(xs)) if xs else math.nan}


def loadavg() -> tuple[float, float, float]:
    return os.getloadavg()


# --------------------------------------------------------------------------------------------------- processes
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_env(kvcache_gib: str | None = "1") -> dict[str, str]:
    """The environment every engine gets (same for all configurations, so they compare).

    ``kvcache_gib=None`` removes ``VLLM_CPU_KVCACHE_SPACE``: set, it overrides ``--kv-cache-memory-bytes`` on CPU.
    """
    env = dict(os.environ)
    if kvcache_gib is None:
        env.pop("VLLM_CPU_KVCACHE_SPACE", None)
    else:
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", kvcache_gib)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["HF_HUB_OFFLINE"] = env["TRANSFORMERS_OFFLINE"] = "1"
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("VLLM_ALLOW_RUNTIME_LORA_UPDATING", None)
    return env


_LIVE: list["Server"] = []


def _stop_all() -> None:
    for s in list(_LIVE):
        s.stop()


atexit.register(_stop_all)


def _on_signal(signum, _frame):  # SIGTERM/SIGHUP: stop servers, then exit like the signal would
    _stop_all()
    sys.exit(128 + signum)


for _sig in (signal.SIGTERM, signal.SIGHUP):
    try:
        signal.signal(_sig, _on_signal)
    except (ValueError, OSError):  # not the main thread (e.g. imported by a test runner thread)
        pass


class Server:
    """One OpenAI-compatible server subprocess (plain vLLM or ``safegene serve``) on 127.0.0.1:``port``."""

    def __init__(self, label: str, argv_fn: Callable[[int], list[str]], log_path: Path,
                 env: dict[str, str] | None = None):
        """``argv_fn(port)`` builds the command line: the port is picked at start, just before it is bound, and
        picked again if another process took it in between (ports chosen up front get stolen on a busy machine)."""
        self.label, self.argv_fn, self.log_path = label, argv_fn, log_path
        self.port = 0
        self.argv: list[str] = []
        self.env = env if env is not None else bench_env()
        self.proc: subprocess.Popen | None = None
        self._log = None
        self.start_seconds = math.nan

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 600, attempts: int = 3) -> "Server":
        for attempt in range(attempts):
            try:
                return self._start_once(timeout)
            except RuntimeError:
                if attempt + 1 < attempts and "Address already in use" in self.tail(200):
                    self.stop()
                    continue
                raise
        raise AssertionError("unreachable")

    def _start_once(self, timeout: float) -> "Server":
        import httpx

        self.port = free_port()
        self.argv = self.argv_fn(self.port)
        self._log = open(self.log_path, "wb")
        t0 = time.monotonic()
        self.proc = subprocess.Popen(self.argv, cwd=str(REPO), env=self.env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        if self not in _LIVE:
            _LIVE.append(self)
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"[{self.label}] server exited with {self.proc.returncode} before it was healthy; "
                                   f"log {self.log_path}:\n{self.tail()}")
            try:
                if httpx.get(f"{self.base_url}/health", timeout=2).status_code == 200:
                    self.start_seconds = time.monotonic() - t0
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"[{self.label}] not healthy after {timeout:.0f}s; log {self.log_path}:\n{self.tail()}")

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def rss_mb(self) -> float:
        """Resident memory of the server and all its children (API process + engine core), MiB."""
        if self.proc is None or self.proc.poll() is not None:
            return math.nan
        import psutil

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

    def stop(self) -> None:
        """SIGINT (graceful), SIGTERM, then SIGKILL of the whole process group."""
        if self.proc is None:
            return
        for sig, wait in ((signal.SIGINT, 30), (signal.SIGTERM, 10)):
            if self.proc.poll() is not None:
                break
            try:
                self.proc.send_signal(sig)
                self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                continue
            except ProcessLookupError:
                break
        try:  # the engine-core child lives in the same session: make sure none outlives us
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self.proc.poll() is None:
            self.proc.wait(10)
        if self._log:
            self._log.close()
        if self in _LIVE:
            _LIVE.remove(self)
        self.proc = None


def fmt(x: Any, spec: str = ".1f") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return format(x, spec)
