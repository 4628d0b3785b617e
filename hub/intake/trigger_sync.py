"""Keeps this instance's view of the triggers in line with MongoDB: the router's trigger set, the
schedules, and the running subscriptions.

Two depths, because they cost differently: :meth:`TriggerSync.reload` re-reads the trigger set
only (cheap; the webhook and the inbox call it when an event names a trigger they do not know
yet, which another instance may have created a moment ago), and :meth:`TriggerSync.sync` also
starts and stops subscriptions. One lock orders syncs against each other and against the stop,
so no subscription is started behind a stop.
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

    async def reload(self) -> None:
        """Re-read the trigger set only."""
        self.router.load(await shielded(self.store.list_triggers()))
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
