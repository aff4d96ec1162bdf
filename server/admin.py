"""Admin API (``/admin/...``, admin bearer key; auth is checked by the middleware before this runs).

* ``GET    /admin/variants``          everything served, each variant with its lineage and manifest
* ``POST   /admin/adapters``          add a task adapter (or a new version of one) at run time; the build runs as
  a job in a worker process (``server/jobs.py``); by default the call waits for it
* ``DELETE /admin/adapters/{name}``   retire a task: stop admitting, drain in-flight requests, unload
* ``GET    /admin/jobs``              build jobs (``POST /admin/adapters?wait=false`` answers 202 with one)
* ``GET    /admin/jobs/{id}``         one job: state, stage, error, result
* ``DELETE /admin/jobs/{id}``         cancel a queued or running build
* ``GET    /admin/gate``               jobs that ran (or will run) the safety gate (config ``gate:``)
* ``GET    /admin/gate/{job}``         one gate run: state, progress (done/total requests), verdict, the report
* ``DELETE /admin/gate/{job}``         cancel it: its staging names are unloaded, what is served stays as it was
* ``PUT    /admin/aliases/{name}``    point a task at a version the registry already holds (``{"version": ...}``;
  postgres backend, which keeps every version)

Errors raise :class:`~server.registry.RegistryError` (status + message); the middleware turns them into
OpenAI-style error bodies. Nothing served changes when a call fails.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from safegene_runtime.gate import GateError, read_report

from .jobs import Job
from .registry import Registry, RegistryError


def gate_view(job: Job) -> dict[str, Any]:
    """A gated job as ``GET /admin/gate/<job>`` shows it: state, progress, verdict, and once decided the report
    (``gate.json``'s contents and the folder that holds ``gate.md``)."""
    gate = dict(job.gate or {})
    report = None
    if gate.get("report"):
        try:
            report = read_report(Path(gate["report"]) / "gate.json")
        except (OSError, ValueError, GateError) as e:  # the folder was removed since: say so, keep the rest
            report = {"error": f"the report could not be read: {e}"}
    return {"id": job.id, "task": job.task, "version": job.version, "state": job.state, "stage": job.stage,
            "created_at": job.created_at, "updated_at": job.updated_at, "finished_at": job.finished_at,
            "error": job.error, "progress": gate.get("progress"), "verdict": gate.get("verdict"),
            "served": gate.get("served"), "staging": gate.get("staging"), "concurrency": gate.get("concurrency"),
            "idle_concurrency": gate.get("idle_concurrency"),
            "seconds": gate.get("seconds"), "report_path": gate.get("report"), "report_id": gate.get("report_id"),
            "report": report}


async def handle_admin(registry: Registry, method: str, path: str, raw: bytes, query: str = "") -> tuple[int, Any]:
    parts = [p for p in path.split("/") if p][1:]  # drop "admin"
    params = dict(parse_qsl(query))
    if parts == ["variants"] and method == "GET":
        return 200, registry.describe()
    if parts == ["adapters"] and method == "GET":
        return 200, {"tasks": registry.tasks()}
    if parts == ["adapters"] and method == "POST":
        try:
            body = json.loads(raw or b"null")
        except (ValueError, UnicodeDecodeError) as e:
            raise RegistryError(f"could not parse the JSON body: {e}", 400, "invalid_json") from e
        wait = params.get("wait", "true").lower() not in ("false", "0", "no")
        result = await registry.add(body, wait=wait)
        return {"added": 201, "accepted": 202}.get(result["status"], 200), result
    if parts == ["jobs"] and method == "GET":
        return 200, {"jobs": registry.jobs.list()}
    if len(parts) == 2 and parts[0] == "jobs" and method in ("GET", "DELETE"):
        job = registry.jobs.get(parts[1]) if method == "GET" else registry.jobs.cancel(parts[1])
        if job is None:
            raise RegistryError(f"no job {parts[1]!r} (finished jobs are kept for a while, then forgotten)", 404,
                                "not_found")
        return 200, job.to_dict()
    if parts == ["gate"] and method == "GET":
        return 200, {"jobs": [gate_view(j) for j in sorted(registry.jobs.jobs.values(), key=lambda j: j.created_at,
                                                               reverse=True) if j.gate is not None]}
    if len(parts) == 2 and parts[0] == "gate" and method in ("GET", "DELETE"):
        job = registry.jobs.get(parts[1])
        if job is None or job.gate is None:
            raise RegistryError(f"no gate run {parts[1]!r} (jobs without the gate are at /admin/jobs; finished ones "
                                "are kept for a while, then forgotten)", 404, "not_found")
        if method == "DELETE":
            registry.jobs.cancel(job.id)
        return 200, gate_view(job)
    if len(parts) == 2 and parts[0] == "adapters" and method == "DELETE":
        return 200, await registry.retire(parts[1])
    if len(parts) == 2 and parts[0] == "aliases" and method == "PUT":
        try:
            body = json.loads(raw or b"null")
        except (ValueError, UnicodeDecodeError) as e:
            raise RegistryError(f"could not parse the JSON body: {e}", 400, "invalid_json") from e
        return 200, await registry.set_alias(parts[1], body)
    if parts and parts[0] in ("variants", "adapters", "jobs", "aliases", "gate"):
        raise RegistryError(f"method {method} is not allowed on {path}", 405, "method_not_allowed")
    raise RegistryError(f"no admin route {path}", 404, "not_found")
