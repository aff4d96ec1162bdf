"""The served set at run time: which names are served, from which built records, and the moves between states.

Every served name is a :class:`Served` entry (the base model, or one variant of a task record). Entries are
``active``, ``swapping`` (a new version is being loaded under the same name: new requests wait, in-flight ones finish
on the old weights) or ``retiring`` (new requests are refused; in-flight ones drain, then the name is unloaded).

Changes go through :class:`Registry`: :meth:`Registry.add` builds a task (``server/build.py``, in a thread) and
loads it, :meth:`Registry.retire` drains and unloads one. Admin changes are serialised by one lock; request
admission (:meth:`Registry.admit`) is lock-free. Any failure leaves what is served unchanged.

The state (what is served, where each entry came from — config or admin API — and what was retired) is saved in a
:class:`~server.store.RegistryStore` after every change (by default ``<state_dir>/registry.json``, written
atomically) and restored on restart (admin entries rebuilt, config entries re-read).

The registry drives an :class:`EngineOps` (``server/engine.py`` implements it over vLLM) and never imports vLLM.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from safegene_runtime.adapters import inspect_adapter
from safegene_runtime.artifacts import ArtifactError, read_manifest
from safegene_runtime.checkpoints import check_delta_shapes
from safegene_runtime.digests import adapter_digest

from . import metrics as M
from .build import MAX_ADAPTER_BYTES, UNBOUNDED_RANK, BuildContext, build_task, check_paths
from .config import ConfigError, ServerConfig, TaskSpec, check_name, parse_task
from .jobs import BuildFailed, Job, JobCancelled, Jobs
from .records import TaskRecord, now_iso
from .snapshots import SnapshotError, collect_garbage, referenced, verify_record
from .store import REGISTRY_FILE, FileStore, RegistryStore

log = logging.getLogger("safegene.server.registry")
#: seconds a swap holds its variants before draining: a test hook (tests/server/test_kill_mid_swap.py kills the server
#: there); unset, zero
SWAP_HOLD_S = float(os.environ.get("SAFEGENE_TEST_SWAP_HOLD_S", "0") or 0)


class RegistryError(ValueError):
    """A register/retire request was refused; nothing served changed. ``status`` is the HTTP status to return."""

    def __init__(self, message: str, status: int = 400, code: str = "invalid_adapter"):
        super().__init__(message)
        self.status = status
        self.code = code


class Unavailable(Exception):
    """A served name is being swapped to a new version and did not reopen in time: retry (HTTP 503, Retry-After)."""

    def __init__(self, message: str, retry_after: float):
        super().__init__(message)
        self.retry_after = retry_after


class EngineOps(Protocol):
    """What the registry needs from the engines: load a built folder under a served name, and unload it."""

    async def load(self, name: str, path: Path) -> None: ...
    async def unload(self, name: str) -> None: ...


@dataclass
class Served:
    """One name clients can put in ``model``: the base (``record`` None), or a task variant."""

    name: str
    variant: str  # base | plain | safe
    task: str
    path: str
    record: TaskRecord | None = None
    inflight: int = 0
    state: str = "active"  # active | retiring | swapping
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    open: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.idle.set()
        self.open.set()

    @property
    def labels(self) -> dict[str, str]:
        return {"model": self.name, "variant": self.variant, "task": self.task}

    @property
    def mode(self) -> str:
        """``base``, ``lora`` (stacked on the shared engine) or ``merged`` (own engine, merged checkpoint)."""
        if self.record is None:
            return "base"
        v = self.record.variants.get(self.variant)
        return v.mode if v is not None else "lora"

    def info_labels(self) -> dict[str, str]:
        r = self.record
        safe = r is not None and self.variant == "safe"
        return {
            "model": self.name, "variant": self.variant, "task": self.task,
            "task_version": r.version if r is not None else "",
            "safety_version": (r.safety_version or "") if safe else "",
            "coefficients_hash": (r.coefficients_hash or "") if safe else "",
            "mode": self.mode,
        }

    def lineage(self) -> dict[str, Any]:
        r = self.record
        out: dict[str, Any] = {"variant": self.variant, "task": self.task or None, "mode": self.mode}
        if r is not None:
            out.update(task_version=r.version, source=r.source, path=self.path,
                       manifest=str(Path(self.path) / "manifest.json"))
            if self.variant == "safe":
                out.update(safety_version=r.safety_version, coefficients_hash=r.coefficients_hash)
        return out


def _parses(rec: dict[str, Any]) -> bool:
    try:
        TaskRecord.from_dict(rec)
        return True
    except (KeyError, TypeError, ValueError):
        return False


def _served_of(rec: TaskRecord) -> list[Served]:
    return [Served(v.served_name, variant, rec.name, v.path, rec) for variant, v in rec.variants.items()]


class Registry:
    """The served set. Admin operations are serialised by one lock; request admission is lock-free."""

    def __init__(self, cfg: ServerConfig, ctx: BuildContext | None = None, store: RegistryStore | None = None,
                 jobs: Jobs | None = None):
        self.cfg = cfg
        self.jobs = jobs or Jobs()
        self.ctx = ctx or BuildContext(cfg)
        self.store = store or FileStore(cfg.state_dir / REGISTRY_FILE)
        self.records: dict[str, TaskRecord] = {}
        self.retired: dict[str, dict[str, Any]] = {}
        #: restored entries that cannot be served (snapshot missing or changed): kept in the state, not served
        self.unavailable: dict[str, dict[str, Any]] = {}
        self.generation = 0
        self.served: dict[str, Served] = {}
        self.engine: EngineOps | None = None
        self._lock: asyncio.Lock | None = None

    # -- start-up (synchronous, before the engine exists) --

    def build_startup(self) -> None:
        """Config entries + restored admin entries, all validated and built. Raises ConfigError naming the entry."""
        data = self.store.load()
        self.generation = int(data.get("generation", 0))
        self.retired = dict(data.get("retired", {}))
        saved: dict[str, dict[str, Any]] = dict(data.get("tasks", {}))
        plan: list[tuple[str, TaskSpec, str]] = []
        for i, spec in enumerate(self.cfg.tasks):
            where = f"{self.cfg.path}: tasks[{i}] (task {spec.name!r})"
            rec = saved.get(spec.name)
            if rec is not None and rec.get("source") == "admin":
                continue  # the admin API replaced this config entry; the registry wins (documented)
            tomb = self.retired.get(spec.name)
            if tomb is not None and tomb.get("spec") == json.loads(json.dumps(spec.to_dict(), default=str)):
                log.info("task %s stays retired (retired through the admin API)", spec.name)
                continue
            self.retired.pop(spec.name, None)
            plan.append((where, spec, "config"))
        for where, spec, source in plan:
            try:
                self.records[spec.name] = build_task(spec, self.ctx, source=source)
            except (ArtifactError, ValueError, OSError) as e:
                raise ConfigError(f"{where}: {e}") from e
        restored = {name: rec for name, rec in saved.items() if rec.get("source") == "admin"}
        self.ctx.settle_rank_limit(self.records)  # config entries fix the engine rank; restored ones must fit it
        for name, rec in restored.items():  # from their snapshots, checked; a bad one is refused alone
            try:
                record = TaskRecord.from_dict(rec)
                verify_record(record, safety_version=self.ctx.safety_version, rank_limit=self.ctx.rank_limit)
            except (SnapshotError, KeyError, TypeError, ValueError) as e:
                self.unavailable[name] = {"record": rec, "reason": str(e)}
                M.set_unavailable(name, True)
                log.error("%s: restored entry %r is not served: %s", self.store.where, name, e)
                continue
            self.records[name] = record
        keep = referenced(list(self.records.values()) + [TaskRecord.from_dict(u["record"])
                                                         for u in self.unavailable.values() if _parses(u["record"])])
        for folder in collect_garbage(self.cfg.state_dir, keep):
            log.info("removed %s: no record refers to it", folder)

    @property
    def max_lora_rank(self) -> int:
        assert self.ctx.rank_limit is not None
        return self.ctx.rank_limit

    def variant_count(self) -> int:
        return sum(len(r.variants) for r in self.records.values())

    async def attach(self, engine: EngineOps) -> None:
        """Register the base and every built variant with the engine (before the port opens)."""
        self.engine = engine
        self._lock = asyncio.Lock()
        self._publish(Served(self.cfg.served_name, "base", "", str(self.cfg.base_model)))
        for name, rec in self.records.items():
            for s in _served_of(rec):
                try:
                    await engine.load(s.name, Path(s.path))
                except Exception as e:
                    raise ConfigError(f"task {name!r}: the engine refused variant {s.name!r}: {e}") from e
                self._publish(s)
        self.persist()

    def _publish(self, s: Served) -> None:
        self.served[s.name] = s
        M.set_adapter_info(s.info_labels())

    def _unpublish(self, s: Served) -> None:
        self.served.pop(s.name, None)
        M.remove_adapter_info(s.info_labels())

    def persist(self) -> None:
        self.generation += 1
        self.store.save({
            "generation": self.generation, "updated_at": now_iso(),
            "base": {"model": str(self.cfg.base_model), "served_name": self.cfg.served_name},
            "safety": {"path": str(self.cfg.safety) if self.cfg.safety else None, "version": self.ctx.safety_version},
            "max_lora_rank": self.ctx.rank_limit,
            "tasks": {**{n: u["record"] for n, u in self.unavailable.items()},
                      **{n: r.to_dict() for n, r in self.records.items()}},
            "retired": self.retired,
        })

    # -- request admission (called by the middleware for every request) --

    async def admit(self, name: str, timeout: float | None = None) -> Served | None:
        """The served entry for ``name`` with its in-flight count taken, or None (unknown or retiring).

        While a new version of the name is being swapped in, the request waits for it (at most ``timeout``, default
        the drain timeout) and then runs on the new version; if the swap takes longer, :class:`Unavailable`."""
        s = self.served.get(name)
        if s is None or s.state == "retiring":
            return None
        if not s.open.is_set():  # a version swap is under way: hold the request instead of failing it
            wait = self.cfg.drain_timeout_s if timeout is None else timeout
            try:
                await asyncio.wait_for(s.open.wait(), wait)
            except asyncio.TimeoutError:
                raise Unavailable(f"`{name}` is switching to a new version; retry in a few seconds",
                                  retry_after=min(30.0, max(1.0, wait / 4))) from None
            s = self.served.get(name)
            if s is None or s.state == "retiring":
                return None
        s.inflight += 1
        s.idle.clear()
        return s

    def release(self, s: Served) -> None:
        s.inflight -= 1
        if s.inflight <= 0:
            s.inflight = 0
            s.idle.set()

    def labels_for(self, name: Any) -> dict[str, str]:
        s = self.served.get(name) if isinstance(name, str) else None
        if s is None:
            return {"model": M.UNKNOWN, "variant": "", "task": ""}
        return s.labels

    def lineage_of(self, name: str) -> dict[str, Any] | None:
        """The lineage card field of a name clients may use now (None: unknown, staging or retiring)."""
        s = self.served.get(name)
        return s.lineage() if s is not None and s.state != "retiring" else None

    # -- admin --

    def describe(self) -> dict[str, Any]:
        variants = []
        for s in self.served.values():
            d = {"id": s.name, "state": s.state, "inflight": s.inflight, **s.lineage()}
            if s.record is not None:
                d["manifest_data"] = read_manifest(s.path)
                if s.variant == "safe":
                    d["coefficients"] = s.record.coefficients
            variants.append(d)
        return {"generation": self.generation, "base": self.cfg.served_name, "max_lora_rank": self.ctx.rank_limit,
                "safety": {"path": str(self.cfg.safety) if self.cfg.safety else None,
                           "version": self.ctx.safety_version},
                "variants": variants, "retired": self.retired,
                "unavailable": {n: {"version": u["record"].get("version"), "reason": u["reason"]}
                                for n, u in self.unavailable.items()}}

    def tasks(self) -> dict[str, Any]:
        return {n: r.to_dict() for n, r in self.records.items()}

    def precheck(self, spec: TaskSpec) -> None:
        """What costs milliseconds, in the serving process, before a build job starts: the paths, the adapter's
        file headers against the base model's shapes and the rank limit, and the expected digest."""
        check_paths(spec, self.cfg.adapter_root, "admin")
        header = inspect_adapter(spec.path, max_rank=self.ctx.rank_limit or UNBOUNDED_RANK, max_bytes=MAX_ADAPTER_BYTES)
        check_delta_shapes(self.ctx.base, header.delta_shapes(), "task adapter", spec.path)
        if "safe" in spec.variants and spec.mode_of("safe") == "lora" and self.ctx.rank_limit is not None:
            combined = self.ctx.combined_header_rank(header)
            if spec.rank_budget is not None:
                combined = min(combined, max(spec.rank_budget, header.max_rank))
            if combined > self.ctx.rank_limit:
                raise ArtifactError(f"combined rank {combined} (task {header.max_rank} + safety "
                                    f"{self.ctx.safety.max_rank() if self.ctx.safety else 0}) is over the server's "
                                    f"max_lora_rank {self.ctx.rank_limit}")
        if spec.digest is not None:
            got = adapter_digest(spec.path)
            if got != spec.digest:
                raise ArtifactError(f"adapter {spec.path} does not have the expected digest (expected "
                                    f"{spec.digest[:12]}..., the files hash to {got[:12]}...)")

    async def add(self, body: Any, *, wait: bool = True) -> dict[str, Any]:
        """Check (here, fast), build (a job in a worker process), then load into the engine; on any failure nothing
        served changes. ``wait=False``: return the accepted job at once (``GET /admin/jobs/<id>`` follows it)."""
        assert self._lock is not None and self.engine is not None
        if not isinstance(body, dict):
            raise RegistryError("expected a JSON object {name, path, version?, coefficients|calibrate, variants?}")
        try:
            spec = parse_task(body, self.cfg.adapter_root, "request", self.cfg.default_mode)
        except ConfigError as e:
            raise RegistryError(str(e)) from e
        if spec.name == self.cfg.served_name:
            raise RegistryError(f"name {spec.name!r} is the base model's served name", 409, "name_conflict")
        if "safe" in spec.variants and self.ctx.safety is None:
            raise RegistryError("this server has no safety adapter: only the 'plain' variant can be served")
        try:
            await asyncio.to_thread(self.precheck, spec)
        except (ArtifactError, ValueError, OSError) as e:
            raise RegistryError(f"adapter {spec.name!r} refused: {e}") from e
        job = self.jobs.create(spec.name, spec.version)
        run = asyncio.create_task(self._run_job(job, spec))
        if wait:
            return await run
        run.add_done_callback(lambda t: t.cancelled() or t.exception())  # failures live in the job record
        return {"status": "accepted", "job": job.to_dict()}

    async def _run_job(self, job: Job, spec: TaskSpec) -> dict[str, Any]:
        assert self._lock is not None
        try:
            async with self._lock:
                try:
                    rec = await self.jobs.build(job, self.cfg, spec, "admin", self.ctx.rank_limit)
                except JobCancelled as e:
                    raise RegistryError(str(e), 409, "job_cancelled") from e
                except BuildFailed as e:
                    raise RegistryError(f"adapter {spec.name!r} refused: {e}") from e
                job.update(stage="loading into the engine")
                result = await self._apply(spec, rec)
        except RegistryError as e:
            job.error = str(e)
            job.update("cancelled" if e.code == "job_cancelled" else "failed")
            raise
        except Exception as e:  # an unexpected failure still ends the job and the request with a JSON error
            log.exception("job %s failed", job.id)
            job.error = f"internal error: {type(e).__name__}"
            job.update("failed")
            raise RegistryError(f"registering {spec.name!r} failed: {type(e).__name__}", 500, "internal_error") from e
        job.result = {"status": result["status"], "version": rec.version}
        job.update("done", "served")
        return {**result, "job": job.id}

    async def _apply(self, spec: TaskSpec, rec: TaskRecord) -> dict[str, Any]:
        """Serve a built record: add it, or swap it in for the task's current version (under the admin lock)."""
        old = self.records.get(spec.name)
        if old is not None:
            if old.same_build(rec):
                return {"status": "unchanged", "task": old.to_dict()}
            if old.version == rec.version:
                raise RegistryError(f"task {spec.name!r} version {rec.version!r} is already served with "
                                    "different content: give the new adapter a new version", 409,
                                    "version_conflict")
            await self._swap(old, rec)
        else:
            clash = [n for n in rec.served_names() if n in self.served]
            if clash:
                raise RegistryError(f"served name {clash[0]!r} is already in use", 409, "name_conflict")
            await self._load_new(rec)
        self.records[spec.name] = rec
        self.retired.pop(spec.name, None)
        if self.unavailable.pop(spec.name, None) is not None:  # a fresh build replaces the refused snapshot
            M.set_unavailable(spec.name, False)
        self.persist()
        return {"status": "replaced" if old else "added", "task": rec.to_dict()}

    async def _load_new(self, rec: TaskRecord) -> None:
        assert self.engine is not None
        loaded: list[str] = []
        try:
            for v in rec.variants.values():
                await self.engine.load(v.served_name, Path(v.path))
                loaded.append(v.served_name)
        except Exception as e:
            for n in loaded:  # roll back the half of a pair that did load
                try:
                    await self.engine.unload(n)
                except Exception:  # pragma: no cover - best effort
                    log.exception("rollback unload of %s failed", n)
            raise RegistryError(f"the engine refused adapter {rec.name!r}: {e}", 400, "engine_refused") from e
        for s in _served_of(rec):
            self._publish(s)

    async def _swap(self, old: TaskRecord, new: TaskRecord) -> None:
        """Replace a task's version, its variants together or not at all.

        The new folders are first loaded under staging names (proof that they load); then every variant of the task
        is held at once (new requests wait), in-flight requests finish on the old weights, the old folders are
        unloaded and the new ones loaded; the new entries are published together, and the held requests run on
        them. If a new folder fails to load, the old ones are loaded back and nothing changes."""
        assert self.engine is not None
        staged: list[str] = []
        try:
            for v in new.variants.values():
                tmp = f"{v.served_name}.staging-{new.version}"
                await self.engine.load(tmp, Path(v.path))
                staged.append(tmp)
        except Exception as e:
            raise RegistryError(f"the engine refused adapter {new.name!r}: {e}", 400, "engine_refused") from e
        finally:
            for tmp in staged:
                await self.engine.unload(tmp)
        held = {variant: self.served[v.served_name] for variant, v in old.variants.items()
                if v.served_name in self.served}
        kept = {variant: s for variant, s in held.items() if variant in new.variants}
        dropped = [s for variant, s in held.items() if variant not in new.variants]
        for s in kept.values():
            s.open.clear()
            s.state = "swapping"
        if SWAP_HOLD_S:  # fault injection for the crash tests: keep the pair held (never set in production)
            await asyncio.sleep(SWAP_HOLD_S)
        try:
            await asyncio.wait_for(asyncio.gather(*(s.idle.wait() for s in kept.values())), self.cfg.drain_timeout_s)
        except asyncio.TimeoutError:
            log.warning("swap of %s: in-flight requests did not drain in %.0fs", new.name, self.cfg.drain_timeout_s)
        for s in kept.values():
            await self.engine.unload(s.name)
        loaded: list[str] = []
        try:
            for variant in kept:
                nv = new.variants[variant]
                await self.engine.load(nv.served_name, Path(nv.path))
                loaded.append(nv.served_name)
            for variant, v in new.variants.items():
                if variant not in old.variants:
                    await self.engine.load(v.served_name, Path(v.path))
                    loaded.append(v.served_name)
        except Exception as e:
            for name in loaded:  # back to the old version, every variant
                await self.engine.unload(name)
            for s in kept.values():
                await self.engine.load(s.name, Path(s.path))
                s.state = "active"
                s.open.set()
            raise RegistryError(f"the engine refused version {new.version!r} of {new.name!r}: {e}; the old "
                                "version keeps serving", 500, "engine_refused") from e
        for s in kept.values():  # publish the new pair in one step (no await in between), then release the waiters
            self._unpublish(s)
        for served in _served_of(new):
            self._publish(served)
        for s in kept.values():
            s.open.set()  # waiters re-resolve the name and get the new entry
        for s in dropped:  # variants the new version drops are retired like DELETE does
            await self._retire_served(s)

    async def _retire_served(self, s: Served) -> None:
        assert self.engine is not None
        s.state = "retiring"  # admit() refuses new requests from now on
        try:
            await asyncio.wait_for(s.idle.wait(), self.cfg.drain_timeout_s)
        except asyncio.TimeoutError:
            log.warning("retire %s: %d requests still in flight after %.0fs; unloading anyway", s.name, s.inflight,
                        self.cfg.drain_timeout_s)
        await self.engine.unload(s.name)
        self._unpublish(s)

    async def retire(self, name: str) -> dict[str, Any]:
        """Retire a task (both variants): stop admitting, drain in-flight requests, unload, persist."""
        assert self._lock is not None
        try:
            check_name(name, "name")
        except ConfigError as e:
            raise RegistryError(str(e), 404, "not_found") from e
        async with self._lock:
            rec = self.records.get(name)
            if rec is None and name in self.unavailable:  # never served since the restart: just forget it
                gone = self.unavailable.pop(name)
                M.set_unavailable(name, False)
                self.retired[name] = {"version": gone["record"].get("version"), "at": now_iso(),
                                      "spec": gone["record"].get("spec")}
                self.persist()
                return {"status": "retired", "task": name, "version": gone["record"].get("version"), "drained": 0}
            if rec is None:
                raise RegistryError(f"task {name!r} is not served", 404, "not_found")
            drained = 0
            for served_name in rec.served_names():
                s = self.served.get(served_name)
                if s is not None:
                    drained += s.inflight
                    await self._retire_served(s)
            del self.records[name]
            self.retired[name] = {"version": rec.version, "at": now_iso(), "spec": rec.spec}
            self.persist()
            return {"status": "retired", "task": name, "version": rec.version, "drained": drained}
