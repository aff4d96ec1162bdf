"""Each replica follows the shared registry's generation (postgres backend; the file backend needs none of this).

A :class:`Follower` wakes on a change notification (LISTEN/NOTIFY, on a thread of its own with its own connection)
or every ``registry.poll_s`` seconds, whichever comes first, reads the generation, and when it differs from what the
replica serves (or a task failed to load last time) reconciles (:meth:`server.registry.Registry.reconcile`). The
poll is what makes the feed reliable: a notification lost while the database or the connection was away costs at
most one poll period. While the database cannot be reached the replica keeps serving its last generation, and
``safegene_registry_reachable`` is 0.
"""

from __future__ import annotations

import asyncio
import logging
import threading

from . import metrics as M
from .registry import Registry
from .store import StoreUnavailable

log = logging.getLogger("safegene.server.reconcile")


class Follower:
    """Keeps one replica on the shared registry's newest generation."""

    def __init__(self, registry: Registry, poll_s: float):
        self.registry = registry
        self.poll_s = poll_s
        self._wake = asyncio.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._task: asyncio.Task | None = None
        self._reachable: bool | None = None

    def start(self) -> None:
        loop = asyncio.get_running_loop()

        def notified() -> None:  # on the listener thread
            try:
                loop.call_soon_threadsafe(self._wake.set)
            except RuntimeError:  # the loop closed while the listener was waking up: shutting down
                self._stop.set()

        store = self.registry.store
        self._thread = threading.Thread(target=store.listen, args=(notified, self._stop),  # type: ignore[attr-defined]
                                        name="safegene-registry-listen", daemon=True)
        self._thread.start()
        self._task = asyncio.create_task(self.run(), name="safegene-registry-follow")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._thread is not None:  # it wakes at least once a second to look at the stop flag
            await asyncio.to_thread(self._thread.join, 5)

    async def run(self) -> None:
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll_s)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            await self.step()

    async def step(self) -> None:
        """One look at the store, and a reconcile when this replica is behind."""
        registry = self.registry
        try:
            gen = await asyncio.to_thread(registry.store.generation)  # type: ignore[attr-defined]
            self._set_reachable(True)
            registry.observe(gen)
            if registry.behind():
                await registry.reconcile()
        except StoreUnavailable as e:
            self._set_reachable(False, str(e))
        except Exception:  # a bug must not stop the replica from following: log it, try again next period
            log.exception("reconciling with the registry failed; retrying in %.1fs", self.poll_s)

    def _set_reachable(self, ok: bool, why: str = "") -> None:
        M.REGISTRY_REACHABLE.set(1 if ok else 0)
        if ok != self._reachable:
            if ok:
                log.info("registry reachable; following generation %d", self.registry.target_generation)
            else:
                log.warning("%s; serving generation %d until it is back", why, self.registry.generation)
        self._reachable = ok
