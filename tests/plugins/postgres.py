"""A throw-away PostgreSQL cluster for the tests: ``initdb`` into a temporary folder, served on a free loopback port
(and a Unix socket inside that folder), stopped and removed at the end.

PostgreSQL refuses to run as root, so as root the cluster runs as the ``postgres`` system user (the Debian package
creates it) through ``runuser``. Tests that need it call :func:`postgres_or_skip`, which skips with the reason when
no PostgreSQL server binaries are installed (``apt-get install postgresql`` brings them).

Fixture ``postgres`` (module scope): a started :class:`PostgresCluster`.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from server.process import free_port


def find_bindir() -> Path | None:
    """The newest installed PostgreSQL's server binaries (Debian: /usr/lib/postgresql/<major>/bin), or None."""
    cands = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[-3]))
    if cands:
        return Path(cands[-1]).parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


class PostgresCluster:
    """One PostgreSQL server on 127.0.0.1:``port``; ``dsn`` connects to its ``safegene`` database."""

    def __init__(self, bindir: Path):
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="safegene-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.user: str | None = None
        if os.geteuid() == 0:
            self.user = "postgres"
            uid = pwd.getpwnam(self.user)
            os.chown(self.root, uid.pw_uid, uid.pw_gid)
        self.dsn = f"host=127.0.0.1 port={self.port} user=postgres dbname=safegene connect_timeout=3"

    def _run(self, *argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        cmd = [str(self.bindir / argv[0]), *argv[1:]]
        if self.user is not None:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=timeout, cwd=self.root)

    def init(self) -> "PostgresCluster":
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        self.start()
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "safegene")
        return self

    def start(self) -> None:
        opts = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                f"-c max_connections=100 -c shared_buffers=16MB")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-o", opts, "-w", "-t", "60",
                  "start")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._run("pg_isready", "-h", "127.0.0.1", "-p", str(self.port), check=False).returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError(f"PostgreSQL did not accept connections; log:\n{self.log()}")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop", check=False)

    def log(self) -> str:
        try:
            return (self.root / "server.log").read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def close(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def postgres_or_skip() -> PostgresCluster:
    """A started cluster, or a skip that says why there is none."""
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed: apt-get install postgresql")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run PostgreSQL as")
    cluster = PostgresCluster(bindir)
    try:
        return cluster.init()
    except (subprocess.CalledProcessError, RuntimeError) as e:
        out = getattr(e, "stderr", "") or ""
        cluster.close()
        pytest.fail(f"could not start PostgreSQL from {bindir}: {e}\n{out}")


@pytest.fixture(scope="module")
def postgres():
    cluster = postgres_or_skip()
    yield cluster
    cluster.close()
