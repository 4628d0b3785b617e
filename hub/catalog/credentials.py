"""A collection of credentials that every request is checked against, read through a cache that the
config watch keeps honest: what API tokens (``hub.catalog.tokens``) and access keys
(``hub.catalog.access_keys``) share.

- **The cache is on only while the config watch follows the collection** (``following``): any
  change but a last-use stamp empties it on every instance, so a revoked credential is refused by
  every instance as soon as the deletion reaches its change stream; ``revoke`` returns once this
  instance's stream has seen it. While the stream is down every lookup reads MongoDB.
- **Unknown credentials are remembered too** (a flood of wrong guesses costs no MongoDB reads),
  up to ``NEGATIVE_CACHE_MAX``; past that the cache starts afresh.
- **Last use is stamped at most once a minute** per credential and instance, in the background:
  a request never waits for it, and a missed stamp only leaves "last used" stale.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Generic, TypeVar

import structlog
from pymongo.asynchronous.database import AsyncDatabase

from hub.store import now

log = structlog.get_logger("hub.catalog.credentials")

LAST_USE_EVERY_S = 60.0
NEGATIVE_CACHE_MAX = 10_000
REVOKE_WAIT_S = 2.0

T = TypeVar("T")


class WatchedCredentials(Generic[T]):
    """The cache and its upkeep; subclasses say what a credential is and how it is found."""

    collection = ""  # the collection, which the config watch follows for this listener
    kind = "credential"  # for log lines

    def __init__(self, db: AsyncDatabase[dict[str, Any]]) -> None:
        self.db = db
        self.coll = db[self.collection]
        self._cache: dict[str, T | None] = {}  # lookup key -> credential (None: there is none)
        self._negatives = 0
        self._generation = 0
        self.cache_enabled = False
        self._last_use: dict[str, float] = {}  # name -> monotonic time of the last stamp written
        self._revoked: dict[str, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # -- the config watch's listener --------------------------------------------------------
    def following(self, yes: bool) -> None:
        self.cache_enabled = yes
        self._forget()

    def changed(self, change: Mapping[str, Any]) -> None:
        fields = set(((change.get("updateDescription") or {}).get("updatedFields") or {}))
        if change.get("operationType") == "update" and fields and fields <= {"last_used_at"}:
            return  # a last-use stamp: nothing anyone is allowed to do changed
        self._forget()
        name = (change.get("documentKey") or {}).get("_id")
        if change.get("operationType") == "delete" and isinstance(name, str) and name in self._revoked:
            self._revoked[name].set()

    def _forget(self) -> None:
        self._generation += 1
        self._cache.clear()
        self._negatives = 0

    # -- lookups --------------------------------------------------------------------------------
    async def _cached(self, key: str, load: Callable[[], Awaitable[T | None]]) -> T | None:
        """``load()``'s answer for ``key``, from the cache while it can be trusted."""
        if self.cache_enabled and key in self._cache:
            return self._cache[key]
        generation = self._generation
        found = await load()
        if self.cache_enabled and generation == self._generation:  # no change came in meanwhile
            if found is None:
                self._negatives += 1
                if self._negatives > NEGATIVE_CACHE_MAX:
                    self._forget()
            self._cache[key] = found
        return found

    def touch(self, name: str) -> None:
        """A request was let in with this credential: stamp its last use (at most once a minute
        per instance, in the background)."""
        t = time.monotonic()
        if t - self._last_use.get(name, -LAST_USE_EVERY_S) < LAST_USE_EVERY_S:
            return
        self._last_use[name] = t
        task = asyncio.create_task(self._stamp(name), name=f"{self.collection}-last-use")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _stamp(self, name: str) -> None:
        try:
            await self.coll.update_one({"_id": name}, {"$set": {"last_used_at": now()}})
        except Exception as exc:
            log.debug("writing a last use failed", kind=self.kind, name=name, error=str(exc))

    # -- revocation -------------------------------------------------------------------------------
    async def _revoke(self, name: str, projection: Mapping[str, int]) -> dict[str, Any] | None:
        """Delete ``name``; returns its document (None: there was none) once this instance's
        change stream has seen the deletion (every instance follows the same stream, so theirs
        have too, give or take milliseconds)."""
        seen = self._revoked.setdefault(name, asyncio.Event())
        try:
            doc = await self.coll.find_one_and_delete({"_id": name}, dict(projection))
            if doc is None:
                return None
            self._forget()
            if self.cache_enabled:
                try:
                    await asyncio.wait_for(seen.wait(), REVOKE_WAIT_S)
                except TimeoutError:
                    log.warning("a deletion has not come through the change stream yet", kind=self.kind, name=name)
            return dict(doc)
        finally:
            self._revoked.pop(name, None)

    async def close(self) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
