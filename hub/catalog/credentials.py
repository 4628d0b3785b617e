"""A collection of credentials that every request is checked against, read through a cache that the
config watch keeps honest: what API tokens (``hub.catalog.tokens``) and access keys
(``hub.catalog.access_keys``) share.

- **The cache is on only while the config watch follows the collection** (``following``): any
  change but a last-use stamp empties it on every instance, so a revoked credential is refused by
  every instance as soon as the deletion reaches its change stream. While the stream is down every
  lookup reads MongoDB.
- **A revocation answers once every live instance has seen it.** Each instance's stream reaches a
  deletion on its own schedule (a busy instance's reader can trail by far more than the
  milliseconds it usually takes), so every instance acknowledges each deletion it has seen, after
  emptying its cache, in ``credential_acks`` (the deletion's cluster time, per instance); the
  revoking instance waits for its own stream and then for the acknowledgements of every instance
  with a recent heartbeat (``peers``) of the deletion's cluster time (from the delete's own reply:
  the wait holds even while the revoker's stream is down), up to ``REVOKE_WAIT_S``, and names the
  ones that did not answer in a warning (an instance whose stream is down does not cache: it
  reads MongoDB).
- **Unknown credentials are remembered too** (a flood of wrong guesses costs no MongoDB reads),
  up to ``NEGATIVE_CACHE_MAX``; past that the cache starts afresh.
- **Last use is stamped at most once a minute** per credential and instance, in the background:
  a request never waits for it, and a missed stamp only leaves "last used" stale.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, Generic, TypeVar

import structlog
from pymongo.asynchronous.database import AsyncDatabase

from hub.store import now

log = structlog.get_logger("hub.catalog.credentials")

LAST_USE_EVERY_S = 60.0
NEGATIVE_CACHE_MAX = 10_000
REVOKE_WAIT_S = 5.0  # how long a revocation waits for the streams (its own, then every peer's)
ACK_POLL_S = 0.02
ACKS = "credential_acks"  # (collection/name/instance) -> the latest deletion that instance saw

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
        self._revoked: dict[str, set[asyncio.Event]] = {}  # name -> its revocations waiting for the stream
        self._tasks: set[asyncio.Task[None]] = set()
        # Set by the composition root: this instance's id (it acknowledges the deletions it has
        # seen) and the ids of the instances with a recent heartbeat (a revocation waits for them).
        self.instance: str | None = None
        self.peers: Callable[[], Awaitable[list[str]]] | None = None

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
        if change.get("operationType") != "delete" or not isinstance(name, str):
            return
        at = change.get("clusterTime")
        for seen in self._revoked.get(name, ()):
            seen.set()
        if self.instance is not None and at is not None:  # after the cache was emptied, above
            self._background(self._acknowledge(name, at), "ack")

    def _background(self, work: Coroutine[Any, Any, None], what: str) -> None:
        task = asyncio.create_task(work, name=f"{self.collection}-{what}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _acknowledge(self, name: str, at: Any) -> None:
        """Tell a revoking instance that this one has seen the deletion of ``name``."""
        try:
            await self.db[ACKS].update_one({"_id": f"{self.collection}/{name}/{self.instance}"},
                                           {"$max": {"ts": at}, "$currentDate": {"at": True}}, upsert=True)
        except Exception as exc:  # the revoker waits it out and names this instance
            log.warning("acknowledging a revocation failed", kind=self.kind, name=name, error=str(exc))

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
        self._background(self._stamp(name), "last-use")

    async def _stamp(self, name: str) -> None:
        try:
            await self.coll.update_one({"_id": name}, {"$set": {"last_used_at": now()}})
        except Exception as exc:
            log.debug("writing a last use failed", kind=self.kind, name=name, error=str(exc))

    # -- revocation -------------------------------------------------------------------------------
    async def _revoke(self, name: str, projection: Mapping[str, int]) -> dict[str, Any] | None:
        """Delete ``name``; returns its document (None: there was none) once this instance's
        change stream has seen the deletion and every live peer has acknowledged it (or
        ``REVOKE_WAIT_S`` passed: logged)."""
        deadline = time.monotonic() + REVOKE_WAIT_S
        seen = asyncio.Event()  # this call's own: two revocations of one name do not share it
        self._revoked.setdefault(name, set()).add(seen)
        try:
            async with self.db.client.start_session() as session:
                doc = await self.coll.find_one_and_delete({"_id": name}, dict(projection), session=session)
                # the deletion's cluster time, which every instance's stream event of it carries
                # (whether or not this instance's own stream is up)
                at = session.operation_time
            if doc is None:
                return None
            self._forget()
            if self.cache_enabled:
                try:
                    await asyncio.wait_for(seen.wait(), REVOKE_WAIT_S)
                except TimeoutError:
                    log.warning("a deletion has not come through the change stream yet", kind=self.kind, name=name)
            if at is not None and self.peers is not None:
                await self._peers_saw(name, at, deadline)
            return dict(doc)
        finally:
            waiting = self._revoked.get(name, set())
            waiting.discard(seen)
            if not waiting:
                self._revoked.pop(name, None)

    async def _peers_saw(self, name: str, at: Any, deadline: float) -> None:
        """Wait until every other live instance has acknowledged the deletion of ``name`` at
        cluster time ``at`` (or the deadline: the ones that did not are named)."""
        assert self.peers is not None
        missing: list[str] = []
        while True:
            try:
                peers = [p for p in await self.peers() if p != self.instance]
                ids = {f"{self.collection}/{name}/{p}": p for p in peers}
                acked = {d["_id"] for d in await self.db[ACKS].find(
                    {"_id": {"$in": list(ids)}, "ts": {"$gte": at}}, {"_id": 1}).to_list(None)}
                missing = sorted(p for key, p in ids.items() if key not in acked)
            except Exception as exc:  # MongoDB gone meanwhile: the deletion itself is done
                log.warning("could not check which instances saw a revocation", kind=self.kind, name=name,
                            error=str(exc))
                return
            if not missing:
                return
            if time.monotonic() >= deadline:
                log.warning("instances have not acknowledged a revocation: they may accept it for a "
                            "moment longer", kind=self.kind, name=name, instances=missing)
                return
            await asyncio.sleep(ACK_POLL_S)

    async def close(self) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
