"""Follows the hub's own configuration (functions and triggers) through a MongoDB change stream.

A function deployed or a trigger changed through any instance takes effect on every instance
within milliseconds: the registry's runtime cache drops the function (so the next event runs
the new version) and the trigger set is reloaded. The registry caches only while this stream
is open: before it opens, after it fails and until it is open again, every invocation reads
the function from MongoDB, so a cache can never outlive a change it did not see. The timer in
``hub.app`` still re-reads triggers now and then as a fallback.

Never cancelled inside a driver call: ``stop`` sets a flag that the reader sees within
``max_await_ms``.

Other parts follow their own collections on the same stream as *listeners* (secrets, tokens:
``hub.catalog.secrets``, ``hub.catalog.tokens``): each is told when the stream starts and stops
being followed (so it can cache only while it is) and gets its collection's changes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

import structlog
from pymongo.asynchronous.database import AsyncDatabase

from hub.catalog.registry import Registry

log = structlog.get_logger("hub.catalog.watch")


class Listener(Protocol):
    collection: str

    def following(self, yes: bool) -> None:
        """True: every change of the collection is seen from now on; False: no longer."""

    def changed(self, change: Mapping[str, Any]) -> None:
        """One change event of the collection (called on the reader: must not block)."""


class ConfigWatcher:
    def __init__(self, db: AsyncDatabase[dict[str, Any]], registry: Registry,
                 on_triggers_changed: Callable[[], Awaitable[None]], max_await_ms: int = 500,
                 listeners: Sequence[Listener] = ()) -> None:
        self.db = db
        self.listeners = {listener.collection: listener for listener in listeners}
        self.registry = registry
        self.on_triggers_changed = on_triggers_changed
        self.max_await_ms = max_await_ms
        self.state = "starting"
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._sync: asyncio.Task[None] | None = None
        self._sync_again = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="config-watch")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            await asyncio.wait([self._task], timeout=self.max_await_ms / 1000 + 10)
            if not self._task.done():
                self._task.cancel()
                await asyncio.wait([self._task])
        if self._sync is not None:
            await asyncio.wait([self._sync], timeout=10)
        self._follow_listeners(False)

    def _follow_listeners(self, yes: bool) -> None:
        self.registry.enable_cache(yes)
        for listener in self.listeners.values():
            listener.following(yes)

    async def _run(self) -> None:
        delay = 0.5
        while not self._stopping.is_set():
            try:
                await self._follow()
                delay = 0.5
            except Exception as exc:
                self._follow_listeners(False)
                self.state = f"error: {type(exc).__name__}: {exc}"
                log.warning("config watch failed; functions are read from MongoDB until it is back",
                            error=str(exc), retry_in_s=delay)
                try:
                    await asyncio.wait_for(self._stopping.wait(), delay)
                except TimeoutError:
                    pass
                delay = min(delay * 2, 10.0)

    async def _follow(self) -> None:
        pipeline = [{"$match": {"ns.coll": {"$in": ["functions", "triggers", *self.listeners]}}}]
        stream = await self.db.watch(pipeline, max_await_time_ms=self.max_await_ms)
        async with stream:
            try:
                # From here on every change is seen, so whatever is cached from now on stays true.
                self._follow_listeners(True)
                self.state = "running"
                self._changed_triggers()  # anything that changed while the stream was not open
                while stream.alive and not self._stopping.is_set():
                    change = await stream.try_next()
                    if change is None:
                        continue
                    coll = change.get("ns", {}).get("coll")
                    if coll == "functions":
                        name = (change.get("documentKey") or {}).get("_id")
                        self.registry.invalidate(name if isinstance(name, str) else None)
                    elif coll == "triggers":
                        self._changed_triggers()
                    elif isinstance(coll, str) and coll in self.listeners:
                        self.listeners[coll].changed(change)
            finally:
                # before the stream is closed (which can take a while): from the moment it
                # stops being read, nothing may be served from the cache
                self._follow_listeners(False)

    def _changed_triggers(self) -> None:
        """Reload triggers in the background; changes that come meanwhile make one more reload."""
        if self._sync is not None and not self._sync.done():
            self._sync_again = True
            return
        self._sync = asyncio.create_task(self._reload(), name="config-watch-reload")

    async def _reload(self) -> None:
        while True:
            self._sync_again = False
            try:
                await self.on_triggers_changed()
            except Exception as exc:
                log.warning("reloading triggers after a change failed; the timer will retry", error=str(exc))
            if not self._sync_again:
                return
