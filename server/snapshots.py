"""What a restart may serve again: the content-addressed folders a record names, checked against their digests.

An admin-registered task is restored from the folders that were built for it (its snapshots under the state dir),
never rebuilt from the source folder it was registered from: a deleted or edited source does not change what is
served, and an edited snapshot is caught by its digest. An entry whose snapshot is missing or changed, or that was
built for another safety adapter, is refused alone (:class:`SnapshotError` says why); the rest serve.

:func:`collect_garbage` removes built folders that no record refers to (a failed or superseded build), and the
temporary folders of a build that was killed half-way.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from safegene_runtime.artifacts import content_id, read_manifest

from .records import TaskRecord

#: the state-dir folders that hold built variants
STORES = ("adapters", "merged")


class SnapshotError(ValueError):
    """A restored record cannot be served again; the message names the folder and the reason."""


def verify_record(record: TaskRecord, *, safety_version: str | None, rank_limit: int | None) -> None:
    """Raise :class:`SnapshotError` unless every folder of ``record`` is there with the content it was built with,
    and its safe variant was built for ``safety_version`` within ``rank_limit``."""
    if record.safety_version is not None and record.safety_version != safety_version:
        raise SnapshotError(f"task {record.name!r} version {record.version!r} was built with safety adapter "
                            f"{record.safety_version!r}; the server now has {safety_version!r}: register it again")
    for variant, v in record.variants.items():
        folder = Path(v.path)
        if not folder.is_dir():
            raise SnapshotError(f"task {record.name!r}: the {variant} snapshot {folder} is missing")
        want = v.digest or read_manifest(folder).get("id")
        if not want:
            raise SnapshotError(f"task {record.name!r}: the {variant} snapshot {folder} has no recorded digest")
        got = content_id(folder)
        if got != want:
            raise SnapshotError(f"task {record.name!r}: the {variant} snapshot {folder} changed since it was built "
                                f"(content {got[:12]}, built as {want[:12]})")
        if rank_limit is not None and v.rank > rank_limit:
            raise SnapshotError(f"task {record.name!r}: the {variant} variant has rank {v.rank}, over the "
                                f"server's max_lora_rank {rank_limit}")


def referenced(records: list[TaskRecord]) -> set[Path]:
    out: set[Path] = set()
    for r in records:
        for v in r.variants.values():
            out.add(Path(v.path).resolve())
            if v.adapter_path:
                out.add(Path(v.adapter_path).resolve())
    return out


def collect_garbage(state_dir: Path, keep: set[Path]) -> list[Path]:
    """Remove folders under the stores that ``keep`` does not name, and leftover ``.tmp-*`` build folders."""
    removed = []
    for store in STORES:
        root = state_dir / store
        if not root.is_dir():
            continue
        for folder in root.iterdir():
            if folder.is_dir() and folder.resolve() not in keep:
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
    return removed
