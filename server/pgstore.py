"""The PostgreSQL registry backend: one database that N replicas share (``registry: {backend: postgres}``).

Tables (created on first use, under an advisory lock so replicas starting together do not race):

* ``safegene_generation``: one row, the generation; every change locks it (``SELECT ... FOR UPDATE``), so admin
  writes from any replica are serialised, each one transaction, and the generation only grows;
* ``safegene_versions``: every task version ever registered (its :class:`~server.records.TaskRecord`, whose variants
  name content-addressed folders in the shared artifact store with their digests); immutable: the same version with
  other content is a :class:`~server.store.VersionConflict`;
* ``safegene_aliases``: which version each task name serves now;
* ``safegene_tombstones``: retired task names.

A committed change sends ``NOTIFY <channel>, '<generation>'``; replicas also poll the generation, so a notification
missed during an outage costs at most one poll period. Each call opens its own short connection: nothing here
keeps state that an outage could leave half-open, and an unreachable database is a :class:`StoreUnavailable` after
``connect_timeout_s``.
"""

from __future__ import annotations

import copy
import json
import logging
import threading
from typing import Any, Callable

import psycopg
from psycopg.types.json import Jsonb

from .records import TaskRecord, now_iso
from .store import REGISTRY_SCHEMA, Mutation, StoreUnavailable, VersionConflict

log = logging.getLogger("safegene.server.pgstore")
#: pg_advisory_xact_lock key of the schema set-up ("sgreg" in ASCII)
_SCHEMA_LOCK = 0x7367726567
_SCHEMA = """
CREATE TABLE IF NOT EXISTS safegene_generation (
    id smallint PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    generation bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO safegene_generation (id, generation) VALUES (1, 0) ON CONFLICT (id) DO NOTHING;
CREATE TABLE IF NOT EXISTS safegene_versions (
    task text NOT NULL,
    version text NOT NULL,
    record jsonb NOT NULL,
    generation bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (task, version)
);
CREATE TABLE IF NOT EXISTS safegene_aliases (
    task text PRIMARY KEY,
    version text NOT NULL,
    generation bigint NOT NULL,
    FOREIGN KEY (task, version) REFERENCES safegene_versions (task, version)
);
CREATE TABLE IF NOT EXISTS safegene_tombstones (
    task text PRIMARY KEY,
    tombstone jsonb NOT NULL,
    generation bigint NOT NULL
);
"""


class PostgresStore:
    """:class:`~server.store.SharedStore` over PostgreSQL (psycopg 3)."""

    shared = True

    def __init__(self, dsn: str, *, channel: str = "safegene_registry", connect_timeout_s: int = 3):
        self.dsn = dsn
        self.channel = channel
        self.connect_timeout_s = connect_timeout_s
        self.where = f"PostgreSQL registry ({_safe_dsn(dsn)})"
        self._schema_ready = False

    # -- connections --

    def _connect(self, **kw: Any) -> psycopg.Connection:
        try:
            conn = psycopg.connect(self.dsn, connect_timeout=self.connect_timeout_s, **kw)
        except psycopg.OperationalError as e:
            raise StoreUnavailable(f"the registry database is unreachable ({_first_line(e)})") from e
        if not self._schema_ready:
            try:
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                    conn.execute(_SCHEMA)
            except psycopg.OperationalError as e:
                conn.close()
                raise StoreUnavailable(f"the registry database is unreachable ({_first_line(e)})") from e
            except BaseException:
                conn.close()
                raise
            self._schema_ready = True
        return conn

    # -- reads --

    def generation(self) -> int:
        try:
            with self._connect(autocommit=True) as conn:
                return int(conn.execute("SELECT generation FROM safegene_generation WHERE id = 1").fetchone()[0])
        except psycopg.OperationalError as e:
            raise StoreUnavailable(f"the registry database went away ({_first_line(e)})") from e

    def load(self) -> dict[str, Any]:
        try:
            with self._connect() as conn, conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                return _read(conn, lock=False, versions=False)
        except psycopg.OperationalError as e:
            raise StoreUnavailable(f"the registry database went away ({_first_line(e)})") from e

    # -- writes --

    def transact(self, mutate: Mutation) -> dict[str, Any]:
        try:
            with self._connect() as conn, conn.transaction():
                before = _read(conn, lock=True, versions=True)
                after = mutate(copy.deepcopy(before))
                if after is None:  # nothing to change: no new generation
                    return before
                return _write(conn, before, after, self.channel)
        except psycopg.OperationalError as e:
            raise StoreUnavailable(f"the registry database went away during the change; it was not applied "
                                   f"({_first_line(e)})") from e

    def save(self, data: dict[str, Any]) -> None:
        """Replace the whole state (the :class:`~server.store.RegistryStore` contract), as one transaction."""
        self.transact(lambda doc: {**doc, "tasks": dict(data.get("tasks", {})),
                                   "retired": dict(data.get("retired", {}))})

    # -- change feed --

    def listen(self, on_change: Callable[[], None], stop: threading.Event) -> None:
        backoff = 0.5
        while not stop.is_set():
            try:
                with self._connect(autocommit=True) as conn:
                    conn.execute(f"LISTEN {self.channel}")  # channel: a checked identifier (config.py)
                    backoff = 0.5
                    on_change()  # (re)connected: changes may have been committed while we were away
                    while not stop.is_set():
                        for _ in conn.notifies(timeout=1.0):
                            on_change()
            except (StoreUnavailable, psycopg.Error) as e:
                log.warning("registry change feed lost (%s); reconnecting in %.1fs", _first_line(e), backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)


def _read(conn: psycopg.Connection, *, lock: bool, versions: bool) -> dict[str, Any]:
    row = conn.execute("SELECT generation, updated_at FROM safegene_generation WHERE id = 1"
                       + (" FOR UPDATE" if lock else "")).fetchone()
    tasks = {task: record for task, record in conn.execute(
        "SELECT a.task, v.record FROM safegene_aliases a JOIN safegene_versions v USING (task, version)")}
    retired = {task: tomb for task, tomb in conn.execute("SELECT task, tombstone FROM safegene_tombstones")}
    doc: dict[str, Any] = {"schema": REGISTRY_SCHEMA, "generation": int(row[0]), "updated_at": row[1].isoformat(),
                           "tasks": tasks, "retired": retired}
    if versions:
        history: dict[str, dict[str, Any]] = {}
        for task, version, record in conn.execute("SELECT task, version, record FROM safegene_versions"):
            history.setdefault(task, {})[version] = record
        doc["versions"] = history
    return doc


def _write(conn: psycopg.Connection, before: dict[str, Any], after: dict[str, Any], channel: str) -> dict[str, Any]:
    """Write the difference between two documents, bump the generation, notify; the new document."""
    gen = before["generation"] + 1
    tasks: dict[str, Any] = after.get("tasks", {})
    history = before.get("versions", {})
    for name, rec in tasks.items():
        version = str(rec["version"])
        known = history.get(name, {}).get(version)
        if known is None:
            conn.execute("INSERT INTO safegene_versions (task, version, record, generation) VALUES (%s, %s, %s, %s)",
                         (name, version, Jsonb(rec), gen))
        elif not TaskRecord.from_dict(known).same_build(TaskRecord.from_dict(rec)):
            raise VersionConflict(f"task {name!r} version {version!r} is already registered with different "
                                  "content: give the new adapter a new version")
        if before["tasks"].get(name, {}).get("version") != version:
            conn.execute("INSERT INTO safegene_aliases (task, version, generation) VALUES (%s, %s, %s) "
                         "ON CONFLICT (task) DO UPDATE SET version = EXCLUDED.version, "
                         "generation = EXCLUDED.generation", (name, version, gen))
    gone = [name for name in before["tasks"] if name not in tasks]
    if gone:
        conn.execute("DELETE FROM safegene_aliases WHERE task = ANY(%s)", (gone,))
    retired: dict[str, Any] = after.get("retired", {})
    for name in before["retired"]:
        if name not in retired:
            conn.execute("DELETE FROM safegene_tombstones WHERE task = %s", (name,))
    for name, tomb in retired.items():
        if before["retired"].get(name) != tomb:
            conn.execute("INSERT INTO safegene_tombstones (task, tombstone, generation) VALUES (%s, %s, %s) "
                         "ON CONFLICT (task) DO UPDATE SET tombstone = EXCLUDED.tombstone, "
                         "generation = EXCLUDED.generation", (name, Jsonb(tomb), gen))
    conn.execute("UPDATE safegene_generation SET generation = %s, updated_at = now() WHERE id = 1", (gen,))
    conn.execute("SELECT pg_notify(%s, %s)", (channel, str(gen)))
    return {"schema": REGISTRY_SCHEMA, "generation": gen, "updated_at": now_iso(),
            "tasks": json.loads(json.dumps(tasks)), "retired": json.loads(json.dumps(retired))}


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _safe_dsn(dsn: str) -> str:
    """The DSN without its password, for messages."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "an invalid connection string"
    info.pop("password", None)
    return " ".join(f"{k}={v}" for k, v in info.items())
