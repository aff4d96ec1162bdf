"""Version swaps under load: v1 -> v2 -> v1 of one task while 8 clients stream its plain and safe variants.

Every response says which version answered (``x-safegene-task-version``). Done when: no client request fails, and
no response comes from a half-swapped pair: once any response from the new version has completed, no request that
starts afterwards, to either variant, is answered by the old one.
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest

pytestmark = pytest.mark.engine

CLIENTS = 8
BODY = {"max_tokens": 12, "temperature": 0.0, "stream": True, "ignore_eos": True,
        "messages": [{"role": "user", "content": "Tell me about the sea."}]}


def _adapter(server, name: str, seed: int):
    from safegene_runtime.testing.tiny import make_random_lora

    path = server.adapter_root / name
    if not path.exists():
        make_random_lora(path, server.family["base"], rank=8, seed=seed)
    return name


def _register(server, version: str, folder: str) -> httpx.Response:
    with server.admin() as admin:
        return admin.post("/admin/adapters", json={"name": "swap", "version": version, "path": folder,
                                                   "coefficients": {"layers": {"1": 1.0}, "default": 0.5}})


def _stream(client: httpx.Client, model: str) -> tuple[float, float, str, str | None]:
    """(start, end, version, error) of one streamed chat completion."""
    t0 = time.monotonic()
    try:
        with client.stream("POST", "/v1/chat/completions", json={**BODY, "model": model}) as r:
            version = r.headers.get("x-safegene-task-version", "")
            if r.status_code != 200:
                return t0, time.monotonic(), version, f"HTTP {r.status_code}: {r.read()[:200]!r}"
            data = b"".join(r.iter_bytes())
        if b'"error"' in data or b"[DONE]" not in data:
            return t0, time.monotonic(), version, f"stream did not complete: {data[-200:]!r}"
        return t0, time.monotonic(), version, None
    except httpx.HTTPError as e:
        return t0, time.monotonic(), "", repr(e)


def test_swap_v1_v2_v1_under_load_moves_plain_and_safe_together(live_server):
    v1, v2 = _adapter(live_server, "swap-a", 31), _adapter(live_server, "swap-b", 32)
    r = _register(live_server, "v1", v1)
    assert r.status_code in (200, 201), r.text
    stop = threading.Event()
    log: list[tuple[float, float, str, str, str | None]] = []
    lock = threading.Lock()

    def client_loop(i: int) -> None:
        model = "swap" if i % 2 else "swap+safegene"
        with httpx.Client(base_url=live_server.root_url, timeout=120,
                          headers={"Authorization": f"Bearer {live_server.api_key}"}) as c:
            while not stop.is_set():
                t0, t1, version, err = _stream(c, model)
                with lock:
                    log.append((t0, t1, model, version, err))

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    try:
        time.sleep(2)
        swaps = []
        for version, folder in (("v2", v2), ("v1", v1)):
            t_begin = time.monotonic()
            r = _register(live_server, version, folder)
            swaps.append((version, t_begin, time.monotonic()))
            assert r.status_code == 200 and r.json()["status"] == "replaced", r.text
            time.sleep(2)
    finally:
        stop.set()
        for t in threads:
            t.join(120)
    errors = [e for *_, e in log if e]
    assert not errors, errors[:5]
    assert len(log) >= 4 * CLIENTS, len(log)
    ends = [b for _, b, _ in swaps[1:]] + [float("inf")]
    for (version, t_begin, t_end), next_begin in zip(swaps, ends):
        # after a swap returned (and before the next began) only the new version answers, on both variants
        after = [(m, v) for t0, _, m, v, _ in log if t_end < t0 < next_begin]
        assert after and all(v == version for _, v in after), (version, after[:5])
        assert {m for m, _ in after} == {"swap", "swap+safegene"}
        # no half-swapped pair: once a new-version response completed, nothing started later gets the old one
        first_new = min((t1 for t0, t1, _, v, _ in log if v == version and t1 >= t_begin), default=None)
        assert first_new is not None
        stale = [(m, v) for t0, _, m, v, _ in log if first_new < t0 < next_begin and v != version]
        assert not stale, (version, stale[:5])
    with live_server.admin() as admin:
        variants = {v["id"]: v for v in admin.get("/admin/variants").json()["variants"]}
    assert variants["swap"]["task_version"] == variants["swap+safegene"]["task_version"] == "v1"
