"""Where the registry's state lives: a :class:`RegistryStore` (the backend seam).

The state is one JSON document (schema ``safegene.registry/v1``: generation, task records, tombstones).

* :class:`FileStore` (the default, one process): the registry reads the document once at start-up and writes it
  after every change, to ``<state_dir>/registry.json``, replaced atomically (write, fsync, rename), so a crash
  mid-write leaves the previous document.
* A :class:`SharedStore` (``server/pgstore.py``: PostgreSQL, for N replicas) is the source of truth that every
  replica follows: a change is a transaction over the current document (:meth:`SharedStore.transact`) that bumps the
  generation, and each replica reconciles what it serves to the newest generation (``server/reconcile.py``).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, Callable, Protocol

from safegene_runtime.artifacts import atomic_write_json

from .config import ConfigError

REGISTRY_SCHEMA = "safegene.registry/v1"
REGISTRY_FILE = "registry.json"


class StoreUnavailable(Exception):
    """The shared registry cannot be reached (database down, network); nothing was changed. Retry later."""


class VersionConflict(ValueError):
    """A task version that the registry already holds with other content (versions are immutable)."""


#: a change to the registry's document: the new document, or None for "nothing to change"
Mutation = Callable[[dict[str, Any]], "dict[str, Any] | None"]


class RegistryStore(Protocol):
    """Load and save the registry's state document. ``where`` names it in messages; ``shared`` is False for a store
    only this process writes, True for a :class:`SharedStore`."""

    where: str
    shared: bool

    def load(self) -> dict[str, Any]:
        """The saved document, ``{}`` when nothing was saved yet; ConfigError when it cannot be read."""
        ...

    def save(self, data: dict[str, Any]) -> None:
        """Replace the saved document as a whole, or not at all."""
        ...


class SharedStore(RegistryStore, Protocol):
    """A registry several replicas share: every change is one transaction, and the generation only grows."""

    def generation(self) -> int:
        """The current generation (cheap: what a replica polls). :class:`StoreUnavailable` when unreachable."""
        ...

    def transact(self, mutate: Mutation) -> dict[str, Any]:
        """In one transaction: read the document (with ``versions``: every version ever registered, per task),
        ``mutate`` it (it may raise to abort, or return None: nothing is written), write it with the generation + 1, notify the
        replicas; returns the written document. :class:`StoreUnavailable` when the store cannot be reached,
        :class:`VersionConflict` when a task version would change content."""
        ...

    def listen(self, on_change: Callable[[], None], stop: threading.Event) -> None:
        """Block until ``stop`` is set, calling ``on_change`` on every committed change (and after a reconnect,
        when changes may have been missed). Reconnects by itself after an outage."""
        ...


class FileStore:
    """The embedded single-process backend: one JSON file, replaced atomically."""

    shared = False

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
