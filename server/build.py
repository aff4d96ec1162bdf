"""Turn one config entry (or admin request) into built variants: validated, content-addressed, immutable folders.

A task (name + version) exposes up to two variants:

* ``<task>`` (plain): a content-addressed snapshot of the task adapter, so edits to the source folder never change
  what is served;
* ``<task>+safegene`` (safe): the task adapter stacked with the λ-scaled safety adapter
  (:func:`safegene_runtime.stack.stack_adapters`), or, in ``mode: merged``, base + ΔT + λ·ΔS folded into a full
  checkpoint (:func:`safegene_runtime.merge.merge_checkpoint`) that gets its own engine.

Everything here runs before any engine is touched and writes nothing but new folders under the artifact store (the
state dir, or the shared store of a postgres registry); a
failure raises :class:`~safegene_runtime.artifacts.ArtifactError` / ``ValueError`` with a message naming the problem,
and leaves what is served alone. The result is a :class:`~server.records.TaskRecord`.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from safegene_runtime.adapters import AdapterHeader, LoraAdapter, inspect_adapter, load_adapter, parse_lora_key
from safegene_runtime.artifacts import ArtifactError, ArtifactWriter, read_manifest, sha256_file
from safegene_runtime.checkpoints import Checkpoint, check_adapter_fits
from safegene_runtime.coefficients import load_coefficients
from safegene_runtime.digests import ADAPTER_FILES, adapter_digest, json_digest
from safegene_runtime.merge import merge_checkpoint
from safegene_runtime.stack import choose_max_lora_rank, stack_adapters

from .config import SAFE_SUFFIX, ConfigError, ServerConfig, TaskSpec
from .hardware import engine_dtype
from .records import TaskRecord, VariantRecord, served_name

log = logging.getLogger("safegene.server.build")
#: the rank limit a safe variant is checked against before the engine's max_lora_rank is known ("auto")
UNBOUNDED_RANK = 512
#: the largest adapter weights file a registration may name (a rank-64 LoRA of a 70B model is ~1.6 GB)
MAX_ADAPTER_BYTES = 4 << 30


def under_root(path: Path, root: Path) -> bool:
    """True when ``path`` (symlinks resolved) lies inside ``root``: the guard against ``../`` and symlink escapes."""
    p, r = os.path.realpath(path), os.path.realpath(root)
    try:
        return os.path.commonpath([p, r]) == r
    except ValueError:
        return False


class BuildContext:
    """What every build needs: the served base model's shapes, the safety adapter and the rank limit."""

    def __init__(self, cfg: ServerConfig):
        self.cfg = cfg
        try:
            self.base = Checkpoint(cfg.base_model)
        except ArtifactError as e:
            raise ConfigError(f"{cfg.path}: base.model: {e}") from e
        self.safety_path = cfg.safety
        self.safety: LoraAdapter | None = None
        self.safety_version: str | None = None
        if cfg.safety is not None:
            try:
                self.safety = load_adapter(cfg.safety)
                check_adapter_fits(self.base, self.safety, "safety adapter")
            except (ArtifactError, ValueError) as e:
                raise ConfigError(f"{cfg.path}: safety: {e}") from e
            man = read_manifest(cfg.safety)
            self.safety_version = cfg.safety_version or (man.get("id") or adapter_digest(cfg.safety))[:12]
        self.rank_limit: int | None = cfg.engine.max_lora_rank if cfg.engine.max_lora_rank != "auto" else None
        self.store = cfg.artifact_store / "adapters"
        self.merged_store = cfg.artifact_store / "merged"

    def combined_rank(self, task_ad: LoraAdapter) -> int:
        """The largest per-module rank of the task adapter stacked with the safety adapter."""
        if self.safety is None:
            return task_ad.max_rank()
        safety = self.safety.weights
        ranks = [task_ad.weights[m][0].shape[0] + (safety[m][0].shape[0] if m in safety else 0)
                 for m in task_ad.weights]
        ranks += [safety[m][0].shape[0] for m in safety if m not in task_ad.weights]
        return max(ranks)

    def combined_header_rank(self, header: AdapterHeader) -> int:
        """:meth:`combined_rank` from a task adapter's file header (no tensor read)."""
        task = {parse_lora_key(k)[0]: s[0] for k, s in header.shapes.items() if parse_lora_key(k)[1] == "A"}
        safety = {m: a.shape[0] for m, (a, _) in self.safety.weights.items()} if self.safety is not None else {}
        return max([r + safety.get(m, 0) for m, r in task.items()] + [r for m, r in safety.items() if m not in task])

    def settle_rank_limit(self, records: dict[str, TaskRecord]) -> int:
        """Fix ``max_lora_rank`` once everything configured is built ("auto": the smallest allowed value that fits
        every variant and a stack of twice the safety rank, so admin-added adapters of the same rank fit later)."""
        ranks = [v.rank for r in records.values() for v in r.variants.values()]
        if self.rank_limit is None:
            floor = 2 * self.safety.max_rank() if self.safety is not None else 16
            self.rank_limit = choose_max_lora_rank(max(ranks + [floor, 8]))
        over = [(r.name, v.rank) for r in records.values() for v in r.variants.values() if v.rank > self.rank_limit]
        if over:
            raise ConfigError(f"{self.cfg.path}: task {over[0][0]!r}: rank {over[0][1]} is over max_lora_rank "
                              f"{self.rank_limit}")
        return self.rank_limit


def resolve_coefficients(spec: TaskSpec, ctx: BuildContext, task_dir: Path, version: str) -> dict[str, Any]:
    """The λ values as a dict: from the file / inline mapping, or calibrated now from the few-shot sets (cached under
    ``<state_dir>/coefficients`` by a key over the inputs and the procedure's CalibrationConfig digest)."""
    if spec.coefficients is not None:
        return load_coefficients(spec.coefficients).to_dict()
    assert spec.calibrate is not None
    cal = spec.calibrate
    files = [cal.harmful, cal.task_shots] + ([cal.benign] if cal.benign else [])
    for f in files:
        if not f.is_file():
            raise ArtifactError(f"calibration file {f} not found")
    # lazy: calibration loads transformers and the full base model; most servers never calibrate at load time
    from safegene_runtime.calibration import calibrate
    from safegene_runtime.prompts import load_examples, load_prompts

    config = cal.config
    # the procedure enters the key through its digest (CalibrationConfig.digest: a new default procedure, or any
    # option the block sets, gets new coefficients; a knob added later at its reference value does not)
    key = json_digest({
        "task": adapter_digest(task_dir), "safety": ctx.safety_version,
        "files": [sha256_file(f) for f in files], "limit": cal.limit, "config": config.digest(),
    })[:12]
    out = ctx.cfg.state_dir / "coefficients" / f"{spec.name}-{version}-{key}.json"
    if out.is_file():
        return load_coefficients(out).to_dict()

    log.info("calibrating %s on %s / %s", spec.name, cal.harmful, cal.task_shots)
    coeffs = calibrate(
        ctx.cfg.base_model, task_dir, ctx.safety_path,  # type: ignore[arg-type]
        load_prompts(cal.harmful, limit=cal.limit), load_examples(cal.task_shots, limit=cal.limit),
        load_prompts(cal.benign, limit=cal.limit) if cal.benign else None, config, out=out,
    )
    return coeffs.to_dict()


def build_merged_variant(ctx: BuildContext, task: str, version: str, variant: str, plain_dir: Path,
                         coefficients: dict[str, Any] | None) -> VariantRecord:
    """Merge the task adapter (and for ``safe`` the λ-scaled safety adapter) into the base checkpoint.

    Why: on vLLM-CPU a LoRA request runs several times slower than the same model with the deltas merged in
    (docs/benchmarks.md), so a hot variant can be served at full speed from its own engine."""
    kw: dict[str, Any] = {"task": plain_dir}
    if variant == "safe":
        kw.update(safety=ctx.safety_path, coefficients=coefficients)
    name = served_name(task, variant)
    # An engine run in float32 gets a float32 merge: rounding W + ΔT + λ·ΔS back to a bf16 base would drop part of
    # a small safety delta that the fp32 engine could have applied exactly. Other engine dtypes keep the base's.
    if engine_dtype(ctx.cfg.engine.dtype).lower() in ("float32", "float"):
        kw["dtype"] = "float32"
    path = merge_checkpoint(ctx.cfg.base_model, store=ctx.merged_store,
                            name=f"{name.replace('+', '-')}-{version}", progress=False, **kw)
    kept = read_manifest(path).get("delta_retention", 1.0)
    if kept < 0.9:
        log.warning("merged %s keeps only %.0f%% of its adapter delta after rounding to the base dtype: serve it "
                    "stacked (mode: stacked) or with engine.dtype float32 (then merged in float32) for the exact "
                    "weights", name, 100 * kept)
    return VariantRecord(served_name=name, path=str(path), rank=0, mode="merged", adapter_path=str(plain_dir))


def check_paths(spec: TaskSpec, root: Path, source: str) -> None:
    """Every file the entry names lies under the adapter root (admin requests: coefficient and shot files too)."""
    if not under_root(spec.path, root):
        raise ArtifactError(f"adapter path {spec.path} is outside the allowed adapter root {root}")
    if source == "admin":  # files named by an API caller must stay under the root too
        named = [spec.coefficients] if isinstance(spec.coefficients, Path) else []
        if spec.calibrate is not None:
            named += [f for f in (spec.calibrate.harmful, spec.calibrate.task_shots, spec.calibrate.benign) if f]
        for f in named:
            if not under_root(f, root):
                raise ArtifactError(f"file {f} is outside the allowed adapter root {root}")


#: told the plain snapshot's folder and the version being built, before any load-time calibration
OnPlain = Callable[[Path, str], None]


def build_task(spec: TaskSpec, ctx: BuildContext, *, source: str, on_plain: OnPlain | None = None) -> TaskRecord:
    """Validate one task entry and build its variant folders. Raises ArtifactError/ValueError with a clear message.

    Touches nothing but new content-addressed folders in the state dir; a build that fails removes the folders it
    created (folders it found already built, which another record may use, stay). ``on_plain(folder, version)`` is
    called once the validated plain snapshot exists and before any load-time calibration, so the safety gate can
    evaluate the plain form while the safe one is still being calibrated (server/gate.py)."""
    check_paths(spec, ctx.cfg.adapter_root, source)
    # from the file headers, before any tensor is read: symlinks, .bin, truncation, oversized header, rank, size
    inspect_adapter(spec.path, max_rank=ctx.rank_limit or UNBOUNDED_RANK, max_bytes=MAX_ADAPTER_BYTES)
    task_ad = load_adapter(spec.path)  # shapes, NaN/Inf, config/rank consistency
    check_adapter_fits(ctx.base, task_ad, "task adapter")
    created: list[Path] = []
    try:
        return _build(spec, ctx, source, task_ad, created, on_plain)
    except BaseException:
        for folder in created:
            shutil.rmtree(folder, ignore_errors=True)
        raise


def _new(path: Path, before: bool, created: list[Path]) -> Path:
    if not before:
        created.append(path)
    return path


def _build(spec: TaskSpec, ctx: BuildContext, source: str, task_ad: LoraAdapter, created: list[Path],
           on_plain: OnPlain | None) -> TaskRecord:
    digest = adapter_digest(spec.path)
    version = spec.version or digest[:12]
    coefficients = coefficients_hash = None
    safe = "safe" in spec.variants
    if safe:
        combined = ctx.combined_rank(task_ad) if spec.mode_of("safe") == "lora" else 0  # merged: no LoRA rank
        if spec.rank_budget is not None:
            combined = min(combined, max(spec.rank_budget, task_ad.max_rank()))
        limit = ctx.rank_limit or UNBOUNDED_RANK
        if combined > limit:
            raise ArtifactError(
                f"combined rank {combined} (task {task_ad.max_rank()} + safety "
                f"{ctx.safety.max_rank() if ctx.safety else 0}) is over the server's max_lora_rank {limit}"
            )
    # plain variant: an immutable snapshot, so edits to the source folder never change what is served
    with ArtifactWriter(store=ctx.store, name=f"{spec.name}-{version}", kind="task_adapter",
                        lineage=[{"role": "task", "path": str(spec.path), "sha256": digest}]) as w:
        for f in ADAPTER_FILES:
            shutil.copy2(spec.path / f, w.tmp / f)
        w.manifest.update(task={"name": spec.name, "version": version})
    assert w.path is not None
    plain_dir = _new(w.path, w.reused, created)
    if on_plain is not None:
        on_plain(plain_dir, version)
    if safe:
        coefficients = resolve_coefficients(spec, ctx, spec.path, version)
        coefficients_hash = load_coefficients(coefficients).digest()[:12]
    variants: dict[str, VariantRecord] = {}
    for variant in spec.variants:
        if spec.mode_of(variant) == "merged":
            existing = _existing(ctx.merged_store)
            v = build_merged_variant(ctx, spec.name, version, variant, plain_dir,
                                     coefficients if variant == "safe" else None)
            _new(Path(v.path), Path(v.path) in existing, created)
        elif variant == "plain":
            v = VariantRecord(served_name(spec.name, "plain"), str(plain_dir), task_ad.max_rank())
        else:
            existing = _existing(ctx.store)
            safe_dir = stack_adapters(plain_dir, ctx.safety_path, coefficients,  # type: ignore[arg-type]
                                      store=ctx.store, name=f"{spec.name}-{version}{SAFE_SUFFIX}",
                                      max_lora_rank=ctx.rank_limit, rank_budget=spec.rank_budget)
            _new(safe_dir, safe_dir in existing, created)
            v = VariantRecord(served_name(spec.name, "safe"), str(safe_dir), load_adapter(safe_dir).max_rank())
        variants[variant] = replace(v, digest=read_manifest(v.path).get("id"))
    return TaskRecord(
        name=spec.name, version=version, source=source, spec=spec.to_dict(), mode=spec.mode,
        safety_version=ctx.safety_version if "safe" in spec.variants else None,
        coefficients_hash=coefficients_hash, coefficients=coefficients,
    ).with_variants(variants)


def _existing(store: Path) -> set[Path]:
    return set(store.iterdir()) if store.is_dir() else set()
