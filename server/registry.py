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

With a shared store (PostgreSQL, N replicas) the store is the source of truth instead: an admin change is first
checked here (built, verified, loaded once under staging names), then committed as one transaction that bumps the
generation, and every replica, this one included, reconciles to it (:meth:`Registry.reconcile`, driven by
``server/reconcile.py``): it loads what is missing, drains and unloads what was retired, and publishes the new set
and its generation in one step, so each response's version belongs to the generation it reports.

The registry drives an :class:`EngineOps` (``server/engine.py`` implements it over vLLM) and never imports vLLM.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from safegene_runtime.adapters import inspect_adapter
from safegene_runtime.artifacts import ArtifactError, read_manifest
from safegene_runtime.checkpoints import check_delta_shapes
from safegene_runtime.digests import adapter_digest

from . import metrics as M
from safegene_runtime.datasets import VALIDATION, DatasetError, load_file
from safegene_runtime.gate import PROMOTE, PROMOTE_SAFE_ONLY, REFUSE, GateError
from safegene_runtime.splits import require_split

from .build import MAX_ADAPTER_BYTES, UNBOUNDED_RANK, BuildContext, OnPlain, build_task, check_paths, under_root
from .config import VARIANTS, ConfigError, ServerConfig, TaskSpec, check_name, parse_task
from .gate import Complete, EarlyGate, GateRunner
from .jobs import BuildFailed, Job, JobCancelled, Jobs
from .records import TaskRecord, now_iso
from .backends import open_store
from .snapshots import SnapshotError, collect_garbage, referenced, verify_record
from .store import RegistryStore, StoreUnavailable, VersionConflict

log = logging.getLogger("safegene.server.registry")
#: seconds a swap holds its variants before draining: a test hook (tests/server/test_kill_mid_swap.py kills the server
#: there); unset, zero
SWAP_HOLD_S = float(os.environ.get("SAFEGENE_TEST_SWAP_HOLD_S", "0") or 0)


class RegistryError(ValueError):
    """A register/retire request was refused; nothing served changed. ``status`` is the HTTP status to return."""

    def __init__(self, message: str, status: int = 400, code: str = "invalid_adapter", extra: dict | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.extra = extra  # fields for the error body beside the message (a refused gate: job, verdict, report)


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
            if r.gate is not None:  # operators only (a server path): USER_LINEAGE leaves it out of /v1/models
                out["gate"] = {"verdict": r.gate.get("verdict"), "report": r.gate.get("report")}
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
        self.store = store or open_store(cfg)
        self.records: dict[str, TaskRecord] = {}
        self.retired: dict[str, dict[str, Any]] = {}
        #: restored entries that cannot be served (snapshot missing or changed): kept in the state, not served
        self.unavailable: dict[str, dict[str, Any]] = {}
        self.generation = 0
        #: the newest generation this replica knows of (shared store); ready once ``generation`` reaches it
        self.target_generation = 0
        self.served: dict[str, Served] = {}
        self.engine: EngineOps | None = None
        self._lock: asyncio.Lock | None = None
        self._build_lock: asyncio.Lock | None = None
        self._retry_at = 0.0  # shared store: when to try unavailable versions again
        #: the safety gate (config ``gate:`` on): set by :meth:`enable_gate` once the app can answer in-process
        self.gate: GateRunner | None = None

    @property
    def gated(self) -> bool:
        """True when every admin registration goes through the safety gate before it serves."""
        return self.cfg.gate is not None and self.cfg.gate.enabled

    def enable_gate(self, complete: Complete, max_num_seqs: int | None) -> None:
        """Give the gate its way to the live engine (``server.app.internal_completer``); called by ``serve``."""
        if self.gated:
            self.gate = GateRunner(self.cfg, complete, max_num_seqs,
                                   clients=lambda: sum(s.inflight for s in self.served.values()))

    # -- start-up (synchronous, before the engine exists) --

    @property
    def shared(self) -> bool:
        """True when the registry lives in a store other replicas share (the store decides; reconcile follows it)."""
        return bool(getattr(self.store, "shared", False))

    def build_startup(self) -> None:
        """Config entries + restored admin entries, all validated and built. Raises ConfigError naming the entry."""
        if self.shared:
            self._startup_shared()
            return
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
        self._build_lock = asyncio.Lock()  # shared store: one build at a time, apart from the registry lock
        self._publish(Served(self.cfg.served_name, "base", "", str(self.cfg.base_model)))
        for name, rec in self.records.items():
            for s in _served_of(rec):
                try:
                    await engine.load(s.name, Path(s.path))
                except Exception as e:
                    raise ConfigError(f"task {name!r}: the engine refused variant {s.name!r}: {e}") from e
                self._publish(s)
        if self.shared:  # the store is the source of truth: nothing to write back
            self._export()
        else:
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
        self.target_generation = self.generation
        self._export()

    def _export(self) -> None:
        M.REGISTRY_GENERATION.set(self.generation)
        M.REGISTRY_TARGET_GENERATION.set(self.target_generation)
        M.set_alias_versions({name: rec.version for name, rec in self.records.items()})

    def observe(self, generation: int) -> None:
        """The shared store is at ``generation`` (a poll or a notification): the replica's target."""
        if generation > self.target_generation:
            self.target_generation = generation
            M.REGISTRY_TARGET_GENERATION.set(generation)

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready (take traffic) once attached and every alias of the target generation is loaded. The body is
        for an unauthenticated probe: generations and task names, never a path (``/admin/variants`` has the
        reasons in full)."""
        reasons = []
        if self.engine is None:
            reasons.append("starting: the engine is not up yet")
        if self.generation < self.target_generation:
            reasons.append(f"loading generation {self.target_generation} (serving {self.generation})")
        if self.unavailable:
            reasons.append(f"not loaded: {', '.join(sorted(self.unavailable))} (the reasons are in /admin/variants)")
        return not reasons, {"generation": self.generation, "target_generation": self.target_generation,
                             "reasons": reasons}

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
        return {"generation": self.generation, "target_generation": self.target_generation,
                "backend": self.cfg.registry.backend, "base": self.cfg.served_name, "max_lora_rank": self.ctx.rank_limit,
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
        body = dict(body)
        gate_opts = body.pop("gate", None)
        try:
            spec = parse_task(body, self.cfg.adapter_root, "request", self.cfg.default_mode)
        except ConfigError as e:
            raise RegistryError(str(e)) from e
        task_file = self._gate_options(spec, gate_opts)
        if spec.name == self.cfg.served_name:
            raise RegistryError(f"name {spec.name!r} is the base model's served name", 409, "name_conflict")
        if "safe" in spec.variants and self.ctx.safety is None:
            raise RegistryError("this server has no safety adapter: only the 'plain' variant can be served")
        try:
            await asyncio.to_thread(self.precheck, spec)
        except (ArtifactError, ValueError, OSError) as e:
            raise RegistryError(f"adapter {spec.name!r} refused: {e}") from e
        if self.shared:  # fail fast: a build whose result cannot be committed is wasted
            await self._store_call(self.store.generation)  # type: ignore[attr-defined]
        job = self.jobs.create(spec.name, spec.version)
        if self.gated:
            job.gate = {"progress": {"done": 0, "total": 0}, "verdict": None, "report": None}
        run = asyncio.create_task(self._run_job(job, spec, task_file))
        if wait:
            return await run
        run.add_done_callback(lambda t: t.cancelled() or t.exception())  # failures live in the job record
        return {"status": "accepted", "job": job.to_dict()}

    def _gate_options(self, spec: TaskSpec, opts: Any) -> Path | None:
        """Check the registration against the gate: its safe variant must be buildable, and ``gate: {task: file}``
        (the adapter's own validation shots, under the adapter root) must be a task file. Returns that file."""
        if opts is not None and not self.gated:
            raise RegistryError("'gate' options were given but this server runs no safety gate (no 'gate:' section)")
        if not self.gated:
            return None
        if spec.coefficients is None and spec.calibrate is None:
            raise RegistryError("the safety gate evaluates the safe variant: give 'calibrate' (few-shot files; the "
                                "server's load-time calibration runs) or 'coefficients'")
        if opts is None:
            return None
        if not isinstance(opts, dict) or set(opts) - {"task"}:
            raise RegistryError("'gate' must be an object {task: <JSONL of the adapter's validation shots with prompt "
                                "and answer, under the adapter root>}")
        raw = opts.get("task")
        if raw is None:
            return None
        if not isinstance(raw, str) or not raw:
            raise RegistryError("gate.task must be a file path")
        path = Path(raw) if Path(raw).is_absolute() else self.cfg.adapter_root / raw
        if not under_root(path, self.cfg.adapter_root):
            raise RegistryError(f"gate.task {raw!r} is outside the allowed adapter root")
        try:
            load_file(path, kind="task")
            require_split(path, VALIDATION)  # the gate chooses on it: no test or align-train prompt inside
        except DatasetError as e:  # SplitError is one
            raise RegistryError(f"gate.task: {e}") from e
        return path

    async def _run_job(self, job: Job, spec: TaskSpec, task_file: Path | None = None) -> dict[str, Any]:
        assert self._lock is not None
        # the gate judges both forms, so both are built; what serves is the request's variants the verdict allows
        build_spec = replace(spec, variants=VARIANTS) if self.gated else spec
        # a load-time calibration takes minutes: the gate evaluates the base and the plain form meanwhile
        early = (self.gate.early(job, spec.name, self.engine, task_file)
                 if self.gated and self.gate is not None and self.engine is not None and spec.calibrate is not None
                 and self.cfg.gate is not None and self.cfg.gate.early_start and spec.mode_of("plain") == "lora"
                 else None)
        on_plain = early.start if early is not None else None
        try:
            if self.shared:  # build outside the registry lock: the replica keeps following the registry meanwhile
                assert self._build_lock is not None
                async with self._build_lock:
                    rec = await self._build(job, build_spec, on_plain)
                    if self.gated:
                        rec = await self._gate(job, spec, rec, task_file, early)
                async with self._lock:
                    job.update(stage="committing and loading into the engine")
                    result = await self._apply_shared(spec, rec)
            else:
                async with self._lock:
                    rec = await self._build(job, build_spec, on_plain)
                    if self.gated:
                        rec = await self._gate(job, spec, rec, task_file, early)
                    job.update("loading", "loading into the engine")
                    result = await self._apply(spec, rec)
        except RegistryError as e:
            job.error = str(e)
            job.update({"job_cancelled": "cancelled", "gate_refused": "refused"}.get(e.code, "failed"))
            raise
        except Exception as e:  # an unexpected failure still ends the job and the request with a JSON error
            log.exception("job %s failed", job.id)
            job.error = f"internal error: {type(e).__name__}"
            job.update("failed")
            raise RegistryError(f"registering {spec.name!r} failed: {type(e).__name__}", 500, "internal_error") from e
        finally:
            if early is not None:
                await early.close()
        job.result = {"status": result["status"], "version": rec.version}
        job.update("done", "served")
        return {**result, "job": job.id}

    async def _gate(self, job: Job, spec: TaskSpec, rec: TaskRecord, task_file: Path | None,
                    early: EarlyGate | None = None) -> TaskRecord:
        """Run the safety gate on a built record (both variants); the record to serve (the variants the verdict
        allows), or a 422 ``gate_refused`` (nothing served changes)."""
        assert self.engine is not None
        if self.gate is None:
            raise RegistryError("the safety gate is not running yet; retry in a moment", 503, "gate_unavailable")
        try:
            out = await self.gate.run(job, rec, self.engine, task_file=task_file,
                                      calibration=rec.spec.get("calibrate"), early=early)
        except JobCancelled as e:
            raise RegistryError(str(e), 409, "job_cancelled") from e
        except (DatasetError, GateError) as e:
            raise RegistryError(f"the safety gate could not evaluate {spec.name!r}: {e}", 400, "gate_failed") from e
        except Exception as e:  # an engine failure on a staging name: the version is not served
            log.exception("gate run of job %s failed", job.id)
            raise RegistryError(f"the safety gate could not evaluate {spec.name!r}: {type(e).__name__}: {e}", 500,
                                "gate_failed") from e
        verdict = out.decision.verdict
        allowed = {PROMOTE: VARIANTS, PROMOTE_SAFE_ONLY: ("safe",), REFUSE: ()}[verdict]
        keep = [v for v in spec.variants if v in allowed]
        assert job.gate is not None
        failed = [c.name for c in out.decision.failed]
        job.gate.update(verdict=verdict, report=str(out.path), report_id=out.id, seconds=round(out.seconds, 1),
                        served=[rec.variants[v].served_name for v in keep], failed_checks=failed)
        if not keep:
            raise RegistryError(f"the safety gate refused version {rec.version!r} of {spec.name!r} (verdict {verdict}; "
                                f"failed: {'; '.join(failed) or 'none'}); nothing served "
                                f"changed. The report: GET /admin/gate/{job.id}", 422, "gate_refused",
                                extra={"job": job.id, "verdict": verdict, "report": f"/admin/gate/{job.id}",
                                       "failed_checks": failed})
        info = {"verdict": verdict, "report": str(out.path), "id": out.id, "job": job.id}
        return replace(rec, spec=dict(rec.spec, variants=keep), gate=info).with_variants(
            {v: rec.variants[v] for v in keep})

    async def _build(self, job: Job, spec: TaskSpec, on_plain: OnPlain | None = None) -> TaskRecord:
        try:
            return await self.jobs.build(job, self.cfg, spec, "admin", self.ctx.rank_limit, on_plain)
        except JobCancelled as e:
            raise RegistryError(str(e), 409, "job_cancelled") from e
        except BuildFailed as e:
            raise RegistryError(f"adapter {spec.name!r} refused: {e}") from e

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
        await self._load_staged(new)
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
        if self.shared:
            return await self._retire_shared(name)
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

    # -- shared store (N replicas): commit, then reconcile --

    def _startup_shared(self) -> None:
        """Seed the config's tasks the store does not know (nor retired), then adopt the store's generation."""
        try:
            data = self.store.load()
            seeds = [spec for spec in self.cfg.tasks if spec.name not in data["tasks"]
                     and spec.name not in data["retired"]]
            built: dict[str, TaskRecord] = {}
            for spec in seeds:
                try:
                    built[spec.name] = build_task(spec, self.ctx, source="config")
                except (ArtifactError, ValueError, OSError) as e:
                    raise ConfigError(f"{self.cfg.path}: task {spec.name!r}: {e}") from e

            def seed(doc: dict[str, Any]) -> dict[str, Any] | None:
                fresh = {n: r for n, r in built.items() if n not in doc["tasks"] and n not in doc["retired"]}
                if not fresh:  # another replica seeded them first: the store wins
                    return None
                doc["tasks"].update({n: r.to_dict() for n, r in fresh.items()})
                return doc

            if built:
                data = self.store.transact(seed)  # type: ignore[attr-defined]
        except StoreUnavailable as e:
            raise ConfigError(f"{self.store.where}: {e}; a replica cannot start without its registry") from e
        except VersionConflict as e:
            raise ConfigError(f"{self.cfg.path}: {e}") from e
        parsed: dict[str, TaskRecord] = {}
        for name, rd in data["tasks"].items():
            try:
                parsed[name] = TaskRecord.from_dict(rd)
            except (KeyError, TypeError, ValueError) as e:
                self._mark_unavailable(name, rd, f"unreadable record ({e})")
        if self.ctx.rank_limit is None:  # auto: a rank that fits everything the store serves now
            self.ctx.settle_rank_limit(parsed)
        for name, rec in parsed.items():
            try:
                verify_record(rec, safety_version=self.ctx.safety_version, rank_limit=self.ctx.rank_limit)
            except SnapshotError as e:
                self._mark_unavailable(name, rec.to_dict(), str(e))
                continue
            self.records[name] = rec
        self.retired = dict(data["retired"])
        self.generation = self.target_generation = int(data["generation"])

    def _mark_unavailable(self, name: str, record: dict[str, Any], reason: str) -> None:
        self.unavailable[name] = {"record": record, "reason": reason}
        M.set_unavailable(name, True)
        log.error("%s: task %r is not served on this replica: %s", self.store.where, name, reason)

    async def _store_call(self, fn: Any, *args: Any) -> Any:
        """A store call in a thread; an unreachable store is a JSON 503, a changed version a 409."""
        try:
            return await asyncio.to_thread(fn, *args)
        except StoreUnavailable as e:
            raise RegistryError(f"{e}; nothing was changed: retry when the registry database is back (replicas keep "
                                f"serving generation {self.generation})", 503, "registry_unavailable") from e
        except VersionConflict as e:
            raise RegistryError(str(e), 409, "version_conflict") from e

    async def _stage(self, rec: TaskRecord) -> None:
        """Proof that ``rec`` can be served before it is committed: its folders match their digests and the engine
        loads each one (under a staging name, unloaded at once)."""
        assert self.engine is not None
        try:
            await asyncio.to_thread(verify_record, rec, safety_version=self.ctx.safety_version,
                                    rank_limit=self.ctx.rank_limit)
        except SnapshotError as e:
            raise RegistryError(f"adapter {rec.name!r} refused: {e}") from e
        await self._load_staged(rec)

    async def _load_staged(self, rec: TaskRecord) -> None:
        """Load each of ``rec``'s folders under a staging name and unload it at once: proof that the engine takes
        them, without serving anything. A refusal is a 400 naming the adapter."""
        assert self.engine is not None
        staged: list[str] = []
        try:
            for v in rec.variants.values():
                tmp = f"{v.served_name}.staging-{rec.version}"
                await self.engine.load(tmp, Path(v.path))
                staged.append(tmp)
        except Exception as e:
            raise RegistryError(f"the engine refused adapter {rec.name!r}: {e}", 400, "engine_refused") from e
        finally:
            for tmp in staged:
                await self.engine.unload(tmp)

    async def _apply_shared(self, spec: TaskSpec, rec: TaskRecord) -> dict[str, Any]:
        """Commit a built record as the task's version (one transaction), then reconcile to it (under the lock)."""
        await self._stage(rec)
        status = {"status": "added"}

        def point(doc: dict[str, Any]) -> dict[str, Any] | None:
            old = doc["tasks"].get(spec.name)
            if old is not None and TaskRecord.from_dict(old).same_build(rec):
                status["status"] = "unchanged"
                return None
            status["status"] = "replaced" if old is not None else "added"
            doc["tasks"][spec.name] = rec.to_dict()
            doc["retired"].pop(spec.name, None)
            return doc

        data = await self._store_call(self.store.transact, point)  # type: ignore[attr-defined]
        await self._reconcile_locked(data)
        self._check_applied(spec.name)
        return {"status": status["status"], "task": rec.to_dict(), "generation": data["generation"]}

    def _check_applied(self, name: str) -> None:
        u = self.unavailable.get(name)
        if u is not None:  # committed, but this replica could not load it (other replicas may): say so
            raise RegistryError(f"task {name!r}: the change was committed (generation {self.target_generation}) "
                                f"but this replica cannot serve it: {u['reason']}", 500, "engine_refused")

    async def _retire_shared(self, name: str) -> dict[str, Any]:
        assert self._lock is not None
        async with self._lock:
            gone: dict[str, Any] = {}

            def retire(doc: dict[str, Any]) -> dict[str, Any]:
                rd = doc["tasks"].pop(name, None)
                if rd is None:
                    raise RegistryError(f"task {name!r} is not served", 404, "not_found")
                gone.update(rd)
                doc["retired"][name] = {"version": rd.get("version"), "at": now_iso(), "spec": rd.get("spec")}
                return doc

            rec = self.records.get(name)
            drained = sum(self.served[n].inflight for n in (rec.served_names() if rec else []) if n in self.served)
            data = await self._store_call(self.store.transact, retire)  # type: ignore[attr-defined]
            await self._reconcile_locked(data)
            return {"status": "retired", "task": name, "version": gone.get("version"), "drained": drained,
                    "generation": data["generation"]}

    async def set_alias(self, name: str, body: Any) -> dict[str, Any]:
        """Point task ``name`` at a version the registry already holds (``{"version": ...}``): a flip back to an
        earlier version without a rebuild. Needs the shared store's version history."""
        assert self._lock is not None
        if not self.shared:
            raise RegistryError("flipping an alias needs the postgres registry backend (the file backend keeps no "
                                "version history): register the version again with POST /admin/adapters", 400,
                                "unsupported")
        try:
            check_name(name, "name")
        except ConfigError as e:
            raise RegistryError(str(e), 404, "not_found") from e
        if not isinstance(body, dict) or not isinstance(body.get("version"), str):
            raise RegistryError('expected a JSON object {"version": "<an existing version of the task>"}')
        version = body["version"]
        async with self._lock:
            found: dict[str, Any] = {}

            def read(doc: dict[str, Any]) -> None:
                found.update(doc["versions"].get(name, {}).get(version) or {})
                return None

            await self._store_call(self.store.transact, read)  # type: ignore[attr-defined]
            if not found:
                raise RegistryError(f"task {name!r} has no version {version!r} in the registry", 404, "not_found")
            rec = TaskRecord.from_dict(found)
            await self._stage(rec)
            status = {"status": "replaced"}

            def point(doc: dict[str, Any]) -> dict[str, Any] | None:
                cur = doc["tasks"].get(name)
                if cur is not None and cur.get("version") == version:
                    status["status"] = "unchanged"
                    return None
                status["status"] = "replaced" if cur is not None else "added"
                doc["tasks"][name] = found
                doc["retired"].pop(name, None)
                return doc

            data = await self._store_call(self.store.transact, point)  # type: ignore[attr-defined]
            await self._reconcile_locked(data)
            self._check_applied(name)
            return {"status": status["status"], "task": name, "version": version, "generation": data["generation"]}

    async def reconcile(self) -> None:
        """Follow the shared store: load its document and serve exactly that (the follower calls this)."""
        assert self._lock is not None
        async with self._lock:
            await self._reconcile_locked(None)

    def behind(self) -> bool:
        """True when a reconcile has work: a newer generation, or (every ``registry.retry_s``) tasks that did not
        load last time."""
        if self.generation != self.target_generation:
            return True
        return bool(self.unavailable) and time.monotonic() >= self._retry_at

    async def _reconcile_locked(self, data: dict[str, Any] | None) -> None:
        if data is None:
            data = await asyncio.to_thread(self.store.load)
        gen = int(data["generation"])
        self.observe(gen)
        if gen < self.generation or (gen == self.generation and not self.unavailable):
            return  # an older read than what is served, or nothing to do
        want: dict[str, TaskRecord] = {}
        unavailable: dict[str, dict[str, Any]] = {}
        for name, rd in data["tasks"].items():
            try:
                rec = TaskRecord.from_dict(rd)
                cur = self.records.get(name)
                if cur is None or not cur.same_build(rec):  # every new folder is checked against its digest
                    await asyncio.to_thread(verify_record, rec, safety_version=self.ctx.safety_version,
                                            rank_limit=self.ctx.rank_limit)
                want[name] = rec
            except (SnapshotError, KeyError, TypeError, ValueError) as e:
                unavailable[name] = {"record": rd, "reason": str(e)}
        changes: list[tuple[TaskRecord | None, TaskRecord | None]] = []
        for name in sorted(set(self.records) | set(want)):
            old, new = self.records.get(name), want.get(name)
            if new is None and name in unavailable:
                continue  # keep what is served; the replica stays not ready until the new version loads
            if old is not None and new is not None and old.same_build(new):
                continue
            changes.append((old, new))
        unavailable.update(await self._transition(changes, gen))
        self.retired = dict(data["retired"])
        for name in set(self.unavailable) - set(unavailable):
            M.set_unavailable(name, False)
        for name, u in unavailable.items():
            if name not in self.unavailable or self.unavailable[name]["reason"] != u["reason"]:
                self._mark_unavailable(name, u["record"], u["reason"])
        self.unavailable = unavailable
        self._retry_at = time.monotonic() + self.cfg.registry.retry_s
        self._export()
        if changes:
            log.info("generation %d: %s", gen, ", ".join(
                f"{(n or o).name} {o.version if o else '-'} -> {n.version if n else 'retired'}"  # type: ignore[union-attr]
                for o, n in changes))

    async def _transition(self, changes: list[tuple[TaskRecord | None, TaskRecord | None]],
                          generation: int) -> dict[str, dict[str, Any]]:
        """Move the served set to ``generation``: hold the names that change version (new requests wait), stop
        admitting retired ones, drain both, unload, load the new versions, then publish everything and the
        generation in one step (no await in between) and release the held requests onto the new versions.

        A new version the engine refuses is reported (returned: name -> record, reason) and its old version is
        loaded back and kept serving."""
        assert self.engine is not None
        held: list[Served] = []
        retiring: list[Served] = []
        for old, new in changes:
            for variant, v in (old.variants.items() if old is not None else ()):
                s = self.served.get(v.served_name)
                if s is None:
                    continue
                if new is not None and variant in new.variants:
                    s.open.clear()
                    s.state = "swapping"
                    held.append(s)
                else:
                    s.state = "retiring"
                    retiring.append(s)
        draining = held + retiring
        if draining:
            try:
                await asyncio.wait_for(asyncio.gather(*(s.idle.wait() for s in draining)), self.cfg.drain_timeout_s)
            except asyncio.TimeoutError:
                log.warning("generation %d: in-flight requests did not drain in %.0fs; unloading anyway", generation,
                            self.cfg.drain_timeout_s)
        for s in draining:
            await self._unload_quietly(s.name)
        failed: dict[str, dict[str, Any]] = {}
        kept: set[str] = set()  # old entries loaded back because their new version failed
        for old, new in changes:
            if new is None:
                continue
            loaded: list[str] = []
            try:
                for v in new.variants.values():
                    await self.engine.load(v.served_name, Path(v.path))
                    loaded.append(v.served_name)
            except Exception as e:
                for n in loaded:
                    await self._unload_quietly(n)
                failed[new.name] = {"record": new.to_dict(), "reason": f"the engine refused it: {e}"}
                for s in draining:
                    if old is not None and s.task == old.name:
                        try:
                            await self.engine.load(s.name, Path(s.path))
                            kept.add(s.name)
                        except Exception:  # pragma: no cover - the old folder loaded before
                            log.exception("loading back %s failed", s.name)
        # publish: from here to the end, no await
        for s in draining:
            if s.name in kept:
                s.state = "active"
            else:
                self._unpublish(s)
        for old, new in changes:
            if new is not None and new.name not in failed:
                for served in _served_of(new):
                    self._publish(served)
                self.records[new.name] = new
            elif new is None and old is not None:
                self.records.pop(old.name, None)
        self.generation = generation
        for s in held:
            s.open.set()  # waiters re-resolve the name: the new entry (or the old one, kept)
        return failed

    async def _unload_quietly(self, name: str) -> None:
        assert self.engine is not None
        try:
            await self.engine.unload(name)
        except Exception:  # the name is going away either way; the engine logs its own reason
            log.exception("unloading %s failed", name)
