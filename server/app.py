"""The SafeGene ASGI middleware: the only public surface in front of vLLM's own OpenAI app.

It is pure ASGI (not BaseHTTPMiddleware), so streamed responses pass through chunk by chunk. Per request it:

1. allow-lists paths (``/v1/models``, ``/v1/chat/completions``, ``/v1/completions``, ``/health``, ``/ready``,
   ``/metrics``, ``/version``, ``/admin/...``); everything else vLLM would expose (runtime LoRA routes, ``/tokenize``,
   ``/invocations``, ``/pause``, docs, ...) answers 404, and WebSocket connections are closed;
2. checks the bearer key (``auth.py``: user keys, scoped to models or not, for ``/v1/*``; admin keys for ``/admin/*``);
3. parses the JSON body, rejects bad input with OpenAI-style 4xx bodies (``validation.py``: malformed JSON, missing
   fields, unknown model, bad ``max_tokens``, too many completions) before vLLM sees it, and re-injects the body;
4. measures latency and time to first token, and captures every choice's answer and the token usage
   (``capture.py``); an engine failure becomes a JSON 500 (or, mid-stream, an error counted as one);
5. after a complete response, updates metrics and hands each (prompt, answer) pair to the bounded judge queue.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, Awaitable, Callable

from . import metrics as M
from .accounting import JudgeItem, JudgeQueue
from .admin import handle_admin
from .auth import KeyScope, bearer_token
from .capture import Capture
from .config import ServerConfig
from .errors import HTTPError, send_error, send_json
from .registry import Registry, RegistryError, Served, Unavailable
from .validation import judge_prompts, validate_generate

log = logging.getLogger("safegene.server.app")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

GENERATE_PATHS = {"/v1/chat/completions": "chat", "/v1/completions": "completion"}
OPEN_PATHS = {"/metrics", "/metrics/", "/version"}
#: seconds an admin caller is told to wait (Retry-After) when the registry database is unreachable
ADMIN_RETRY_AFTER_S = 5.0
#: which registry generation the answering replica served when it admitted the request
GENERATION_HEADER = b"x-safegene-registry-generation"
#: the ASGI scope key of the gate's in-process requests (server/gate.py). uvicorn builds the scope of every HTTP
#: request itself, so no client can set it: only :func:`internal_completer` reaches staging names
INTERNAL_SCOPE = "safegene.internal_model"
#: lineage fields a user key may see in /v1/models (admins see paths and manifests too)
USER_LINEAGE = ("variant", "task", "mode", "task_version", "safety_version", "coefficients_hash", "source")


def version_headers(served: Served) -> list[tuple[bytes, bytes]]:
    """Which version answered: the task version, and for the safe variant the safety version and coefficients."""
    r = served.record
    if r is None:
        return []
    out = [(b"x-safegene-task-version", r.version.encode())]
    if served.variant == "safe":
        out += [(b"x-safegene-safety-version", (r.safety_version or "").encode()),
                (b"x-safegene-coefficients", (r.coefficients_hash or "").encode())]
    return out


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
        if scope["type"] == "websocket":  # no allowed route speaks WebSocket: close before any handshake
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)  # lifespan
            return
        path: str = scope.get("path", "")
        if scope.get(INTERNAL_SCOPE) and path in GENERATE_PATHS:  # the gate's own request: straight to its engine
            model = scope[INTERNAL_SCOPE]
            await ((self.router(model) if self.router is not None else None) or self.app)(scope, receive, send)
            return
        try:
            if path in OPEN_PATHS:
                await self.app(scope, receive, send)
            elif path == "/health":
                await self._health(scope, receive, send)
            elif path == "/ready":
                await self._ready(send)
            elif path.startswith("/admin/") or path == "/admin":
                await self._admin(scope, receive, send)
            elif path == "/v1/models" or path.startswith("/v1/models/"):
                await self._models(scope, send, self._auth_user(scope))
            elif path in GENERATE_PATHS:
                await self._generate(scope, receive, send, GENERATE_PATHS[path])
            else:
                raise HTTPError(404, f"no route {path}", "not_found")
        except HTTPError as e:
            await send_error(send, e)

    # -- auth --

    def _auth_user(self, scope: Scope) -> KeyScope | None:
        """The key's scope (None: no user keys are configured, /v1 is open; allowed on loopback only)."""
        auth = self.cfg.auth
        if auth.open:
            return None
        found = auth.scope_of(bearer_token(scope))
        if found is None:
            raise HTTPError(401, "invalid or missing API key: send 'Authorization: Bearer <key>'", "invalid_api_key",
                            type_="authentication_error")
        return found

    def _auth_admin(self, scope: Scope) -> None:
        token = bearer_token(scope)
        auth = self.cfg.auth
        if not auth.admin_keys:
            raise HTTPError(403, "the admin API is disabled: configure auth.admin_keys", "admin_disabled",
                            type_="permission_error")
        if auth.is_admin(token):
            return
        if auth.scope_of(token) is not None:
            raise HTTPError(403, "this key may not use the admin API", "forbidden", type_="permission_error")
        raise HTTPError(401, "invalid or missing admin key: send 'Authorization: Bearer <admin key>'",
                        "invalid_api_key", type_="authentication_error")

    @staticmethod
    def _check_scope(key: KeyScope | None, model: str) -> None:
        if key is not None and not key.allows(model):
            raise HTTPError(403, f"this key may not use the model `{model}`", "model_not_allowed", "model",
                            type_="permission_error")

    # -- /health: vLLM's engine check, plus our own --

    async def _health(self, scope: Scope, receive: Receive, send: Send) -> None:
        """200 with ``{"status": "ok"}`` while the engine is alive, ``"degraded"`` (still 200: the server serves) when
        safety accounting is off because the judges failed; vLLM's own status when the engine is not alive."""
        cap = Capture(_discard, time.perf_counter(), False)
        await self.app(scope, receive, cap)
        if cap.status != 200:
            await send_json(send, cap.status, {"status": "unhealthy", "engine": cap.status})
            return
        reasons = []
        if self.queue is not None and self.queue.error:
            reasons.append(self.queue.error)
        await send_json(send, 200, {"status": "degraded" if reasons else "ok", "reasons": reasons})

    # -- /ready: take traffic? --

    async def _ready(self, send: Send) -> None:
        """200 once every alias of the replica's target generation is loaded and the judges run (readiness:
        a load balancer or Kubernetes sends traffic only then); 503 with the reasons before. ``/health`` is
        liveness and says nothing about adapters."""
        ok, body = self.registry.readiness()
        if self.queue is not None:
            if self.queue.error:
                body["reasons"].append("judges: failed to load (see the server log)")
            elif not self.queue.ready.is_set():
                body["reasons"].append("judges: loading")
        ok = not body["reasons"]
        await send_json(send, 200 if ok else 503, {"status": "ready" if ok else "not_ready", **body})

    # -- /v1/models with lineage --

    async def _models(self, scope: Scope, send: Send, key: KeyScope | None) -> None:
        if scope["method"] != "GET":
            raise HTTPError(405, "use GET", "method_not_allowed")
        listing = await self.models_handler()
        admin = self.cfg.auth.is_admin(bearer_token(scope))
        cards = []
        for card in listing["data"]:
            if key is not None and not key.allows(card["id"]):
                continue
            if not admin and isinstance(card.get("safegene"), dict):  # server paths are for operators only
                card["safegene"] = {k: v for k, v in card["safegene"].items() if k in USER_LINEAGE}
            if not admin:
                card["root"] = card["id"]  # vLLM puts the model's or adapter's folder here
            cards.append(card)
        listing["data"] = cards
        path: str = scope["path"]
        if path.startswith("/v1/models/"):
            name = path[len("/v1/models/"):]
            card = next((c for c in cards if c["id"] == name), None)
            if card is None:
                raise HTTPError(404, f"The model `{name}` does not exist.", "model_not_found", "model")
            await send_json(send, 200, card)
            return
        await send_json(send, 200, listing)

    # -- generation --

    async def _generate(self, scope: Scope, receive: Receive, send: Send, kind: str) -> None:
        t0 = time.perf_counter()
        labels = self.registry.labels_for(None)
        try:
            key = self._auth_user(scope)
            if scope["method"] != "POST":
                raise HTTPError(405, "use POST", "method_not_allowed")
            raw = await read_body(receive, self.cfg.max_body_bytes)
            try:
                body = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as e:
                raise HTTPError(400, f"could not parse the JSON body: {e}", "invalid_json") from e
            validate_generate(kind, body, self.max_model_len, self.cfg.max_choices)
            self._check_scope(key, body["model"])
            try:
                served = await self.registry.admit(body["model"])
            except Unavailable as e:
                raise HTTPError(503, str(e), "model_swapping", "model", type_="server_error",
                                retry_after=e.retry_after) from e
            if served is None:
                raise HTTPError(404, f"The model `{body['model']}` does not exist.", "model_not_found", "model")
            generation = self.registry.generation  # read with the admission, no await in between
        except HTTPError as e:
            M.REQUESTS.labels(**labels, status=str(e.status)).inc()
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
        disconnected = False

        async def replay() -> dict[str, Any]:
            nonlocal sent, disconnected
            if not sent:
                sent = True
                return {"type": "http.request", "body": data, "more_body": False}
            msg = await receive()
            if msg["type"] == "http.disconnect":
                disconnected = True
            return msg

        cap = Capture(send, t0, strip_usage,
                      version_headers(served) + [(GENERATION_HEADER, str(generation).encode())])
        failed: BaseException | None = None
        try:
            target = (self.router(served.name) if self.router is not None else None) or self.app
            await target(scope, replay, cap)
        except Exception as e:  # the engine failed on this request: a JSON 500 if nothing was sent yet
            failed = e
            log.exception("request to %s failed in the engine", served.name)
            if not cap.started:
                await send_error(send, HTTPError(500, "the engine failed on this request; it was not completed",
                                                 "engine_error", type_="server_error"))
        finally:
            self.registry.release(served)
            if failed is not None or cap.error is not None:
                status = "500"  # an engine error, before or inside the stream
            elif cap.done:
                status = str(cap.status)
            else:
                status = "499" if disconnected else "500"
            M.REQUESTS.labels(**labels, status=status).inc()
            M.LATENCY.labels(**labels).observe(time.perf_counter() - t0)
            if cap.stream and cap.first_token is not None:
                M.TTFT.labels(**labels).observe(cap.first_token - t0)
            if cap.usage:
                M.PROMPT_TOKENS.labels(**labels).inc(int(cap.usage.get("prompt_tokens") or 0))
                M.COMPLETION_TOKENS.labels(**labels).inc(int(cap.usage.get("completion_tokens") or 0))
            if cap.ok and failed is None and self.queue is not None:
                self._judge(kind, body, cap, (labels["model"], labels["variant"], labels["task"]))

    def _judge(self, kind: str, body: dict[str, Any], cap: Capture, labels: tuple[str, str, str]) -> None:
        """One judge item per choice, with the prompt that choice answered (completions: choice i of a list of
        prompts answers prompt i // n)."""
        prompts = judge_prompts(kind, body) or [""]
        n = body.get("n") or 1
        for index, text in cap.texts.items():
            prompt = prompts[min(index // n, len(prompts) - 1)]
            if isinstance(prompt, str):
                self.queue.submit(JudgeItem(labels, prompt, text))  # type: ignore[union-attr]
            else:
                self.queue.submit(JudgeItem(labels, "", text, prompt_ids=tuple(prompt)))  # type: ignore[union-attr]

    # -- admin API --

    async def _admin(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._auth_admin(scope)
        raw = await read_body(receive, self.cfg.max_body_bytes)
        try:
            status, payload = await handle_admin(self.registry, scope["method"], scope["path"], raw,
                                                 scope.get("query_string", b"").decode("latin-1"))
        except RegistryError as e:
            raise HTTPError(e.status, str(e), e.code, type_="server_error" if e.status >= 500 else
                            "invalid_request_error", retry_after=ADMIN_RETRY_AFTER_S if e.status == 503 else None,
                            extra=e.extra) from e
        except Exception as e:  # an admin call never answers in plain text; what is served did not change
            log.exception("admin %s %s failed", scope["method"], scope["path"])
            raise HTTPError(500, f"the admin call failed ({type(e).__name__}); nothing served changed",
                            "internal_error", type_="server_error") from e
        await send_json(send, status, payload)


def internal_completer(app: Any) -> Callable[[str, str, int], Awaitable[dict[str, Any]]]:
    """One chat completion through ``app`` (the served app, our middleware outermost) without a socket, marked as
    the gate's: it reaches any name the engines hold (staging names too), bypasses keys, admission, metrics and the
    judge queue (gate traffic is not client traffic), and answers ``{"response", "finish"}``."""

    async def complete(model: str, prompt: str, max_tokens: int) -> dict[str, Any]:
        body = json.dumps({"model": model, "messages": [{"role": "user", "content": prompt}], "temperature": 0,
                           "max_tokens": max_tokens}).encode()
        path = "/v1/chat/completions"
        scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
                 "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
                 "root_path": "", "client": ("127.0.0.1", 0), "server": ("127.0.0.1", 0),
                 "headers": [(b"host", b"safegene-gate"), (b"content-type", b"application/json"),
                             (b"content-length", str(len(body)).encode())],
                 INTERNAL_SCOPE: model}
        done = asyncio.Event()
        sent = False
        status = 0
        chunks: list[bytes] = []

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await done.wait()  # vLLM listens for a disconnect to abort: there is none until the answer is in
            return {"type": "http.disconnect"}

        async def send(msg: dict[str, Any]) -> None:
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
            elif msg["type"] == "http.response.body":
                chunks.append(msg.get("body", b""))
                if not msg.get("more_body"):
                    done.set()

        try:
            await app(scope, receive, send)
        finally:
            done.set()
        data = b"".join(chunks)
        if status != 200:
            raise RuntimeError(f"the engine answered HTTP {status} for {model!r}: {data[:300]!r}")
        choice = json.loads(data)["choices"][0]
        return {"response": choice["message"].get("content") or "", "finish": choice.get("finish_reason")}

    return complete


async def _discard(_msg: dict[str, Any]) -> None:
    """An ASGI send that drops everything (a response read only for its status)."""
