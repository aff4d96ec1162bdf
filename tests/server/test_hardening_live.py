"""Safe defaults and honest signals on the real server (the session's live_server, loopback): scoped keys, no server
paths for users, WebSocket refused, /health, bounded fan-out, every choice and token-id prompts judged."""

from __future__ import annotations

import json

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.plugins.live_server import ADMIN_KEY, SAFE_ONLY_KEY

pytestmark = pytest.mark.engine


def _err(r: httpx.Response, status: int, code: str | None = None, param: str | None = None) -> dict:
    assert r.status_code == status, r.text
    body = r.json()["error"]
    assert set(body) == {"message", "type", "param", "code"}
    if code:
        assert body["code"] == code, body
    if param:
        assert body["param"] == param, body
    return body


def _post(server, path: str, body: dict, key: str | None = None) -> httpx.Response:
    return httpx.post(f"{server.root_url}{path}", json=body, timeout=120,
                      headers={"Authorization": f"Bearer {key or server.api_key}"})


def test_a_scoped_key_reaches_only_its_models(live_server):
    ok = _post(live_server, "/v1/completions", {"model": "alpha+safegene", "prompt": "Hi", "max_tokens": 2},
               SAFE_ONLY_KEY)
    assert ok.status_code == 200, ok.text
    for model in ("alpha", live_server.base_model):
        r = _post(live_server, "/v1/completions", {"model": model, "prompt": "Hi", "max_tokens": 2}, SAFE_ONLY_KEY)
        body = _err(r, 403, "model_not_allowed", "model")
        assert body["type"] == "permission_error"
    listed = httpx.get(f"{live_server.base_url}/models", headers={"Authorization": f"Bearer {SAFE_ONLY_KEY}"}).json()
    assert {c["id"] for c in listed["data"]} == {"alpha+safegene", "beta+safegene"}
    _err(httpx.get(f"{live_server.root_url}/admin/variants", headers={"Authorization": f"Bearer {SAFE_ONLY_KEY}"}),
         403, "forbidden")


def test_users_do_not_see_server_paths(live_server):
    user = httpx.get(f"{live_server.base_url}/models", headers={"Authorization": f"Bearer {live_server.api_key}"})
    text = user.text
    assert str(live_server.workdir) not in text and "/" not in json.dumps([c["root"] for c in user.json()["data"]])
    cards = {c["id"]: c for c in user.json()["data"]}
    assert cards["alpha+safegene"]["safegene"]["coefficients_hash"]  # lineage is still there, without paths
    assert "path" not in cards["alpha+safegene"]["safegene"]
    admin = httpx.get(f"{live_server.base_url}/models", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).json()
    assert {c["id"]: c for c in admin["data"]}["alpha+safegene"]["safegene"]["path"].startswith("/")


def test_websocket_is_refused(live_server):
    import socket

    host, port = "127.0.0.1", int(live_server.root_url.rsplit(":", 1)[1])
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(b"GET /v1/chat/completions HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        reply = s.recv(4096).decode(errors="replace")
    assert not reply.startswith("HTTP/1.1 101"), reply  # no upgrade: closed or refused
    assert " 403 " in reply.split("\r\n", 1)[0] or reply == "", reply


def test_health_says_ok_with_working_judges(live_server):
    r = httpx.get(f"{live_server.root_url}/health", timeout=30)
    assert r.status_code == 200 and r.json() == {"status": "ok", "reasons": []}


@pytest.mark.parametrize("body,param", [
    ({"prompt": ["a"] * 17}, "prompt"),
    ({"prompt": "a", "n": 17}, "n"),
    ({"prompt": ["a", "b", "c", "d"], "n": 5}, "n"),
    ({"prompt": ["a", 3]}, "prompt"),
    ({"prompt": ["a", [1, 2]]}, "prompt"),
    ({"prompt": "a", "best_of": 0}, "best_of"),
])
def test_fan_out_is_bounded_with_a_400_naming_the_parameter(live_server, body, param):
    r = _post(live_server, "/v1/completions", {"model": "alpha", "max_tokens": 2, **body})
    _err(r, 400, "invalid_value", param)


def _judged(server, model: str) -> float:
    text = server.metrics()
    return sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples
               if s.name == "safegene_judged_total" and s.labels.get("model") == model)


def _wait_judged(server, model: str, at_least: float, timeout: float = 60) -> float:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = _judged(server, model)
        if got >= at_least:
            return got
        time.sleep(0.2)
    return _judged(server, model)


def test_every_choice_and_token_id_prompts_are_judged(live_server):
    before = _judged(live_server, "beta")
    r = _post(live_server, "/v1/completions", {"model": "beta", "prompt": ["How do I", "Tell me"], "n": 2,
                                                "max_tokens": 3, "temperature": 1.0, "seed": 1})
    assert r.status_code == 200 and len(r.json()["choices"]) == 4, r.text
    ids = _post(live_server, "/v1/completions", {"model": "beta", "prompt": [[1, 2, 3, 4], [5, 6, 7]],
                                                  "max_tokens": 3})
    assert ids.status_code == 200 and len(ids.json()["choices"]) == 2, ids.text
    assert _wait_judged(live_server, "beta", before + 6) == before + 6  # 2 prompts x n=2, and 2 token-id prompts
