"""Admin API (``/admin/...``, admin bearer key; auth is checked by the middleware before this runs).

* ``GET    /admin/variants``          everything served, each variant with its lineage and manifest
* ``POST   /admin/adapters``          add a task adapter (or a new version of one) at run time
* ``DELETE /admin/adapters/{name}``   retire a task: stop admitting, drain in-flight requests, unload

Errors raise :class:`~server.registry.RegistryError` (status + message); the middleware turns them into
OpenAI-style error bodies. Nothing served changes when a call fails.
"""

from __future__ import annotations

import json
from typing import Any

from .registry import Registry, RegistryError


async def handle_admin(registry: Registry, method: str, path: str, raw: bytes) -> tuple[int, Any]:
    parts = [p for p in path.split("/") if p][1:]  # drop "admin"
    if parts == ["variants"] and method == "GET":
        return 200, registry.describe()
    if parts == ["adapters"] and method == "GET":
        return 200, {"tasks": registry.tasks()}
    if parts == ["adapters"] and method == "POST":
        try:
            body = json.loads(raw or b"null")
        except (ValueError, UnicodeDecodeError) as e:
            raise RegistryError(f"could not parse the JSON body: {e}", 400, "invalid_json") from e
        result = await registry.add(body)
        return (201 if result["status"] == "added" else 200), result
    if len(parts) == 2 and parts[0] == "adapters" and method == "DELETE":
        return 200, await registry.retire(parts[1])
    if parts and parts[0] in ("variants", "adapters"):
        raise RegistryError(f"method {method} is not allowed on {path}", 405, "method_not_allowed")
    raise RegistryError(f"no admin route {path}", 404, "not_found")
