"""Where the registry's state lives between restarts: a :class:`RegistryStore` (the backend seam).

The state is one JSON document (schema ``safegene.registry/v1``: generation, task records, tombstones); the
registry reads it once at start-up and writes it after every change. :class:`FileStore` keeps it in
``<state_dir>/registry.json``, replaced atomically (write, fsync, rename), so a crash mid-write leaves the previous
document. A shared backend (a database, for several replicas) implements the same two methods.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

from safegene_runtime.artifacts import atomic_write_json

from .config import ConfigError

REGISTRY_SCHEMA = "safegene.registry/v1"
REGISTRY_FILE = "registry.json"


class RegistryStore(Protocol):
    """Load and save the registry's state document. ``where`` names it in messages."""

    where: str

    def load(self) -> dict[str, Any]:
        """The saved document, ``{}`` when nothing was saved yet; ConfigError when it cannot be read."""
        ...

    def save(self, data: dict[str, Any]) -> None:
        """Replace the saved document as a whole, or not at all."""
        ...


class FileStore:
    """The embedded single-process backend: one JSON file, replaced atomically."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.where = str(self.path)

    def load(self) -> dict[str, Any]:
        if not self.path.is_file():
            return {}
        try:
            data = json.loads(self.path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{self.path}: registry file is not valid JSON ({e}); fix or delete it") from e
        if data.get("schema") != REGISTRY_SCHEMA:
            raise ConfigError(f"{self.path}: unknown registry schema {data.get('schema')!r}")
        return data

    def save(self, data: dict[str, Any]) -> None:
        atomic_write_json(self.path, {"schema": REGISTRY_SCHEMA, **data})
