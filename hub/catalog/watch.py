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

**Whether this instance's trigger set is current** (``triggers_current``), so the S3 webhook's
admission can use it without asking MongoDB which triggers exist (``hub.intake.inbox``): a trigger
write answers only once every live instance has acknowledged it or ``TRIGGER_SEEN_WAIT_S`` has
passed (``hub.catalog.triggers``). Each instance acknowledges, in ``trigger_acks``, the cluster
time of the trigger changes its stream delivered, once the reload they caused has landed. That
covers every instance that answers in time; for one that does not (busy, its stream trailing),
the set counts as current only while the stream has recently come back *empty* with no reload
pending or failed (``TRIGGERS_FRESH_S``): an empty answer to a getMore sent at time t means every
change committed before t was delivered before it. A writer starts waiting once MongoDB has
acknowledged its write (majority: the stream can deliver it), so a write answered after the wait
was committed more than ``TRIGGER_SEEN_WAIT_S`` earlier, and any instance whose last empty answer
is fresher than ``TRIGGERS_FRESH_S`` has loaded it. Anything else (the stream down or trailing, a reload failing)
makes the admission ask MongoDB, as before.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

import structlog
from pymongo.asynchronous.database import AsyncDatabase

from hub.catalog.registry import Registry

log = structlog.get_logger("hub.catalog.watch")

TRIGGER_ACKS = "trigger_acks"  # instance -> cluster time of the latest trigger change loaded there
# How long an empty answer of the stream vouches for the trigger set. A trigger write waits up to
# hub.catalog.triggers.TRIGGER_SEEN_WAIT_S (5 s) for the acknowledgements: that must stay well
# above this plus the stream's commit lag and a getMore's way to the server.
TRIGGERS_FRESH_S = 2.0


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
        # Set by the composition root: this instance's id, under which it acknowledges the
        # trigger changes it has loaded (None: it acknowledges nothing)
        self.instance: str | None = None
        self._changes_at: Any = None  # cluster time of the latest trigger change seen
        self._acked_at: Any = None
        self._reload_failed = False
        self._fresh_at = float("-inf")  # monotonic: when the last getMore that came back empty was sent
        self._acks: set[asyncio.Task[None]] = set()

    def triggers_current(self) -> bool:
        """True while the trigger set is known to hold every trigger write answered so far (see
        the module docstring); False means: ask MongoDB."""
        return (self.state == "running" and not self._reload_failed and not self._sync_again
                and (self._sync is None or self._sync.done())
                and time.monotonic() - self._fresh_at <= TRIGGERS_FRESH_S)

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
        if self._acks:
            await asyncio.wait(list(self._acks), timeout=5)
        self._follow_listeners(False)

    def _follow_listeners(self, yes: bool) -> None:
        if not yes:
            self._fresh_at = float("-inf")
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
                    asked = time.monotonic()
                    change = await stream.try_next()
                    if change is None:
                        # nothing buffered and the server had nothing more: every change committed
                        # before ``asked`` has been handed on (see the module docstring)
                        if self._reload_failed:
                            self._changed_triggers()  # retry; fresh again once one lands
                        elif self._sync is None or self._sync.done():
                            self._fresh_at = asked
                        continue
                    coll = change.get("ns", {}).get("coll")
                    if coll == "functions":
                        name = (change.get("documentKey") or {}).get("_id")
                        self.registry.invalidate(name if isinstance(name, str) else None)
                    elif coll == "triggers":
                        at = change.get("clusterTime")
                        if at is not None and (self._changes_at is None or at > self._changes_at):
                            self._changes_at = at
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
            covered = self._changes_at  # every trigger change seen so far: this reload reads after them
            try:
                await self.on_triggers_changed()
            except Exception as exc:
                self._reload_failed = True
                log.warning("reloading triggers after a change failed; the timer will retry", error=str(exc))
            else:
                self._reload_failed = False
                if covered is not None and self.instance is not None and (
                        self._acked_at is None or covered > self._acked_at):
                    self._acked_at = covered
                    task = asyncio.create_task(self._acknowledge(covered), name="config-watch-ack")
                    self._acks.add(task)
                    task.add_done_callback(self._acks.discard)
            if not self._sync_again:
                return

    async def _acknowledge(self, at: Any) -> None:
        """Tell a trigger writer waiting for this instance that its change is loaded here."""
        try:
            await self.db[TRIGGER_ACKS].update_one({"_id": self.instance},
                                                   {"$max": {"ts": at}, "$currentDate": {"at": True}}, upsert=True)
        except Exception as exc:  # the writer waits it out (TRIGGER_SEEN_WAIT_S) and names this instance
            self._acked_at = None
            log.warning("acknowledging a trigger change failed", error=str(exc))
