"""Per-layer safety coefficients λ_l: the one small file that calibration writes and stacking/merging read.

``coefficients.json``::

    {
      "schema": "safegene.coefficients/v1",
      "layers": {"12": 0.8, "13": 1.1, ...},   # λ per decoder layer index
      "default": 0.0,                           # λ for every layer not listed (0: safety off there)
      "method": {...}, "safety": {...}, "task": {...}, ...   # provenance (calibration losses, seed, shot hashes)
    }

A uniform baseline is ``{"layers": {}, "default": λ}``.
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


@dataclass
class Coefficients:
    layers: dict[int, float] = field(default_factory=dict)
    default: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    def of(self, layer: int | None) -> float:
        """λ for a layer (modules outside the decoder layers get ``default``)."""
        if layer is None:
            return self.default
        return self.layers.get(layer, self.default)

    @classmethod
    def uniform(cls, value: float, **meta: Any) -> "Coefficients":
        return cls(layers={}, default=float(value), meta=dict(meta))

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.meta)
        d.update(
            schema=SCHEMA,
            layers={str(k): float(v) for k, v in sorted(self.layers.items())},
            default=float(self.default),
        )
        return d

    def digest(self) -> str:
        """Hash of the values only (not provenance): two files with the same λ stack to the same adapter."""
        return json_digest({"layers": self.to_dict()["layers"], "default": self.default})

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
        meta = {k: v for k, v in d.items() if k not in ("layers", "default", "schema")}
        return cls(layers=layers, default=default, meta=meta)


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
