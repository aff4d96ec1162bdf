"""The ``safegene serve`` YAML config, as dataclasses validated with messages that name the faulty entry.

Relative paths are resolved against the config file's folder, so a config and its adapters can move together.
The schema is documented in ``docs/server.md``; ``deploy/configs/`` holds examples. Nothing here imports vLLM.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from safegene_runtime.calibration import CalibrationConfig, CalibrationConfigError
from safegene_runtime.datasets import NAMED_SETS, VALIDATION
from safegene_runtime.gate import DEFAULT_CAPACITY_SHARE, DEFAULT_IDLE_SHARE, GateError, GateSets, GateThresholds
from safegene_runtime.splits import SplitError, require_split
from safegene_runtime.paths import safegene_home
from safegene_runtime.stack import ALLOWED_MAX_LORA_RANKS  # vLLM's allowed --max-lora-rank values: one list

from .auth import AuthConfig, AuthConfigError, check_exposure, parse_auth
from .cpu_lora import KERNELS as CPU_LORA_KERNELS
from .hardware import CPU_THREADS
from .validation import DEFAULT_MAX_CHOICES

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
VARIANTS = ("plain", "safe")
#: serving modes: "lora" (alias "stacked": a LoRA on the shared base engine) or "merged" (own engine, merged weights)
MODES = ("lora", "merged")
_MODE_ALIASES = {"lora": "lora", "stacked": "lora", "merged": "merged"}
SAFE_SUFFIX = "+safegene"
#: seconds an idle keep-alive connection stays open. Longer than the idle expiry of the clients in front of us
#: (httpx and the OpenAI SDKs: 5 s; cloud load balancers: 60 s), so the client closes an idle connection first:
#: a server closing at the same 5 s can shut a connection in the instant a client reuses it (the client sees
#: a reset; the soak test met one in 2,395 requests with vLLM's default of 5 s).
DEFAULT_KEEP_ALIVE_S = 65.0
#: engine keys we understand and translate to vLLM flags (anything else goes through ``extra_args``)
ENGINE_KEYS = {
    "dtype", "max_model_len", "max_loras", "max_cpu_loras", "max_lora_rank", "tensor_parallel_size",
    "enforce_eager", "gpu_memory_utilization", "max_num_seqs", "seed", "lora_dtype", "extra_args", "cpu_lora_kernels",
    "cpu_threads",
}


class ConfigError(ValueError):
    """The config is invalid; the message names the file and the entry."""


@dataclass
class CalibrationSpec:
    """Few-shot sets to calibrate the safety coefficients at load time (``safegene_runtime.calibration``), and the
    procedure: ``options`` are the CalibrationConfig fields the block sets (the rest keep the default procedure)."""

    harmful: Path
    task_shots: Path
    benign: Path | None = None
    limit: int | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> CalibrationConfig:
        return CalibrationConfig.from_dict(self.options)

    def to_dict(self) -> dict[str, Any]:
        # seed and steps as before options existed (a retired entry's stored spec keeps matching its config entry)
        return {
            "harmful": str(self.harmful), "task_shots": str(self.task_shots),
            "benign": str(self.benign) if self.benign else None, "seed": self.options.get("seed", 0),
            "steps": self.options.get("steps"), "limit": self.limit,
            **{k: v for k, v in CalibrationConfig.from_dict(self.options).to_dict().items()
               if k in self.options and k not in ("seed", "steps")},
        }


@dataclass
class TaskSpec:
    """One task adapter and the variants it exposes."""

    name: str
    path: Path
    version: str | None = None
    coefficients: Path | dict[str, Any] | None = None
    calibrate: CalibrationSpec | None = None
    variants: tuple[str, ...] = VARIANTS
    #: "lora" | "merged" for every variant, or {variant: mode} (see :meth:`mode_of`; server/engine.py serves "merged")
    mode: str | dict[str, str] = "lora"
    #: stack the safe variant within this rank (SVD of each over-budget module): the engine's max_lora_rank can stay
    #: at the task adapter's rank, at some cost in fidelity (docs/benchmarks.md); None: the exact stack
    rank_budget: int | None = None
    #: the adapter files' expected sha256 (``digest``, as ``safegene_runtime.digests.adapter_digest`` computes it):
    #: a registration whose files hash otherwise is refused
    digest: str | None = None

    def mode_of(self, variant: str) -> str:
        return self.mode if isinstance(self.mode, str) else self.mode.get(variant, "lora")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": str(self.path),
            "version": self.version,
            "coefficients": str(self.coefficients) if isinstance(self.coefficients, Path) else self.coefficients,
            "calibrate": self.calibrate.to_dict() if self.calibrate else None,
            "variants": list(self.variants),
            "mode": self.mode if isinstance(self.mode, str) else dict(self.mode),
            **({"rank_budget": self.rank_budget} if self.rank_budget is not None else {}),
            **({"digest": self.digest} if self.digest is not None else {}),
        }


@dataclass
class EngineSpec:
    dtype: str = "auto"
    max_model_len: int | None = None
    max_loras: int = 4
    max_cpu_loras: int | None = None
    max_lora_rank: int | str = "auto"
    tensor_parallel_size: int = 1
    enforce_eager: bool = False
    gpu_memory_utilization: float | None = None
    max_num_seqs: int | None = None
    seed: int | None = None
    lora_dtype: str | None = None
    extra_args: list[str] = field(default_factory=list)
    #: LoRA ops of a CPU engine: "grouped" (one GEMM per adapter, server/cpu_lora.py) or "stock" (vLLM's own)
    cpu_lora_kernels: str = "grouped"
    #: which CPUs a CPU engine computes on: "auto" (every core on a host of CPU_ALL_CORES_UP_TO cores or fewer,
    #: else vLLM's binding, which keeps a core for the API front end), "all", or "vllm" (server/hardware.py)
    cpu_threads: str = "auto"


@dataclass
class JudgeSpec:
    names: list[str] = field(default_factory=lambda: ["refusal", "prompt_harm"])
    queue_size: int = 256
    batch_size: int = 16


#: registry backends: "file" (one process, ``<state_dir>/registry.json``) or "postgres" (N replicas, one database)
REGISTRY_BACKENDS = ("file", "postgres")


@dataclass
class RegistrySpec:
    """Where the registry lives (``registry:`` in the YAML). The defaults are the embedded single-process backend.

    With ``backend: postgres`` the database holds adapter versions, aliases and the generation, and built folders go
    to ``artifact_store`` (a directory every replica mounts at the same path), so every replica serves the same
    bytes; each replica follows the database's generation (LISTEN/NOTIFY, and a poll every ``poll_s`` seconds in
    case a notification is missed or the database was away)."""

    backend: str = "file"
    #: a libpq connection string; the password is best left out and given as $PGPASSWORD (a Secret)
    dsn: str | None = None
    #: the environment variable that holds the DSN instead (wins over ``dsn`` when set)
    dsn_env: str | None = None
    #: the shared content-addressed directory of built variants (postgres backend; default: ``<state_dir>``)
    artifact_store: Path | None = None
    poll_s: float = 5.0
    #: seconds between two attempts at a version this replica could not load (each attempt re-hashes its folders)
    retry_s: float = 60.0
    #: seconds a connection attempt may take before the database counts as unreachable
    connect_timeout_s: int = 3
    #: the LISTEN/NOTIFY channel (one per deployment sharing a database)
    channel: str = "safegene_registry"

    def resolved_dsn(self) -> str | None:
        if self.dsn_env and os.environ.get(self.dsn_env):
            return os.environ[self.dsn_env]
        return self.dsn


@dataclass
class GateSpec:
    """The ``gate:`` section: every version registered through ``POST /admin/adapters`` is calibrated, stacked and
    evaluated against the base before it may serve (docs/gate.md). Every default is
    :mod:`safegene_runtime.gate`'s; the section's presence turns the gate on (``enabled: false`` keeps it off)."""

    enabled: bool = True
    thresholds: GateThresholds = field(default_factory=GateThresholds)
    #: harmful/benign: a shipped set's name or a JSONL/CSV file (resolved against the config's folder)
    sets: GateSets = field(default_factory=GateSets)
    #: the share of the engine's batch (engine.max_num_seqs) the gate's requests may take at once
    capacity_share: float = DEFAULT_CAPACITY_SHARE
    #: the share they may take while no client request is in flight (at least capacity_share): an idle server gates
    #: faster, and a client request that arrives waits at most for the gate requests already running
    idle_share: float = DEFAULT_IDLE_SHARE
    #: evaluate the base and the plain form while the build worker calibrates (server/gate.py's early start). Off by
    #: default: on a 2-core CPU machine the engine and the calibration slowed each other several-fold (docs/gate.md);
    #: worth it where the engine does not share the calibration's cores (an accelerator)
    early_start: bool = False
    #: the first N prompts of each set (None: all); with sets.max_tokens this bounds a run's token budget
    max_prompts: int | None = None

    def concurrency(self, max_num_seqs: int | None) -> int:
        """Gate requests in flight: the share of the engine's batch, at least one."""
        return max(1, int(self.capacity_share * (max_num_seqs or DEFAULT_ENGINE_BATCH)))

    def idle_concurrency(self, max_num_seqs: int | None) -> int:
        """Gate requests in flight while no client request is: the idle share of the batch, at least the share."""
        return max(self.concurrency(max_num_seqs), int(self.idle_share * (max_num_seqs or DEFAULT_ENGINE_BATCH)))

    def to_dict(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "thresholds": asdict(self.thresholds), "sets": asdict(self.sets),
                "capacity_share": self.capacity_share, "idle_share": self.idle_share, "early_start": self.early_start,
                "max_prompts": self.max_prompts}


#: the batch assumed for ``gate.capacity_share`` when ``engine.max_num_seqs`` is not set (vLLM's CPU default)
DEFAULT_ENGINE_BATCH = 128


@dataclass
class ServerConfig:
    path: Path  # the config file itself (for messages)
    base_model: Path
    served_name: str
    safety: Path | None
    safety_version: str | None
    adapter_root: Path
    state_dir: Path
    tasks: list[TaskSpec]
    engine: EngineSpec
    judges: JudgeSpec
    auth: AuthConfig
    host: str = "127.0.0.1"
    port: int = 8000
    drain_timeout_s: float = 120.0
    keep_alive_s: float = DEFAULT_KEEP_ALIVE_S
    max_body_bytes: int = 4 << 20
    default_mode: str = "lora"  # top-level ``mode``: the deployment default for task entries
    memory_budget_gb: float | None = None  # server.memory_budget_gb: overrides the detected memory (server/memory.py)
    max_choices: int = DEFAULT_MAX_CHOICES  # server.max_choices: completions per request (prompts x n)
    registry: RegistrySpec = field(default_factory=RegistrySpec)
    #: None: no gate section, registrations serve once built (as before the gate)
    gate: GateSpec | None = None

    @property
    def artifact_store(self) -> Path:
        """Where built variants go: the shared store of a postgres registry, else the state dir."""
        return self.registry.artifact_store or self.state_dir


def _fail(where: str, msg: str) -> ConfigError:
    return ConfigError(f"{where}: {msg}")


def _as_path(value: Any, root: Path, where: str) -> Path:
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise _fail(where, f"expected a path, got {value!r}")
    text = str(value)
    if "SAFEGENE_HOME" in text and "SAFEGENE_HOME" not in os.environ:
        text = text.replace("${SAFEGENE_HOME}", str(safegene_home())).replace("$SAFEGENE_HOME", str(safegene_home()))
    p = Path(os.path.expandvars(os.path.expanduser(text)))
    return (p if p.is_absolute() else root / p).resolve()


def _check_unknown(d: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise _fail(where, f"unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})")


def check_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise _fail(where, f"name {name!r} must match {NAME_RE.pattern} (lowercase letters, digits, . _ -)")
    return name


def _parse_mode(value: Any, variants: list[str], where: str) -> str | dict[str, str]:
    """``lora``/``stacked``/``merged``, or a per-variant mapping ``{plain: lora, safe: merged}``."""
    def one(v: Any, w: str) -> str:
        if v not in _MODE_ALIASES:
            raise _fail(w, f"must be 'stacked' (alias 'lora') or 'merged', got {v!r}")
        return _MODE_ALIASES[v]

    if isinstance(value, dict):
        bad = sorted(set(value) - set(variants))
        if bad:
            raise _fail(where, f"per-variant mode for {', '.join(map(str, bad))}, which this task does not serve "
                               f"(variants: {variants})")
        modes = {v: one(value.get(v, "lora"), f"{where}.{v}") for v in VARIANTS if v in variants}
        uniform = set(modes.values())
        return uniform.pop() if len(uniform) == 1 else modes
    return one(value, where)


def parse_task(d: Any, root: Path, where: str, default_mode: str = "lora") -> TaskSpec:
    """One task entry (also the body of the admin API's POST /admin/adapters, with ``root`` = adapter root)."""
    if not isinstance(d, dict):
        raise _fail(where, "expected a mapping with at least 'name' and 'path'")
    _check_unknown(d, {"name", "path", "version", "coefficients", "calibrate", "variants", "mode", "rank_budget",
                       "digest"}, where)
    name = check_name(d.get("name"), where)
    where = f"{where} (task {name!r})"
    if "path" not in d:
        raise _fail(where, "missing 'path' (the task adapter folder)")
    path = _as_path(d["path"], root, f"{where}.path")
    version = d.get("version")
    if version is not None:
        version = check_name(str(version), f"{where}.version")
    variants = d.get("variants", list(VARIANTS))
    if isinstance(variants, str):
        variants = [variants]
    if not isinstance(variants, list) or not variants or any(v not in VARIANTS for v in variants):
        raise _fail(f"{where}.variants", f"expected a non-empty list drawn from {list(VARIANTS)}, got {variants!r}")
    coefficients = d.get("coefficients")
    calib = d.get("calibrate")
    if "safe" in variants and coefficients is None and calib is None:
        raise _fail(where, "the 'safe' variant needs 'coefficients' (file or inline mapping) or 'calibrate' (shots)")
    if coefficients is not None and calib is not None:
        raise _fail(where, "give either 'coefficients' or 'calibrate', not both")
    if isinstance(coefficients, (str, os.PathLike)):
        coefficients = _as_path(coefficients, root, f"{where}.coefficients")
    elif coefficients is not None and not isinstance(coefficients, dict):
        raise _fail(f"{where}.coefficients", "expected a file path or a mapping {layers: {...}, default: λ}")
    cal: CalibrationSpec | None = None
    if calib is not None:
        cw = f"{where}.calibrate"
        if not isinstance(calib, dict):
            raise _fail(cw, "expected a mapping with 'harmful' and 'task_shots' files")
        _check_unknown(calib, {"harmful", "task_shots", "benign", "limit", *CalibrationConfig.field_names()}, cw)
        for k in ("harmful", "task_shots"):
            if k not in calib:
                raise _fail(cw, f"missing {k!r}")
        # null: the default procedure's value for a field that cannot be None (steps: null said so before the
        # other options existed); None for one that can (max_target_tokens: null is the whole answer)
        nullable = {f.name for f in fields(CalibrationConfig) if "none_means" in f.metadata}
        options = {k: v for k, v in calib.items()
                   if k in CalibrationConfig.field_names() and (v is not None or k in nullable)}
        try:
            CalibrationConfig.from_dict(options)
        except CalibrationConfigError as e:
            raise _fail(f"{cw}.{e.field}", str(e)) from None
        cal = CalibrationSpec(
            harmful=_as_path(calib["harmful"], root, f"{cw}.harmful"),
            task_shots=_as_path(calib["task_shots"], root, f"{cw}.task_shots"),
            benign=_as_path(calib["benign"], root, f"{cw}.benign") if calib.get("benign") else None,
            limit=_int(calib, "limit", cw), options=options,
        )
    mode = _parse_mode(d.get("mode", default_mode), list(variants), f"{where}.mode")
    budget = _int(d, "rank_budget", where)
    digest = d.get("digest")
    if digest is not None and not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)):
        raise _fail(f"{where}.digest", "expected the adapter files' sha256 as 64 lowercase hex digits")
    return TaskSpec(name=name, path=path, version=version, coefficients=coefficients, calibrate=cal,
                    variants=tuple(v for v in VARIANTS if v in variants), mode=mode, rank_budget=budget,
                    digest=digest)


def _int(d: dict[str, Any], key: str, where: str, default: Any = None, minimum: int = 1) -> Any:
    v = d.get(key, default)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise _fail(f"{where}.{key}", f"expected an integer >= {minimum}, got {v!r}")
    return v


def _parse_engine(d: Any, where: str) -> EngineSpec:
    d = d or {}
    if not isinstance(d, dict):
        raise _fail(where, "expected a mapping")
    _check_unknown(d, ENGINE_KEYS, where)
    rank = d.get("max_lora_rank", "auto")
    if rank != "auto" and rank not in ALLOWED_MAX_LORA_RANKS:
        raise _fail(f"{where}.max_lora_rank", f"must be 'auto' or one of {list(ALLOWED_MAX_LORA_RANKS)}, got {rank!r}")
    extra = d.get("extra_args") or []
    if not isinstance(extra, list) or not all(isinstance(x, (str, int, float)) for x in extra):
        raise _fail(f"{where}.extra_args", "expected a list of command-line strings, e.g. ['--max-num-batched-tokens', '4096']")
    blocked = [x.split("=")[0] for x in map(str, extra) if x.split("=")[0] in _BLOCKED_FLAGS]
    if blocked:  # the flag's name only: its value may be a secret (--api-key=...)
        raise _fail(f"{where}.extra_args", f"{', '.join(blocked)} is managed by safegene serve and cannot be passed")
    spec = EngineSpec(
        dtype=str(d.get("dtype", "auto")),
        max_model_len=_int(d, "max_model_len", where),
        max_loras=_int(d, "max_loras", where, 4),
        max_cpu_loras=_int(d, "max_cpu_loras", where),
        max_lora_rank=rank,
        tensor_parallel_size=_int(d, "tensor_parallel_size", where, 1),
        enforce_eager=bool(d.get("enforce_eager", False)),
        gpu_memory_utilization=float(d["gpu_memory_utilization"]) if d.get("gpu_memory_utilization") else None,
        max_num_seqs=_int(d, "max_num_seqs", where),
        seed=_int(d, "seed", where, minimum=0),
        lora_dtype=str(d["lora_dtype"]) if d.get("lora_dtype") else None,
        extra_args=[str(x) for x in extra],
        cpu_lora_kernels=str(d.get("cpu_lora_kernels", "grouped")),
        cpu_threads=str(d.get("cpu_threads", "auto")),
    )
    if spec.cpu_threads not in CPU_THREADS:
        raise _fail(f"{where}.cpu_threads", f"must be one of {', '.join(CPU_THREADS)}, got {spec.cpu_threads!r}")
    if spec.cpu_lora_kernels not in CPU_LORA_KERNELS:
        raise _fail(f"{where}.cpu_lora_kernels", f"must be one of {', '.join(CPU_LORA_KERNELS)}, got "
                                                 f"{spec.cpu_lora_kernels!r}")
    if spec.max_cpu_loras is not None and spec.max_cpu_loras < spec.max_loras:
        raise _fail(f"{where}.max_cpu_loras", f"must be >= max_loras ({spec.max_loras})")
    return spec


_CHANNEL_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def _parse_registry(d: Any, root: Path, where: str) -> RegistrySpec:
    """The ``registry:`` section; absent: the file backend."""
    if d is None:
        return RegistrySpec()
    if not isinstance(d, dict):
        raise _fail(where, "expected a mapping {backend: file|postgres, dsn | dsn_env, artifact_store, poll_s}")
    _check_unknown(d, {"backend", "dsn", "dsn_env", "artifact_store", "poll_s", "retry_s", "connect_timeout_s",
                       "channel"}, where)
    default = RegistrySpec()
    backend = d.get("backend", default.backend)
    if backend not in REGISTRY_BACKENDS:
        raise _fail(f"{where}.backend", f"must be one of {', '.join(REGISTRY_BACKENDS)}, got {backend!r}")
    poll = d.get("poll_s", default.poll_s)
    retry = d.get("retry_s", default.retry_s)
    for key, value in (("poll_s", poll), ("retry_s", retry)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.1 <= value <= 3600:
            raise _fail(f"{where}.{key}", f"expected seconds between 0.1 and 3600, got {value!r}")
    channel = d.get("channel", default.channel)
    if not isinstance(channel, str) or not _CHANNEL_RE.match(channel):
        raise _fail(f"{where}.channel", f"expected a lowercase SQL identifier, got {channel!r}")
    spec = RegistrySpec(
        backend=backend, dsn=str(d["dsn"]) if d.get("dsn") else None,
        dsn_env=str(d["dsn_env"]) if d.get("dsn_env") else None,
        artifact_store=_as_path(d["artifact_store"], root, f"{where}.artifact_store") if d.get("artifact_store")
        else None,
        poll_s=float(poll), retry_s=float(retry), connect_timeout_s=_int(d, "connect_timeout_s", where, default.connect_timeout_s),
        channel=channel,
    )
    if backend == "postgres":
        if not spec.dsn and not spec.dsn_env:
            raise _fail(where, "the postgres backend needs 'dsn' (a libpq connection string) or 'dsn_env'")
        if spec.artifact_store is None:
            raise _fail(where, "the postgres backend needs 'artifact_store': a directory every replica mounts at "
                               "the same path (built variants are shared through it)")
    elif spec.artifact_store is not None or spec.dsn or spec.dsn_env:
        raise _fail(where, "dsn, dsn_env and artifact_store belong to the postgres backend (backend: postgres)")
    return spec


def _parse_gate(d: Any, root: Path, where: str) -> GateSpec | None:
    """The ``gate:`` section (None when absent). Thresholds, sets and budget, each checked with a message naming the
    key; defaults from :mod:`safegene_runtime.gate`."""
    if d is None:
        return None
    if d is True or d == {}:
        return GateSpec()
    if not isinstance(d, dict):
        raise _fail(where, "expected a mapping {enabled, thresholds: {...}, sets: {harmful, benign}, max_tokens, "
                           "harm_judge, capacity_share, idle_share, max_prompts}")
    _check_unknown(d, {"enabled", "thresholds", "sets", "max_tokens", "harm_judge", "capacity_share", "idle_share",
                       "early_start", "max_prompts"}, where)
    early_start = d.get("early_start", False)
    if not isinstance(early_start, bool):
        raise _fail(f"{where}.early_start", f"expected true or false, got {early_start!r}")
    enabled = d.get("enabled", True)
    if not isinstance(enabled, bool):
        raise _fail(f"{where}.enabled", f"expected true or false, got {enabled!r}")
    if d.get("thresholds") is not None and not isinstance(d["thresholds"], dict):
        raise _fail(f"{where}.thresholds", "expected a mapping {max_harm_increase, max_over_refusal_increase, "
                                           "max_task_drop} (percentage points)")
    try:
        thresholds = GateThresholds.from_dict(d.get("thresholds"), where=f"{where}.thresholds")
    except GateError as e:
        raise _fail(f"{where}.thresholds", str(e)) from e
    except TypeError as e:  # pragma: no cover - from_dict checks the keys first
        raise _fail(f"{where}.thresholds", str(e)) from e
    default = GateSets()
    sets_raw = d.get("sets") or {}
    if not isinstance(sets_raw, dict):
        raise _fail(f"{where}.sets", "expected a mapping {harmful: <set name or file>, benign: <set name or file>}")
    _check_unknown(sets_raw, {"harmful", "benign"}, f"{where}.sets")
    chosen: dict[str, str] = {}
    for role in ("harmful", "benign"):
        value = sets_raw.get(role, getattr(default, role))
        if not isinstance(value, str) or not value:
            raise _fail(f"{where}.sets.{role}", f"expected a set name or a file, got {value!r}")
        if value in NAMED_SETS:
            if NAMED_SETS[value][1] != role:
                raise _fail(f"{where}.sets.{role}", f"{value!r} holds {NAMED_SETS[value][1]} prompts")
            chosen[role] = value
        else:
            path = _as_path(value, root, f"{where}.sets.{role}")
            if not path.is_file():
                raise _fail(f"{where}.sets.{role}", f"{value!r} is neither a named set nor a file ({path} not found)")
            chosen[role] = str(path)
        try:  # a gate chooses (serve or not): validation data only (issue 21's families, safegene_runtime.splits)
            require_split(chosen[role], VALIDATION)
        except SplitError as e:
            raise _fail(f"{where}.sets.{role}", str(e)) from e
    max_tokens = _int(d, "max_tokens", where, default.max_tokens)
    judge = d.get("harm_judge", default.harm_judge)
    if not isinstance(judge, str) or not judge.strip() or judge.strip() in ("prompt_harm", "prompt-harm"):
        raise _fail(f"{where}.harm_judge", f"expected the name of a response judge ('refusal', 'llm:<model>@<url>', "
                                           f"...), got {judge!r} (prompt_harm reads only the prompt)")
    share = d.get("capacity_share", DEFAULT_CAPACITY_SHARE)
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1:
        raise _fail(f"{where}.capacity_share", f"expected a share of the engine's batch in (0, 1], got {share!r}")
    idle = d.get("idle_share", max(DEFAULT_IDLE_SHARE, share))
    if isinstance(idle, bool) or not isinstance(idle, (int, float)) or not share <= idle <= 1:
        raise _fail(f"{where}.idle_share", f"expected a share of the engine's batch in [capacity_share={share:g}, 1], "
                                           f"got {idle!r}")
    return GateSpec(enabled=enabled, thresholds=thresholds,
                    sets=GateSets(harmful=chosen["harmful"], benign=chosen["benign"], max_tokens=max_tokens,
                                  harm_judge=judge.strip()),
                    capacity_share=float(share), idle_share=float(idle), early_start=early_start,
                    max_prompts=_int(d, "max_prompts", where))


#: flags that safegene serve sets itself: passing them through would break auth, naming or LoRA registration
_BLOCKED_FLAGS = {
    "--model", "--served-model-name", "--api-key", "--enable-lora", "--lora-modules", "--max-lora-rank",
    "--host", "--port", "--uds", "--middleware",
}


def load_config(path: str | Path, *, host: str | None = None, port: int | None = None) -> ServerConfig:
    """Read and validate a server config. Raises :class:`ConfigError` naming the file and entry on any problem."""
    path = Path(path).resolve()
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    where = str(path)
    root = path.parent
    _check_unknown(raw, {"base", "safety", "adapter_root", "state_dir", "tasks", "engine", "judges", "auth",
                         "server", "mode", "registry", "gate"}, where)
    # keys and exposure first: an open listener is refused before anything else is looked at (model folders may
    # not be prepared yet), and after --host, since the address actually listened on decides
    srv = raw.get("server") or {}
    if not isinstance(srv, dict):
        raise _fail(f"{where}: server", "expected a mapping")
    try:
        auth = parse_auth(raw.get("auth"), f"{where}: auth")
        check_exposure(auth, host or str(srv.get("host", "127.0.0.1")), f"{where}: auth")
    except AuthConfigError as e:
        raise ConfigError(str(e)) from e
    default_mode = _parse_mode(raw.get("mode", "lora"), list(VARIANTS), f"{where}: mode")
    if not isinstance(default_mode, str):
        raise _fail(f"{where}: mode", "the deployment default must be 'stacked' or 'merged' (per-variant modes "
                                      "go in task entries)")

    base = raw.get("base")
    if not isinstance(base, dict) or "model" not in base:
        raise _fail(f"{where}: base", "expected a mapping with 'model' (a local HF model folder) and 'served_name'")
    _check_unknown(base, {"model", "served_name"}, f"{where}: base")
    base_model = _as_path(base["model"], root, f"{where}: base.model")
    if not (base_model / "config.json").is_file():
        raise _fail(f"{where}: base.model", f"{base_model} is not a model folder (no config.json)")
    served_name = check_name(base.get("served_name", base_model.name.lower()), f"{where}: base.served_name")

    safety_raw = raw.get("safety")
    safety = safety_version = None
    if safety_raw is not None:
        if isinstance(safety_raw, str):
            safety_raw = {"path": safety_raw}
        if not isinstance(safety_raw, dict) or "path" not in safety_raw:
            raise _fail(f"{where}: safety", "expected a mapping with 'path' (the safety adapter folder)")
        _check_unknown(safety_raw, {"path", "version"}, f"{where}: safety")
        safety = _as_path(safety_raw["path"], root, f"{where}: safety.path")
        if safety_raw.get("version") is not None:
            safety_version = check_name(str(safety_raw["version"]), f"{where}: safety.version")

    adapter_root = _as_path(raw.get("adapter_root", "."), root, f"{where}: adapter_root")
    state_dir = _as_path(raw.get("state_dir", "./.safegene-state"), root, f"{where}: state_dir")

    tasks_raw = raw.get("tasks") or []
    if not isinstance(tasks_raw, list):
        raise _fail(f"{where}: tasks", "expected a list of task entries")
    tasks: list[TaskSpec] = []
    seen: set[str] = set()
    for i, t in enumerate(tasks_raw):
        spec = parse_task(t, root, f"{where}: tasks[{i}]", default_mode)
        if spec.name in seen:
            raise _fail(f"{where}: tasks[{i}]", f"duplicate task name {spec.name!r}")
        if spec.name == served_name:
            raise _fail(f"{where}: tasks[{i}]", f"task name {spec.name!r} is the base model's served name")
        if "safe" in spec.variants and safety is None:
            raise _fail(f"{where}: tasks[{i}] (task {spec.name!r})", "a 'safe' variant needs a top-level 'safety' adapter")
        seen.add(spec.name)
        tasks.append(spec)

    engine = _parse_engine(raw.get("engine"), f"{where}: engine")

    jr = raw.get("judges") or {}
    if isinstance(jr, list):
        jr = {"names": jr}
    if not isinstance(jr, dict):
        raise _fail(f"{where}: judges", "expected a mapping {names: [...], queue_size: N} or a list of names")
    _check_unknown(jr, {"names", "queue_size", "batch_size"}, f"{where}: judges")
    names = jr.get("names", ["refusal", "prompt_harm"])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise _fail(f"{where}: judges.names", "expected a list like ['refusal', 'prompt_harm', 'llm:<model>@<url>']")
    judges = JudgeSpec(
        names=list(names),
        queue_size=_int(jr, "queue_size", f"{where}: judges", 256),
        batch_size=_int(jr, "batch_size", f"{where}: judges", 16),
    )

    _check_unknown(srv, {"host", "port", "drain_timeout_s", "keep_alive_s", "max_body_bytes", "memory_budget_gb",
                         "max_choices"},
                   f"{where}: server")
    budget = srv.get("memory_budget_gb")
    keep_alive = srv.get("keep_alive_s", DEFAULT_KEEP_ALIVE_S)
    if isinstance(keep_alive, bool) or not isinstance(keep_alive, (int, float)) or keep_alive <= 0:
        raise _fail(f"{where}: server.keep_alive_s", f"expected a positive number of seconds, got {keep_alive!r}")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float)) or budget <= 0):
        raise _fail(f"{where}: server.memory_budget_gb", f"expected a positive number of GiB, got {budget!r}")
    registry = _parse_registry(raw.get("registry"), root, f"{where}: registry")
    gate = _parse_gate(raw.get("gate"), root, f"{where}: gate")
    if gate is not None and gate.enabled and safety is None:
        raise _fail(f"{where}: gate", "the gate compares a version's plain and safe variants: it needs a top-level "
                                      "'safety' adapter")
    cfg = ServerConfig(
        path=path, base_model=base_model, served_name=served_name, safety=safety, safety_version=safety_version,
        adapter_root=adapter_root, state_dir=state_dir, tasks=tasks, engine=engine, judges=judges,
        auth=auth,
        host=host or str(srv.get("host", "127.0.0.1")),
        port=int(port if port is not None else srv.get("port", 8000)),
        drain_timeout_s=float(srv.get("drain_timeout_s", 120.0)), keep_alive_s=float(keep_alive),
        max_body_bytes=int(srv.get("max_body_bytes", 4 << 20)),
        default_mode=default_mode, memory_budget_gb=float(budget) if budget is not None else None,
        max_choices=_int(srv, "max_choices", f"{where}: server", DEFAULT_MAX_CHOICES),
        registry=registry, gate=gate,
    )
    return cfg
