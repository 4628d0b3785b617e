"""The dedup that the S3 reconciling scan and the webhook share: observations of an object
change and their atomic claims in ``s3_seen``.

Why a module of its own: the scan (hub.intake.s3_reconcile, whose docstring gives the claim rule,
and the claim -> queue -> confirm protocol) and the webhook's admission both claim here. Moved out
of s3_reconcile unchanged, apart from confirms riding along with a claim's bulk write.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import itertools
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring as _json_text
from typing import Any

import structlog
from pymongo import ASCENDING, UpdateOne
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError

from hub.events import Event
from hub.driver import DUPLICATE_KEY
from hub.store import storable_bson

log = structlog.get_logger("hub.intake.s3_seen")

SEEN = "s3_seen"
Put = Callable[[list[Event]], Awaitable[None]]

# Claim tokens: a random prefix per process and a counter (uuid4 per claimed notification was
# ~3 us; a token only has to differ from every other claim's).
_TOKEN_PREFIX = os.urandom(8).hex()
_TOKEN_COUNTER = itertools.count()


def _token() -> str:
    return f"{_TOKEN_PREFIX}{next(_TOKEN_COUNTER):016x}"


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def parse_time(value: Any) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.strip().replace(" ", "T", 1).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


@dataclass(frozen=True)
class Observation:
    """One sighting of an object change, by the webhook or by the scan."""

    bucket: str
    key: str
    etag: str
    time: dt.datetime  # eventTime (notification) or LastModified (listing)
    event: Event

    @functools.cached_property  # the claim and its confirm both need it
    def doc_id(self) -> str:
        # json.dumps([bucket, key, etag], ensure_ascii=False), written out: the same text (stored
        # ids depend on it) without building an encoder per call (2.8 -> 0.8 us)
        basis = f"[{_json_text(self.bucket)}, {_json_text(self.key)}, {_json_text(self.etag)}]"
        return hashlib.sha256(basis.encode("utf-8")).hexdigest()[:32]


def observation_of(event: Event) -> Observation | None:
    """The observation a notification event makes, or None when it cannot be deduplicated: not
    an ObjectCreated event, or no ETag or eventTime to compare (it then passes through)."""
    if not event.type.startswith("s3:ObjectCreated:") or not isinstance(event.data, dict):
        return None
    data = event.data
    raw = data.get("raw") if isinstance(data.get("raw"), dict) else {}
    etag, bucket, key = data.get("etag"), data.get("bucket"), data.get("key")
    t = parse_time(raw.get("eventTime")) if raw else None
    if not (isinstance(etag, str) and etag and isinstance(bucket, str) and isinstance(key, str) and t):
        return None
    return Observation(bucket, key, etag, t, event)


class SeenObjects:
    """The ``s3_seen`` collection: atomic claims of observations (see the module docstring
    of hub.intake.s3_reconcile)."""

    def __init__(
        self,
        db: AsyncDatabase[dict[str, Any]],
        *,
        slack_s: float = 2.0,
        pending_ttl_s: float = 30.0,
        ttl_s: float = 7 * 86400,
        keep: int = 32,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.coll = db[SEEN]
        self.slack = dt.timedelta(seconds=slack_s)
        self.pending_ttl = dt.timedelta(seconds=pending_ttl_s)
        self.ttl_s = ttl_s
        self.keep = keep
        self.clock = clock

    async def init(self) -> None:
        await self.coll.create_index("updated_at", expireAfterSeconds=int(self.ttl_s))
        await self.coll.create_index([("obs.state", ASCENDING), ("obs.at", ASCENDING)])

    def _is_seen(self, times: Sequence[dt.datetime], t: dt.datetime) -> bool:
        return any(abs(seen - t) <= self.slack for seen in times)

    async def filter_unseen(self, observations: Sequence[Observation]) -> list[Observation]:
        """A read-only pre-check for a batch (most of what a scan lists was seen long ago); the
        claim re-checks atomically."""
        if not observations:
            return []
        ids = list({o.doc_id for o in observations})
        times: dict[str, list[dt.datetime]] = {}
        async for doc in self.coll.find({"_id": {"$in": ids}}, {"obs.t": 1}):
            times[doc["_id"]] = [o["t"] for o in doc.get("obs", []) if "t" in o]
        return [o for o in observations if not self._is_seen(times.get(o.doc_id, []), o.time)]

    async def claim(self, observations: Sequence[Observation], via: str,
                    confirms: Sequence[tuple[Observation, str]] = ()) -> list[str | None]:
        """Claim each observation: its token when new (now pending), None when already seen.
        ``confirms`` (earlier claims now queued) ride along in the same bulk write; one failing
        is only logged (recovery re-checks it)."""
        if not observations and not confirms:
            return []
        at = self.clock()
        tokens = [_token() for _ in observations]
        ops: list[UpdateOne] = []
        for obs, tok in zip(observations, tokens):
            entry = {"t": obs.time, "state": "pending", "tok": tok, "at": at, "via": via,
                     "event": storable_bson(obs.event.to_cloudevent())}
            ops.append(UpdateOne(
                {"_id": obs.doc_id,
                 "obs": {"$not": {"$elemMatch": {"t": {"$gte": obs.time - self.slack,
                                                        "$lte": obs.time + self.slack}}}}},
                {"$push": {"obs": {"$each": [entry], "$slice": -self.keep}},
                 "$set": {"updated_at": at},
                 "$setOnInsert": {"bucket": obs.bucket, "key": obs.key, "etag": obs.etag}},
                upsert=True,
            ))
        ops += self._confirm_ops(confirms, at)
        won: list[str | None] = list(tokens)
        try:
            await self.coll.bulk_write(ops, ordered=False)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(e.get("code") != DUPLICATE_KEY and e["index"] < len(tokens) for e in errors):
                raise
            for e in errors:
                if e["index"] < len(tokens):
                    won[e["index"]] = None
            if any(e["index"] >= len(tokens) for e in errors):
                log.warning("confirming s3 claims failed; recovery will re-check them",
                            errors=sum(1 for e in errors if e["index"] >= len(tokens)))
        return won

    def _confirm_ops(self, claimed: Sequence[tuple[Observation, str]], at: dt.datetime) -> list[UpdateOne]:
        return [UpdateOne({"_id": obs.doc_id, "obs.tok": tok},
                          {"$set": {"obs.$.state": "queued", "updated_at": at}, "$unset": {"obs.$.event": ""}})
                for obs, tok in claimed]

    async def confirm(self, claimed: Sequence[tuple[Observation, str]]) -> None:
        """The claimed events are in the inbox: drop the stored copies."""
        if claimed:
            await self.coll.bulk_write(self._confirm_ops(claimed, self.clock()), ordered=False)

    async def release(self, claimed: Sequence[tuple[Observation, str]]) -> None:
        """A scan failed to queue: withdraw its claims, so its next pass (which lists the same keys
        again, the failed pass having saved no position) claims the changes afresh."""
        if claimed:
            await self.coll.bulk_write([
                UpdateOne({"_id": obs.doc_id}, {"$pull": {"obs": {"tok": tok, "state": "pending"}}})
                for obs, tok in claimed
            ], ordered=False)

    async def recover_stale(self, put: Put, limit: int = 200) -> int:
        """Queue again the stored events of claims left pending for longer than ``pending_ttl``
        (the claimer died or failed between claim and queue). Returns how many were queued."""
        at = self.clock()
        cutoff = at - self.pending_ttl
        taken: list[tuple[Observation, str]] = []
        cursor = self.coll.find({"obs": {"$elemMatch": {"state": "pending", "at": {"$lt": cutoff}}}}).limit(limit)
        async for doc in cursor:
            for entry in doc.get("obs", []):
                if entry.get("state") != "pending" or entry.get("at", at) >= cutoff:
                    continue
                new_tok = _token()
                res = await self.coll.update_one(
                    {"_id": doc["_id"], "obs": {"$elemMatch": {"tok": entry["tok"], "state": "pending",
                                                               "at": {"$lt": cutoff}}}},
                    {"$set": {"obs.$.tok": new_tok, "obs.$.at": at}},
                )
                if res.modified_count != 1:
                    continue  # another instance took it over first
                stored = entry.get("event")
                if not isinstance(stored, dict):
                    continue
                event = Event.from_cloudevent(stored)
                taken.append((Observation(doc.get("bucket", ""), doc.get("key", ""), doc.get("etag", ""),
                                          entry["t"], event), new_tok))
        if taken:
            await put([obs.event for obs, _ in taken])
            await self.confirm(taken)
            log.warning("re-queued events whose claims were left pending", count=len(taken))
        return len(taken)


__all__ = ["Observation", "Put", "SEEN", "SeenObjects", "observation_of", "parse_time", "utcnow"]
