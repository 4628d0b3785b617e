"""Kafka source: one consumer group per trigger, offsets committed only for finished events.

Partitions are worked on concurrently, each strictly in order; after a partition's batch is
finished its next offset is committed. A crash before the commit redelivers the batch, and the
dispatcher's completion records keep already-succeeded events from running twice.

Where a new group starts is committed once, when the trigger is created
(:func:`commit_start_offsets`), so the consumer itself always resets to ``earliest``: a partition
or topic without a committed offset appeared after the trigger and holds only newer messages.

A rebalance waits for the in-flight batch (the revoke callback awaits it, and it commits what it
finished), so a partition is never worked on by two members at once.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError
from aiokafka.structs import ConsumerRecord

from connectors.base import Sink, SupervisedLoop
from hub.events import Event, utc_now_iso


def decode_value(raw: bytes | None) -> tuple[Any, str]:
    """JSON when it parses, else text when it is UTF-8, else base64 (the encoding says which)."""
    if raw is None:
        return None, "null"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode(), "base64"
    try:
        return json.loads(text), "json"
    except ValueError:
        return text, "text"


def _text_or_b64(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(raw).decode()


def message_event(msg: ConsumerRecord[bytes, bytes]) -> Event:
    value, encoding = decode_value(msg.value)
    key = _text_or_b64(msg.key)
    # -1 (or None) means the producer sent no timestamp: use "now" rather than 1969.
    if msg.timestamp is not None and msg.timestamp > 0:
        ts = dt.datetime.fromtimestamp(msg.timestamp / 1000, dt.timezone.utc)
        time = ts.isoformat().replace("+00:00", "Z")
    else:
        time = utc_now_iso()
    return Event(
        # offset alone is not enough: a recreated topic (or a memory-only broker restart) starts
        # again at 0, and those new records must not look like redeliveries of the old ones.
        id=f"kafka:{msg.topic}:{msg.partition}:{msg.offset}:{msg.timestamp}",
        source=f"kafka://{msg.topic}",
        type="kafka.message",
        subject=key,
        time=time,
        data={
            "value": value,
            "encoding": encoding,
            "key": key,
            "topic": msg.topic,
            "partition": msg.partition,
            "offset": msg.offset,
            "timestamp": msg.timestamp,
            "headers": {k: _text_or_b64(v) for k, v in (msg.headers or ())},
        },
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


Batch = dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]

# How long the group waits for a member to finish its in-flight batch and rejoin during a
# rebalance; a batch still running after REVOKE_GRACE_S is cancelled instead (its events run again
# on the new owner), so no partition is worked on by two members at once.
REBALANCE_TIMEOUT_MS = 300_000
REVOKE_GRACE_S = 240.0


class _FinishBatchOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    """Holds the rebalance until the batch fetched under the old assignment is finished."""

    def __init__(self, sub: KafkaSubscription) -> None:
        self.sub = sub
        self.batch: asyncio.Task[None] | None = None

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.sub._finish_batch(self.batch, revoked)

    async def on_partitions_assigned(self, assigned: Any) -> None:
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
        max_records: int = 200,
    ) -> None:
        super().__init__(name)
        self.bootstrap = bootstrap
        self.topic = topic
        self.group_id = group_id
        self.sink = sink
        self.session_timeout_ms = session_timeout_ms
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.max_records = max_records
        self.consumer: AIOKafkaConsumer | None = None  # the current one, for inspection only

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
            # A function may retry with backoff for a while before its batch is finished.
            max_poll_interval_ms=3_600_000,
            # A topic created after the trigger (by its first produce) is noticed within seconds.
            metadata_max_age_ms=3000,
        )
        listener = _FinishBatchOnRevoke(self)
        try:
            consumer.subscribe([self.topic], listener=listener)
            await consumer.start()
            self.state = "running"
            self.log.info("kafka subscription running", topic=self.topic, group=self.group_id)
            while True:
                batch = await consumer.getmany(timeout_ms=1000, max_records=self.max_records)
                if batch:
                    # Set before any await, so a revoke that starts from here on waits for it.
                    listener.batch = asyncio.create_task(self._batch(consumer, batch))
                    await listener.batch
        finally:
            task = listener.batch
            if task is not None and not task.done():
                task.cancel()
                await asyncio.wait([task])
            if self.consumer is consumer:
                self.consumer = None
            await asyncio.shield(consumer.stop())

    async def _finish_batch(self, task: asyncio.Task[None] | None, revoked: Any) -> None:
        if task is None or task.done():
            return
        self.log.info("kafka rebalance: finishing the in-flight batch first",
                      revoked=sorted(tp.partition for tp in revoked))
        # asyncio.wait, not await: the batch's own error is for run_once to raise, and this
        # callback being cancelled (consumer stopping) must not cancel the batch.
        await asyncio.wait([task], timeout=REVOKE_GRACE_S)
        if not task.done():
            self.log.warning("kafka rebalance: batch not finished in time; cancelling it",
                             grace_s=REVOKE_GRACE_S)
            task.cancel()
            await asyncio.wait([task])

    async def _batch(self, consumer: AIOKafkaConsumer, batch: Batch) -> None:
        try:
            async with asyncio.TaskGroup() as tg:  # one partition failing cancels the others
                for tp, msgs in batch.items():
                    tg.create_task(self._partition(consumer, tp, msgs))
        except ExceptionGroup as eg:
            if len(eg.exceptions) == 1:  # the usual case: report the sink's own error
                raise eg.exceptions[0] from None
            raise

    async def _partition(self, consumer: AIOKafkaConsumer, tp: TopicPartition,
                         msgs: list[ConsumerRecord[bytes, bytes]]) -> None:
        finished = msgs[0].offset  # the next offset to commit
        try:
            for msg in msgs:
                await self.sink(message_event(msg))
                finished = msg.offset + 1
        except Exception:
            if finished > msgs[0].offset:  # keep what did finish; the failed event runs again
                await self._commit(consumer, tp, finished)
            raise
        await self._commit(consumer, tp, finished)

    async def _commit(self, consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int) -> None:
        """Commit through the consumer that fetched the batch, never a later one."""
        try:
            await consumer.commit({tp: offset})
        except (CommitFailedError, IllegalStateError) as exc:
            # The group moved on without us (e.g. our session expired): the partition's new owner
            # starts from the last commit and the dispatcher skips events that already succeeded.
            self.log.warning("kafka commit skipped: partition no longer ours", partition=tp.partition,
                             offset=offset, error=f"{type(exc).__name__}: {exc}")
