"""Invocation records and the markers that say an event is finished: written in bulk, read per chunk.

"Succeeded, never run again" holds by construction: an event's success marker *is* a field of
the invocation record that says it succeeded (``done``: the "target|event id" keys of the events
that record finished), and a dead-lettered event's marker is its dead-letter document. Each is
one single-document write, so there is no instant at which the hub can die with a success
recorded but not marked (or the other way round). The duplicate check reads those same documents.

Records are written through :class:`RecordWriter`, a group commit: whatever is submitted while
one ``insert_many`` is in flight goes out together in the next, so a hub running thousands of
invocations a second makes tens of writes, not thousands. A caller that must not ack before its
record is durable awaits the future ``submit`` returns; one that never waits (a function URL's
answer goes before its record) uses ``post``, which makes no future: a record of those that cannot
be written is logged instead of failing a future nobody reads.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Iterable
from typing import Any

import structlog
from bson.errors import InvalidDocument, InvalidStringData
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DocumentTooLarge, DuplicateKeyError

from hub.driver import DUPLICATE_KEY, finish_or_cancel, retrieve, shielded
from hub.store import storable

log = structlog.get_logger("hub.delivery.records")

Entries = list[tuple[dict[str, Any], "asyncio.Future[None] | None"]]  # None: posted, nobody waits
MAX_BATCH = 1000
# Under a steady flow (the last write ended less than LINGER_AFTER_S ago) a write that would carry
# fewer than LINGER_UNDER records waits LINGER_S for more: at batch 1 or behind function URLs a
# write otherwise carries one or two records, and each insert_many costs the hub (and mongod,
# and the usage flush it triggers) the same whatever it carries. An idle hub's first record goes
# out at once. The linger ends early once LINGER_UNDER records are waiting.
LINGER_S = 0.002
LINGER_AFTER_S = 0.01
LINGER_UNDER = 32


def completion_key(target: str, event_id: str) -> str:
    return f"{target}|{event_id}"


def dead_letter_id(target_key: str, event_id: str) -> str:
    return hashlib.sha256(f"{target_key}|{event_id}".encode()).hexdigest()[:24]


class RecordWriter:
    def __init__(self, db: AsyncDatabase[dict[str, Any]], max_batch: int = MAX_BATCH,
                 on_written: Callable[[list[dict[str, Any]]], None] | None = None,
                 linger_s: float = LINGER_S, linger_under: int = LINGER_UNDER) -> None:
        self.coll = db.invocations
        self.max_batch = max_batch
        self.linger_s = linger_s
        self.linger_under = linger_under
        self._lingering: asyncio.Future[None] | None = None  # set while a linger waits for company
        self._last_write = -1.0  # loop time the last write ended
        # Told the records of each write that landed (usage metering, hub.delivery.usage): after the
        # write, never instead of it; it must not raise, and must not block.
        self.on_written = on_written
        self._pending: Entries = []
        self._current: Entries = []  # the batch being written (or retried)
        self._retrying = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.writes = 0  # insert_many calls, for the benchmark and tests
        self.records = 0

    def submit(self, doc: dict[str, Any]) -> asyncio.Future[None]:
        """Queue ``doc``; the future resolves once MongoDB has it (or fails with why not)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(retrieve)
        if self._closing:
            fut.set_exception(RuntimeError("the record writer is closed"))
            return fut
        self._pending.append((doc, fut))
        self._wake.set()
        self._enough()
        return fut

    def post(self, doc: dict[str, Any]) -> None:
        """Queue ``doc`` for a caller that never waits for it: no future (a future, its callback
        and the callback's scheduling were ~2 us per function-URL request). A record that cannot
        be written is logged (``records not written``); one queued after close is logged too."""
        if self._closing:
            log.warning("record not written: the record writer is closed", invocation_id=doc.get("_id"))
            return
        self._pending.append((doc, None))
        self._wake.set()
        self._enough()

    def _enough(self) -> None:
        """End a linger once enough records wait: a larger batch would not cost less per record
        than the wait costs the records already waiting."""
        if self._lingering is not None and len(self._pending) >= self.linger_under and not self._lingering.done():
            self._lingering.set_result(None)

    async def write(self, doc: dict[str, Any]) -> None:
        await self.submit(doc)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="record-writer")

    async def close(self, timeout: float = 15.0) -> None:
        """Write what is queued (for up to ``timeout``), then stop; the rest fails."""
        self._closing = True
        self._wake.set()
        if self._lingering is not None and not self._lingering.done():
            self._lingering.set_result(None)  # what lingers goes out now
        await finish_or_cancel(self._task, timeout)  # its writes are shielded
        log.debug("record writer closed", records=self.records, writes=self.writes)
        lost = 0
        for _, fut in self._current + self._pending:
            if fut is None:
                lost += 1
            elif not fut.done():
                fut.set_exception(RuntimeError("the hub stopped before the record was written"))
        if lost:
            log.warning("records not written: the hub stopped before they were", records=lost)
        self._current, self._pending = [], []

    async def _run(self) -> None:
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            loop = asyncio.get_running_loop()
            if (self.linger_s > 0 and not self._closing and len(self._pending) < self.linger_under
                    and loop.time() - self._last_write < LINGER_AFTER_S):
                # a steady flow: let a few more records join (up to linger_s, or linger_under records)
                self._lingering = loop.create_future()
                timer = loop.call_later(self.linger_s, _resolve, self._lingering)
                try:
                    await self._lingering
                finally:
                    timer.cancel()
                    self._lingering = None
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch:]
            self._current = batch
            delay = 0.2
            while batch:
                # A write that fails for a passing reason (an election, a network error, MongoDB
                # restarting) is retried, in order, until it lands: a success the hub has reported
                # to a lane must become durable, or a lane that already ran its next chunk would
                # see the earlier one come back (out of order). Only close gives up.
                batch = await self._write(batch)
                if batch:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
            self._current = []
            self._last_write = asyncio.get_running_loop().time()

    async def _write(self, batch: Entries) -> Entries:
        """Write ``batch``; resolve what landed (or can never land) and return what to retry."""
        failed: dict[int, BaseException] = {}
        retry: set[int] = set()
        try:
            self.writes += 1
            await shielded(self.coll.insert_many([d for d, _ in batch], ordered=False))
        except BulkWriteError as exc:
            for err in exc.details.get("writeErrors", []):
                if err.get("code") != DUPLICATE_KEY:  # a duplicate _id: a retried write got there
                    failed[err["index"]] = RuntimeError(f"record not written: {err.get('errmsg')}")
            if exc.details.get("writeConcernErrors"):
                retry = set(range(len(batch))) - set(failed)
        except (InvalidDocument, InvalidStringData, OverflowError, DocumentTooLarge):
            # A result MongoDB cannot hold (an int beyond 64 bits, a lone surrogate, too big):
            # write them one by one, making the odd ones storable.
            failed = await self._write_one_by_one(batch)
        except Exception as exc:
            retry = set(range(len(batch)))
            if not self._retrying:
                log.warning("records not written; retrying until MongoDB takes them",
                            records=len(batch), error=f"{type(exc).__name__}: {exc}")
            self._retrying = True
        if not retry:
            self._retrying = False
        self.records += len(batch) - len(failed) - len(retry)
        unread: list[str] = []  # posted records that can never be written: nobody else hears of them
        for i, (doc, fut) in enumerate(batch):
            if fut is None:
                if i in failed:
                    unread.append(f"{doc.get('_id')}: {failed[i]}")
                continue
            if fut.done() or i in retry:
                continue
            if i in failed:
                fut.set_exception(failed[i])
            else:
                fut.set_result(None)
        if unread:
            log.warning("records not written", records=len(unread), errors=unread[:5])
        # -- usage metering (hub.delivery.usage): the records that landed in this write, once each --
        if self.on_written is not None:
            landed = [doc for i, (doc, _) in enumerate(batch) if i not in failed and i not in retry]
            if landed:
                try:
                    self.on_written(landed)
                except Exception:
                    log.exception("usage metering failed for written records", records=len(landed))
        return [batch[i] for i in sorted(retry)]

    async def _write_one_by_one(self, batch: Entries) -> dict[int, BaseException]:
        failed: dict[int, BaseException] = {}
        for i, (doc, _) in enumerate(batch):
            try:
                await shielded(self.coll.insert_one(_fit(storable(doc))))
            except DuplicateKeyError:
                pass
            except Exception as exc:
                failed[i] = exc
        return failed


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _fit(doc: dict[str, Any], limit: int = 15 * 1024 * 1024) -> dict[str, Any]:
    """A record too large for one document loses its bulky parts, never the record itself."""
    import bson

    if len(bson.encode(doc)) <= limit:
        return doc
    slim = dict(doc)
    for field in ("result", "stdout", "stderr", "items"):
        if field in slim:
            slim[field] = None
    slim["truncated_fields"] = "result, output and items were too large to store"
    return slim


class Completions:
    """Reads which events of a chunk already finished: one MongoDB command per chunk (two the
    first time a trigger is seen to have dead letters).

    Each command costs the hub ~0.4 ms of CPU in the driver whatever it carries (measured), so the
    records and the dead letters are read by one aggregation: the records whose ``done`` holds one
    of the chunk's keys, and with ``$unionWith`` the dead letters. A trigger (its name has no ":",
    unlike the keys of direct invokes and the inbox) that had no dead letter when last asked is
    only asked whether it has any (one indexed lookup instead of a sha256 per event and an id
    list: at Kafka batch 100 the old check was a tenth of the hub's time); "none" is never
    remembered, "some" is (then each chunk names its dead-letter ids, as before)."""

    def __init__(self, db: AsyncDatabase[dict[str, Any]]) -> None:
        self.db = db
        self._with_dead_letters: set[str] = set()  # a hint: a trigger not in it is asked each time
        # The trigger-wide question ({"trigger": target_key}) relies on every dead letter storing
        # ``trigger`` equal to its target's key (dispatch._dead_letter and the inbox's give-up do).

    async def finished(
        self, target_key: str, event_ids: Iterable[str], ignore_dead_letter: str | None = None
    ) -> dict[str, str]:
        """{event id: "succeeded" | "dead_lettered"} for the events that must not run again."""
        ids = list(dict.fromkeys(event_ids))
        if not ids:
            return {}
        keys = {completion_key(target_key, e): e for e in ids}
        precise = ":" in target_key or target_key in self._with_dead_letters
        dl_ids = self._dl_ids(target_key, ids, ignore_dead_letter) if precise else {}
        docs = await self._read(keys, {"_id": {"$in": list(dl_ids)}} if precise else {"trigger": target_key})
        out: dict[str, str] = {}
        some_dead = False
        for doc in docs:
            if "dead_letter" in doc:
                some_dead = True
                if precise:
                    out[dl_ids[doc["dead_letter"]]] = "dead_lettered"
                continue
            for key in doc.get("done") or ():  # a record: its whole done list (a match is rare)
                if key in keys:
                    out[keys[key]] = "succeeded"
        if some_dead and not precise:  # the trigger has dead letters: which of these are they?
            if len(self._with_dead_letters) >= 10_000:  # bounded; forgetting costs one more command
                self._with_dead_letters.clear()
            self._with_dead_letters.add(target_key)
            dl_ids = self._dl_ids(target_key, ids, ignore_dead_letter)
            dead = await shielded(self.db.dead_letters.find({"_id": {"$in": list(dl_ids)}}, {"_id": 1}).to_list(None))
            for doc in dead:
                out[dl_ids[doc["_id"]]] = "dead_lettered"
        return out

    @staticmethod
    def _dl_ids(target_key: str, ids: list[str], ignore: str | None) -> dict[str, str]:
        dl_ids = {dead_letter_id(target_key, e): e for e in ids}
        dl_ids.pop(ignore or "", None)
        return dl_ids

    async def _read(self, keys: dict[str, str], dead_letters: dict[str, Any]) -> list[dict[str, Any]]:
        """The records finishing one of ``keys`` (their ``done`` only), then the dead letters
        matching ``dead_letters`` (``{"dead_letter": id}``; a trigger-wide match: the first)."""
        union: list[dict[str, Any]] = [{"$match": dead_letters}]
        if "trigger" in dead_letters:
            union.append({"$limit": 1})
        union.append({"$project": {"_id": 0, "dead_letter": "$_id"}})

        async def run() -> list[dict[str, Any]]:
            cursor = await self.db.invocations.aggregate([
                {"$match": {"done": {"$in": list(keys)}}},
                {"$project": {"_id": 0, "done": 1}},
                {"$unionWith": {"coll": "dead_letters", "pipeline": union}},
            ])
            return list(await cursor.to_list(None))

        return await shielded(run())
