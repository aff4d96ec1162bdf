"""A Docker daemon for the container tests: the one already running, or one this test session starts and stops.

Starting one needs root and Debian's ``docker.io`` package (installed here when missing and apt-get works). The
daemon gets its own socket and data root, no bridge NAT rules (``--iptables=false``): images build and containers
run with ``--network host``, which reaches the package registries like the host does. Base images come from
``debootstrap`` (Debian's mirror, as apt already uses it) and ``docker import``, since no image registry is reachable.
Anything missing is a skip with the reason printed, never a failure of the code under test.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests.deploy.apt import AptError, apt_install

BASE_IMAGE = "safegene-base:bookworm"
CPU_IMAGE = "safegene-serve:0.1.0-cpu"
PROM_IMAGE = "safegene-prometheus:debian"
REPO = Path(__file__).resolve().parents[2]
SOCKET = "/var/run/safegene-test-docker.sock"


class DockerUnavailable(Exception):
    """No daemon can be had here; the message is the reason to print."""


def _run(cmd: list[str], timeout: float = 600, env: dict[str, str] | None = None,
         check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def _apt_install(*packages: str) -> None:
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise DockerUnavailable(f"{', '.join(packages)} missing and this user cannot apt-get install them")
    try:
        apt_install(*packages, timeout=900)
    except AptError as e:
        raise DockerUnavailable(str(e)) from e


class DockerHost:
    """``docker`` commands against a daemon that works, started here if needed (``close()`` stops that one)."""

    def __init__(self) -> None:
        self.env = dict(os.environ)
        self.proc: subprocess.Popen | None = None
        self.workdir = Path(tempfile.mkdtemp(prefix="safegene-docker-"))
        # SAFEGENE_TEST_DOCKER_ROOT keeps the daemon's images between runs (a developer's cache; CI starts bare)
        kept = os.environ.get("SAFEGENE_TEST_DOCKER_ROOT")
        self.data_root = Path(kept) if kept else self.workdir / "data"
        if not shutil.which("docker"):
            _apt_install("docker.io")
        if _run(["docker", "info"], timeout=60, check=False).returncode != 0:
            self._start_daemon()

    def _start_daemon(self) -> None:
        if not shutil.which("dockerd"):
            _apt_install("docker.io")
        if not shutil.which("dockerd"):
            raise DockerUnavailable("no dockerd binary")
        if os.geteuid() != 0:
            raise DockerUnavailable("dockerd needs root")
        log = open(self.workdir / "dockerd.log", "wb")
        self.proc = subprocess.Popen(
            ["dockerd", f"--host=unix://{SOCKET}", f"--data-root={self.data_root}",
             f"--exec-root={self.workdir / 'exec'}", f"--pidfile={self.workdir / 'dockerd.pid'}",
             "--iptables=false", "--ip6tables=false", "--bridge=none"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.env["DOCKER_HOST"] = f"unix://{SOCKET}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise DockerUnavailable(f"dockerd exited ({self.proc.returncode}): {self.log_tail()}")
            if self.docker("info", check=False, timeout=10).returncode == 0:
                return
            time.sleep(0.5)
        self.close()
        raise DockerUnavailable(f"dockerd did not answer within 60 s: {self.log_tail()}")

    def log_tail(self, n: int = 15) -> str:
        try:
            return "\n".join((self.workdir / "dockerd.log").read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def docker(self, *args: str, timeout: float = 1800, check: bool = True, input_: bytes | None = None
               ) -> subprocess.CompletedProcess:
        if input_ is not None:
            proc = subprocess.run(["docker", *args], input=input_, capture_output=True, timeout=timeout, env=self.env)
            if check and proc.returncode != 0:
                raise RuntimeError(f"docker {' '.join(args[:3])} exited {proc.returncode}: {proc.stderr[-2000:]!r}")
            return proc
        return _run(["docker", *args], timeout=timeout, env=self.env, check=check)

    def has_image(self, tag: str) -> bool:
        return self.docker("image", "inspect", tag, check=False, timeout=60).returncode == 0

    def base_image(self) -> str:
        """A Debian bookworm image from debootstrap (minbase), imported once per daemon."""
        if self.has_image(BASE_IMAGE):
            return BASE_IMAGE
        if not shutil.which("debootstrap"):
            _apt_install("debootstrap")
        root = self.workdir / "rootfs"
        _run(["debootstrap", "--variant=minbase", "bookworm", str(root), debian_mirror()], timeout=1800)
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(["docker", "import", "-", BASE_IMAGE], stdin=tar.stdout, capture_output=True,
                                  env=self.env, timeout=900)
        tar.wait()
        shutil.rmtree(root, ignore_errors=True)
        if imported.returncode != 0:
            raise RuntimeError(f"docker import failed: {imported.stderr[-2000:]!r}")
        return BASE_IMAGE

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        shutil.rmtree(self.workdir, ignore_errors=True)


def debian_mirror() -> str:
    """The Debian mirror apt uses here (deb822 .sources or sources.list), else deb.debian.org."""
    for p in sorted(Path("/etc/apt").rglob("*.sources")) + [Path("/etc/apt/sources.list")]:
        try:
            text = p.read_text()
        except OSError:
            continue
        m = re.search(r"^URIs:\s*(\S+)", text, re.M) or re.search(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+bookworm", text, re.M)
        if m and "security" not in m.group(1):
            return m.group(1)
    return "http://deb.debian.org/debian"


def torch_cpu_wheel() -> Path | None:
    """torch's CPU wheel from the wheel folder pip is configured with here (``pip config list``: find-links)."""
    out = subprocess.run(["python3", "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if "find-links" in line:
            folder = Path(line.split("=", 1)[1].strip().strip("'\""))
            wheels = sorted(folder.glob("torch-2.13.0+cpu-*.whl"))
            if wheels:
                return wheels[0]
    return None


def build_images(docker: DockerHost) -> dict[str, str]:
    """Build the CPU server image (deploy/Dockerfile.cpu, from this checkout) and the Debian-package Prometheus image
    on the debootstrap base; ``{"cpu": tag, "prometheus": tag}``."""
    base = docker.base_image()
    copied: list[Path] = []
    wheel = torch_cpu_wheel()
    if wheel is not None and not any((REPO / "deploy" / "wheels").glob("torch-*.whl")):
        copied.append(REPO / "deploy" / "wheels" / wheel.name)
        shutil.copy2(wheel, copied[-1])
    for ca in sorted(Path("/usr/local/share/ca-certificates").glob("*.crt")):  # this host's TLS proxy, if any
        copied.append(REPO / "deploy" / "certs" / ca.name)
        shutil.copy2(ca, copied[-1])
    try:
        # with the host's torch wheel at hand, PyTorch's index (unreachable from some hosts) is left out
        index = ["--build-arg", "TORCH_INDEX="] if wheel is not None else []
        docker.docker("build", "--network", "host", "-f", "deploy/Dockerfile.cpu", "--build-arg", f"BASE={base}",
                      *index, "-t", CPU_IMAGE, str(REPO), timeout=3600)
    finally:
        for p in copied:
            p.unlink(missing_ok=True)
    docker.docker("build", "--network", "host", "-f", str(REPO / "deploy" / "prometheus" / "Dockerfile"),
                  "--build-arg", f"BASE={base}", "-t", PROM_IMAGE, str(REPO / "deploy" / "prometheus"), timeout=1800)
    return {"cpu": CPU_IMAGE, "prometheus": PROM_IMAGE}
