"""Helpers shared by the benchmark scripts: statistics, load average, and the server launcher.

Pure helpers (``percentile``, ``summarize``, ``ratio``, ``median``) import nothing heavy, so the smoke test can use
them without starting anything. Servers are started with ``server.process`` (the launcher the demo, the tests and
the study share): each runs in its own session so that stopping it also stops vLLM's engine-core child, and every
one is stopped at exit, so an interrupted benchmark never leaves a server running.
"""

from __future__ import annotations

import math
import os
import signal
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: make ``server`` importable from a checkout
    sys.path.insert(0, str(REPO))

from server.process import ServerProcess, server_env, stop_all  # noqa: E402


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
def bench_env(kvcache_gib: str | None = "1") -> dict[str, str]:
    """The environment every engine gets (same for all configurations, so they compare); see server_env."""
    return server_env(kvcache_gib, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def bench_server(label: str, argv_fn: Callable[[int], list[str]], log_path: Path,
                 env: dict[str, str] | None = None) -> ServerProcess:
    """One server for a benchmark configuration; its port is picked at start (``server.process``)."""
    return ServerProcess(argv_fn, log_path=log_path, env=env or bench_env(), cwd=REPO, label=label)


def _on_signal(signum, _frame):  # SIGTERM/SIGHUP: stop servers, then exit like the signal would
    stop_all()
    sys.exit(128 + signum)


def install_signal_handlers() -> None:
    """Stop every started server on SIGTERM/SIGHUP too (atexit covers normal exits and Ctrl-C)."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)


def fmt(x: Any, spec: str = ".1f") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return format(x, spec)
