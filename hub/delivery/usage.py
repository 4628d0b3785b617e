"""Usage metering: what each function used, per hour, kept in MongoDB apart from the records.

Invocation records expire (``HUB_INVOCATION_RETENTION_S``); usage must not. So every record that
lands is also folded into a bucket document of the ``usage`` collection, one per
(function, version, hour of ``started_at``), with ``$inc``:

    {_id: "NAME|VERSION|2025-05-01T12", function, version (null: no version ran), hour,
     invocations, failures, partial, throttles, cold_starts, billed_ms, mb_ms, duration_ms,
     duration_min_ms, duration_max_ms, max_memory_mb, h: {b0: n, b1: n, ...}, expire_at?}

- ``invocations``: handler calls (every record except ``throttled``, as Lambda's Invocations
  metric); ``failures``: failed, timeout, out_of_memory, crashed; ``partial``: batches whose
  handler reported failed records (the call succeeded; counted apart, not as failures);
  ``throttles``: records with status throttled (sync invokes and function URLs turned away by a
  full queue; events from sources wait and retry instead, without a record).
- ``mb_ms`` = billed_ms x memory_mb, an exact integer; the API answers
  ``gb_seconds`` = mb_ms / 1024 / 1000 (billed seconds x GB, Lambda's GB-seconds).
- ``h`` is a fixed, log-spaced duration histogram (:data:`EDGES_MS`: bucket 0 below 1 ms, then ten
  per decade up to 1,000,000 ms, then one above), so p50/p99 of any period are computed at query
  time from summed counts, within one bucket (~26 %) and clamped to the period's min and max.

How it rides the group commit: :class:`hub.delivery.records.RecordWriter` calls :meth:`Usage.add` with the
records of each ``insert_many`` that landed (never before: a record that fails to be written is
not usage). ``add`` merges them into pending increments in memory and wakes one flusher task,
which writes everything pending with one unordered ``bulk_write`` of upserts while the writer
goes on with the next batch: records never wait for usage, and a busy hub makes at most one
usage write per record batch and at most one every ``FLUSH_INTERVAL_S`` (200 ms: a usage write costs
the hub ~0.9 ms of CPU whatever it carries, and at Kafka batch 1 there was one per ~30 events,
~25 us an event; behind function URLs, whose records go out every ~50 ms, 50 ms between usage
writes still made 20 a second: 200 ms took the hub's CPU per request 3.5 % and mongod's 9 % lower
in an A/B run). An idle hub's first usage goes out at once. A failed usage
write fails nothing else: it is logged, counted (``hub_usage_write_failures_total``, in records)
and retried until it lands, with backoff, while new usage waits behind it. A retry cannot count
twice: each write has an id, every bucket keeps the ids of its last writes (``w``, 32 of them),
and an update is filtered on its id not being there (an upsert that finds it answers a duplicate
key: already applied). What is lost: usage still in memory when the hub is killed (the records of
the last 200 ms or so; the records themselves are not affected), or not written within the
shutdown wait; both are logged when they can be.

Days are the sums of their 24 hour buckets (UTC) at query time. Buckets do not expire unless
``HUB_USAGE_RETENTION_S`` is set (> 0): then each carries ``expire_at`` = hour + retention, under
a TTL index (a changed retention applies to buckets written from then on).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import os
import random

import pymongo
import structlog
from pymongo import UpdateOne
from pymongo.errors import BulkWriteError
from pymongo.asynchronous.database import AsyncDatabase

from hub.metrics import Metrics
from hub.driver import DUPLICATE_KEY, finish_or_cancel, shielded

log = structlog.get_logger("hub.delivery.usage")

FAILURES = frozenset({"failed", "timeout", "out_of_memory", "crashed"})
HOUR = dt.timedelta(hours=1)
DAY = dt.timedelta(days=1)
MAX_RANGE = dt.timedelta(days=400)  # hourly, at most 9,600 buckets
MAX_BUCKETS = 10_000
WRITE_TIMEOUT_S = 10.0
RETRY_MAX_S = 10.0
FLUSH_INTERVAL_S = 0.2  # the least time between two usage writes (see the module docstring)
# A bucket document has one writer (this instance: its id is in the bucket's), which writes one
# flush at a time and retries it until it lands: only the flush being retried can be there yet.
KEEP_WRITE_IDS = 4
QUERY_TIMEOUT_S = 10.0
# Histogram: bucket 0 is [0, 0.01 ms); bucket k (1..80) is [0.01 x 10^((k-1)/10), 0.01 x 10^(k/10))
# ms (warm calls take well under 1 ms); bucket 81 is 1,000,000 ms (16.7 min, beyond the longest
# timeout) and above.
PER_DECADE = 10
LOWEST_MS = 0.01
TOP = 8 * PER_DECADE + 1
EDGES_MS = [LOWEST_MS * 10 ** (k / PER_DECADE) for k in range(TOP)]  # upper edge of bucket k (k < TOP)
COUNT_FIELDS = ("invocations", "failures", "partial", "throttles", "cold_starts", "billed_ms", "mb_ms")
HIST_KEYS = [f"h.b{k}" for k in range(TOP + 1)]  # the $inc field of each histogram bucket


def hist_bucket(duration_ms: float) -> int:
    if not duration_ms >= LOWEST_MS:  # NaN too
        return 0
    return min(TOP, int(math.floor(math.log10(duration_ms / LOWEST_MS) * PER_DECADE)) + 1)


def percentile(hist: dict[int, int], q: float, lo: float | None, hi: float | None) -> float | None:
    """The q-quantile (nearest rank) of a histogram, interpolated log-linearly inside its bucket
    and clamped to the observed [lo, hi]."""
    n = sum(hist.values())
    if n <= 0:
        return None
    rank = max(1, math.ceil(q * n))
    seen = 0
    value = 0.0
    for b in sorted(hist):
        count = hist[b]
        if count <= 0:
            continue
        if seen + count >= rank:
            f = (rank - seen) / count
            if b == 0:
                value = f * LOWEST_MS
            else:
                low = EDGES_MS[b - 1]
                high = EDGES_MS[b] if b < TOP else max(hi or low, low)
                value = low * (high / low) ** f
            break
        seen += count
    value = round(value, 3)
    if lo is not None:
        value = max(value, lo)
    if hi is not None:
        value = min(value, hi)
    return value


def hour_of(t: dt.datetime) -> dt.datetime:
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    return t.astimezone(dt.timezone.utc).replace(minute=0, second=0, microsecond=0)


def day_of(t: dt.datetime) -> dt.datetime:
    return hour_of(t).replace(hour=0)


@dataclass
class _Bucket:
    inc: dict[str, float] = field(default_factory=dict)
    duration_min: float | None = None
    duration_max: float | None = None
    max_memory: float | None = None

    def add(self, key: str, amount: float) -> None:
        self.inc[key] = self.inc.get(key, 0) + amount


class UsageError(ValueError):
    """A usage query that cannot be answered as asked (the API answers 400 with this)."""


class Usage:
    def __init__(self, db: AsyncDatabase[dict[str, Any]], metrics: Metrics, retention_s: float = 0.0,
                 instance: str = "") -> None:
        self.coll = db.usage
        self.instance = instance  # in every bucket id: one writer per bucket document
        self.metrics = metrics
        self.retention_s = retention_s
        self._pending: dict[tuple[str, str | None, dt.datetime], _Bucket] = {}
        self._pending_records = 0
        self._wake = asyncio.Event()
        self._closed = asyncio.Event()  # set by close(): it also cuts the interval between writes short
        self._task: asyncio.Task[None] | None = None
        self._children: dict[str, tuple[Any, Any]] = {}
        # the hour of the last record added, as [start, end) in UTC: the records of one write
        # mostly share it (hour_of per record was a third of add's time)
        self._hour: tuple[dt.datetime, dt.datetime] | None = None

    async def init(self) -> None:
        await self.coll.create_index([("function", pymongo.ASCENDING), ("hour", pymongo.ASCENDING)])
        await self.coll.create_index([("hour", pymongo.ASCENDING)])
        await self.coll.create_index("expire_at", expireAfterSeconds=0, sparse=True)

    # -- feeding (called by the record writer with what landed) -----------------------------
    def add(self, records: Iterable[dict[str, Any]]) -> None:
        count = 0
        billing: dict[str, list[float]] = {}  # function -> [billed ms, GB-seconds], for the counters
        pending = self._pending
        span = self._hour
        for rec in records:
            function = rec.get("function")
            started = rec.get("started_at") or rec.get("finished_at")
            if not isinstance(function, str) or not isinstance(started, dt.datetime):
                continue
            count += 1
            version = rec.get("version")
            if span is not None and started.tzinfo is not None and span[0] <= started < span[1]:
                hour = span[0]
            else:
                hour = hour_of(started)
                span = self._hour = (hour, hour + HOUR)
            key = (function, version if isinstance(version, str) else None, hour)
            bucket = pending.get(key)
            if bucket is None:
                bucket = pending[key] = _Bucket()
            inc = bucket.inc
            status = rec.get("status")
            billed = _int(rec.get("billed_ms"))
            memory = _int(rec.get("memory_mb"))
            if status == "throttled":
                inc["throttles"] = inc.get("throttles", 0) + 1
            else:
                inc["invocations"] = inc.get("invocations", 0) + 1
                if status in FAILURES:
                    inc["failures"] = inc.get("failures", 0) + 1
                elif status == "partial":
                    inc["partial"] = inc.get("partial", 0) + 1
                if rec.get("cold_start"):
                    inc["cold_starts"] = inc.get("cold_starts", 0) + 1
                duration = _float(rec.get("duration_ms"))
                inc["duration_ms"] = inc.get("duration_ms", 0) + duration
                h = HIST_KEYS[hist_bucket(duration)]
                inc[h] = inc.get(h, 0) + 1
                if bucket.duration_min is None or duration < bucket.duration_min:
                    bucket.duration_min = duration
                if bucket.duration_max is None or duration > bucket.duration_max:
                    bucket.duration_max = duration
                used = rec.get("max_memory_mb")
                if isinstance(used, (int, float)) and not isinstance(used, bool) and math.isfinite(used):
                    bucket.max_memory = used if bucket.max_memory is None else max(bucket.max_memory, used)
            if billed:
                inc["billed_ms"] = inc.get("billed_ms", 0) + billed
                bill = billing.get(function)
                if bill is None:
                    bill = billing[function] = [0, 0.0]
                bill[0] += billed
                if memory:
                    inc["mb_ms"] = inc.get("mb_ms", 0) + billed * memory
                    bill[1] += billed / 1000 * memory / 1024
        for function, (billed_ms, gb_seconds) in billing.items():
            self._observe(function, billed_ms, gb_seconds)
        if count:
            self._pending_records += count
            self._wake.set()

    def _observe(self, function: str, billed_ms: float, gb_seconds: float) -> None:
        children = self._children.get(function)
        if children is None:  # labels() takes a lock and builds a key every call
            children = self._children[function] = (self.metrics.billed_ms.labels(function),
                                                   self.metrics.gb_seconds.labels(function))
        children[0].inc(billed_ms)
        children[1].inc(gb_seconds)

    # -- the flusher ------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="usage-writer")

    async def close(self, timeout: float = 10.0) -> None:
        """Write what is pending (for up to ``timeout``), then stop."""
        self._closed.set()
        self._wake.set()
        await finish_or_cancel(self._task, timeout)  # its write is shielded
        if self._pending_records:
            self.metrics.usage_write_failures.inc(self._pending_records)
            self._lost(self._pending_records, "the hub stopped before usage was written")
            self._pending, self._pending_records = {}, 0

    async def flush(self) -> None:
        """Write what is pending now (tests; the flusher does the same on its own)."""
        if self._pending:
            await self._flush()

    async def _run(self) -> None:
        while True:
            if not self._pending:
                if self._closed.is_set():
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._flush()
            if not self._closed.is_set():  # what comes meanwhile goes out together in the next write
                try:
                    await asyncio.wait_for(self._closed.wait(), FLUSH_INTERVAL_S)
                except TimeoutError:
                    pass

    async def _flush(self) -> None:
        pending, records = self._pending, self._pending_records
        self._pending, self._pending_records = {}, 0
        write_id = os.urandom(8).hex()
        ops = [self._op(key, bucket, write_id) for key, bucket in pending.items()]
        delay, failed_before = 0.2, False
        while True:
            try:
                with pymongo.timeout(WRITE_TIMEOUT_S):
                    await shielded(self.coll.bulk_write(ops, ordered=False))
                return
            except asyncio.CancelledError:
                if not failed_before:
                    self.metrics.usage_write_failures.inc(records)
                self._lost(records, "cancelled")
                raise
            except BulkWriteError as exc:
                # a duplicate key is an upsert that found its own write id: applied before (the
                # bucket has no other writer, so no rival upsert can have made it meanwhile)
                others = [e for e in exc.details.get("writeErrors", []) if e.get("code") != DUPLICATE_KEY]
                if not others and not exc.details.get("writeConcernErrors"):
                    return
                error = f"BulkWriteError: {others[:1] or exc.details.get('writeConcernErrors')}"
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
            if not failed_before:  # the invocations of a failing flush, counted once
                self.metrics.usage_write_failures.inc(records)
                failed_before = True
            if self._closed.is_set():
                self._lost(records, error)
                return
            log.warning("usage write failed; retrying", records=records, error=error)
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, RETRY_MAX_S)

    def _lost(self, records: int, why: str) -> None:
        log.warning("usage not recorded for some invocations (their records are written)", records=records,
                    error=why)

    def _op(self, key: tuple[str, str | None, dt.datetime], bucket: _Bucket, write_id: str) -> UpdateOne:
        function, version, hour = key
        update: dict[str, Any] = {
            "$inc": bucket.inc,
            "$setOnInsert": {"function": function, "version": version, "hour": hour, "instance": self.instance},
            "$push": {"w": {"$each": [write_id], "$slice": -KEEP_WRITE_IDS}},
        }
        if bucket.duration_min is not None:
            update["$min"] = {"duration_min_ms": bucket.duration_min}
        highs: dict[str, Any] = {}
        if bucket.duration_max is not None:
            highs["duration_max_ms"] = bucket.duration_max
        if bucket.max_memory is not None:
            highs["max_memory_mb"] = bucket.max_memory
        if self.retention_s > 0:
            highs["expire_at"] = hour + dt.timedelta(seconds=self.retention_s)
        if highs:
            update["$max"] = highs
        # filtered on the write id not being there yet: a retry of an applied write changes nothing
        return UpdateOne({"_id": bucket_id(function, version, hour, self.instance), "w": {"$ne": write_id}},
                         update, upsert=True)

    # -- queries ----------------------------------------------------------------------------
    async def query(self, *, function: str | None, version: str | None, start: dt.datetime | None,
                    end: dt.datetime | None, granularity: str, now: dt.datetime) -> dict[str, Any]:
        """``GET /v1/usage``: with ``function``, its zero-filled buckets over [from, to) and their
        totals; without, each function's totals over the period (and the sum of all)."""
        if granularity not in ("hour", "day"):
            raise UsageError("granularity must be 'hour' or 'day'")
        if version is not None and function is None:
            raise UsageError("version needs function")
        step = HOUR if granularity == "hour" else DAY
        floor = hour_of if granularity == "hour" else day_of
        try:
            end = end or now
            start = floor(start or end - DAY)
            if floor(end) != end:  # buckets are whole: `to` is rounded up to the next one
                end = floor(end) + step
        except OverflowError:
            raise UsageError("from/to out of range") from None
        if start > end:
            raise UsageError("from is after to: the period is [from, to)")
        if end - start > MAX_RANGE:
            raise UsageError(f"the period is longer than {MAX_RANGE.days} days")
        starts = _starts(start, end, step)
        if len(starts) > MAX_BUCKETS:
            raise UsageError(f"more than {MAX_BUCKETS} buckets")
        match: dict[str, Any] = {"hour": {"$gte": start, "$lt": end}}
        common = {"granularity": granularity, "from": start, "to": end}
        if function is None:
            groups = await self._aggregate(match, "$function")
            functions = [{"function": name, **_view(g)} for name, g in sorted(groups.items())]
            return {"function": None, **common, "functions": functions,
                    "totals": _view(_merge(groups.values()))}
        match["function"] = function
        if version is not None:
            match["version"] = version
        hours = await self._aggregate(match, "$hour")
        per: dict[dt.datetime, list[dict[str, Any]]] = {}
        for hour, g in hours.items():
            per.setdefault(floor(hour), []).append(g)
        buckets = [{"start": s, **_view(_merge(per.get(s, [])))} for s in starts]
        out = {"function": function, **common, "buckets": buckets, "totals": _view(_merge(hours.values()))}
        if version is not None:
            out["version"] = version
        return out

    async def _aggregate(self, match: dict[str, Any], by: str) -> dict[Any, dict[str, Any]]:
        group: dict[str, Any] = {"_id": by}
        for name in (*COUNT_FIELDS, "duration_ms"):
            group[name] = {"$sum": f"${name}"}
        for b in range(TOP + 1):
            group[f"h{b}"] = {"$sum": f"$h.b{b}"}
        group["duration_min_ms"] = {"$min": "$duration_min_ms"}
        group["duration_max_ms"] = {"$max": "$duration_max_ms"}
        group["max_memory_mb"] = {"$max": "$max_memory_mb"}

        async def run() -> list[dict[str, Any]]:
            cursor = await self.coll.aggregate([{"$match": match}, {"$group": group}])
            return list(await cursor.to_list(None))

        with pymongo.timeout(QUERY_TIMEOUT_S):
            docs = await shielded(run())
        return {d.pop("_id"): d for d in docs}


def bucket_id(function: str, version: str | None, hour: dt.datetime, instance: str = "") -> str:
    return f"{function}|{version or '-'}|{hour:%Y-%m-%dT%H}|{instance}"


def _starts(start: dt.datetime, end: dt.datetime, step: dt.timedelta) -> list[dt.datetime]:
    out: list[dt.datetime] = []
    t = start
    while t < end and len(out) <= MAX_BUCKETS:
        out.append(t)
        try:
            t = t + step
        except OverflowError:
            break
    return out


def _merge(groups: Iterable[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for g in groups:
        for key, value in g.items():
            if value is None:
                continue
            if key == "duration_min_ms":
                out[key] = value if out.get(key) is None else min(out[key], value)
            elif key in ("duration_max_ms", "max_memory_mb"):
                out[key] = value if out.get(key) is None else max(out[key], value)
            else:
                out[key] = out.get(key, 0) + value
    return out


def _view(g: dict[str, Any]) -> dict[str, Any]:
    """One bucket (or total) as the API shows it."""
    hist = {b: int(g.get(f"h{b}") or 0) for b in range(TOP + 1)}
    lo, hi = g.get("duration_min_ms"), g.get("duration_max_ms")
    invocations = int(g.get("invocations") or 0)
    duration = float(g.get("duration_ms") or 0.0)
    return {
        "invocations": invocations,
        "failures": int(g.get("failures") or 0),
        "partial": int(g.get("partial") or 0),
        "throttles": int(g.get("throttles") or 0),
        "billed_ms": int(g.get("billed_ms") or 0),
        "gb_seconds": int(g.get("mb_ms") or 0) / 1024 / 1000,
        "cold_starts": int(g.get("cold_starts") or 0),
        "avg_ms": round(duration / invocations, 3) if invocations else None,
        "p50_ms": percentile(hist, 0.50, lo, hi),
        "p99_ms": percentile(hist, 0.99, lo, hi),
        "max_memory_mb": g.get("max_memory_mb"),
    }


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return 0
    return int(value)


def _float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return 0.0
    return float(value)

