"""Kafka source: one consumer group per trigger, offsets committed only for finished events.

Partitions are worked on concurrently, each strictly in order; after a partition's batch is
finished its next offset is committed. A crash before the commit redelivers the batch, and the
dispatcher's completion records keep already-succeeded events from running twice.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import ConsumerRecord

from connectors.base import Sink, SupervisedLoop
from hub.events import Event


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
    ts = dt.datetime.fromtimestamp(msg.timestamp / 1000, dt.timezone.utc) if msg.timestamp else None
    return Event(
        # offset alone is not enough: a recreated topic (or a memory-only broker restart) starts
        # again at 0, and those new records must not look like redeliveries of the old ones.
        id=f"kafka:{msg.topic}:{msg.partition}:{msg.offset}:{msg.timestamp}",
        source=f"kafka://{msg.topic}",
        type="kafka.message",
        subject=key,
        time=ts.isoformat().replace("+00:00", "Z") if ts else dt.datetime.now(dt.timezone.utc).isoformat(),
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


async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """The topic's current end offsets ({} when the topic does not exist yet).

    Stored when a ``start: latest`` trigger is created, so messages produced between the API call
    and the consumer group's first join still run.
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()  # refreshes metadata for every topic
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in partitions]
        offsets = await consumer.end_offsets(tps) if tps else {}
        return {tp.partition: off for tp, off in offsets.items()}
    finally:
        await consumer.stop()


class _StartPositions(ConsumerRebalanceListener):  # type: ignore[misc]
    """Where a partition the group never committed starts.

    With a snapshot of end offsets taken at trigger creation: at that offset, and a partition that
    did not exist then (new topic, added partition) from its beginning, since all of it is newer.
    Without one (``start: earliest``) the consumer's ``auto_offset_reset`` decides.
    """

    def __init__(self, sub: KafkaSubscription) -> None:
        self.sub = sub

    async def on_partitions_revoked(self, revoked: Any) -> None:
        pass

    async def on_partitions_assigned(self, assigned: Any) -> None:
        consumer = self.sub.consumer
        if consumer is None:
            return
        snapshot = self.sub.start_offsets
        if snapshot is None:
            return
        for tp in assigned:
            if await consumer.committed(tp) is None:
                consumer.seek(tp, snapshot.get(tp.partition, 0))


class KafkaSubscription(SupervisedLoop):
    def __init__(
        self,
        *,
        name: str,
        bootstrap: str,
        topic: str,
        group_id: str,
        start: str,
        sink: Sink,
        start_offsets: dict[int, int] | None = None,
        session_timeout_ms: int = 10000,
        heartbeat_interval_ms: int = 1000,
        max_records: int = 200,
    ) -> None:
        super().__init__(name)
        self.bootstrap = bootstrap
        self.topic = topic
        self.group_id = group_id
        self.start_mode = start
        self.sink = sink
        self.start_offsets = start_offsets
        self.session_timeout_ms = session_timeout_ms
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.max_records = max_records
        self.consumer: AIOKafkaConsumer | None = None

    async def run_once(self) -> None:
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset=self.start_mode,
            session_timeout_ms=self.session_timeout_ms,
            heartbeat_interval_ms=self.heartbeat_interval_ms,
            # A function may retry with backoff for a while before its batch is finished.
            max_poll_interval_ms=3_600_000,
            # A topic created after the trigger (by its first produce) is noticed within seconds.
            metadata_max_age_ms=3000,
        )
        self.consumer.subscribe([self.topic], listener=_StartPositions(self))
        await self.consumer.start()
        try:
            self.state = "running"
            self.log.info("kafka subscription running", topic=self.topic, group=self.group_id)
            while True:
                batch = await self.consumer.getmany(timeout_ms=1000, max_records=self.max_records)
                if batch:
                    await asyncio.gather(*(self._partition(tp, msgs) for tp, msgs in batch.items()))
        finally:
            consumer, self.consumer = self.consumer, None
            await asyncio.shield(consumer.stop())

    async def _partition(self, tp: TopicPartition, msgs: list[ConsumerRecord[bytes, bytes]]) -> None:
        assert self.consumer is not None
        for msg in msgs:
            await self.sink(message_event(msg))
        await self.consumer.commit({tp: msgs[-1].offset + 1})
