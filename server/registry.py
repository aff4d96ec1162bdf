"""Served variants: validate and build on register, persist atomically, restore on start.

A *task* (name + version) exposes up to two *variants*, each a vLLM LoRA name:

* ``<task>`` (plain): a content-addressed snapshot of the task adapter;
* ``<task>+safegene`` (safe): the task adapter stacked with the λ-scaled safety adapter
  (``safegene_runtime.stack.stack_adapters``), also content-addressed, so a rebuild from the same inputs is reused.

Everything is validated and built *before* the engine is touched; the engine only ever sees finished immutable
folders under ``<state_dir>/adapters``. ``<state_dir>/registry.json`` (written atomically) records what is served,
where each entry came from (config or admin API) and what was retired, and is restored on restart.

The registry is engine-agnostic: it drives an :class:`EngineOps` (``server/engine.py`` implements it over vLLM).
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from safegene_runtime.artifacts import (
    ArtifactError,
    ArtifactWriter,
    atomic_write_json,
    canonical_json,
    read_manifest,
    sha256_file,
)
from safegene_runtime.checkpoints import check_adapter_fits

from . import metrics as M
from .config import SAFE_SUFFIX, ConfigError, ServerConfig, TaskSpec, check_name, parse_task

log = logging.getLogger("safegene.server.registry")
REGISTRY_SCHEMA = "safegene.registry/v1"
REGISTRY_FILE = "registry.json"


class RegistryError(ValueError):
    """A register/retire request was refused; nothing served changed. ``status`` is the HTTP status to return."""

    def __init__(self, message: str, status: int = 400, code: str = "invalid_adapter"):
        super().__init__(message)
        self.status = status
        self.code = code


class EngineOps(Protocol):
    async def load(self, name: str, path: Path) -> None: ...
    async def unload(self, name: str) -> None: ...


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def served_name(task: str, variant: str) -> str:
    return task if variant == "plain" else f"{task}{SAFE_SUFFIX}"


def _files_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        p = folder / name
        if p.is_file():
            h.update(name.encode() + b"\0" + sha256_file(p).encode())
    return h.hexdigest()


def under_root(path: Path, root: Path) -> bool:
    """True when ``path`` (symlinks resolved) lies inside ``root``: the guard against ``../`` and symlink escapes."""
    p, r = os.path.realpath(path), os.path.realpath(root)
    try:
        return os.path.commonpath([p, r]) == r
    except ValueError:
        return False


# --- building ----------------------------------------------------------------------------------------------------


class BuildContext:
    """What every build needs: the served base model's shapes, the safety adapter and the rank limit."""

    def __init__(self, cfg: ServerConfig):
        from safegene_runtime.adapters import load_adapter
        from safegene_runtime.checkpoints import Checkpoint

        self.cfg = cfg
        try:
            self.base = Checkpoint(cfg.base_model)
        except ArtifactError as e:
            raise ConfigError(f"{cfg.path}: base.model: {e}") from e
        self.safety_path = cfg.safety
        self.safety = None
        self.safety_version = None
        if cfg.safety is not None:
            try:
                self.safety = load_adapter(cfg.safety)
                check_adapter_fits(self.base, self.safety, "safety adapter")
            except (ArtifactError, ValueError) as e:
                raise ConfigError(f"{cfg.path}: safety: {e}") from e
            man = read_manifest(cfg.safety)
            self.safety_version = cfg.safety_version or (man.get("id") or _files_digest(cfg.safety))[:12]
        self.rank_limit: int | None = cfg.engine.max_lora_rank if cfg.engine.max_lora_rank != "auto" else None
        self.store = cfg.state_dir / "adapters"

    def combined_rank(self, task_ad: Any) -> int:
        if self.safety is None:
            return task_ad.max_rank()
        ranks = [task_ad.weights[m][0].shape[0] + (self.safety.weights[m][0].shape[0] if m in self.safety.weights else 0)
                 for m in task_ad.weights]
        ranks += [self.safety.weights[m][0].shape[0] for m in self.safety.weights if m not in task_ad.weights]
        return max(ranks)


def _resolve_coefficients(spec: TaskSpec, ctx: BuildContext, task_dir: Path, version: str) -> dict[str, Any]:
    """The λ values as a dict: from the file / inline mapping, or calibrated now from the few-shot sets (cached)."""
    from safegene_runtime.coefficients import load_coefficients

    if spec.coefficients is not None:
        return load_coefficients(spec.coefficients).to_dict()
    assert spec.calibrate is not None
    cal = spec.calibrate
    files = [cal.harmful, cal.task_shots] + ([cal.benign] if cal.benign else [])
    for f in files:
        if not f.is_file():
            raise ArtifactError(f"calibration file {f} not found")
    from safegene_runtime.calibrate import (DEFAULT_BENIGN_CONTRAST, DEFAULT_BENIGN_TOKENS, DEFAULT_MARGIN_TARGET,
                                            DEFAULT_MARGIN_TOKENS, DEFAULT_OPTIMIZER, DEFAULT_REFUSAL_LOSS, calibrate)
    from safegene_runtime.prompts import load_examples, load_prompts

    key = hashlib.sha256(canonical_json({
        "task": _files_digest(task_dir), "safety": ctx.safety_version,
        "files": [sha256_file(f) for f in files], "seed": cal.seed, "steps": cal.steps, "limit": cal.limit,
        # a new default objective must not reuse the old one's coefficients
        "objective": [DEFAULT_REFUSAL_LOSS, DEFAULT_MARGIN_TOKENS, DEFAULT_MARGIN_TARGET, DEFAULT_BENIGN_TOKENS]
        + ([DEFAULT_BENIGN_CONTRAST] if DEFAULT_BENIGN_CONTRAST else [])  # off: the keys cached before it existed
        + ([DEFAULT_OPTIMIZER] if DEFAULT_OPTIMIZER != "adam" else []),
    }).encode()).hexdigest()[:12]
    out = ctx.cfg.state_dir / "coefficients" / f"{spec.name}-{version}-{key}.json"
    if out.is_file():
        return load_coefficients(out).to_dict()

    kw: dict[str, Any] = {"seed": cal.seed, "out": out}
    if cal.steps is not None:
        kw["steps"] = cal.steps
    log.info("calibrating %s on %s / %s", spec.name, cal.harmful, cal.task_shots)
    coeffs = calibrate(
        ctx.cfg.base_model, task_dir, ctx.safety_path,  # type: ignore[arg-type]
        load_prompts(cal.harmful, limit=cal.limit), load_examples(cal.task_shots, limit=cal.limit),
        load_prompts(cal.benign, limit=cal.limit) if cal.benign else None, **kw,
    )
    return coeffs.to_dict()


def build_task(spec: TaskSpec, ctx: BuildContext, *, source: str) -> dict[str, Any]:
    """Validate one task entry and build its variant folders. Raises ArtifactError/ValueError with a clear message.

    Returns the registry record. Touches nothing but new content-addressed folders in the state dir.
    """
    from safegene_runtime.adapters import load_adapter
    from safegene_runtime.coefficients import load_coefficients

    root = ctx.cfg.adapter_root
    if not under_root(spec.path, root):
        raise ArtifactError(f"adapter path {spec.path} is outside the allowed adapter root {root}")
    if source == "admin":  # files named by an API caller must stay under the root too
        named = [spec.coefficients] if isinstance(spec.coefficients, Path) else []
        if spec.calibrate is not None:
            named += [f for f in (spec.calibrate.harmful, spec.calibrate.task_shots, spec.calibrate.benign) if f]
        for f in named:
            if not under_root(f, root):
                raise ArtifactError(f"file {f} is outside the allowed adapter root {root}")
    task_ad = load_adapter(spec.path)  # shapes, NaN/Inf, config/rank consistency
    check_adapter_fits(ctx.base, task_ad, "task adapter")
    version = spec.version or _files_digest(spec.path)[:12]
    record: dict[str, Any] = {
        "name": spec.name, "version": version, "source": source, "spec": spec.to_dict(), "mode": spec.mode,
        "safety_version": ctx.safety_version if "safe" in spec.variants else None,
        "coefficients_hash": None, "coefficients": None, "variants": {}, "built_at": _now(),
    }
    if "safe" in spec.variants:
        combined = ctx.combined_rank(task_ad) if spec.mode_of("safe") == "lora" else 0  # merged: no LoRA rank
        limit = ctx.rank_limit or 512
        if combined > limit:
            raise ArtifactError(
                f"combined rank {combined} (task {task_ad.max_rank()} + safety "
                f"{ctx.safety.max_rank() if ctx.safety else 0}) is over the server's max_lora_rank {limit}"
            )
        coeffs = _resolve_coefficients(spec, ctx, spec.path, version)
        record["coefficients"] = coeffs
        record["coefficients_hash"] = load_coefficients(coeffs).digest()[:12]
    # plain variant: an immutable snapshot, so edits to the source folder never change what is served
    with ArtifactWriter(store=ctx.store, name=f"{spec.name}-{version}", kind="task_adapter",
                        lineage=[{"role": "task", "path": str(spec.path), "sha256": _files_digest(spec.path)}]) as w:
        for f in ("adapter_config.json", "adapter_model.safetensors"):
            shutil.copy2(spec.path / f, w.tmp / f)
        w.manifest.update(task={"name": spec.name, "version": version})
    plain_dir = w.path
    assert plain_dir is not None
    if "plain" in spec.variants:
        record["variants"]["plain"] = {"served_name": served_name(spec.name, "plain"), "path": str(plain_dir),
                                       "rank": task_ad.max_rank(), "mode": "lora"}
    if "safe" in spec.variants and spec.mode_of("safe") == "lora":
        from safegene_runtime.adapters import load_adapter as _load
        from safegene_runtime.stack import stack_adapters

        safe_dir = stack_adapters(plain_dir, ctx.safety_path, record["coefficients"],  # type: ignore[arg-type]
                                  store=ctx.store, name=f"{spec.name}-{version}{SAFE_SUFFIX}",
                                  max_lora_rank=ctx.rank_limit)
        record["variants"]["safe"] = {"served_name": served_name(spec.name, "safe"), "path": str(safe_dir),
                                      "rank": _load(safe_dir).max_rank(), "mode": "lora"}
    merged = [v for v in spec.variants if spec.mode_of(v) == "merged"]
    if merged:  # served from a full merged checkpoint by its own engine (server/merged.py)
        from .merged import build_merged_variant

        for variant in merged:
            record["variants"][variant] = build_merged_variant(
                ctx, spec.name, version, variant, plain_dir, record["coefficients"] if variant == "safe" else None,
                served_name(spec.name, variant))
        record["variants"] = {v: record["variants"][v] for v in spec.variants}  # plain first, as before
    return record


# --- runtime state -----------------------------------------------------------------------------------------------


@dataclass
class Served:
    """One name clients can put in ``model``: the base, or a task variant."""

    name: str
    variant: str  # base | plain | safe
    task: str
    path: str
    record: dict[str, Any] = field(default_factory=dict)
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

    def info_labels(self) -> dict[str, str]:
        r = self.record
        return {
            "model": self.name, "variant": self.variant, "task": self.task,
            "task_version": str(r.get("version") or ""),
            "safety_version": str((r.get("safety_version") or "") if self.variant == "safe" else ""),
            "coefficients_hash": str((r.get("coefficients_hash") or "") if self.variant == "safe" else ""),
            "mode": self.mode,
        }

    @property
    def mode(self) -> str:
        """``base``, ``lora`` (stacked on the shared engine) or ``merged`` (own engine, merged checkpoint)."""
        if self.variant == "base":
            return "base"
        v = (self.record.get("variants") or {}).get(self.variant) or {}
        return str(v.get("mode") or (self.record.get("mode") if isinstance(self.record.get("mode"), str) else None)
                   or "lora")

    def lineage(self) -> dict[str, Any]:
        r = self.record
        out: dict[str, Any] = {"variant": self.variant, "task": self.task or None, "mode": self.mode}
        if self.variant != "base":
            out.update(task_version=r.get("version"), source=r.get("source"), path=self.path,
                       manifest=str(Path(self.path) / "manifest.json"))
        if self.variant == "safe":
            out.update(safety_version=r.get("safety_version"), coefficients_hash=r.get("coefficients_hash"))
        return out


class Registry:
    """The served set. Admin operations are serialised by one lock; request admission is lock-free."""

    def __init__(self, cfg: ServerConfig, ctx: BuildContext | None = None):
        self.cfg = cfg
        self.ctx = ctx or BuildContext(cfg)
        self.file = cfg.state_dir / REGISTRY_FILE
        self.records: dict[str, dict[str, Any]] = {}
        self.retired: dict[str, dict[str, Any]] = {}
        self.generation = 0
        self.served: dict[str, Served] = {}
        self.engine: EngineOps | None = None
        self._lock: asyncio.Lock | None = None

    # -- start-up (synchronous, before the engine exists) --

    def _read_file(self) -> dict[str, Any]:
        if not self.file.is_file():
            return {}
        try:
            data = json.loads(self.file.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{self.file}: registry file is not valid JSON ({e}); fix or delete it") from e
        if data.get("schema") != REGISTRY_SCHEMA:
            raise ConfigError(f"{self.file}: unknown registry schema {data.get('schema')!r}")
        return data

    def build_startup(self) -> None:
        """Config entries + restored admin entries, all validated and built. Raises ConfigError naming the entry."""
        data = self._read_file()
        self.generation = int(data.get("generation", 0))
        self.retired = dict(data.get("retired", {}))
        saved = dict(data.get("tasks", {}))
        plan: list[tuple[str, TaskSpec, str]] = []
        config_names = set()
        for i, spec in enumerate(self.cfg.tasks):
            config_names.add(spec.name)
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
        for name, rec in saved.items():
            if rec.get("source") != "admin":
                continue
            where = f"{self.file}: restored entry {name!r}"
            try:
                spec = self._spec_from_record(rec)
            except (ConfigError, ValueError) as e:
                raise ConfigError(f"{where}: {e}") from e
            plan.append((where, spec, "admin"))
        for where, spec, source in plan:
            try:
                rec = build_task(spec, self.ctx, source=source)
            except (ArtifactError, ValueError, OSError) as e:
                raise ConfigError(f"{where}: {e}") from e
            self.records[spec.name] = rec
        self._set_rank_limit()

    def _spec_from_record(self, rec: dict[str, Any]) -> TaskSpec:
        d = dict(rec["spec"])
        if rec.get("coefficients") is not None:  # restore the exact λ used, never re-calibrate
            d["coefficients"], d["calibrate"] = rec["coefficients"], None
        d = {k: v for k, v in d.items() if v is not None}
        spec = parse_task(d, self.cfg.adapter_root, f"registry entry {rec.get('name')!r}")
        return spec

    def _set_rank_limit(self) -> None:
        from safegene_runtime.stack import choose_max_lora_rank

        ranks = [v["rank"] for r in self.records.values() for v in r["variants"].values()]
        if self.ctx.rank_limit is None:
            floor = 2 * self.ctx.safety.max_rank() if self.ctx.safety is not None else 16
            self.ctx.rank_limit = choose_max_lora_rank(max(ranks + [floor, 8]))
        over = [(r["name"], v["rank"]) for r in self.records.values() for v in r["variants"].values()
                if v["rank"] > self.ctx.rank_limit]
        if over:
            raise ConfigError(f"{self.cfg.path}: task {over[0][0]!r}: rank {over[0][1]} is over max_lora_rank "
                              f"{self.ctx.rank_limit}")

    @property
    def max_lora_rank(self) -> int:
        assert self.ctx.rank_limit is not None
        return self.ctx.rank_limit

    def variant_count(self) -> int:
        return sum(len(r["variants"]) for r in self.records.values())

    async def attach(self, engine: EngineOps) -> None:
        """Register the base and every built variant with the engine (before the port opens)."""
        self.engine = engine
        self._lock = asyncio.Lock()
        base = Served(self.cfg.served_name, "base", "", str(self.cfg.base_model), {"mode": "base"})
        self._publish(base)
        for name, rec in self.records.items():
            for variant, v in rec["variants"].items():
                try:
                    await engine.load(v["served_name"], Path(v["path"]))
                except Exception as e:
                    raise ConfigError(f"task {name!r}: the engine refused variant {v['served_name']!r}: {e}") from e
                self._publish(Served(v["served_name"], variant, name, v["path"], rec))
        self.persist()

    def _publish(self, s: Served) -> None:
        self.served[s.name] = s
        M.set_adapter_info(s.info_labels())

    def _unpublish(self, s: Served) -> None:
        self.served.pop(s.name, None)
        M.remove_adapter_info(s.info_labels())

    def persist(self) -> None:
        self.generation += 1
        atomic_write_json(self.file, {
            "schema": REGISTRY_SCHEMA, "generation": self.generation, "updated_at": _now(),
            "base": {"model": str(self.cfg.base_model), "served_name": self.cfg.served_name},
            "safety": {"path": str(self.cfg.safety) if self.cfg.safety else None, "version": self.ctx.safety_version},
            "max_lora_rank": self.ctx.rank_limit,
            "tasks": self.records, "retired": self.retired,
        })

    # -- request admission (called by the middleware for every request) --

    async def admit(self, name: str, timeout: float = 60.0) -> Served | None:
        """The served entry for ``name`` with its in-flight count taken, or None (unknown or retiring)."""
        s = self.served.get(name)
        if s is None or s.state == "retiring":
            return None
        if not s.open.is_set():  # a version swap is under way: hold the request instead of failing it
            try:
                await asyncio.wait_for(s.open.wait(), timeout)
            except asyncio.TimeoutError:
                return None
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

    # -- admin --

    def describe(self) -> dict[str, Any]:
        variants = []
        for s in self.served.values():
            d = {"id": s.name, "state": s.state, "inflight": s.inflight, **s.lineage()}
            if s.variant != "base":
                d["manifest_data"] = read_manifest(s.path)
                if s.variant == "safe":
                    d["coefficients"] = s.record.get("coefficients")
            variants.append(d)
        return {"generation": self.generation, "base": self.cfg.served_name, "max_lora_rank": self.ctx.rank_limit,
                "safety": {"path": str(self.cfg.safety) if self.cfg.safety else None,
                           "version": self.ctx.safety_version},
                "variants": variants, "retired": self.retired}

    async def add(self, body: Any) -> dict[str, Any]:
        """Validate + build (in a thread), then load into the engine; on any failure nothing served changes."""
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
        async with self._lock:
            try:
                rec = await asyncio.to_thread(build_task, spec, self.ctx, source="admin")
            except (ArtifactError, ValueError, OSError) as e:
                raise RegistryError(f"adapter {spec.name!r} refused: {e}") from e
            old = self.records.get(spec.name)
            if old is not None:
                same = old["version"] == rec["version"]
                if same and old["variants"] == rec["variants"]:
                    return {"status": "unchanged", "task": old}
                if same:
                    raise RegistryError(f"task {spec.name!r} version {rec['version']!r} is already served with "
                                        "different content: give the new adapter a new version", 409,
                                        "version_conflict")
                await self._swap(old, rec)
            else:
                clash = [v["served_name"] for v in rec["variants"].values() if v["served_name"] in self.served]
                if clash:
                    raise RegistryError(f"served name {clash[0]!r} is already in use", 409, "name_conflict")
                await self._load_new(rec)
            self.records[spec.name] = rec
            self.retired.pop(spec.name, None)
            self.persist()
            return {"status": "replaced" if old else "added", "task": rec}

    async def _load_new(self, rec: dict[str, Any]) -> None:
        assert self.engine is not None
        loaded: list[str] = []
        try:
            for variant, v in rec["variants"].items():
                await self.engine.load(v["served_name"], Path(v["path"]))
                loaded.append(v["served_name"])
        except Exception as e:
            for n in loaded:  # roll back the half of a pair that did load
                try:
                    await self.engine.unload(n)
                except Exception:  # pragma: no cover - best effort
                    log.exception("rollback unload of %s failed", n)
            raise RegistryError(f"the engine refused adapter {rec['name']!r}: {e}", 400, "engine_refused") from e
        for variant, v in rec["variants"].items():
            self._publish(Served(v["served_name"], variant, rec["name"], v["path"], rec))

    async def _swap(self, old: dict[str, Any], new: dict[str, Any]) -> None:
        """Replace a task's version: check the new folders load (staging names), then per variant hold new
        requests, let in-flight ones finish on the old weights, unload old, load new, reopen."""
        assert self.engine is not None
        staged: list[str] = []
        try:
            for v in new["variants"].values():
                tmp = f"{v['served_name']}.staging-{new['version']}"
                await self.engine.load(tmp, Path(v["path"]))
                staged.append(tmp)
        except Exception as e:
            raise RegistryError(f"the engine refused adapter {new['name']!r}: {e}", 400, "engine_refused") from e
        finally:
            for tmp in staged:
                await self.engine.unload(tmp)
        # variants the old version had but the new one drops are retired like DELETE does
        for variant, v in old["variants"].items():
            s = self.served.get(v["served_name"])
            if s is None:
                continue
            if variant not in new["variants"]:
                await self._retire_served(s)
                continue
            s.open.clear()
            s.state = "swapping"
            try:
                await asyncio.wait_for(s.idle.wait(), self.cfg.drain_timeout_s)
            except asyncio.TimeoutError:
                log.warning("swap of %s: in-flight requests did not drain in %.0fs", s.name, self.cfg.drain_timeout_s)
            await self.engine.unload(s.name)
            nv = new["variants"][variant]
            try:
                await self.engine.load(s.name, Path(nv["path"]))
            except Exception:
                await self.engine.load(s.name, Path(s.path))  # put the old one back: nothing changes
                s.state = "active"
                s.open.set()
                raise
            self._unpublish(s)
            ns = Served(s.name, variant, new["name"], nv["path"], new)
            self._publish(ns)
            s.open.set()  # waiters re-resolve the name and get the new entry
        for variant, v in new["variants"].items():
            if variant not in old["variants"]:
                await self.engine.load(v["served_name"], Path(v["path"]))
                self._publish(Served(v["served_name"], variant, new["name"], v["path"], new))

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
            if rec is None:
                raise RegistryError(f"task {name!r} is not served", 404, "not_found")
            drained = 0
            for v in rec["variants"].values():
                s = self.served.get(v["served_name"])
                if s is not None:
                    drained += s.inflight
                    await self._retire_served(s)
            del self.records[name]
            self.retired[name] = {"version": rec["version"], "at": _now(), "spec": rec["spec"]}
            self.persist()
            return {"status": "retired", "task": name, "version": rec["version"], "drained": drained}
