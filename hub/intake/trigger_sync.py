"""Keeps this instance's view of the triggers in line with MongoDB: the router's trigger set, the
schedules, and the running subscriptions.

Two depths, because they cost differently: :meth:`TriggerSync.reload` re-reads the trigger set
only (cheap; the webhook and the inbox call it when an event names a trigger they do not know
yet, which another instance may have created a moment ago), and :meth:`TriggerSync.sync` also
starts and stops subscriptions. One lock orders syncs against each other and against the stop,
so no subscription is started behind a stop.

Reloads may overlap (the webhook's and the inbox's are not under the lock): a read lands only if
no read that started after it has landed already, so the router never goes back to an older set
than one it held (the S3 admission trusts it while the config watch vouches for it,
``hub.catalog.watch``).
"""

from __future__ import annotations

import asyncio

from hub.driver import shielded
from hub.intake.router import Router
from hub.intake.scheduler import Scheduler
from hub.intake.sources import Sources
from hub.store import Store


class TriggerSync:
    def __init__(self, store: Store, router: Router, scheduler: Scheduler, sources: Sources) -> None:
        self.store = store
        self.router = router
        self.scheduler = scheduler
        self.sources = sources
        self._lock = asyncio.Lock()
        self._reads = 0  # reloads started
        self._landed = 0  # the latest-started reload whose set the router holds

    async def reload(self) -> None:
        """Re-read the trigger set only."""
        self._reads += 1
        read = self._reads
        triggers = await shielded(self.store.list_triggers())
        if read < self._landed:
            return  # a read that started later (and so saw at least as much) has landed already
        self._landed = read
        self.router.load(triggers)
        self.scheduler.triggers_changed()

    async def sync(self) -> None:
        """Re-read triggers and bring subscriptions in line (after a write, and on a timer)."""
        async with self._lock:
            await self.reload()
            await self.sources.reconcile()

    async def stop_sources(self) -> None:
        """Stop every subscription; a sync waiting for the lock then finds nothing to restart
        only because the caller stops syncing first (``hub.app``)."""
        async with self._lock:
            await self.sources.stop()
