"""Typed records of what the server built and serves: one :class:`TaskRecord` per task version, one
:class:`VariantRecord` per served name.

They are what ``build.py`` produces, what ``registry.py`` keeps and persists (``registry.json``, through
:meth:`TaskRecord.to_dict` / :meth:`TaskRecord.from_dict`, in the same JSON layout as before the records were typed,
so older registry files load), and what the admin API returns. Records are immutable: a new version is a new record.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, replace
from typing import Any

from .config import SAFE_SUFFIX

#: the served name's variants, in the order they are listed and loaded
VARIANT_ORDER = ("plain", "safe")


def served_name(task: str, variant: str) -> str:
    """The name clients put in ``model``: ``<task>`` for the plain adapter, ``<task>+safegene`` for the safe one."""
    return task if variant == "plain" else f"{task}{SAFE_SUFFIX}"


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class VariantRecord:
    """One built variant: the immutable folder an engine loads under ``served_name``.

    ``mode`` is ``lora`` (a LoRA folder on the shared engine; ``rank`` is its LoRA rank) or ``merged`` (a full
    checkpoint served by its own engine; ``rank`` 0, ``adapter_path`` the task snapshot it was merged from)."""

    served_name: str
    path: str
    rank: int
    mode: str = "lora"
    adapter_path: str | None = None
    digest: str | None = None  # the folder's content id when it was built: checked before it is served again

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"served_name": self.served_name, "path": self.path, "rank": self.rank, "mode": self.mode}
        if self.adapter_path is not None:
            d["adapter_path"] = self.adapter_path
        if self.digest is not None:
            d["digest"] = self.digest
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "VariantRecord":
        return cls(served_name=str(d["served_name"]), path=str(d["path"]), rank=int(d.get("rank", 0)),
                   mode=str(d.get("mode") or "lora"), adapter_path=d.get("adapter_path"), digest=d.get("digest"))


@dataclass(frozen=True)
class TaskRecord:
    """One task version as built: where it came from, its safety lineage and its variants (plain first)."""

    name: str
    version: str
    source: str  # "config" | "admin"
    spec: dict[str, Any]  # the TaskSpec as parsed (TaskSpec.to_dict)
    mode: Any  # the spec's mode: a string or {variant: mode}
    variants: dict[str, VariantRecord] = field(default_factory=dict)
    safety_version: str | None = None
    coefficients_hash: str | None = None
    coefficients: dict[str, Any] | None = None
    built_at: str = field(default_factory=now_iso)
    #: the safety gate's verdict on this version: {verdict, report (folder), id (its content id), job}; None when
    #: it was not gated (config entries, servers without a gate section)
    gate: dict[str, Any] | None = None

    def served_names(self) -> list[str]:
        return [v.served_name for v in self.variants.values()]

    def same_build(self, other: "TaskRecord") -> bool:
        """Same version and the same content-addressed folders (a re-registration that changes nothing)."""
        return self.version == other.version and self.variants == other.variants

    def with_variants(self, variants: dict[str, VariantRecord]) -> "TaskRecord":
        return replace(self, variants={v: variants[v] for v in VARIANT_ORDER if v in variants})

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "version": self.version, "source": self.source, "spec": self.spec, "mode": self.mode,
            "safety_version": self.safety_version, "coefficients_hash": self.coefficients_hash,
            "coefficients": self.coefficients,
            "variants": {k: v.to_dict() for k, v in self.variants.items()}, "built_at": self.built_at,
            **({"gate": self.gate} if self.gate is not None else {}),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TaskRecord":
        return cls(name=str(d["name"]), version=str(d["version"]), source=str(d.get("source") or "config"),
                   spec=dict(d.get("spec") or {}), mode=d.get("mode", "lora"),
                   variants={k: VariantRecord.from_dict(v) for k, v in (d.get("variants") or {}).items()},
                   safety_version=d.get("safety_version"), coefficients_hash=d.get("coefficients_hash"),
                   coefficients=d.get("coefficients"), built_at=str(d.get("built_at") or now_iso()),
                   gate=d.get("gate"))
