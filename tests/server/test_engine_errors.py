"""Engine failures are JSON 5xx and counted as errors: an exception before the response, an error event inside a 200
stream, and a client that went away (499) are told apart (the middleware over stub apps, no engine)."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

from prometheus_client import REGISTRY

from server.app import SafeGeneMiddleware
from server.auth import AuthConfig
from server.registry import Served

LABELS = {"model": "err-task", "variant": "plain", "task": "err-task"}


class StubRegistry:
    generation = 7  # the registry generation a response reports

    def __init__(self):
        self.released = 0

    async def admit(self, name):
        return Served(name, "plain", "err-task", "/x") if name == "err-task" else None

    def release(self, s):
        self.released += 1

    def labels_for(self, name):
        return {"model": "_unknown", "variant": "", "task": ""}


def _count(status: str) -> float:
    return REGISTRY.get_sample_value("safegene_requests_total", {**LABELS, "status": status}) or 0.0


def _call(app, body: dict, *, disconnect: bool = False):
    cfg = SimpleNamespace(auth=AuthConfig(), max_body_bytes=1 << 20, max_choices=16, served_name="base")
    reg = StubRegistry()
    mw = SafeGeneMiddleware(app, cfg=cfg, registry=reg, judge_queue=None, models_handler=None, max_model_len=128)
    sent: list[dict] = []
    data = json.dumps(body).encode()
    msgs = [{"type": "http.request", "body": data, "more_body": False}]

    async def receive():
        if msgs:
            return msgs.pop(0)
        if disconnect:
            return {"type": "http.disconnect"}
        await asyncio.sleep(3600)

    async def send(m):
        sent.append(m)

    scope = {"type": "http", "method": "POST", "path": "/v1/completions", "headers": []}
    asyncio.run(mw(scope, receive, send))
    assert reg.released == 1  # the in-flight count is always given back
    return sent


async def _raises(scope, receive, send):
    raise RuntimeError("engine core died: secret internals")


async def _stream_error(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    await send({"type": "http.response.body", "more_body": True,
                "body": b'data: {"choices": [{"index": 0, "text": "He"}]}\n\n'})
    await send({"type": "http.response.body", "more_body": False,
                "body": b'data: {"error": {"message": "engine failed", "type": "InternalServerError"}}\n\n'})


async def _client_gone(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    await receive()  # the request body (replayed)
    msg = await receive()  # the client has left
    assert msg["type"] == "http.disconnect"


def test_an_engine_exception_is_a_json_500_without_internals():
    before = _count("500")
    sent = _call(_raises, {"model": "err-task", "prompt": "hi", "max_tokens": 2})
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = json.loads(b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))
    assert start["status"] == 500 and body["error"]["type"] == "server_error"
    assert body["error"]["code"] == "engine_error" and "secret internals" not in json.dumps(body)
    assert _count("500") == before + 1


def test_an_error_inside_a_stream_counts_as_an_error():
    before200, before500 = _count("200"), _count("500")
    _call(_stream_error, {"model": "err-task", "prompt": "hi", "max_tokens": 2, "stream": True})
    assert _count("500") == before500 + 1 and _count("200") == before200


def test_a_client_that_leaves_is_a_499():
    before = _count("499")
    _call(_client_gone, {"model": "err-task", "prompt": "hi", "max_tokens": 2, "stream": True}, disconnect=True)
    assert _count("499") == before + 1


def _health(queue_error: str | None, engine_status: int = 200) -> tuple[int, dict]:
    async def engine_health(scope, receive, send):
        await send({"type": "http.response.start", "status": engine_status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    cfg = SimpleNamespace(auth=AuthConfig(), max_body_bytes=1 << 20, max_choices=16, served_name="base")
    queue = SimpleNamespace(error=queue_error)
    mw = SafeGeneMiddleware(engine_health, cfg=cfg, registry=StubRegistry(), judge_queue=queue, models_handler=None,
                            max_model_len=128)
    sent: list[dict] = []

    async def send(m):
        sent.append(m)

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    asyncio.run(mw({"type": "http", "method": "GET", "path": "/health", "headers": []}, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], json.loads(b"".join(m.get("body", b"") for m in sent if "body" in m))


def test_health_reports_judges_that_failed_as_degraded():
    assert _health(None) == (200, {"status": "ok", "reasons": []})
    status, body = _health("judges failed to load: no weights")
    assert status == 200 and body["status"] == "degraded" and "no weights" in body["reasons"][0]
    assert _health(None, engine_status=503) == (503, {"status": "unhealthy", "engine": 503})
