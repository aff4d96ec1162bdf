"""Bearer-key checks and OpenAI-style error bodies (shared by the middleware and the admin API)."""

from __future__ import annotations

import hmac
import json
from typing import Any


def bearer_token(scope: dict[str, Any]) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    for k, v in scope.get("headers") or []:
        if k == b"authorization":
            text = v.decode("latin-1").strip()
            if text[:7].lower() == "bearer ":
                return text[7:].strip() or None
            return None
    return None


def key_matches(token: str | None, keys: list[str]) -> bool:
    """Constant-time membership test (never short-circuits on the first differing byte)."""
    if token is None:
        return False
    ok = False
    for k in keys:
        ok |= hmac.compare_digest(token.encode(), k.encode())
    return ok


def error_body(message: str, type_: str = "invalid_request_error", code: str | None = None,
               param: str | None = None) -> bytes:
    """The body OpenAI returns for errors: ``{"error": {"message", "type", "param", "code"}}``."""
    return json.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}}).encode()
