"""Trigger cursors: where each trigger's source stands, for the trigger views and /metrics.

Computed from what this instance knows, so listing triggers never waits on Kafka and waits on
MongoDB only for short reads bounded by PyMongo's own timeout (and shielded: a request that goes
away never cancels into the driver):

- kafka: ``{"group", "partitions": [{"partition", "committed", "end", "lag"}], "lag",
  "held_elsewhere"}``, the partitions this instance's group member holds
  (:meth:`connectors.kafka.KafkaSubscription.cursor`; ``end`` is the highest of the last fetch's
  high watermark and what was read, so a broker that reports a short high watermark, as Tansu
  does at times, never makes the lag negative). Partitions other instances hold are listed by
  them (``held_elsewhere``: the subscription runs here but holds none); ``lag`` is null when
  nothing is known (not started yet, or disabled).
- mongodb: ``{"resume_token_at", "age_s", "oplog_window_s", "at_risk", "held_elsewhere"}``:
  the cluster time of the saved position (the reader's own when it runs here, else the stored
  one), how far behind now it is, how much history the oplog holds (now minus its first entry,
  read from ``local.oplog.rs`` at most every ``OPLOG_CACHE_S``), and whether the position is
  close to falling off it (age at least ``AT_RISK`` of the window: a history-lost restart
  would then skip changes).
- s3 and schedule: ``{"inbox_depth"}``, the inbox items waiting for (or running on) the trigger.
- http: ``{}``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import TYPE_CHECKING, Any

import pymongo
import structlog
from bson import Timestamp

from connectors.kafka import KafkaSubscription
from connectors.mongodb import ChangeStreamSubscription
from hub.driver import shielded
from hub.catalog.triggers import kafka_group_id, source_state_key

if TYPE_CHECKING:
    from hub.metrics import Metrics
    from hub.intake.sources import Sources
    from hub.store import Store

log = structlog.get_logger("hub.intake.cursors")

PEER_FRESH_S = 15.0  # heartbeats older than this are of instances gone (they beat every 2 s)
READ_TIMEOUT_S = 0.5  # PyMongo's own timeout (it may overshoot by its 0.5 s wake-up granularity)
OPLOG_CACHE_S = 30.0
AT_RISK = 0.8
DEAD_LETTER_REFRESH_S = 5.0
MAX_SERIES = 500  # per gauge: label values beyond the largest ones are folded into "(other)"


def token_time(token: Any) -> dt.datetime | None:
    """The cluster time inside a change-stream resume token (``{"_data": "82<t:8 hex><i:8 hex>..."}``)."""
    data = token.get("_data") if isinstance(token, dict) else None
    if not isinstance(data, str) or len(data) < 18 or data[:2] != "82":
        return None
    try:
        seconds = int(data[2:10], 16)
    except ValueError:
        return None
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc)


def position_time(position: dict[str, Any] | None) -> dt.datetime | None:
    """When a saved change-stream position stands: its resume token, or the operation time the
    trigger was created at (no change read yet)."""
    if not position:
        return None
    for key in ("resume_token", "start_after"):
        t = token_time(position.get(key))
        if t is not None:
            return t
    op_time = position.get("start_at_operation_time")
    if isinstance(op_time, Timestamp):
        return op_time.as_datetime()
    return None


async def _nothing() -> list[dict[str, Any]]:
    return []


def _merge_partitions(cursor: dict[str, Any], trigger: str, peers: list[dict[str, Any]]) -> None:
    """Add the partitions other instances hold (from their heartbeats, at most a few seconds
    old) to this instance's view, so any instance shows the group's whole cursor and lag."""
    seen = {p["partition"] for p in cursor["partitions"]}
    for peer in peers:  # newest first: after a rebalance, the latest holder's figures win
        for share in peer.get("kafka") or []:
            if share.get("trigger") != trigger or share.get("group") != cursor["group"]:
                continue
            for p in share.get("partitions") or []:
                if p.get("partition") not in seen:
                    seen.add(p.get("partition"))
                    cursor["partitions"].append({**p, "instance": peer["_id"]})
    cursor["partitions"].sort(key=lambda p: p["partition"])
    lags = [p["lag"] for p in cursor["partitions"] if isinstance(p.get("lag"), int)]
    cursor["lag"] = sum(lags) if lags else None


class Cursors:
    def __init__(self, store: Store, sources: Sources) -> None:
        self.store = store
        self.sources = sources
        self._oplog_first: float | None = None
        self._oplog_read_at = -OPLOG_CACHE_S
        self._dead_letters_at = -DEAD_LETTER_REFRESH_S

    # -- the trigger views ------------------------------------------------------------------
    async def describe(self, docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """{trigger name: cursor} for these trigger documents."""
        out: dict[str, dict[str, Any]] = {}
        queued: list[str] = []
        streams: list[dict[str, Any]] = []
        for doc in docs:
            name, kind = doc["_id"], (doc.get("source") or {}).get("type")
            if kind == "kafka":
                out[name] = self._kafka(doc)
            elif kind == "mongodb":
                streams.append(doc)
            elif kind in ("s3", "schedule"):
                queued.append(name)
            else:
                out[name] = {}
        kafka = [name for name, cursor in out.items() if "partitions" in cursor]
        depths, mongo, peers = await asyncio.gather(self._inbox_depths(queued), self._streams(streams),
                                                    self._peers() if kafka else _nothing())
        for name in queued:
            out[name] = {"inbox_depth": depths.get(name)}
        out.update(mongo)
        for name in kafka:
            _merge_partitions(out[name], name, peers)
        return out

    def _kafka(self, doc: dict[str, Any]) -> dict[str, Any]:
        sub = self._running(doc["_id"])
        if isinstance(sub, KafkaSubscription):
            cursor = sub.cursor()
            cursor["held_elsewhere"] = sub.state == "running" and not cursor["partitions"]
            for p in cursor["partitions"]:
                p["instance"] = self.sources.owner
            return cursor
        group = kafka_group_id(doc["_id"], str(doc.get("source_identity", "")), str(doc.get("source_epoch", "")))
        return {"group": group, "partitions": [], "lag": None, "held_elsewhere": False}

    def kafka_shares(self) -> list[dict[str, Any]]:
        """This instance's Kafka partitions per trigger, for its heartbeat: the other instances
        show the whole group's cursor from these."""
        shares = []
        for name, entry in self.sources.running.items():
            sub = entry[1]
            if isinstance(sub, KafkaSubscription):
                cursor = sub.cursor()
                shares.append({"trigger": name, "group": cursor["group"], "partitions": cursor["partitions"]})
        return shares

    async def _peers(self) -> list[dict[str, Any]]:
        """Other live instances' heartbeats, newest first (bounded; none when MongoDB is away)."""
        try:
            with pymongo.timeout(READ_TIMEOUT_S):
                peers = await shielded(self.store.live_instances(within_s=PEER_FRESH_S))
        except Exception:
            return []
        peers = [p for p in peers if p["_id"] != self.sources.owner]
        return sorted(peers, key=lambda p: p["last_seen"], reverse=True)

    async def _streams(self, docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        if not docs:
            return {}
        positions: dict[str, dict[str, Any] | None] = {}
        stored: dict[str, str] = {}  # state key -> trigger, for the streams not read here
        for doc in docs:
            sub = self._running(doc["_id"])
            cursor = sub.cursor() if isinstance(sub, ChangeStreamSubscription) else None
            if cursor is not None:
                positions[doc["_id"]] = cursor
            else:
                stored[source_state_key(doc["_id"], str(doc.get("source_identity", "")))] = doc["_id"]
        first, saved = await asyncio.gather(self._oplog_start(), self._saved_positions(list(stored)))
        for key, name in stored.items():
            positions[name] = saved.get(key)
        now = time.time()
        window = round(now - first, 1) if first is not None else None
        out: dict[str, dict[str, Any]] = {}
        for doc in docs:
            at = position_time(positions.get(doc["_id"]))
            age = round(max(0.0, now - at.timestamp()), 1) if at is not None else None
            out[doc["_id"]] = {
                "resume_token_at": at,
                "age_s": age,
                "oplog_window_s": window,
                "at_risk": (age >= AT_RISK * window) if age is not None and window else None,
                "held_elsewhere": doc["_id"] in self.sources.held_elsewhere,
            }
        return out

    def _running(self, name: str) -> Any:
        entry = self.sources.running.get(name)
        return entry[1] if entry else None

    async def _saved_positions(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        if not keys:
            return {}

        try:
            with pymongo.timeout(READ_TIMEOUT_S):
                docs = await shielded(self.store.source_states(keys))
        except Exception as exc:
            log.debug("saved stream positions not read", error=f"{type(exc).__name__}: {exc}")
            return {}
        return {d["_id"]: d for d in docs}

    async def _oplog_start(self) -> float | None:
        """Seconds since the epoch of the oplog's first entry (cached; None when unreadable)."""
        if time.monotonic() - self._oplog_read_at < OPLOG_CACHE_S:
            return self._oplog_first
        self._oplog_read_at = time.monotonic()  # also after a failure: do not hammer
        try:
            with pymongo.timeout(READ_TIMEOUT_S):
                ts = await shielded(self.store.oplog_first_ts())
            self._oplog_first = float(ts.time) if isinstance(ts, Timestamp) else None
        except Exception as exc:  # no replica set, or no right to read local
            log.debug("oplog window not read", error=f"{type(exc).__name__}: {exc}")
            self._oplog_first = None
        return self._oplog_first

    async def _inbox_depths(self, names: list[str]) -> dict[str, int | None]:
        if not names:
            return {}
        with pymongo.timeout(READ_TIMEOUT_S):
            results = await asyncio.gather(*(shielded(self.store.inbox_depth(n)) for n in names),
                                           return_exceptions=True)
        return {n: r if isinstance(r, int) else None for n, r in zip(names, results)}

    # -- /metrics ---------------------------------------------------------------------------
    async def refresh_gauges(self, metrics: Metrics) -> None:
        """Set the cursor gauges from this instance's subscriptions, and the stored counts
        (inbox depth, dead letters by trigger) with one bounded query each."""
        lags: dict[str, float] = {}
        ages: dict[str, float] = {}
        now = time.time()
        for name, (_, sub) in list(self.sources.running.items()):
            if isinstance(sub, KafkaSubscription):
                lag = sub.cursor()["lag"]
                if lag is not None:
                    lags[name] = lag
            elif isinstance(sub, ChangeStreamSubscription):
                at = position_time(sub.cursor())
                if at is not None:
                    ages[name] = max(0.0, now - at.timestamp())
        _set_all(metrics.trigger_lag, lags)
        _set_all(metrics.cursor_age, ages)
        await asyncio.gather(self._refresh_inbox(metrics), self._refresh_dead_letters(metrics))

    async def _refresh_inbox(self, metrics: Metrics) -> None:
        try:
            with pymongo.timeout(READ_TIMEOUT_S):
                metrics.inbox_depth.set(await shielded(self.store.inbox_depth()))
                # per trigger, for autoscalers (KEDA); a trigger whose items are all gone drops out
                backlog = await shielded(self.store.inbox_backlog())
                _set_all(metrics.inbox_backlog, {t: float(n) for t, n in backlog.items()})
        except Exception:
            pass  # MongoDB away: the last value stays

    async def _refresh_dead_letters(self, metrics: Metrics) -> None:
        if time.monotonic() - self._dead_letters_at < DEAD_LETTER_REFRESH_S:
            return
        self._dead_letters_at = time.monotonic()

        try:
            with pymongo.timeout(READ_TIMEOUT_S):
                counts = await shielded(self.store.dead_letter_counts())
        except Exception as exc:
            log.debug("dead letters not counted", error=f"{type(exc).__name__}: {exc}")
            return
        _set_all(metrics.dead_letters_stored,
                 {("(invoke)" if trigger is None else str(trigger)): float(n) for trigger, n in counts.items()})


def _set_all(gauge: Any, values: dict[str, float]) -> None:
    """Replace every child of a one-label gauge (labels that went away are dropped); at most
    MAX_SERIES, the rest summed under "(other)"."""
    if len(values) > MAX_SERIES:
        ranked = sorted(values.items(), key=lambda kv: -kv[1])
        values = dict(ranked[:MAX_SERIES - 1])
        values["(other)"] = sum(v for _, v in ranked[MAX_SERIES - 1:])
    gauge.clear()
    for label, value in values.items():
        gauge.labels(label).set(value)
