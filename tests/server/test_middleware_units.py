"""Pure parts of the middleware: request validation and response capture (SSE split across chunks)."""

from __future__ import annotations

import asyncio
import json

import pytest

from server.capture import Capture
from server.errors import HTTPError
from server.validation import prompt_text, validate_generate
from server.auth import bearer_token, key_matches


def sse(obj) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def run_capture(chunks: list[bytes], strip_usage: bool) -> tuple[Capture, bytes]:
    sent: list[dict] = []

    async def send(msg):
        sent.append(msg)

    cap = Capture(send, 0.0, strip_usage)

    async def go():
        await cap({"type": "http.response.start", "status": 200,
                   "headers": [(b"content-type", b"text/event-stream; charset=utf-8")]})
        for i, c in enumerate(chunks):
            await cap({"type": "http.response.body", "body": c, "more_body": i < len(chunks) - 1})

    asyncio.run(go())
    return cap, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def test_capture_stream_split_across_chunks_and_usage_stripped():
    events = (sse({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
              + sse({"choices": [{"index": 0, "delta": {"content": "Hel"}}]})
              + sse({"choices": [{"index": 0, "delta": {"content": "lo"}}]})
              + sse({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}})
              + b"data: [DONE]\n\n")
    chunks = [events[i:i + 7] for i in range(0, len(events), 7)]  # boundaries in the middle of events
    cap, out = run_capture(chunks, strip_usage=True)
    assert cap.text == "Hello" and cap.usage == {"prompt_tokens": 3, "completion_tokens": 2}
    assert cap.done and cap.first_token is not None
    assert b'"usage"' not in out and out.endswith(b"data: [DONE]\n\n") and b'"lo"' in out
    _, kept = run_capture(chunks, strip_usage=False)
    assert kept == events


def test_capture_full_json():
    sent = []

    async def send(msg):
        sent.append(msg)

    cap = Capture(send, 0.0, False)
    body = json.dumps({"choices": [{"message": {"content": "I can't help with that."}}],
                       "usage": {"prompt_tokens": 5, "completion_tokens": 7}}).encode()

    async def go():
        await cap({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await cap({"type": "http.response.body", "body": body[:10], "more_body": True})
        await cap({"type": "http.response.body", "body": body[10:], "more_body": False})

    asyncio.run(go())
    assert cap.text == "I can't help with that." and cap.usage["completion_tokens"] == 7 and not cap.stream


@pytest.mark.parametrize("kind, body, param", [
    ("chat", {"messages": [{"role": "user", "content": "x"}]}, "model"),
    ("chat", {"model": "m", "messages": []}, "messages"),
    ("completion", {"model": "m"}, "prompt"),
    ("completion", {"model": "m", "prompt": "x", "max_tokens": 0}, "max_tokens"),
    ("completion", {"model": "m", "prompt": "x", "max_tokens": True}, "max_tokens"),
    ("chat", {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 99999},
     "max_completion_tokens"),
    ("completion", {"model": "m", "prompt": "x", "n": 1000}, "n"),
])
def test_validate_generate_rejects(kind, body, param):
    with pytest.raises(HTTPError) as e:
        validate_generate(kind, body, 256)
    assert e.value.status == 400 and e.value.param == param


def test_validate_generate_accepts_and_prompt_text():
    body = {"model": "m", "max_tokens": 256, "messages": [
        {"role": "system", "content": "be nice"}, {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"}, {"role": "user", "content": [{"type": "text", "text": "last"}]}]}
    validate_generate("chat", body, 256)
    assert prompt_text("chat", body) == "last"
    assert prompt_text("completion", {"prompt": ["a", "b"]}) == "a"


def test_bearer_and_keys():
    scope = {"headers": [(b"authorization", b"Bearer  sk-1 ")]}
    assert bearer_token(scope) == "sk-1"
    assert bearer_token({"headers": [(b"authorization", b"Basic abc")]}) is None
    assert key_matches("sk-1", ["sk-0", "sk-1"]) and not key_matches("sk-2", ["sk-1"]) and not key_matches(None, ["a"])
