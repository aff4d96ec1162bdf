"""Test helper: a real Prometheus on loopback, started from our committed config with the target and intervals
rewritten, so the live test exercises the same scrape job and rule file that docker compose uses.

Prometheus comes from Debian (`apt-get install prometheus` provides /usr/bin/prometheus and /usr/bin/promtool);
it is installed on first use because the dashboard test is part of `make test`. We never touch the system service:
each test run starts its own process with its own storage folder and kills it afterwards.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx
import yaml

from tests.deploy.apt import AptError, apt_install

REPO = Path(__file__).resolve().parents[2]
PROM_DIR = REPO / "deploy" / "prometheus"
PROM_CONFIG = PROM_DIR / "prometheus.yml"
ALERTS = PROM_DIR / "alerts.yml"
ALERTS_TEST = PROM_DIR / "alerts_test.yml"


class PrometheusMissing(RuntimeError):
    """Prometheus/promtool are not installed and could not be installed."""


def ensure_prometheus() -> tuple[str, str]:
    """Return (prometheus, promtool) paths, installing Debian's `prometheus` package when they are missing."""
    found = shutil.which("prometheus"), shutil.which("promtool")
    if all(found):
        return found  # type: ignore[return-value]
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise PrometheusMissing(
            "prometheus/promtool not found and cannot install them (needs root and apt-get). "
            "Install them with: sudo apt-get update && sudo apt-get install -y prometheus"
        )
    try:
        apt_install("prometheus", timeout=600)
    except AptError as e:
        raise PrometheusMissing(f"{e}\ncannot run the Prometheus tests") from e
    found = shutil.which("prometheus") or "/usr/bin/prometheus", shutil.which("promtool") or "/usr/bin/promtool"
    for path in found:
        if not Path(path).exists():
            raise PrometheusMissing(f"installed Debian's prometheus package but {path} does not exist")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loopback_config(target: str, *, interval: str = "1s", metrics_path: str = "/metrics") -> dict:
    """The committed prometheus.yml with the `safegene` job pointed at `target` and every interval set to `interval`."""
    cfg = yaml.safe_load(PROM_CONFIG.read_text())
    cfg["global"]["scrape_interval"] = interval
    cfg["global"]["evaluation_interval"] = interval
    cfg["rule_files"] = [str((PROM_DIR / f).resolve()) for f in cfg.get("rule_files", [])]
    jobs = [j for j in cfg["scrape_configs"] if j["job_name"] == "safegene"]
    if len(jobs) != 1:
        raise ValueError(f"{PROM_CONFIG}: expected exactly one scrape job named 'safegene'")
    job = jobs[0]
    job["scrape_interval"] = interval
    job["scrape_timeout"] = interval
    job["metrics_path"] = metrics_path
    job["static_configs"] = [{"targets": [target]}]
    cfg["scrape_configs"] = [job]
    return cfg


class Prometheus:
    """A Prometheus process on 127.0.0.1:<free port>; use as a context manager so it is always killed."""

    def __init__(self, target: str, workdir: Path, *, interval: str = "1s", metrics_path: str = "/metrics"):
        self.binary, self.promtool = ensure_prometheus()
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(loopback_config(target, interval=interval, metrics_path=metrics_path)))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.workdir / "prometheus.log"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "Prometheus":
        check = subprocess.run([self.promtool, "check", "config", str(self.config_path)], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"promtool rejected the loopback config:\n{check.stdout}{check.stderr}")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [self.binary, f"--config.file={self.config_path}", f"--storage.tsdb.path={self.workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self._log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.__exit__(None, None, None)
        raise RuntimeError(f"prometheus not ready after 60 s:\n{self.log_tail()}")

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if getattr(self, "_log", None):
            self._log.close()

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def query(self, expr: str) -> list[dict]:
        """Instant query at 'now'; returns the result list (vector samples), raising with Prometheus's error."""
        r = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=30)
        body = r.json()
        if body.get("status") != "success":
            raise AssertionError(f"query failed ({body.get('errorType')}: {body.get('error')}):\n{expr}")
        data = body["data"]
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def scrape_count(self) -> int:
        """Number of scrapes of the target stored so far (grows by one per interval)."""
        res = self.query('count_over_time(up{job="safegene"}[1h])')
        return int(float(res[0]["value"][1])) if res else 0

    def wait_scrapes(self, n: int, timeout: float = 60) -> None:
        """Block until `n` more scrapes have landed (so counters seen on /metrics are in the TSDB)."""
        start = self.scrape_count()
        deadline = time.monotonic() + timeout
        while self.scrape_count() < start + n:
            if time.monotonic() > deadline:
                raise AssertionError(f"prometheus did not scrape {n} times in {timeout} s:\n{self.log_tail()}")
            time.sleep(0.25)

    def target_health(self) -> list[dict]:
        r = httpx.get(f"{self.url}/api/v1/targets", timeout=10).json()
        return r["data"]["activeTargets"]
