"""Admin builds as jobs in a worker process: calibrate, stack and merge never run in the serving process.

A registration is checked in the serving process first with what costs milliseconds (the body, the paths, the
adapter's file headers against the base model's shapes, an expected digest); only then does a job start, in a
process of its own (spawned: a fresh interpreter, nothing shared with the event loop or the engine clients), which
loads the tensors, calibrates if asked, and writes the content-addressed folders. The serving process never loads a
second model. A job reports its stage as it goes, can be cancelled (the process is terminated, its partial folders
removed), and is listed at ``GET /admin/jobs`` and ``GET /admin/jobs/<id>``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing as mp
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .build import BuildContext, OnPlain, build_task
from .records import TaskRecord, now_iso

log = logging.getLogger("safegene.server.jobs")
#: finished jobs kept for GET /admin/jobs (the oldest are forgotten first)
KEEP_FINISHED = 100
STATES = ("queued", "building", "gating", "loading", "done", "refused", "failed", "cancelled")
#: states a job ends in
FINAL_STATES = ("done", "refused", "failed", "cancelled")


class JobCancelled(Exception):
    """The job was cancelled before it finished; nothing it built is served."""


class BuildFailed(Exception):
    """The build in the worker process raised; the message is its error (already user-facing)."""


@dataclass
class Job:
    id: str
    task: str
    version: str | None
    state: str = "queued"
    stage: str = "waiting for the build worker"
    created_at: str = field(default_factory=now_iso)
    updated_at: str = field(default_factory=now_iso)
    finished_at: str | None = None
    error: str | None = None
    result: dict[str, Any] | None = None
    cancel_requested: bool = False
    #: the safety gate's view of the job (server/gate.py): staging names, progress, verdict, report; None: no gate
    gate: dict[str, Any] | None = None

    def update(self, state: str | None = None, stage: str | None = None) -> None:
        if state is not None:
            self.state = state
            if state in FINAL_STATES:
                self.finished_at = now_iso()
        if stage is not None:
            self.stage = stage
        self.updated_at = now_iso()

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "task": self.task, "version": self.version, "state": self.state, "stage": self.stage,
                "created_at": self.created_at, "updated_at": self.updated_at, "finished_at": self.finished_at,
                "error": self.error, "result": self.result,
                **({"gate": self.gate} if self.gate is not None else {})}


#: the progress message a build worker sends once the plain snapshot exists: (PLAIN_READY, folder, version)
PLAIN_READY = "plain-ready"


def build_worker(cfg: Any, spec: Any, source: str, rank_limit: int | None, progress: Any, out: Any) -> None:
    """The job process: build one task entry, report stages on ``progress`` (and, as a tuple, the plain snapshot
    once it exists: :data:`PLAIN_READY`), the record (or error) on ``out``."""

    def plain_ready(folder: Path, version: str) -> None:
        progress.put((PLAIN_READY, str(folder), version))
        if spec.calibrate:
            progress.put("calibrating the safety coefficients (load-time calibration)")

    try:
        progress.put("loading the safety adapter and the base model's shapes")
        ctx = BuildContext(cfg)
        ctx.rank_limit = rank_limit
        progress.put("validating the adapter's tensors" + (" and calibrating" if spec.calibrate else "")
                     + (", merging" if "merged" in (spec.mode if isinstance(spec.mode, str) else
                                                   " ".join(spec.mode.values())) else ", stacking"))
        record = build_task(spec, ctx, source=source, on_plain=plain_ready)
        out.put(("ok", record.to_dict()))
    except BaseException as e:  # noqa: BLE001 - every failure goes back to the server as a message
        out.put(("error", f"{e}"))


class Jobs:
    """Runs builds one at a time, each in its own spawned process; keeps a bounded history."""

    def __init__(self) -> None:
        self._ctx = mp.get_context("spawn")
        self.jobs: dict[str, Job] = {}
        self._procs: dict[str, Any] = {}
        self._seq = itertools.count(1)

    def create(self, task: str, version: str | None) -> Job:
        job = Job(id=f"job-{next(self._seq)}-{uuid.uuid4().hex[:8]}", task=task, version=version)
        self.jobs[job.id] = job
        finished = [j for j in self.jobs.values() if j.finished_at]
        for old in finished[: max(0, len(finished) - KEEP_FINISHED)]:
            self.jobs.pop(old.id, None)
        return job

    def get(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id)

    def list(self) -> list[dict[str, Any]]:
        return [j.to_dict() for j in sorted(self.jobs.values(), key=lambda j: j.created_at, reverse=True)]

    async def build(self, job: Job, cfg: Any, spec: Any, source: str, rank_limit: int | None,
                    on_plain: OnPlain | None = None) -> TaskRecord:
        """Run :func:`build_worker` for ``job``; the record, or :class:`BuildFailed` / :class:`JobCancelled`.
        ``on_plain(folder, version)`` runs in the serving process when the worker reports the plain snapshot."""
        if job.cancel_requested:
            raise JobCancelled(f"job {job.id} was cancelled before it started")
        progress, out = self._ctx.Queue(), self._ctx.Queue()
        proc = self._ctx.Process(target=build_worker, name=f"safegene-build-{job.id}", daemon=True,
                                 args=(cfg, spec, source, rank_limit, progress, out))
        job.update("building", "starting the build worker")
        proc.start()
        self._procs[job.id] = proc
        try:
            while True:
                while not progress.empty():
                    msg = progress.get_nowait()
                    if isinstance(msg, tuple) and msg[0] == PLAIN_READY:
                        if on_plain is not None:
                            on_plain(Path(msg[1]), msg[2])
                    else:
                        job.update(stage=msg)
                if not out.empty():
                    kind, payload = out.get_nowait()
                    break
                if not proc.is_alive():
                    if not out.empty():
                        continue
                    if job.cancel_requested:
                        raise JobCancelled(f"job {job.id} was cancelled")
                    raise BuildFailed(f"the build worker exited with code {proc.exitcode} before it finished")
                await asyncio.sleep(0.05)
        finally:
            self._procs.pop(job.id, None)
            proc.join(5)
            if proc.is_alive():
                proc.kill()
        if kind != "ok":
            raise BuildFailed(payload)
        return TaskRecord.from_dict(payload)

    def cancel(self, job_id: str) -> Job | None:
        """Cancel a queued or building job (its worker is terminated; the build removes nothing it did not make)."""
        job = self.jobs.get(job_id)
        if job is None or job.finished_at:
            return job
        job.cancel_requested = True
        proc = self._procs.get(job_id)
        if proc is not None and proc.is_alive():
            proc.terminate()
        job.update(stage="cancelling")
        return job

    def shutdown(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        for proc in list(self._procs.values()):
            proc.terminate()
            proc.join(max(0.0, deadline - time.monotonic()))
