"""kill -9 in the middle of a version swap, then a restart: the registry loads and both variants serve one version."""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import pytest

from tests.plugins.live_server import (ADMIN_KEY, API_KEY, build_tiny_family, free_port, serve_config, start_server,
                                       tiny_config, write_config)

pytestmark = pytest.mark.engine


def _admin(port: int) -> httpx.Client:
    return httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                        timeout=120)


def _versions(port: int) -> dict[str, str]:
    with _admin(port) as a:
        return {v["id"]: (v.get("task_version") or "", v["state"]) for v in a.get("/admin/variants").json()["variants"]}


def test_kill_9_mid_swap_then_restart_serves_one_version(tmp_path, tiny_model):
    from safegene_runtime.testing.tiny import make_random_lora

    family = build_tiny_family(tmp_path, base=tiny_model)
    for name, seed in (("k-a", 41), ("k-b", 42)):
        make_random_lora(family["adapter_root"] / name, tiny_model, rank=8, seed=seed)
    port = free_port()
    cfg = write_config(tmp_path / "server.yaml", tiny_config(tmp_path, family, port=port, tasks=[], judges=[]))
    body = {"name": "k9", "coefficients": {"layers": {"1": 1.0}, "default": 0.5}}
    sp = serve_config(cfg, tmp_path / "server.log", port)
    sp.env["SAFEGENE_TEST_SWAP_HOLD_S"] = "30"  # the swap holds the pair long enough to be killed there
    sp.start()
    try:
        with _admin(port) as a:
            assert a.post("/admin/adapters", json={**body, "version": "v1", "path": "k-a"}).status_code == 201
        def register_v2() -> None:
            try:
                _admin(port).post("/admin/adapters", json={**body, "version": "v2", "path": "k-b"})
            except httpx.HTTPError:  # the server is killed under this request: that is the point
                pass

        swap = threading.Thread(target=register_v2)
        swap.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "swapping" not in {s for _, s in _versions(port).values()}:
            time.sleep(0.05)
        assert "swapping" in {s for _, s in _versions(port).values()}, _versions(port)
        os.killpg(sp.proc.pid, signal.SIGKILL)
        sp.proc.wait(30)
        swap.join(60)
    finally:
        sp.stop()
    restarted = start_server(cfg, tmp_path / "server2.log", port)
    try:
        v = _versions(port)
        assert v["k9"][0] == v["k9+safegene"][0] == "v1", v  # the swap never finished: the old pair, whole
        r = httpx.post(f"http://127.0.0.1:{port}/v1/completions", headers={"Authorization": f"Bearer {API_KEY}"},
                       json={"model": "k9+safegene", "prompt": "Hi", "max_tokens": 2}, timeout=120)
        assert r.status_code == 200 and r.headers["x-safegene-task-version"] == "v1"
    finally:
        restarted.stop()
