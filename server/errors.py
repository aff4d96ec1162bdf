"""The errors the middleware answers with, as OpenAI-style JSON bodies (``{"error": {message, type, param, code}}``)."""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable

from .auth import error_body

Send = Callable[[dict[str, Any]], Awaitable[None]]


class HTTPError(Exception):
    """A request refused with ``status``; the message is shown to the client (never a secret or a server path)."""

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None,
                 type_: str = "invalid_request_error", retry_after: float | None = None, extra: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.param, self.type = status, code, param, type_
        self.retry_after = retry_after
        self.extra = extra  # machine-readable fields beside message/type/param/code (error_body)


async def send_json(send: Send, status: int, body: bytes | Any, headers: list[tuple[bytes, bytes]] | None = None
                    ) -> None:
    data = body if isinstance(body, bytes) else json.dumps(body, default=str).encode()
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": hdrs + list(headers or [])})
    await send({"type": "http.response.body", "body": data})


async def send_error(send: Send, e: HTTPError) -> None:
    extra = [(b"www-authenticate", b"Bearer")] if e.status == 401 else []
    if e.retry_after is not None:
        extra.append((b"retry-after", str(max(1, round(e.retry_after))).encode()))
    await send_json(send, e.status, error_body(str(e), e.type, e.code, e.param, e.extra), extra)
