"""The SafeGene ASGI middleware: the only public surface in front of vLLM's own OpenAI app.

It is pure ASGI (not BaseHTTPMiddleware), so streamed responses pass through chunk by chunk. Per request it:

1. allow-lists paths (``/v1/models``, ``/v1/chat/completions``, ``/v1/completions``, ``/health``, ``/metrics``,
   ``/version``, ``/admin/...``); everything else vLLM would expose (runtime LoRA routes, ``/tokenize``,
   ``/invocations``, ``/pause``, docs, ...) answers 404;
2. checks the bearer key (user keys for ``/v1/*``, admin keys for ``/admin/*``);
3. parses the JSON body, rejects bad input with OpenAI-style 4xx bodies (malformed JSON, missing fields, unknown
   model, bad ``max_tokens``) before vLLM sees it, and re-injects the body downstream;
4. measures latency / time to first token, captures the answer (SSE deltas included) and token usage;
5. after the response is complete, updates metrics and hands (prompt, answer) to the bounded judge queue.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Awaitable, Callable

from . import metrics as M
from .accounting import JudgeItem, JudgeQueue
from .auth import bearer_token, error_body, key_matches
from .config import ServerConfig
from .admin import handle_admin
from .registry import Registry, RegistryError

log = logging.getLogger("safegene.server.app")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

GENERATE_PATHS = {"/v1/chat/completions": "chat", "/v1/completions": "completion"}
OPEN_PATHS = {"/health", "/metrics", "/metrics/", "/version"}


class HTTPError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None,
                 type_: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.code, self.param, self.type = status, code, param, type_


async def send_json(send: Send, status: int, body: bytes | Any, headers: list[tuple[bytes, bytes]] | None = None
                    ) -> None:
    data = body if isinstance(body, bytes) else json.dumps(body, default=str).encode()
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": hdrs + list(headers or [])})
    await send({"type": "http.response.body", "body": data})


async def send_error(send: Send, e: HTTPError) -> None:
    extra = [(b"www-authenticate", b"Bearer")] if e.status == 401 else []
    await send_json(send, e.status, error_body(str(e), e.type, e.code, e.param), extra)


async def read_body(receive: Receive, limit: int) -> bytes:
    chunks, size = [], 0
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise HTTPError(400, "client disconnected while sending the body", "disconnected")
        chunk = msg.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise HTTPError(413, f"request body is larger than {limit} bytes", "request_too_large")
        chunks.append(chunk)
        if not msg.get("more_body"):
            return b"".join(chunks)


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def prompt_text(kind: str, body: dict[str, Any]) -> str:
    """What the judges see as the prompt: the last user message (chat) or the prompt (completions)."""
    if kind == "chat":
        users = [m for m in body.get("messages") or [] if isinstance(m, dict) and m.get("role") == "user"]
        return _text_of(users[-1].get("content")) if users else ""
    p = body.get("prompt")
    if isinstance(p, list):
        p = p[0] if p and isinstance(p[0], str) else ""
    return p if isinstance(p, str) else ""


def validate_generate(kind: str, body: Any, max_model_len: int) -> None:
    """OpenAI-style 400s for what vLLM would otherwise reject less clearly (or accept)."""
    if not isinstance(body, dict):
        raise HTTPError(400, "the request body must be a JSON object", "invalid_request")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise HTTPError(400, "you must provide a model parameter", "missing_required_parameter", "model")
    if kind == "chat":
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise HTTPError(400, "'messages' must be a non-empty list of {role, content} objects",
                            "missing_required_parameter", "messages")
    else:
        p = body.get("prompt")
        if p is None or (isinstance(p, (str, list)) and len(p) == 0):
            raise HTTPError(400, "'prompt' is required", "missing_required_parameter", "prompt")
    for key in ("max_tokens", "max_completion_tokens"):
        if key not in body or body[key] is None:
            continue
        v = body[key]
        if isinstance(v, bool) or not isinstance(v, int):
            raise HTTPError(400, f"'{key}' must be an integer", "invalid_value", key)
        if v < 1:
            raise HTTPError(400, f"'{key}' must be at least 1, got {v}", "invalid_value", key)
        if v > max_model_len:
            raise HTTPError(400, f"'{key}' is {v} but this model's context is {max_model_len} tokens",
                            "invalid_value", key)
    n = body.get("n", 1)
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 16):
        raise HTTPError(400, "'n' must be an integer between 1 and 16", "invalid_value", "n")


class Capture:
    """Watches the downstream response: status, TTFT, answer text, usage; filters the usage chunk we asked for."""

    def __init__(self, send: Send, t0: float, strip_usage: bool):
        self._send = send
        self.t0 = t0
        self.strip_usage = strip_usage
        self.status = 500
        self.stream = False
        self.first_token: float | None = None
        self.parts: list[str] = []
        self.usage: dict[str, Any] | None = None
        self._buf = b""
        self._body: list[bytes] = []
        self.done = False

    async def __call__(self, msg: dict[str, Any]) -> None:
        if msg["type"] == "http.response.start":
            self.status = msg["status"]
            headers = msg.get("headers") or []
            ctype = next((v for k, v in headers if k.lower() == b"content-type"), b"")
            self.stream = ctype.startswith(b"text/event-stream")
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
                if c.get("index", 0) == 0:
                    self.parts.append(piece)
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
        choices = obj.get("choices") or []
        if choices:
            c = choices[0]
            msg = c.get("message") or {}
            self.parts.append((msg.get("content") if isinstance(msg, dict) else None) or c.get("text") or "")

    @property
    def text(self) -> str:
        return "".join(self.parts)


class SafeGeneMiddleware:
    def __init__(self, app: Any, *, cfg: ServerConfig, registry: Registry, judge_queue: JudgeQueue | None,
                 models_handler: Callable[[], Awaitable[dict[str, Any]]], max_model_len: int,
                 router: Callable[[str], Any] | None = None):
        self.app = app
        self.router = router  # served name -> the ASGI app of its own engine (merged variants), or None
        self.cfg = cfg
        self.registry = registry
        self.queue = judge_queue
        self.models_handler = models_handler
        self.max_model_len = max_model_len

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)  # lifespan (and websockets, which no allowed route serves)
            return
        path: str = scope.get("path", "")
        try:
            if path in OPEN_PATHS:
                await self.app(scope, receive, send)
            elif path.startswith("/admin/") or path == "/admin":
                await self._admin(scope, receive, send)
            elif path == "/v1/models" or path.startswith("/v1/models/"):
                self._auth_user(scope)
                await self._models(scope, send)
            elif path in GENERATE_PATHS:
                await self._generate(scope, receive, send, GENERATE_PATHS[path])
            else:
                raise HTTPError(404, f"no route {path}", "not_found")
        except HTTPError as e:
            await send_error(send, e)

    # -- auth --

    def _auth_user(self, scope: Scope) -> None:
        keys = self.cfg.api_keys
        if not keys:
            return
        if not key_matches(bearer_token(scope), keys + self.cfg.admin_keys):
            raise HTTPError(401, "invalid or missing API key: send 'Authorization: Bearer <key>'", "invalid_api_key",
                            type_="authentication_error")

    def _auth_admin(self, scope: Scope) -> None:
        token = bearer_token(scope)
        if not self.cfg.admin_keys:
            raise HTTPError(403, "the admin API is disabled: configure auth.admin_keys", "admin_disabled",
                            type_="permission_error")
        if key_matches(token, self.cfg.admin_keys):
            return
        if key_matches(token, self.cfg.api_keys):
            raise HTTPError(403, "this key may not use the admin API", "forbidden", type_="permission_error")
        raise HTTPError(401, "invalid or missing admin key: send 'Authorization: Bearer <admin key>'",
                        "invalid_api_key", type_="authentication_error")

    # -- /v1/models with lineage --

    async def _models(self, scope: Scope, send: Send) -> None:
        if scope["method"] != "GET":
            raise HTTPError(405, "use GET", "method_not_allowed")
        listing = await self.models_handler()
        path: str = scope["path"]
        if path.startswith("/v1/models/"):
            name = path[len("/v1/models/"):]
            card = next((c for c in listing["data"] if c["id"] == name), None)
            if card is None:
                raise HTTPError(404, f"The model `{name}` does not exist.", "model_not_found", "model")
            await send_json(send, 200, card)
            return
        await send_json(send, 200, listing)

    # -- generation --

    async def _generate(self, scope: Scope, receive: Receive, send: Send, kind: str) -> None:
        t0 = time.perf_counter()
        labels = self.registry.labels_for(None)
        status = 500
        try:
            self._auth_user(scope)
            if scope["method"] != "POST":
                raise HTTPError(405, "use POST", "method_not_allowed")
            raw = await read_body(receive, self.cfg.max_body_bytes)
            try:
                body = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as e:
                raise HTTPError(400, f"could not parse the JSON body: {e}", "invalid_json") from e
            validate_generate(kind, body, self.max_model_len)
            served = await self.registry.admit(body["model"])
            if served is None:
                raise HTTPError(404, f"The model `{body['model']}` does not exist.", "model_not_found", "model")
        except HTTPError as e:
            status = e.status
            M.REQUESTS.labels(**labels, status=str(status)).inc()
            raise
        labels = served.labels
        strip_usage = False
        if body.get("stream"):
            opts = body.get("stream_options") if isinstance(body.get("stream_options"), dict) else {}
            strip_usage = not opts.get("include_usage")
            body["stream_options"] = {**opts, "include_usage": True}
        data = json.dumps(body).encode()
        headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(data)).encode()))
        scope = dict(scope, headers=headers)
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": data, "more_body": False}
            return await receive()

        cap = Capture(send, t0, strip_usage)
        try:
            target = (self.router(served.name) if self.router is not None else None) or self.app
            await target(scope, replay, cap)
            status = cap.status
        finally:
            self.registry.release(served)
            elapsed = time.perf_counter() - t0
            M.REQUESTS.labels(**labels, status=str(status if cap.done else 499)).inc()
            M.LATENCY.labels(**labels).observe(elapsed)
            if cap.stream and cap.first_token is not None:
                M.TTFT.labels(**labels).observe(cap.first_token - t0)
            if cap.usage:
                M.PROMPT_TOKENS.labels(**labels).inc(int(cap.usage.get("prompt_tokens") or 0))
                M.COMPLETION_TOKENS.labels(**labels).inc(int(cap.usage.get("completion_tokens") or 0))
            if cap.done and status == 200 and self.queue is not None:
                self.queue.submit(JudgeItem((labels["model"], labels["variant"], labels["task"]),
                                            prompt_text(kind, body), cap.text))

    # -- admin API --

    async def _admin(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._auth_admin(scope)
        raw = await read_body(receive, self.cfg.max_body_bytes)
        try:
            status, payload = await handle_admin(self.registry, scope["method"], scope["path"], raw)
        except RegistryError as e:
            raise HTTPError(e.status, str(e), e.code) from e
        await send_json(send, status, payload)
