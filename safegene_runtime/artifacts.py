"""Immutable, content-addressed artifact folders with a lineage manifest.

Every stage of the pipeline (extract, select, calibrate, stack, merge) produces a folder through
:class:`ArtifactWriter`. The writer builds the folder in a hidden temp directory beside its destination, writes
``manifest.json``, computes a content id over every file, and only then renames the folder into place. So:

* a crash or a refused input never leaves a half-written folder where a good one is expected;
* the same inputs give the same id, so re-running a stage reuses what is already there;
* an existing destination is never overwritten with different content (artifacts are immutable).

The content id deliberately ignores the manifest's volatile fields (``id``, ``created_at``) so that rebuilding an
artifact from the same inputs yields the same id.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from . import __version__
from .paths import safegene_home

MANIFEST = "manifest.json"
MANIFEST_SCHEMA = "safegene.manifest/v1"
_VOLATILE_KEYS = ("id", "created_at")
_CHUNK = 1 << 20


class ArtifactError(RuntimeError):
    """An artifact could not be produced or used; the message says which file and why."""


class ArtifactExistsError(ArtifactError):
    """The destination already holds a different artifact; artifacts are never overwritten."""


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: the form that is hashed."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def content_id(folder: str | os.PathLike[str]) -> str:
    """sha256 over the folder's files (relative path + bytes), with the manifest's volatile fields removed."""
    folder = Path(folder)
    h = hashlib.sha256()
    for p in sorted(q for q in folder.rglob("*") if q.is_file()):
        rel = p.relative_to(folder).as_posix()
        h.update(rel.encode() + b"\0")
        if rel == MANIFEST:
            data = json.loads(p.read_text())
            for k in _VOLATILE_KEYS:
                data.pop(k, None)
            h.update(canonical_json(data).encode())
        else:
            h.update(sha256_file(p).encode())
        h.update(b"\0")
    return h.hexdigest()


def read_manifest(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The folder's manifest, or ``{}`` when it has none (e.g. a third-party PEFT adapter)."""
    p = Path(folder) / MANIFEST
    if not p.is_file():
        return {}
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{p}: manifest is not valid JSON ({e})") from e


def describe_input(folder: str | os.PathLike[str], role: str) -> dict[str, Any]:
    """A lineage entry for an input folder: its path, its artifact id if it has one, else a content hash."""
    folder = Path(folder).resolve()
    man = read_manifest(folder)
    entry: dict[str, Any] = {"role": role, "path": str(folder)}
    if man.get("id"):
        entry["id"] = man["id"]
        entry["kind"] = man.get("kind")
    else:
        entry["sha256"] = fingerprint(folder)
    return entry


def fingerprint(path: str | os.PathLike[str]) -> str:
    """Content hash of a file or of a folder's weight/config files, cached by (path, size, mtime).

    Base models can be many GB, so the hash is cached in ``$SAFEGENE_HOME/fingerprints.json``.
    """
    path = Path(path).resolve()
    files = [path] if path.is_file() else sorted(
        p for p in path.rglob("*") if p.is_file() and p.suffix in {".safetensors", ".json", ".bin", ".gguf", ".model"}
        and not p.name.startswith(".")
    )

    def compute() -> str:
        h = hashlib.sha256()
        for p in files:
            h.update((p.relative_to(path).as_posix() if p != path else p.name).encode() + b"\0")
            h.update(sha256_file(p).encode())
        return h.hexdigest()

    return cached_digest("fingerprints.json", files, compute)


def cached_digest(cache_name: str, files: list[Path], compute: Callable[[], str]) -> str:
    """``compute()``, remembered in ``$SAFEGENE_HOME/<cache_name>`` under the (path, size, mtime) of ``files``.

    Hashing a base model reads every byte (many GB for an 8B model); the cache makes the second time free, and any
    change to a file's size or mtime invalidates its entry.
    """
    key = canonical_json([(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files])
    cache_file = safegene_home() / cache_name
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, json.JSONDecodeError):
        cache = {}
    if key not in cache:
        cache[key] = compute()
        atomic_write_text(cache_file, json.dumps(cache))
    return cache[key]


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write a file via a temp file + rename, so readers never see half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write a text file (UTF-8) via a temp file + rename, so readers never see half of it."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_copytree(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """Copy folder ``src`` to ``dst`` whole or not at all: copied beside ``dst``, then renamed into place, so a copy
    that was interrupted never leaves a ``dst`` that looks complete (callers test ``dst``'s existence to skip work)."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
        tmp.rename(dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst


#: per store: which artifact a build key (a digest of everything that determines the artifact) produced
BUILT_INDEX = ".built-from.json"


def built_from(store: str | os.PathLike[str], key: str) -> Path | None:
    """The artifact of ``store`` recorded as built from ``key`` (:func:`record_built_from`), if it is still there
    whole; lets a deterministic stage skip its work (a 270 MB merge: ~20 s) when its inputs have not changed,
    without touching the artifacts' content ids."""
    path = Path(store) / BUILT_INDEX
    try:
        name = json.loads(path.read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(name, str) or "/" in name:
        return None
    folder = Path(store) / name
    try:
        cid = read_manifest(folder).get("id")
    except ArtifactError:
        return None
    return folder if isinstance(cid, str) and folder.name.endswith(cid[:12]) else None


def record_built_from(store: str | os.PathLike[str], key: str, folder: str | os.PathLike[str]) -> None:
    """Remember that ``key`` built ``folder`` (an artifact directly in ``store``); atomic, last writer wins (a lost
    entry costs one rebuild)."""
    path = Path(store) / BUILT_INDEX
    try:
        index = json.loads(path.read_text())
        index = index if isinstance(index, dict) else {}
    except (OSError, ValueError):
        index = {}
    index[key] = Path(folder).name
    atomic_write_json(path, index)


class ArtifactWriter:
    """Build an artifact folder atomically.

    Give either ``dest`` (an exact folder) or ``store`` + ``name`` (the folder becomes ``store/<name>-<id12>``)::

        with ArtifactWriter(store=root, name="sentiment+safegene", kind="stacked_adapter") as w:
            save_something(w.tmp)
            w.manifest["method"] = {...}
        w.path  # final folder, w.id its content id

    On any exception inside the block the temp folder is removed and nothing appears at the destination.
    If the destination already exists with the same content id it is reused; with another id,
    :class:`ArtifactExistsError` is raised.
    """

    def __init__(
        self,
        dest: str | os.PathLike[str] | None = None,
        *,
        store: str | os.PathLike[str] | None = None,
        name: str = "artifact",
        kind: str,
        lineage: list[dict[str, Any]] | None = None,
    ) -> None:
        if (dest is None) == (store is None):
            raise ValueError("give exactly one of dest or store")
        self.dest = Path(dest).resolve() if dest is not None else None
        self.store = Path(store).resolve() if store is not None else None
        self.name = name
        self.manifest: dict[str, Any] = {
            "schema": MANIFEST_SCHEMA,
            "kind": kind,
            "created_by": f"safegene {__version__}",
            "lineage": list(lineage or []),
        }
        self.tmp: Path | None = None
        self.path: Path | None = None
        self.id: str | None = None
        self.reused = False

    def __enter__(self) -> "ArtifactWriter":
        parent = self.store if self.store is not None else self.dest.parent  # type: ignore[union-attr]
        parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=parent))
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        assert self.tmp is not None
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        try:
            self._finish()
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        return False

    def _finish(self) -> None:
        assert self.tmp is not None
        man_path = self.tmp / MANIFEST
        man_path.write_text(json.dumps(self.manifest, indent=2, sort_keys=True, default=str) + "\n")
        cid = content_id(self.tmp)
        self.manifest["id"] = cid
        self.manifest["created_at"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        man_path.write_text(json.dumps(self.manifest, indent=2, sort_keys=True, default=str) + "\n")
        dest = self.dest if self.dest is not None else self.store / f"{self.name}-{cid[:12]}"  # type: ignore[operator]
        self.id = cid
        if dest.exists():
            other = read_manifest(dest).get("id") or content_id(dest)
            shutil.rmtree(self.tmp, ignore_errors=True)
            if other != cid:
                raise ArtifactExistsError(
                    f"{dest} already holds a different artifact (id {other[:12]}, new {cid[:12]}); "
                    "artifacts are immutable: choose another --out"
                )
            self.path, self.reused = dest, True
            self.manifest = read_manifest(dest)
            return
        try:
            os.rename(self.tmp, dest)
        except OSError:
            # Lost a race with a concurrent writer of the same artifact: reuse theirs if identical.
            if dest.exists() and (read_manifest(dest).get("id") == cid):
                shutil.rmtree(self.tmp, ignore_errors=True)
                self.path, self.reused = dest, True
                return
            raise
        self.path = dest
