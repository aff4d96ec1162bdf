"""Debian packages for the deploy tests, installed one ``apt-get`` at a time.

Why: ``make test`` runs its two lanes side by side (scripts/run_tests.sh), and on a fresh machine the docker tests'
background image build (``docker.io``, ``debootstrap``) and the Prometheus tests (``prometheus``) can install at the
same moment; apt holds one dpkg lock, so the second call failed at once with "Could not get lock
/var/lib/dpkg/lock-frontend" (seen 2026-12-02, four Prometheus tests errored). A file lock orders this project's own
calls, and ``DPkg::Lock::Timeout`` makes apt wait for any other holder instead of failing.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import tempfile
from pathlib import Path

#: the file lock every apt-get call of the test suite takes (machine-wide: both lanes are separate processes)
LOCK = Path(tempfile.gettempdir()) / "safegene-apt.lock"
#: seconds apt itself waits for a dpkg lock held by a process outside this suite
DPKG_LOCK_WAIT_S = 600


class AptError(RuntimeError):
    """``apt-get install`` failed; the message holds the command and the end of its output."""


def apt_install(*packages: str, timeout: float = 900) -> None:
    """``apt-get update`` (its failure tolerated: the install then says what is missing) and ``apt-get install`` of
    ``packages``, holding :data:`LOCK` throughout."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    wait = ["-o", f"DPkg::Lock::Timeout={DPKG_LOCK_WAIT_S}"]
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        subprocess.run(["apt-get", *wait, "update", "-qq"], env=env, capture_output=True, text=True, timeout=timeout)
        cmd = ["apt-get", *wait, "install", "-y", "-qq", "--no-install-recommends", *packages]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AptError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-2000:]}")
