"""The deploy tests' apt-get calls run one at a time (tests/deploy/apt.py), so the two test lanes cannot collide
on apt's dpkg lock on a fresh machine."""

from __future__ import annotations

import threading

import pytest

from tests.deploy import apt


def test_apt_installs_from_two_threads_never_overlap_and_pass_the_lock_wait(tmp_path, monkeypatch):
    log = tmp_path / "calls.log"
    fake = tmp_path / "bin" / "apt-get"
    fake.parent.mkdir()
    # a stand-in apt-get: logs its arguments with start and end times, takes 0.3 s, fails for package "broken"
    fake.write_text(f"""#!/bin/sh
echo "start $(date +%s.%N) $*" >> {log}
sleep 0.3
echo "end $(date +%s.%N)" >> {log}
case "$*" in *broken*) echo "E: Unable to locate package broken" >&2; exit 100;; esac
""")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:/usr/bin:/bin")
    monkeypatch.setattr(apt, "LOCK", tmp_path / "apt.lock")
    threads = [threading.Thread(target=apt.apt_install, args=(p,)) for p in ("prometheus", "docker.io")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    lines = log.read_text().split("\n")[:-1]
    assert len(lines) == 8  # update + install per call, a start and an end line each
    # each start is followed by its own end: no apt-get started while another ran
    assert [ln.split()[0] for ln in lines] == ["start", "end"] * 4, lines
    starts = [ln for ln in lines if ln.startswith("start")]
    assert all(f"DPkg::Lock::Timeout={apt.DPKG_LOCK_WAIT_S}" in ln for ln in starts)
    # one call's update and install are back to back (the lock is held across both)
    assert "update" in starts[0] and "install" in starts[1] and "update" in starts[2] and "install" in starts[3]
    with pytest.raises(apt.AptError, match="Unable to locate package broken"):
        apt.apt_install("broken")
