"""/ready without an engine: 200 only when the replica serves its target generation completely and the judges run;
the body names no server path; an admin call refused because the registry database is away is a JSON 503."""

from __future__ import annotations

import asyncio
import json
import threading
from types import SimpleNamespace

from server.app import SafeGeneMiddleware
from server.auth import AuthConfig
from server.config import RegistrySpec
from server.registry import Registry, RegistryError
from server.store import FileStore

ADMIN = "sk-admin-0123456789abcdef"


def _registry(tmp_path) -> Registry:
    cfg = SimpleNamespace(registry=RegistrySpec())
    return Registry(cfg, ctx=SimpleNamespace(), store=FileStore(tmp_path / "registry.json"))  # type: ignore[arg-type]


def _get(mw, path: str, method: str = "GET", headers: list | None = None) -> tuple[int, dict, dict]:
    sent: list[dict] = []

    async def send(m):
        sent.append(m)

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    asyncio.run(mw({"type": "http", "method": method, "path": path, "headers": headers or [], "query_string": b""},
                   receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = json.loads(b"".join(m.get("body", b"") for m in sent if "body" in m))
    return start["status"], body, {k.decode(): v.decode() for k, v in start["headers"]}


def _middleware(registry, queue=None):
    cfg = SimpleNamespace(auth=AuthConfig(admin_keys=(ADMIN,)), max_body_bytes=1 << 20, max_choices=16,
                          served_name="base")
    return SafeGeneMiddleware(None, cfg=cfg, registry=registry, judge_queue=queue, models_handler=None,
                              max_model_len=128)


def test_ready_follows_the_generation_and_the_judges(tmp_path):
    reg = _registry(tmp_path)
    judges = SimpleNamespace(error=None, ready=threading.Event())
    mw = _middleware(reg, judges)
    status, body, _ = _get(mw, "/ready")
    assert status == 503 and body["status"] == "not_ready" and "starting" in body["reasons"][0]
    reg.engine = object()  # attached
    reg.generation = reg.target_generation = 4
    status, body, _ = _get(mw, "/ready")
    assert status == 503 and body["reasons"] == ["judges: loading"]
    judges.ready.set()
    assert _get(mw, "/ready")[:2] == (200, {"status": "ready", "generation": 4, "target_generation": 4,
                                            "reasons": []})
    reg.observe(5)  # a newer generation exists: not ready until it is loaded
    status, body, _ = _get(mw, "/ready")
    assert status == 503 and body["reasons"] == ["loading generation 5 (serving 4)"]
    reg.generation = 5
    reg.unavailable["gamma"] = {"record": {"version": "v2"},
                                "reason": "the safe snapshot /srv/secret/path changed since it was built"}
    status, body, _ = _get(mw, "/ready")
    assert status == 503 and "gamma" in body["reasons"][0] and "/srv" not in json.dumps(body)
    reg.unavailable.clear()
    judges.error = "judges failed to load: /opt/models/x missing"
    status, body, _ = _get(mw, "/ready")
    assert status == 503 and "/opt" not in json.dumps(body)
    judges.error = None
    assert _get(mw, "/ready")[0] == 200
    assert _get(_middleware(reg, None), "/ready")[0] == 200  # judging off: nothing to wait for


def test_an_admin_write_without_the_registry_database_is_a_json_503(tmp_path):
    class Away:
        async def retire(self, name):
            raise RegistryError("the registry database is unreachable; nothing was changed", 503,
                                "registry_unavailable")

    mw = _middleware(Away())
    status, body, headers = _get(mw, "/admin/adapters/gamma", "DELETE",
                                 [(b"authorization", f"Bearer {ADMIN}".encode())])
    assert status == 503 and headers["retry-after"] == "5"
    assert body["error"]["code"] == "registry_unavailable" and body["error"]["type"] == "server_error"
    assert "nothing was changed" in body["error"]["message"]
