"""Per-layer safety coefficients λ_l: the one small file that calibration writes and stacking/merging read.

``coefficients.json``::

    {
      "schema": "safegene.coefficients/v1",
      "layers": {"12": 0.8, "13": 1.1, ...},   # λ per decoder layer index
      "default": 0.0,                           # λ for every layer not listed (0: safety off there)
      "method": {...}, "safety": {...}, "task": {...}, ...   # provenance (calibration losses, seed, shot hashes)
    }

A uniform baseline is ``{"layers": {}, "default": λ}``.

Calibrated with one λ per module group (``CalibrationConfig(granularity="attn-mlp")``), the file also has
``"groups": {"12": {"attn": 0.7, "mlp": 0.9}, ...}``: a listed group's λ applies to that layer's modules of the group
(:func:`~safegene_runtime.adapters.module_group`), and ``layers`` holds each layer's mean for display. Such a file
says ``safegene.coefficients/v2``, so a reader that knows only ``layers`` can tell it would misread it; without
``groups`` the file, its schema and its digest are as before.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .artifacts import ArtifactError, atomic_write_json
from .digests import json_digest

SCHEMA = "safegene.coefficients/v1"
#: the schema of a file with per-group λ (``groups``)
SCHEMA_GROUPS = "safegene.coefficients/v2"


@dataclass
class Coefficients:
    layers: dict[int, float] = field(default_factory=dict)
    default: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)
    groups: dict[int, dict[str, float]] = field(default_factory=dict)

    def of(self, layer: int | None, group: str | None = None) -> float:
        """λ for a layer, or for a module group of it when the file has one for that group (modules outside the
        decoder layers get ``default``)."""
        if layer is None:
            return self.default
        if group is not None and group in self.groups.get(layer, {}):
            return self.groups[layer][group]
        return self.layers.get(layer, self.default)

    @classmethod
    def uniform(cls, value: float, **meta: Any) -> "Coefficients":
        return cls(layers={}, default=float(value), meta=dict(meta))

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.meta)
        d.update(
            schema=SCHEMA_GROUPS if self.groups else SCHEMA,
            layers={str(k): float(v) for k, v in sorted(self.layers.items())},
            default=float(self.default),
        )
        if self.groups:
            d["groups"] = {str(k): {g: float(v) for g, v in sorted(gs.items())} for k, gs in sorted(self.groups.items())}
        return d

    def digest(self) -> str:
        """Hash of the values only (not provenance): two files with the same λ stack to the same adapter (groups
        enter only when there are any, so a file without them keeps its digest)."""
        d = self.to_dict()
        return json_digest({"layers": d["layers"], "default": self.default,
                            **({"groups": d["groups"]} if self.groups else {})})

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "coefficients") -> "Coefficients":
        if not isinstance(d, dict) or not isinstance(d.get("layers", {}), dict):
            raise ArtifactError(f"{source}: expected an object with a 'layers' mapping of layer index -> λ")
        layers: dict[int, float] = {}
        for k, v in d.get("layers", {}).items():
            try:
                idx, val = int(k), float(v)
            except (TypeError, ValueError) as e:
                raise ArtifactError(f"{source}: layer {k!r} -> {v!r} is not an integer index and a number") from e
            if idx < 0 or not math.isfinite(val):
                raise ArtifactError(f"{source}: layer {k!r} -> {v!r} must be a non-negative index and a finite λ")
            layers[idx] = val
        default = d.get("default", 0.0)
        try:
            default = float(default)
        except (TypeError, ValueError) as e:
            raise ArtifactError(f"{source}: 'default' must be a number") from e
        if not math.isfinite(default):
            raise ArtifactError(f"{source}: 'default' must be finite")
        groups: dict[int, dict[str, float]] = {}
        raw_groups = d.get("groups", {})
        if not isinstance(raw_groups, dict):
            raise ArtifactError(f"{source}: 'groups' must map a layer index to {{group: λ}}")
        for k, gs in raw_groups.items():
            try:
                idx = int(k)
                vals = {str(g): float(v) for g, v in gs.items()}
            except (TypeError, ValueError, AttributeError) as e:
                raise ArtifactError(f"{source}: groups {k!r} -> {gs!r} is not a layer index and {{group: λ}}") from e
            if idx < 0 or not all(math.isfinite(v) for v in vals.values()):
                raise ArtifactError(f"{source}: groups {k!r} -> {gs!r} must be a non-negative index and finite λ")
            groups[idx] = vals
        meta = {k: v for k, v in d.items() if k not in ("layers", "default", "schema", "groups")}
        return cls(layers=layers, default=default, meta=meta, groups=groups)


def load_coefficients(src: str | Path | dict[str, Any] | Coefficients) -> Coefficients:
    """Read a coefficients file (or accept a dict / an existing object)."""
    if isinstance(src, Coefficients):
        return src
    if isinstance(src, dict):
        return Coefficients.from_dict(src)
    p = Path(src)
    if not p.is_file():
        raise ArtifactError(f"coefficients file {p} not found")
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{p}: not valid JSON ({e})") from e
    return Coefficients.from_dict(data, source=str(p))


def save_coefficients(path: str | Path, coeffs: Coefficients) -> Path:
    atomic_write_json(path, coeffs.to_dict())
    return Path(path)
