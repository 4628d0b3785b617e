"""Everything the hub keeps in MongoDB, behind one small class.

Collections:
- functions / function_versions: the registry (immutable versions keyed by content hash)
- triggers: trigger definitions
- invocations: one record per handler call (Lambda's REPORT line plus result/error/output); a
  record's ``done`` list is also the success marker of the events it finished (hub.delivery.records)
- dead_letters: events whose last attempt failed, with every attempt's error (also the marker
  that such an event is finished)
- inbox: durable queue for webhook events and async invokes (written before we answer 2xx)
- source_state: per-trigger progress (change-stream resume tokens, start positions)
- leases: single-reader sources (a change stream is read by one instance at a time)

Every call here may be awaited by a task that gets cancelled; callers on such paths wrap them in
``hub.delivery.records.shielded`` so a cancel never lands inside the driver.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import time
from collections.abc import Callable
from typing import Any

import bson
from bson.errors import InvalidDocument, InvalidStringData
from bson.raw_bson import RawBSONDocument
import pymongo
import structlog
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError, OperationFailure

from hub import driver

driver.apply()  # before any client exists: see hub/driver.py

log = structlog.get_logger("hub.store")

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class InstanceTaken(RuntimeError):
    """Another live process runs under this instance id: two would take each other's leases,
    inbox claims and heartbeat, unnoticed. The second one refuses to start."""

    def __init__(self, instance: str, holder: dict[str, Any]) -> None:
        self.instance = instance
        where = ", ".join(f"{k} {holder[k]}" for k in ("url", "host", "pid") if holder.get(k))
        super().__init__(
            f"another hub instance is running with the id {instance!r} ({where or 'its heartbeat is live'}): "
            f"each instance needs its own HUB_INSTANCE_ID (or HUB_DATA_DIR, where a generated id is kept); "
            f"a stopped or crashed instance's id is free again once its heartbeat stops (at once after a "
            f"graceful stop)")


def _claimable(t: dt.datetime) -> dict[str, Any]:
    """Inbox items free to claim at ``t``: pending and due, or leased by someone whose lease ran out."""
    return {"$or": [{"state": "pending", "not_before": {"$lte": t}},
                    {"state": "leased", "lease_until": {"$lt": t}}]}


def _fenced(owner: str, held: list[tuple[Any, Any]]) -> dict[str, Any]:
    """Inbox items still held under the claims given, ``(item id, claim)`` pairs: a claim is
    new every time an item is claimed, so an instance that lost an item (its lease ran out and
    another claimed it, or it was taken for dead) matches none of its writes any more."""
    by_claim: dict[Any, list[Any]] = {}
    for item_id, claim in held:
        by_claim.setdefault(claim, []).append(item_id)
    return {"owner": owner, "state": "leased",
            "$or": [{"claim": claim, "_id": {"$in": ids}} for claim, ids in by_claim.items()]}


def unstorable_reason(doc: dict[str, Any]) -> str | None:
    """Why MongoDB would refuse ``doc`` (None when it is fine)."""
    try:
        bson.encode(doc)
    except (OverflowError, InvalidDocument, InvalidStringData, UnicodeEncodeError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def storable(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` as MongoDB will take it: function results and event payloads are user data and may
    hold integers beyond int64, lone surrogates or NUL in keys. Those are turned into text rather
    than letting a record fail to save (and the event be retried forever)."""
    if unstorable_reason(doc) is None:
        return doc
    out = _sanitise(doc)
    assert isinstance(out, dict)
    return out


def storable_bson(doc: dict[str, Any]) -> RawBSONDocument:
    """``storable(doc)`` encoded once, to embed in the writes that carry it: PyMongo copies a raw
    document's bytes instead of encoding it again, and ``storable``'s own check of a document
    around it then costs the copy, not another encoding (an S3 event is written twice: its dedup
    claim and its inbox item, each encoded twice before)."""
    try:
        return RawBSONDocument(bson.encode(doc))
    except (OverflowError, InvalidDocument, InvalidStringData, UnicodeEncodeError):
        return RawBSONDocument(bson.encode(_sanitise(doc)))


def _sanitise(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return value
    if isinstance(value, int):
        return value if INT64_MIN <= value <= INT64_MAX else str(value)
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_sanitise(str(k)).replace("\x00", "\\x00"): _sanitise(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_sanitise(v) for v in value]
    return value


CLOCK_WARN = dt.timedelta(seconds=1)


class Store:
    def __init__(self, url: str, db_name: str, completion_ttl_s: float = 14 * 86400,
                 clock: Callable[[], dt.datetime] = now) -> None:
        # Leases and claims are compared across instances, whose clocks may differ: they are
        # timed by MongoDB's clock, as this host reckons it (its own plus a measured offset).
        self._clock = clock
        self.clock_offset = dt.timedelta(0)
        # Invocation records double as success markers, so they are kept exactly this long: a
        # redelivery older than that (a Kafka topic rewound by hand) runs again.
        self.completion_ttl_s = completion_ttl_s
        # tz_aware so datetimes read back compare with now(); short server selection so an outage
        # surfaces as an error quickly instead of hanging a request for 30 s.
        self.client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            url, tz_aware=True, serverSelectionTimeoutMS=5000
        )
        self.db: AsyncDatabase[dict[str, Any]] = self.client[db_name]

    def now(self) -> dt.datetime:
        """MongoDB's time, as far as this host can tell (for leases, claims and heartbeats)."""
        return self._clock() + self.clock_offset

    async def sync_clock(self) -> dt.timedelta:
        """Measure how far this host's clock is from MongoDB's (``hello``'s localTime, halfway
        through the round trip; ms resolution), and use MongoDB's from now on."""
        before = self._clock()
        reply = await self.db.command("hello")
        after = self._clock()
        server = reply["localTime"]
        if server.tzinfo is None:
            server = server.replace(tzinfo=dt.timezone.utc)
        offset = server - (before + (after - before) / 2)
        if abs(offset) > CLOCK_WARN and abs(offset - self.clock_offset) > CLOCK_WARN:
            log.warning("this host's clock is off MongoDB's; leases and claims use MongoDB's time",
                        offset_s=round(offset.total_seconds(), 3))
        self.clock_offset = offset
        return offset

    async def init(self) -> None:
        db = self.db
        await self.sync_clock()
        # Listing pages by (started_at, _id) newest first (hub.web.logstream): _id ends each index so
        # the sort and the cursor come from the index, however deep the page.
        await db.invocations.create_index([("function", ASCENDING), ("started_at", DESCENDING), ("_id", DESCENDING)])
        await db.invocations.create_index([("trigger", ASCENDING), ("started_at", DESCENDING), ("_id", DESCENDING)])
        await db.invocations.create_index([("status", ASCENDING), ("started_at", DESCENDING), ("_id", DESCENDING)])
        await db.invocations.create_index([("request_id", ASCENDING)])
        await db.invocations.create_index([("trace_id", ASCENDING)], sparse=True)  # ?trace_id= (hub.tracing)
        await db.invocations.create_index([("started_at", DESCENDING), ("_id", DESCENDING)])
        await db.invocations.create_index([("event_ids", ASCENDING)])
        await db.invocations.create_index([("done", ASCENDING)])
        # Records only need to outlive redeliveries (they are the success markers) and a log's
        # useful life; without a TTL they would grow forever. (Usage outlives them: hub.delivery.usage.)
        await self._ttl_index(db.invocations, "finished_at", max(1, int(self.completion_ttl_s)))
        await db.dead_letters.create_index([("trigger", ASCENDING), ("created_at", DESCENDING)])
        await db.inbox.create_index([("state", ASCENDING), ("not_before", ASCENDING), ("created_at", ASCENDING)])
        await db.inbox.create_index([("state", ASCENDING), ("lease_until", ASCENDING)])
        await db.inbox.create_index([("owner", ASCENDING), ("state", ASCENDING)])
        await db.inbox.create_index([("request_id", ASCENDING)], sparse=True)
        # a trigger's queue depth (hub.intake.cursors): s3 items name their triggers, replays and
        # schedule ticks their trigger
        await db.inbox.create_index([("triggers", ASCENDING)], sparse=True)
        await db.inbox.create_index([("trigger", ASCENDING)], sparse=True)
        await db.function_versions.create_index([("name", ASCENDING), ("created_at", DESCENDING)])
        # heartbeats of instances gone for a day (recreated containers get new ids) go away
        await self._ttl_index(db.instances, "last_seen", 86400)
        # instances' acknowledgements of revoked credentials (hub.catalog.credentials) are only
        # read while the revocation waits for them
        await self._ttl_index(db.credential_acks, "at", 86400)

    @staticmethod
    async def _ttl_index(coll: Any, field: str, seconds: int) -> None:
        """A TTL index on ``field``; a changed retention is applied to the existing index
        (create_index alone refuses an index that differs only in its expiry)."""
        try:
            await coll.create_index(field, expireAfterSeconds=seconds)
        except OperationFailure as exc:
            if exc.code != 85:  # IndexOptionsConflict
                raise
            await coll.database.command({"collMod": coll.name, "index": {
                "keyPattern": {field: 1}, "expireAfterSeconds": seconds}})

    async def close(self, timeout_s: float = 5.0) -> None:
        """Close the client, but never hang a shutdown on it (a wedged driver would)."""
        closing = asyncio.ensure_future(self.client.close())
        await asyncio.wait([closing], timeout=timeout_s)

    async def ping(self, timeout_s: float = 1.0) -> None:
        """Raises unless MongoDB answers within ``timeout_s`` (PyMongo's own timeout: a cancel
        from outside could land inside server selection)."""
        with pymongo.timeout(timeout_s):
            await self.client.admin.command("ping")

    async def cluster_time(self) -> Any:
        """The server's current operation time: a change stream started from it sees every later write."""
        reply = await self.client.admin.command("hello")
        return reply["operationTime"]

    # -- registry ---------------------------------------------------------------------------
    async def get_function(self, name: str) -> dict[str, Any] | None:
        return await self.db.functions.find_one({"_id": name})

    async def list_functions(self) -> list[dict[str, Any]]:
        return await self.db.functions.find().sort("_id", ASCENDING).to_list(None)

    async def get_version(self, name: str, version: str, code: bool = True) -> dict[str, Any] | None:
        projection = None if code else {"code": 0}
        return await self.db.function_versions.find_one({"_id": f"{name}:{version}"}, projection)

    async def list_versions(self, name: str) -> list[dict[str, Any]]:
        cursor = self.db.function_versions.find({"name": name}, {"code": 0}).sort("created_at", DESCENDING)
        return await cursor.to_list(None)

    # Versions and aliases (hub.catalog.registry). The head document (functions, _id = name) holds the
    # current version's config, the aliases and ``rev``, a counter every change of the head or
    # its aliases bumps: writes are compare-and-set on it, and since hub.catalog.watch follows this
    # collection, every instance drops its cached runtimes of a function on any such change.
    async def put_version(self, version_doc: dict[str, Any]) -> bool | None:
        """Store a version if new: True when inserted, False when it was there; None when it was
        there, marked for deletion, and has just been deleted (the caller inserts it again). A mark
        found is removed: deploying a version takes it back from a deletion still under way."""
        try:
            await self.db.function_versions.insert_one(version_doc)
            return True
        except DuplicateKeyError:
            pass
        res = await self.db.function_versions.update_one({"_id": version_doc["_id"]}, {"$unset": {"deleting": ""}})
        return False if res.matched_count else None

    async def replace_head(self, head: dict[str, Any], old: dict[str, Any] | None) -> bool:
        """Write the head if it is still ``old`` (None: if there is none); False if it changed."""
        if old is None:
            try:
                await self.db.functions.insert_one(head)
            except DuplicateKeyError:
                return False
            return True
        res = await self.db.functions.replace_one({"_id": head["_id"], "rev": old.get("rev")}, head)
        return res.matched_count == 1

    async def update_head(self, old: dict[str, Any], fields: dict[str, Any]) -> bool:
        """Set ``fields`` (and the next rev) on the head if it is still ``old``; False if it changed."""
        res = await self.db.functions.update_one(
            {"_id": old["_id"], "rev": old.get("rev")},
            {"$set": {**fields, "rev": int(old.get("rev") or 0) + 1}})
        return res.matched_count == 1

    async def mark_version_deleting(self, name: str, version: str, token: str) -> bool:
        """Claim a version for deletion (False: it is gone, or another deletion holds it)."""
        res = await self.db.function_versions.update_one(
            {"_id": f"{name}:{version}", "deleting": {"$exists": False}}, {"$set": {"deleting": token}})
        return res.matched_count == 1

    async def unmark_version_deleting(self, name: str, version: str, token: str) -> None:
        await self.db.function_versions.update_one({"_id": f"{name}:{version}", "deleting": token},
                                                   {"$unset": {"deleting": ""}})

    async def delete_version(self, name: str, version: str, token: str) -> bool:
        """Delete a version claimed with ``token`` (False: a deploy took it back meanwhile)."""
        res = await self.db.function_versions.delete_one({"_id": f"{name}:{version}", "deleting": token})
        return res.deleted_count == 1

    async def delete_function(self, name: str) -> bool:
        res = await self.db.functions.delete_one({"_id": name})
        await self.db.function_versions.delete_many({"name": name})
        return res.deleted_count > 0

    # -- triggers ---------------------------------------------------------------------------
    async def get_trigger(self, name: str) -> dict[str, Any] | None:
        return await self.db.triggers.find_one({"_id": name})

    async def list_triggers(self, function: str | None = None) -> list[dict[str, Any]]:
        """Every trigger, or those of ``function``: "NAME" gives the triggers on NAME and on any
        NAME:QUALIFIER; "NAME:QUALIFIER" those on exactly that."""
        query: dict[str, Any] = {}
        if function:
            query = {"$or": [{"function": function}, {"function": {"$regex": f"^{re.escape(function)}:"}}]}
        return await self.db.triggers.find(query).sort("_id", ASCENDING).to_list(None)

    async def put_trigger(self, doc: dict[str, Any]) -> Any:
        """Returns the write's cluster time, which its change event carries (hub.catalog.triggers
        waits for every instance to have loaded it)."""
        async with self.client.start_session() as session:
            await self.db.triggers.replace_one({"_id": doc["_id"]}, doc, upsert=True, session=session)
            return session.operation_time

    async def delete_trigger(self, name: str) -> tuple[bool, Any]:
        """Whether there was one, and the deletion's cluster time (as ``put_trigger``)."""
        async with self.client.start_session() as session:
            res = await self.db.triggers.delete_one({"_id": name}, session=session)
            at = session.operation_time  # the trigger's deletion, not its state's below
        await self.db.source_state.delete_many({"trigger": name})
        return res.deleted_count > 0, at

    async def trigger_acks(self, instances: list[str], at: Any) -> set[str]:
        """Which of these instances have acknowledged loading the trigger changes up to cluster
        time ``at`` (``trigger_acks``, written by their config watch)."""
        docs = await self.db.trigger_acks.find({"_id": {"$in": instances}, "ts": {"$gte": at}},
                                               {"_id": 1}).to_list(None)
        return {str(d["_id"]) for d in docs}

    async def set_trigger_fields(self, name: str, fields: dict[str, Any],
                                 expect: dict[str, Any] | None = None) -> bool:
        """Set fields of a trigger (only while it still has the ``expect`` values); True if it did."""
        res = await self.db.triggers.update_one({"_id": name, **(expect or {})}, {"$set": fields})
        return res.matched_count > 0

    # -- instances --------------------------------------------------------------------------
    async def heartbeat(self, instance: str, fields: dict[str, Any], nonce: str | None = None) -> bool:
        """Write this instance's heartbeat; with ``nonce`` (the process's own, see
        :meth:`claim_instance`) only while the id is still this process's: False when another
        process holds it now (it waited this one's heartbeat out: this one had stalled)."""
        where: dict[str, Any] = {"_id": instance}
        if nonce is not None:
            where["nonce"] = nonce
        try:
            await self.db.instances.update_one(where, {"$set": {**fields, "last_seen": self.now()}}, upsert=True)
        except DuplicateKeyError:  # the upsert met the other process's document
            return False
        return True

    async def claim_instance(self, instance: str, nonce: str, live_s: float, fields: dict[str, Any]) -> None:
        """Make ``instance`` this process's (its heartbeat document carries ``nonce``), or raise
        :class:`InstanceTaken` while another process beats under the same id.

        A heartbeat younger than ``live_s`` may be a live process or one that just crashed (a
        pod's container restarted under the same name): it is watched for up to ``live_s``, and
        only a beat in that time (a new ``last_seen`` or nonce) proves a live owner. A graceful
        stop removes the document, and one not renewed for ``live_s`` is taken over at once.
        Every step is one conditional write, so of two processes starting together one wins."""
        deadline = time.monotonic() + live_s
        seen: tuple[Any, Any] | None = None  # (nonce, last_seen) of the other process's document
        expired = False
        while True:
            stale: list[dict[str, Any]] = [{"nonce": nonce}, {"last_seen": {"$lt": self.now() - dt.timedelta(seconds=live_s)}}]
            if expired and seen is not None:  # the very document watched, unchanged for live_s
                stale.append({"nonce": seen[0], "last_seen": seen[1]})
            doc = {**fields, "nonce": nonce, "last_seen": self.now()}
            try:
                await self.db.instances.update_one({"_id": instance, "$or": stale}, {"$set": doc}, upsert=True)
                return
            except DuplicateKeyError:
                pass
            current = await self.db.instances.find_one({"_id": instance})
            if current is None:
                continue  # removed meanwhile (a graceful stop): claim it now
            now_seen = (current.get("nonce"), current.get("last_seen"))
            if seen is None:
                seen = now_seen
            elif now_seen != seen:
                raise InstanceTaken(instance, current)
            expired = time.monotonic() >= deadline
            if not expired:
                await asyncio.sleep(0.25)

    async def forget_instance(self, instance: str, nonce: str | None = None) -> None:
        """Remove the heartbeat (with ``nonce``: only while it is this process's)."""
        await self.db.instances.delete_one({"_id": instance, **({} if nonce is None else {"nonce": nonce})})

    async def live_instances(self, within_s: float = 30.0) -> list[dict[str, Any]]:
        """Instances seen within ``within_s`` (every instance writes a heartbeat every few seconds)."""
        since = self.now() - dt.timedelta(seconds=within_s)
        return await self.db.instances.find({"last_seen": {"$gte": since}}).to_list(None)

    @property
    def users_client(self) -> AsyncMongoClient[dict[str, Any]]:
        """The client, for what the users' own collections need (change streams of mongodb
        triggers); the hub's own database stays behind this class's methods."""
        return self.client

    async def collection_options(self, database: str, collection: str) -> dict[str, Any]:
        """A user collection's options (``{}`` when it does not exist yet)."""
        infos = await self.client[database].list_collections(filter={"name": collection})
        return dict(next(iter(await infos.to_list(1)), {}).get("options", {}))

    async def http_token_hashes(self) -> dict[str, str]:
        """Every token-protected http trigger's token hash (sha256 hex), by trigger name."""
        docs = await self.db.triggers.find({"source.type": "http", "source.auth": "token"},
                                           {"token_hash": 1}).to_list(None)
        return {d["_id"]: str(d.get("token_hash") or "") for d in docs}

    # -- dependency sets ----------------------------------------------------------------------
    async def get_deps(self, key: str) -> dict[str, Any] | None:
        return await self.db.deps.find_one({"_id": key})

    async def record_deps(self, key: str, update: dict[str, Any]) -> dict[str, Any]:
        """Upsert a dependency set's record and read it back (two upserts of a new key at once:
        the loser retries once, then finds the winner's)."""
        for attempt in range(2):
            try:
                await self.db.deps.update_one({"_id": key}, update, upsert=True)
                break
            except DuplicateKeyError:
                if attempt:
                    raise
        record = await self.db.deps.find_one({"_id": key})
        assert record is not None
        return dict(record)

    # -- source progress --------------------------------------------------------------------
    async def source_states(self, keys: list[str]) -> list[dict[str, Any]]:
        return list(await self.db.source_state.find({"_id": {"$in": keys}}).to_list(None))

    async def oplog_first_ts(self) -> Any:
        """The oplog's first entry's ``ts`` (a bson Timestamp), or None (no replica set)."""
        doc = await self.client.local["oplog.rs"].find_one({}, {"ts": 1}, sort=[("$natural", ASCENDING)])
        return (doc or {}).get("ts")

    async def get_source_state(self, key: str) -> dict[str, Any] | None:
        return await self.db.source_state.find_one({"_id": key})

    async def set_source_state(self, key: str, trigger: str, fields: dict[str, Any]) -> None:
        await self.db.source_state.update_one(
            {"_id": key}, {"$set": {**fields, "trigger": trigger, "updated_at": now()}}, upsert=True
        )

    async def save_position_fenced(self, key: str, trigger: str, fields: dict[str, Any], token: int) -> bool:
        """Move a stream's cursor only for the current lease holder (see ``acquire_lease``);
        False when a newer holder has written it."""
        try:
            res = await self.db.source_state.update_one(
                {"_id": key, "$or": [{"fence": {"$exists": False}}, {"fence": {"$lte": token}}]},
                {"$set": {**fields, "trigger": trigger, "fence": token, "updated_at": now()}}, upsert=True,
            )
        except DuplicateKeyError:  # it exists, fenced by a newer token
            return False
        return res.matched_count == 1 or res.upserted_id is not None

    async def advance_tick(self, key: str, trigger: str, epoch: str, tick: dt.datetime) -> None:
        """A schedule's latest queued tick only moves forward (a new epoch starts over)."""
        await self.db.source_state.update_one({"_id": key}, [{"$set": {
            "last_tick": {"$cond": [{"$eq": ["$epoch", epoch]}, {"$max": ["$last_tick", tick]}, tick]},
            "epoch": epoch, "trigger": trigger, "updated_at": "$$NOW"}}], upsert=True)

    # -- invocations ------------------------------------------------------------------------
    async def get_invocation(self, invocation_id: str) -> dict[str, Any] | None:
        doc = await self.db.invocations.find_one({"_id": invocation_id})
        if doc is None:
            doc = await self.db.invocations.find_one(
                {"request_id": invocation_id}, sort=[("finished_at", DESCENDING)]
            )
        return doc

    async def list_invocations(self, query: dict[str, Any], limit: int, *, start: dt.datetime | None = None,
                               end: dt.datetime | None = None, after: tuple[dt.datetime, str] | None = None,
                               output: bool = False) -> list[dict[str, Any]]:
        """Records newest first by (started_at, _id): equality filters (a list is any of), started
        in [start, end), and after the (started_at, _id) key of a previous page's last record
        (keyset paging, hub.web.logstream). stdout/stderr only with ``output``."""
        query = dict(query)
        if "event_id" in query:  # any record that handled it, a batch's included
            query["event_ids"] = query.pop("event_id")
        for key, value in list(query.items()):
            if isinstance(value, list):
                query[key] = {"$in": value}
        started: dict[str, Any] = {}
        if start is not None:
            started["$gte"] = start
        if end is not None:
            started["$lt"] = end
        if after is not None:
            at, last_id = after
            started["$lte"] = at  # the index bound; the tie on started_at is broken by _id
            query["$or"] = [{"started_at": {"$lt": at}}, {"_id": {"$lt": last_id}}]
        if started:
            query["started_at"] = started
        hidden = {"event": 0, "done": 0} if output else {"stdout": 0, "stderr": 0, "event": 0, "done": 0}
        cursor = self.db.invocations.find(query, hidden)
        cursor = cursor.sort([("started_at", DESCENDING), ("_id", DESCENDING)]).limit(limit)
        return await cursor.to_list(None)

    async def watch_invocations(self, function: str, statuses: list[str] | None, max_await_ms: int) -> Any:
        """A change stream of the records written from now on for ``function`` (hub.web.logstream);
        ``try_next`` returns None after ``max_await_ms`` when nothing came."""
        match: dict[str, Any] = {"operationType": "insert", "fullDocument.function": function}
        if statuses:
            match["fullDocument.status"] = {"$in": statuses}
        pipeline = [{"$match": match}, {"$project": {"fullDocument.event": 0, "fullDocument.done": 0}}]
        return await self.db.invocations.watch(pipeline, max_await_time_ms=max_await_ms)

    # -- dead letters -----------------------------------------------------------------------
    async def put_dead_letter(self, doc: dict[str, Any]) -> None:
        """Upsert: the id is derived from (trigger, event), so a redelivered failure replaces, not adds."""
        await self.db.dead_letters.replace_one({"_id": doc["_id"]}, storable(doc), upsert=True)

    async def list_dead_letters(self, query: dict[str, Any], limit: int) -> list[dict[str, Any]]:
        cursor = self.db.dead_letters.find(query).sort("created_at", DESCENDING).limit(limit)
        return await cursor.to_list(None)

    async def dead_letters_after(self, query: dict[str, Any], after: str | None, limit: int) -> list[dict[str, Any]]:
        """Dead letters matching ``query`` in _id order, after ``after`` (paging through all)."""
        where = {**query, **({"_id": {"$gt": after}} if after is not None else {})}
        return await self.db.dead_letters.find(where).sort("_id", ASCENDING).limit(limit).to_list(None)

    async def write_dead_letters(self, ops: list[Any]) -> None:
        await self.db.dead_letters.bulk_write(ops, ordered=False)

    async def dead_letter_counts(self) -> dict[str | None, int]:
        """Stored dead letters by trigger (None: those of direct invokes)."""
        cursor = await self.db.dead_letters.aggregate([{"$group": {"_id": "$trigger", "n": {"$sum": 1}}}])
        return {d["_id"]: int(d["n"]) for d in await cursor.to_list(None)}

    async def get_dead_letter(self, dl_id: str) -> dict[str, Any] | None:
        return await self.db.dead_letters.find_one({"_id": dl_id})

    async def delete_dead_letter(self, dl_id: str) -> bool:
        res = await self.db.dead_letters.delete_one({"_id": dl_id})
        return res.deleted_count > 0

    async def purge_dead_letters(self, query: dict[str, Any]) -> int:
        res = await self.db.dead_letters.delete_many(query)
        return res.deleted_count

    # -- inbox ------------------------------------------------------------------------------
    async def inbox_put(self, items: list[dict[str, Any]]) -> None:
        """Durably queue items, ready now by MongoDB's time (another instance must not see them
        as not yet due because this host's clock runs ahead); returns once MongoDB has them."""
        if items:
            t = self.now()
            await self.db.inbox.insert_many([storable({**i, "created_at": t, "not_before": t}) for i in items],
                                            ordered=True)

    async def inbox_claim(self, owner: str, lease_s: float, limit: int) -> list[dict[str, Any]]:
        """Claim up to ``limit`` items that can run now, oldest first (three queries, any count).
        Empty only when nothing is claimable: a round lost to another instance (which claimed the
        same oldest items first) looks again."""
        for _ in range(5):
            t = self.now()
            found = await self.db.inbox.find(_claimable(t), {"_id": 1}).sort("created_at", ASCENDING).limit(limit).to_list(None)
            if not found:
                return []
            ids = [d["_id"] for d in found]
            claim = bson.ObjectId()  # reads back exactly what this call won, not a rival's
            res = await self.db.inbox.update_many(
                {"_id": {"$in": ids}, **_claimable(t)},
                {"$set": {"state": "leased", "owner": owner, "claim": claim,
                          "lease_until": t + dt.timedelta(seconds=lease_s)},
                 "$inc": {"deliveries": 1}},
            )
            if res.modified_count:
                items = await self.db.inbox.find({"_id": {"$in": ids}, "claim": claim}).to_list(None)
                return sorted(items, key=lambda i: i["created_at"])
        return []

    async def inbox_ready(self) -> bool:
        return await self.db.inbox.find_one(_claimable(self.now()), {"_id": 1}) is not None

    async def inbox_renew(self, owner: str, held: list[tuple[Any, Any]], lease_s: float) -> int:
        """Extend the leases of the items we hold, ``(item id, claim)`` pairs (one query for all
        of them); returns how many. A claim another instance took since is not extended."""
        if not held:
            return 0
        res = await self.db.inbox.update_many(
            _fenced(owner, held),
            {"$set": {"lease_until": self.now() + dt.timedelta(seconds=lease_s)}},
        )
        return res.matched_count

    async def inbox_done(self, owner: str, held: list[tuple[Any, Any]]) -> int:
        """Delete finished items, ``(item id, claim)`` pairs, only while the claim is still
        ours: an instance whose claim ran out and was taken by another (it stalled, or was taken
        for dead) must not delete the item under its new owner. Returns how many were deleted."""
        if not held:
            return 0
        res = await self.db.inbox.delete_many(_fenced(owner, held))
        return res.deleted_count

    async def inbox_release(self, owner: str, held: list[tuple[Any, Any]], delay_s: float = 0.0,
                            error: str | None = None) -> int:
        """Hand items back (shutdown, or a failure to retry after ``delay_s``), only those whose
        claim is still ours; returns how many."""
        if not held:
            return 0
        fields: dict[str, Any] = {"state": "pending", "not_before": self.now() + dt.timedelta(seconds=delay_s)}
        if error is not None:
            fields["last_error"] = error
        res = await self.db.inbox.update_many(_fenced(owner, held), {"$set": fields})
        return res.modified_count

    async def inbox_reclaim(self, owner: str) -> int:
        """At start: items an earlier run of this instance held (it crashed) can run again now."""
        res = await self.db.inbox.update_many({"owner": owner, "state": "leased"},
                                              {"$set": {"state": "pending", "not_before": self.now()}})
        return res.modified_count

    async def take_over(self, dead: list[str]) -> tuple[int, int]:
        """Instances found dead (their heartbeat stood still, see ``hub.app``): their leases
        expire now (the next holder's token is one higher, so a dead-looking holder that was only
        stalled can no longer move a cursor) and their inbox claims are handed back (a new claim
        is a new fence: the old holder's completions are refused). Returns (leases, items)."""
        if not dead:
            return 0, 0
        t = self.now()
        leases = await self.db.leases.update_many(
            {"owner": {"$in": dead}, "until": {"$gte": t}},
            {"$set": {"until": t - dt.timedelta(milliseconds=1)}})
        items = await self.db.inbox.update_many(
            {"owner": {"$in": dead}, "state": "leased"},
            {"$set": {"state": "pending", "not_before": t}})
        return leases.modified_count, items.modified_count

    async def inbox_s3_triggers(self, buckets: list[str]) -> set[str]:
        """The names of the s3 triggers on these buckets as stored now (one small query): the
        webhook's instance checks its trigger set against it before naming an item's triggers."""
        docs = await self.db.triggers.find({"source.type": "s3", "source.bucket": {"$in": buckets}},
                                           {"_id": 1}).to_list(None)
        return {str(d["_id"]) for d in docs}

    async def inbox_find_request(self, request_id: str) -> dict[str, Any] | None:
        return await self.db.inbox.find_one({"request_id": request_id})

    async def inbox_depth(self, trigger: str | None = None) -> int:
        """Items waiting in the inbox: all of them, or those of one trigger."""
        where = {} if trigger is None else {"$or": [{"triggers": trigger}, {"trigger": trigger}]}
        return await self.db.inbox.count_documents(where)

    async def inbox_backlog(self) -> dict[str, int]:
        """Inbox items by the trigger they are for (an S3 item counts for each of its
        triggers; an item with none, e.g. an async invoke, under "(KIND)"): what an autoscaler
        reads as work waiting. One aggregation, whatever the number of triggers."""
        label = {"$cond": [{"$gt": [{"$size": {"$ifNull": ["$triggers", []]}}, 0]}, "$triggers",
                           [{"$ifNull": ["$trigger", {"$concat": ["(", {"$ifNull": ["$kind", "?"]}, ")"]}]}]]}
        cursor = await self.db.inbox.aggregate([{"$project": {"t": label}}, {"$unwind": "$t"},
                                                {"$group": {"_id": "$t", "n": {"$sum": 1}}}])
        return {str(d["_id"]): int(d["n"]) async for d in cursor}

    async def watch_inbox(self, pipeline: list[dict[str, Any]], max_await_ms: int) -> Any:
        """A change stream on the inbox (its wake-ups; the caller projects what travels)."""
        return await self.db.inbox.watch(pipeline, max_await_time_ms=max_await_ms)

    # -- leases (single-reader sources across hub instances) -------------------------------
    async def acquire_lease(self, key: str, owner: str, ttl_s: float) -> int | None:
        """Take or renew a lease; its fencing token, or None while someone else holds it.

        The token grows every time the lease changes hands (or lapsed): a holder writes it along
        with every cursor it saves, and a save carrying an older token than the stored one is
        refused, so a holder that stalled past its lease cannot move the cursor back."""
        t = self.now()
        held = {"$and": [{"$eq": ["$owner", owner]}, {"$gt": ["$until", t]}]}
        try:
            doc = await self.db.leases.find_one_and_update(
                {"_id": key, "$or": [{"owner": owner}, {"until": {"$lt": t}}]},
                [{"$set": {"token": {"$cond": [held, {"$ifNull": ["$token", 1]},
                                               {"$add": [{"$ifNull": ["$token", 0]}, 1]}]},
                           "owner": owner, "until": t + dt.timedelta(seconds=ttl_s)}}],
                upsert=True, return_document=ReturnDocument.AFTER,
            )
        except DuplicateKeyError:  # the lease exists and is someone else's
            return None
        return int(doc["token"]) if doc else None

    async def release_lease(self, key: str, owner: str) -> None:
        """Let the lease go at once. Expired, not deleted: its token must keep growing (a lease
        made anew would start at 1 again, below the token on the saved cursor, and every save of
        the next holder would be refused as a stale one)."""
        await self.db.leases.update_one({"_id": key, "owner": owner},
                                        {"$set": {"owner": None, "until": dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)}})

    async def lease_holders(self, prefix: str, timeout_s: float = 1.0) -> dict[str, dict[str, Any]]:
        """Live leases whose key starts with ``prefix``: {key: {"owner", "until"}}."""
        with pymongo.timeout(timeout_s):
            docs = await self.db.leases.find({"_id": {"$regex": "^" + re.escape(prefix)}, "until": {"$gte": self.now()}}).to_list(None)
        return {d["_id"]: {"owner": d["owner"], "until": d["until"]} for d in docs}
