"""Kafka source: one consumer group per trigger, offsets committed only for finished events.

One fetch loop reads every assigned partition and feeds a lane per partition
(:mod:`connectors.lanes`): partitions are worked on concurrently, each strictly in order (or,
with ``ordering="key"``, each key in order), in batches. A partition whose lane is full is
paused, so a backlog never piles up in memory. After a chunk is finished its next offset is
marked, and the marks of all partitions are committed together, at most every
``commit_interval_s``. A crash before the commit redelivers those events, and the hub's
completion markers keep already-succeeded events from running twice.

Where a new group starts is committed once, when the trigger is created
(:func:`commit_start_offsets`), so the consumer itself always resets to ``earliest``: a partition
or topic without a committed offset appeared after the trigger and holds only newer messages.

A rebalance waits for the chunks in flight on the revoked partitions (the revoke callback
awaits them and commits what they finished), so a partition is never worked on by two members
at once.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import functools
import json
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.structs import ConsumerRecord

from connectors.base import Sink, SupervisedLoop
from connectors.lanes import Item, Lane
from hub.events import (
    MAX_PAYLOAD_DEPTH,
    Event,
    json_depth_exceeds,
    json_value,
    new_event,
    utc_now_iso,
)


def decode_value(raw: bytes | None) -> tuple[Any, str]:
    """JSON when it parses (nested at most MAX_PAYLOAD_DEPTH deep), else text when it is UTF-8,
    else base64 (the encoding says which)."""
    if raw is None:
        return None, "null"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode(), "base64"
    try:
        value = json.loads(text)
    except ValueError:
        return text, "text"
    except RecursionError:  # nested deeper than Python's json will go: the handler gets the text
        return text, "text"
    return (text, "text") if _too_deep(raw, value) else (value, "json")


def _too_deep(raw: bytes, value: Any) -> bool:
    """Nested deeper than an event may be stored (and than the worker's stdlib decoder reads,
    past ~990): such a value reaches the handler as its text, like one json cannot read, rather
    than crash every worker that receives it and stop its partition (its dead letter could not
    be stored either). Counting brackets first keeps the walk off the usual value."""
    return raw.count(b"[") + raw.count(b"{") > MAX_PAYLOAD_DEPTH and json_depth_exceeds(value, MAX_PAYLOAD_DEPTH)


def _text_or_b64(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(raw).decode()


_second: list[Any] = [None, ""]  # the last whole second formatted, and its text: a backlog's
# messages mostly share their second, and datetime formatting was a tenth of message_event
_MS_TEXT = ["Z"] + [f".{ms:03d}000Z" for ms in range(1, 1000)]  # each millisecond's tail, written
# once: a concatenation is a third of an f-string with a format spec (0.13 vs 0.4 us an event)


def kafka_time(timestamp_ms: int) -> str:
    """A Kafka timestamp (ms since the epoch, > 0) as RFC 3339 UTC, exactly as
    ``datetime.fromtimestamp(ms / 1000, utc).isoformat()`` with ``Z`` would write it."""
    seconds, ms = divmod(timestamp_ms, 1000)
    if _second[0] != seconds:
        _second[1] = dt.datetime.fromtimestamp(seconds, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
        _second[0] = seconds
    return _second[1] + _MS_TEXT[ms]


_SOURCES: dict[str, str] = {}  # topic -> the events' "source"


def message_event(msg: ConsumerRecord[bytes, bytes]) -> Event:
    raw = msg.value
    parsed = json_value(raw) if raw is not None else None
    value_json: bytes | None = None  # the value's own JSON text, handed to the worker as it is
    if parsed is not None:
        (value, value_json), encoding = parsed, "json"
    else:  # text, base64, null, or JSON only the stdlib reads: the stdlib's way, as before
        value, encoding = decode_value(raw)
    key = _text_or_b64(msg.key)
    # -1 (or None) means the producer sent no timestamp: use "now" rather than 1969.
    timestamp = msg.timestamp
    time = kafka_time(timestamp) if timestamp is not None and timestamp > 0 else utc_now_iso()
    headers = {k: _text_or_b64(v) for k, v in msg.headers} if msg.headers else {}
    # Kafka's timestamp type as Lambda names it (0 = CreateTime, 1 = LogAppendTime)
    timestamp_type = "LOG_APPEND_TIME" if msg.timestamp_type == 1 else "CREATE_TIME"
    topic, partition, offset = msg.topic, msg.partition, msg.offset
    data = {
        "value": value,
        "encoding": encoding,
        "key": key,
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "timestamp": timestamp,
        "timestamp_type": timestamp_type,
        "headers": headers,
    }
    source = _SOURCES.get(topic)
    if source is None:  # one text per topic, not one per message
        if len(_SOURCES) >= 10_000:
            _SOURCES.clear()
        source = _SOURCES[topic] = f"kafka://{topic}"
    return new_event(
        # offset alone is not enough: a recreated topic (or a memory-only broker restart) starts
        # again at 0, and those new records must not look like redeliveries of the old ones.
        id=f"kafka:{topic}:{partition}:{offset}:{timestamp}",
        source=source,
        type="kafka.message",
        subject=key,
        time=time,
        data=data,
        # every other field of data is text decoded as strict UTF-8 (or base64), a topic name or
        # an int within 64 bits: what hub.events.Prepared allows
        value_json=value_json,
    )


async def commit_start_offsets(bootstrap: str, topic: str, group_id: str, start: str) -> dict[int, int]:
    """Commit where the new consumer group ``group_id`` starts on ``topic``; returns what it committed.

    ``latest``: the current end offsets, so messages produced from now on run even before the
    group first joins; ``earliest``: the beginning offsets. A topic that does not exist yet
    commits nothing ({}): the subscription reads it from the beginning once it appears. Raises on
    any failure (Kafka unreachable, commit refused); calling it again is safe.

    Uses a group-less member (manual ``assign``), which Kafka accepts only while the group has no
    active members -- true for a group id that is new with the trigger or its source.
    """
    if start not in ("latest", "earliest"):
        raise ValueError(f"start must be 'latest' or 'earliest', not {start!r}")
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group_id, enable_auto_commit=False)
    try:
        await consumer.start()
        # Metadata for all topics: a request naming the topic could auto-create it. (The public
        # consumer.topics() fetches the same but does not update partitions_for_topic().)
        cluster = await consumer._client.fetch_all_metadata()
        tps = [TopicPartition(topic, p) for p in sorted(cluster.partitions_for_topic(topic) or ())]
        if not tps:
            return {}
        consumer.assign(tps)
        if start == "latest":
            offsets = await consumer.end_offsets(tps)
        else:
            offsets = await consumer.beginning_offsets(tps)
        await consumer.commit(dict(offsets))
        return {tp.partition: offset for tp, offset in offsets.items()}
    finally:
        await asyncio.shield(consumer.stop())


# How long the group waits for a member to finish its in-flight chunks and rejoin during a
# rebalance; a chunk still running after REVOKE_GRACE_S is cancelled instead (its events run again
# on the new owner), so no partition is worked on by two members at once.
REBALANCE_TIMEOUT_MS = 300_000
FETCH_PARTITION_BYTES = 256 * 1024
FETCH_MAX_BYTES = 1024 * 1024
REVOKE_GRACE_S = 240.0
COMMIT_ON_CLOSE_S = 5.0


class _FinishLanesOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    """Holds the rebalance until the chunks fetched under the old assignment are finished."""

    def __init__(self, sub: KafkaSubscription, consumer: AIOKafkaConsumer) -> None:
        self.sub = sub
        self.consumer = consumer

    async def on_partitions_revoked(self, revoked: Any) -> None:
        self.sub._rebalancing = True
        await self.sub._close_lanes(self.consumer, list(revoked), REVOKE_GRACE_S)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.sub._rebalancing = False
        self.sub.log.info("kafka partitions assigned", partitions=sorted(tp.partition for tp in assigned))


class KafkaSubscription(SupervisedLoop):
    def __init__(
        self,
        *,
        name: str,
        bootstrap: str,
        topic: str,
        group_id: str,
        sink: Sink,
        session_timeout_ms: int = 10000,
        heartbeat_interval_ms: int = 1000,
        fetch_max_wait_ms: int = 10,
        idle_fetch_max_wait_ms: int = 500,
        idle_after_s: float = 5.0,
        batch_size: int = 1,
        batch_window_s: float = 0.0,
        ordering: str = "partition",
        parallelism: int = 4,
        max_chunk: int = 500,
        lane_capacity: int = 1000,
        commit_interval_s: float = 0.2,
        shutdown_grace_s: float = 10.0,
    ) -> None:
        super().__init__(name)
        self.shutdown_grace_s = shutdown_grace_s
        # lanes' grace, then the bounded final commit, then consumer.stop()
        self.stop_grace_s = shutdown_grace_s + COMMIT_ON_CLOSE_S + 10.0
        self.bootstrap = bootstrap
        self.topic = topic
        self.group_id = group_id
        self.sink = sink
        self.session_timeout_ms = session_timeout_ms
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.idle_fetch_max_wait_ms = max(idle_fetch_max_wait_ms, fetch_max_wait_ms)
        self.idle_after_s = idle_after_s
        self.batch_size = batch_size
        self.batch_window_s = batch_window_s
        self.ordering = ordering
        self.parallelism = parallelism
        self.max_chunk = max_chunk
        self.lane_capacity = max(lane_capacity, batch_size)
        self.commit_interval_s = commit_interval_s
        self.consumer: AIOKafkaConsumer | None = None  # the current one, for inspection only
        self.lanes: dict[TopicPartition, Lane] = {}
        self._marks: dict[TopicPartition, int] = {}  # finished offsets not yet committed
        # For cursor(): the offsets this member last committed, and how far it has read, per
        # partition it holds (forgotten when a partition goes).
        self._committed: dict[TopicPartition, int] = {}
        self._read: dict[TopicPartition, int] = {}
        self._marked = asyncio.Event()
        self._room = asyncio.Event()  # a lane acked something: it may take more now
        self._last_records = time.monotonic()
        # From a revoke until the new assignment, fetched records are dropped: their partitions
        # may be going to another member, and the consumer restarts every partition from its
        # committed offset once the rebalance is over.
        self._rebalancing = False

    def progress(self) -> dict[str, object]:
        return {str(tp.partition): lane.progress() for tp, lane in sorted(self.lanes.items())}

    def cursor(self) -> dict[str, Any]:
        """Where this member stands on the partitions it holds, from what it knows (no broker
        call, never blocks): ``committed``, the offset it last committed (before its first
        commit: where it began, the group's committed offset); ``end``, the highest of the last
        fetch's high watermark and what it has read (Tansu reports high watermarks 1-2 short at
        times); ``lag`` = end - committed. Partitions other members hold are not listed."""
        consumer = self.consumer
        partitions: list[dict[str, Any]] = []
        assigned: list[TopicPartition] = []
        if consumer is not None:
            try:
                assigned = sorted(consumer.assignment(), key=lambda tp: tp.partition)
            except Exception:  # not subscribed yet, or stopping
                assigned = []
        for tp in assigned:
            highwater = position = None
            try:
                assert consumer is not None
                highwater = consumer.highwater(tp)
                # aiokafka 0.14 (pinned): the next offset to fetch; before anything was read it is
                # the group's committed offset
                state = consumer._subscription.subscription.assignment.state_value(tp)
                position = state.position if state is not None and state.has_valid_position else None
            except Exception:  # revoked meanwhile
                pass
            read = self._read.get(tp)
            committed = self._committed.get(tp)
            if committed is None and read is None:
                committed = position
            known = [o for o in (highwater, read, committed) if isinstance(o, int) and o >= 0]
            end = max(known) if known else None
            lag = end - committed if end is not None and committed is not None else None
            partitions.append({"partition": tp.partition, "committed": committed, "end": end, "lag": lag})
        lags = [p["lag"] for p in partitions if p["lag"] is not None]
        return {"group": self.group_id, "partitions": partitions, "lag": sum(lags) if lags else None}

    async def run_once(self) -> None:
        consumer = self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=self.group_id,
            enable_auto_commit=False,
            # Start positions are committed at trigger creation (commit_start_offsets); anything
            # without a commit appeared later, and an out-of-range offset must not skip backlog.
            auto_offset_reset="earliest",
            session_timeout_ms=self.session_timeout_ms,
            heartbeat_interval_ms=self.heartbeat_interval_ms,
            rebalance_timeout_ms=REBALANCE_TIMEOUT_MS,
            # A function may retry with backoff for a while before its chunk is finished.
            max_poll_interval_ms=3_600_000,
            # A topic created after the trigger (by its first produce) is noticed within seconds.
            metadata_max_age_ms=3000,
            # How long the broker may hold a fetch when there is nothing new: the latency of the
            # first message after a quiet spell, against fetch requests per second while idle.
            fetch_max_wait_ms=self.fetch_max_wait_ms,
            # What one fetch may bring (aiokafka's defaults: 1 MB a partition, 50 MB in all). A
            # backlog's first fetch of every partition at once was a passing +5 MB of hub RSS
            # (issue 21: 120 MB); a quarter of it still feeds a lane for thousands of events,
            # and a message larger than this still comes (as the first of its fetch).
            max_partition_fetch_bytes=FETCH_PARTITION_BYTES,
            fetch_max_bytes=FETCH_MAX_BYTES,
        )
        committer: asyncio.Task[None] | None = None
        try:
            consumer.subscribe([self.topic], listener=_FinishLanesOnRevoke(self, consumer))
            await consumer.start()
            self.state = "running"
            self.log.info("kafka subscription running", topic=self.topic, group=self.group_id)
            committer = asyncio.create_task(self._commit_loop(consumer), name=f"commit:{self.name}")
            while not self.stopping.is_set():
                if committer.done():
                    committer.result()  # raise what killed it
                self._room.clear()
                if self._flow_control(consumer):
                    # every partition is paused: nothing can arrive until a lane makes room, so
                    # wait for that rather than for getmany's timeout
                    try:
                        await asyncio.wait_for(self._room.wait(), 1.0)
                    except TimeoutError:
                        pass
                    continue
                batch = await consumer.getmany(timeout_ms=1000, max_records=self.max_chunk)
                self._adapt_fetch_wait(consumer, bool(batch))
                if self._rebalancing:
                    continue
                arrived = time.monotonic()  # once a fetch, not once a message
                for tp, msgs in batch.items():
                    if self.ordering == "key":
                        items = [self._item(m, arrived) for m in msgs]
                    else:  # partition order, the default: no per-message key to work out
                        items = [Item(message_event(m), m.offset + 1, None, arrived) for m in msgs]
                    self._lane(tp).put(items)
                    if msgs:
                        self._committed.setdefault(tp, msgs[0].offset)  # where this member began
                        self._read[tp] = msgs[-1].offset + 1
        finally:
            try:
                if committer is not None:
                    committer.cancel()
                    await asyncio.wait([committer])
                await self._close_lanes(consumer, list(self.lanes), self.shutdown_grace_s)
            finally:
                # always, even when cancelled mid-close: a consumer left running stays in the
                # group (heartbeating) and holds partitions a new subscription then waits for
                if self.consumer is consumer:
                    self.consumer = None
                await asyncio.shield(consumer.stop())

    def _adapt_fetch_wait(self, consumer: AIOKafkaConsumer, got: bool) -> None:
        """Short fetch waits while records flow (low latency on brokers that do not answer a
        waiting fetch as soon as data arrives, like Tansu), long ones once the topic has been
        quiet for ``idle_after_s`` (an idle trigger then costs a few fetches a second, not a
        hundred). Apache Kafka answers a waiting fetch at once, so there it costs no latency."""
        now = time.monotonic()
        if got:
            self._last_records = now
        quiet = now - self._last_records > self.idle_after_s
        wanted = self.idle_fetch_max_wait_ms if quiet else self.fetch_max_wait_ms
        fetcher = getattr(consumer, "_fetcher", None)  # aiokafka 0.14 (pinned) reads this per fetch
        if fetcher is not None and getattr(fetcher, "_fetch_max_wait_ms", None) != wanted:
            fetcher._fetch_max_wait_ms = wanted

    def _item(self, msg: ConsumerRecord[bytes, bytes], arrived: float) -> Item:
        """``ordering="key"``: the message's key says which items keep their order."""
        key = msg.key.hex() if msg.key is not None else f"\0{msg.offset}"  # no key: no order to keep
        return Item(message_event(msg), msg.offset + 1, key, arrived)

    def _lane(self, tp: TopicPartition) -> Lane:
        lane = self.lanes.get(tp)
        if lane is None:
            async def ack(offset: int, tp: TopicPartition = tp) -> None:
                self._marks[tp] = offset
                self._marked.set()

            lane = self.lanes[tp] = Lane(
                f"{self.name}/{tp.partition}", self.sink, ack,
                batch_size=self.batch_size, window_s=self.batch_window_s, max_chunk=self.max_chunk,
                capacity=self.lane_capacity, by_key=self.ordering == "key", parallelism=self.parallelism,
                on_room=functools.partial(self._made_room, tp),
            )
            lane.start()
        return lane

    def _made_room(self, tp: TopicPartition) -> None:
        """A lane took items off: resume its partition now if it was paused for want of room. The
        fetch loop may be inside a ``getmany`` that waits (up to a second) on partitions with
        nothing new: their backlog read, another partition's lane emptied meanwhile and nothing
        fetched for it until that wait ended (a second lost at the tail of every backlog)."""
        self._room.set()
        consumer, lane = self.consumer, self.lanes.get(tp)
        if consumer is None or lane is None or self._rebalancing or lane.room() < self.max_chunk:
            return
        try:
            if tp in consumer.paused():
                consumer.resume(tp)  # the fetcher sends a fetch for it at once, the waiting getmany returns it
        except IllegalStateError:  # no longer assigned: the rebalance deals with it
            pass

    def _flow_control(self, consumer: AIOKafkaConsumer) -> bool:
        """Pause partitions whose lane is full, resume them once it has room again; True when
        every assigned partition is paused."""
        paused = consumer.paused()
        for tp, lane in self.lanes.items():
            full = lane.room() < self.max_chunk
            if full and tp not in paused:
                consumer.pause(tp)
            elif not full and tp in paused:
                consumer.resume(tp)
        assigned = consumer.assignment()
        return bool(assigned) and assigned <= consumer.paused()

    async def _commit_loop(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            await self._marked.wait()
            self._marked.clear()
            await self._commit(consumer)
            await asyncio.sleep(self.commit_interval_s)

    async def _commit(self, consumer: AIOKafkaConsumer, only: list[TopicPartition] | None = None) -> None:
        """Commit finished offsets through the consumer that fetched them, never a later one."""
        marks = {tp: o for tp, o in self._marks.items() if only is None or tp in only}
        if not marks:
            return
        try:
            await consumer.commit(marks)
        except (CommitFailedError, IllegalStateError) as exc:
            # The group moved on without us (e.g. our session expired): the partition's new owner
            # starts from the last commit and the hub skips events that already succeeded.
            self.log.warning("kafka commit skipped: partitions no longer ours",
                             partitions=sorted(tp.partition for tp in marks),
                             error=f"{type(exc).__name__}: {exc}")
        except KafkaError as exc:  # the broker is away: keep the marks, try again later
            self.log.warning("kafka commit failed; will retry", error=f"{type(exc).__name__}: {exc}")
            self._marked.set()
            return
        for tp, offset in marks.items():
            self._committed[tp] = offset
            if self._marks.get(tp) == offset:
                del self._marks[tp]

    async def _close_lanes(self, consumer: AIOKafkaConsumer, tps: list[TopicPartition], grace_s: float) -> None:
        for tp in tps:  # cursor(): another member may move these from now on
            self._read.pop(tp, None)
        lanes = {tp: self.lanes.pop(tp) for tp in tps if tp in self.lanes}
        if not lanes:
            return
        if any(lane.busy for lane in lanes.values()):
            self.log.info("kafka: finishing the chunks in flight before letting partitions go",
                          partitions=sorted(tp.partition for tp in lanes))
        await asyncio.gather(*(lane.close(grace_s) for lane in lanes.values()))
        # bounded: aiokafka retries a commit for as long as the broker is away, and the hub must
        # not hang a stop or a rebalance on that; the commit is left to end on its own, not
        # cancelled inside aiokafka
        commit = asyncio.ensure_future(self._commit(consumer, list(lanes)))
        commit.add_done_callback(lambda t: t.cancelled() or t.exception())
        done, _ = await asyncio.wait([commit], timeout=COMMIT_ON_CLOSE_S)
        failed = commit.exception() if done else None
        if failed is not None:
            raise failed
        if not done:
            self.log.warning("kafka: final commit timed out; those events will come back and be skipped",
                             partitions=sorted(tp.partition for tp in lanes))
        for tp in lanes:
            self._marks.pop(tp, None)
        for tp in tps:
            self._committed.pop(tp, None)
