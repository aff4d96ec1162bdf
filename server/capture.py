"""Watching a response on its way to the client: status, time to first token, every choice's text, token usage,
and errors, without holding the stream back (each chunk is passed on as it arrives)."""

from __future__ import annotations

import json
import time
from typing import Any, Awaitable, Callable

Send = Callable[[dict[str, Any]], Awaitable[None]]


class Capture:
    """An ASGI ``send`` that records the downstream response and filters the usage chunk the client did not ask for;
    ``headers`` are added to the response (which version answered).

    ``texts`` maps each choice index to its text (streamed deltas joined, or the full message); ``error`` holds the
    message of an error the engine reported inside a 200 stream (vLLM sends ``data: {"error": ...}`` and ends)."""

    def __init__(self, send: Send, t0: float, strip_usage: bool, headers: list[tuple[bytes, bytes]] | None = None):
        self._send = send
        self._headers = list(headers or [])
        self.t0 = t0
        self.strip_usage = strip_usage
        self.status = 500
        self.started = False
        self.stream = False
        self.first_token: float | None = None
        self.parts: dict[int, list[str]] = {}
        self.usage: dict[str, Any] | None = None
        self.error: str | None = None
        self._buf = b""
        self._body: list[bytes] = []
        self.done = False

    async def __call__(self, msg: dict[str, Any]) -> None:
        if msg["type"] == "http.response.start":
            self.status = msg["status"]
            self.started = True
            headers = msg.get("headers") or []
            ctype = next((v for k, v in headers if k.lower() == b"content-type"), b"")
            self.stream = ctype.startswith(b"text/event-stream")
            if self._headers:
                msg = {**msg, "headers": list(headers) + self._headers}
            await self._send(msg)
            return
        if msg["type"] != "http.response.body":
            await self._send(msg)
            return
        more = msg.get("more_body", False)
        body = msg.get("body", b"")
        if self.stream:
            self._buf += body
            out = []
            *events, self._buf = self._buf.split(b"\n\n")
            if not more and self._buf:
                events.append(self._buf)
                self._buf = b""
            for ev in events:
                if self._event(ev):
                    out.append(ev + b"\n\n")
            await self._send({"type": "http.response.body", "body": b"".join(out), "more_body": more})
        else:
            self._body.append(body)
            await self._send(msg)
        if not more:
            self.done = True
            if not self.stream:
                self._parse_full(b"".join(self._body))

    def _event(self, ev: bytes) -> bool:
        """Record one SSE event; False to drop it (the usage-only chunk the client did not ask for)."""
        line = ev.strip()
        if not line.startswith(b"data:"):
            return True
        data = line[5:].strip()
        if data == b"[DONE]":
            return True
        try:
            obj = json.loads(data)
        except ValueError:
            return True
        if not isinstance(obj, dict):
            return True
        if obj.get("error"):
            err = obj["error"]
            self.error = str(err.get("message") if isinstance(err, dict) else err)
            return True
        choices = obj.get("choices") or []
        if choices and self.first_token is None:
            # vLLM sends its first chunk (the role chunk, for chat) once the first token exists
            self.first_token = time.perf_counter()
        for c in choices:
            delta = c.get("delta") or {}
            piece = delta.get("content") if isinstance(delta, dict) else None
            if piece is None:
                piece = c.get("text")
            if piece:
                self.parts.setdefault(int(c.get("index", 0)), []).append(piece)
        if obj.get("usage"):
            self.usage = obj["usage"]
            if not choices and self.strip_usage:
                return False
        return True

    def _parse_full(self, data: bytes) -> None:
        try:
            obj = json.loads(data)
        except ValueError:
            return
        if not isinstance(obj, dict):
            return
        self.usage = obj.get("usage")
        for i, c in enumerate(obj.get("choices") or []):
            msg = c.get("message") or {}
            text = (msg.get("content") if isinstance(msg, dict) else None) or c.get("text") or ""
            self.parts.setdefault(int(c.get("index", i)), []).append(text)

    @property
    def texts(self) -> dict[int, str]:
        return {i: "".join(p) for i, p in sorted(self.parts.items())}

    @property
    def text(self) -> str:
        """The first choice's text."""
        return self.texts.get(0, "")

    @property
    def ok(self) -> bool:
        """A complete 200 response with no error reported inside it."""
        return self.done and self.status == 200 and self.error is None
