"""connectors/kafka.py against a real broker (Tansu): start offsets, commits, restarts, rebalances.

Sinks are plain async functions that record what they are handed. "Nothing else was delivered"
is checked once the group's committed offsets reach the topic's end: every partition is delivered
in order, so anything skipped before that point was skipped for good.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import ConsumerStoppedError, KafkaConnectionError
from aiokafka.structs import ConsumerRecord

from connectors.base import Unfinished
from connectors.kafka import KafkaSubscription, commit_start_offsets, decode_value, message_event
from hub.events import Event
from tests.hubfixtures import eventually

GROUP_TIMING = {"session_timeout_ms": 3000, "heartbeat_interval_ms": 500}


async def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    finally:
        await admin.close()


async def produce(bootstrap: str, topic: str, values: list[str], partitions: int | None = 2) -> None:
    """Round-robin over ``partitions`` partitions (None: let the producer choose, auto-creating)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, acks="all")
    await producer.start()
    try:
        for i, value in enumerate(values):
            part = i % partitions if partitions else None
            await producer.send_and_wait(topic, value.encode(), partition=part)
    finally:
        await producer.stop()


class Observer:
    """Reads a group's committed offsets and a topic's end offsets without joining the group."""

    def __init__(self, bootstrap: str, group: str) -> None:
        self.consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)

    async def committed(self, topic: str, partition: int) -> int | None:
        result: int | None = await self.consumer.committed(TopicPartition(topic, partition))
        return result

    async def caught_up(self, topic: str) -> bool:
        """True once every non-empty partition of the topic is committed up to its end."""
        cluster = await self.consumer._client.fetch_all_metadata()  # topics() does not update the cache
        tps = [TopicPartition(topic, p) for p in cluster.partitions_for_topic(topic) or ()]
        if not tps:
            return False
        ends = await self.consumer.end_offsets(tps)
        if not any(ends.values()):
            return False
        return all([await self.consumer.committed(tp) == end for tp, end in ends.items() if end])


@asynccontextmanager
async def observer(bootstrap: str, group: str) -> AsyncIterator[Observer]:
    obs = Observer(bootstrap, group)
    await obs.consumer.start()
    try:
        yield obs
    finally:
        await obs.consumer.stop()


@asynccontextmanager
async def running(*subs: KafkaSubscription) -> AsyncIterator[None]:
    for sub in subs:
        await sub.start()
    try:
        yield
    finally:
        for sub in subs:
            await sub.stop()


class CountingSubscription(KafkaSubscription):
    """Counts (re)starts, and notes a rebalance that began while a batch was in flight."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.runs = 0
        self.revoked_mid_batch = asyncio.Event()

    async def run_once(self) -> None:
        self.runs += 1
        await super().run_once()

    async def _close_lanes(self, consumer: Any, tps: list[TopicPartition], grace_s: float) -> None:
        if any(self.lanes[tp].busy for tp in tps if tp in self.lanes):
            self.revoked_mid_batch.set()
        await super()._close_lanes(consumer, tps, grace_s)


def subscription(bootstrap: str, topic: str, group: str, sink: Any, name: str = "sub") -> CountingSubscription:
    return CountingSubscription(name=name, bootstrap=bootstrap, topic=topic, group_id=group, sink=sink,
                                **GROUP_TIMING)


def record(ts: Any) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(topic="t", partition=0, offset=7, timestamp=ts, timestamp_type=0, key=b"k",
                          value=b'{"a": 1}', checksum=None, serialized_key_size=1,
                          serialized_value_size=8, headers=[("h", b"v")])


def test_kafka_time_writes_what_isoformat_writes() -> None:
    """The cached second and the per-millisecond tails give datetime's own text, whole seconds
    (no fraction) and second boundaries included."""
    from connectors.kafka import kafka_time

    for ms in [*range(1_765_100_000_000, 1_765_100_002_001), 1, 999, 1000, 1_700_000_000_000]:
        expected = dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).isoformat().replace("+00:00", "Z")
        assert kafka_time(ms) == expected


def test_message_event_without_timestamp_is_now() -> None:
    for ts in (-1, None):
        before = dt.datetime.now(dt.timezone.utc)
        event = message_event(record(ts))
        after = dt.datetime.now(dt.timezone.utc)
        assert before <= dt.datetime.fromisoformat(event.time.replace("Z", "+00:00")) <= after
        assert event.data["timestamp"] == ts and event.data["value"] == {"a": 1}
    event = message_event(record(1_700_000_000_123))
    assert dt.datetime.fromisoformat(event.time.replace("Z", "+00:00")) == dt.datetime(
        2023, 11, 14, 22, 13, 20, 123000, tzinfo=dt.timezone.utc)


def value_record(value: bytes | None, key: bytes | None = b"k") -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(topic="t", partition=2, offset=9, timestamp=1_700_000_000_000, timestamp_type=1,
                          key=key, value=value, checksum=None, serialized_key_size=1, serialized_value_size=1,
                          headers=[("h", b"v"), ("bin", b"\xff")])


# JSON orjson reads (kept as its own bytes), JSON only the stdlib reads (NaN, Infinity, an int
# beyond 64 bits, a lone surrogate, a BOM), text, binary, nothing, and values that try to close
# the value early and add fields to the worker's request
ODD_VALUES = [b'{"n": 1,  "pad": "\\u00e9' + "\u00e9".encode() + b'"}', b' [1, 2.50, -0, 1E5, {"a": null}] ', b'{"a":1,"a":2}',
              b"NaN", b'{"x": Infinity}', b"1e400", b"123456789012345678901234567890", b"-9223372036854775809",
              b'"\\ud800"', b'\xef\xbb\xbf{"a":1}', b"hello", b"\xff\xfe", b"", None, b'"\\u2028"',
              b'1, "seq": 99, "x": 2', b'{"a": 1}, "seq": 99, "y": {"b": 2}', b"[" * 2000 + b"]" * 2000]


@pytest.mark.parametrize("value", ODD_VALUES)
def test_the_handler_gets_the_value_as_before(value: bytes | None) -> None:
    """Whatever way a message's value takes to the worker (its own bytes spliced in by orjson, or
    decoded and encoded by the stdlib), the worker reads what the stdlib's encoding of the
    decoded value gave, alone and in a batch, and nothing but the value."""
    from hub.delivery import batches
    from hub.sandbox.pool import _ENCODER, _encode

    for key in (b"k", None, b"\xff"):
        event = message_event(value_record(value, key))
        expected = json.loads(_ENCODER.encode({"seq": 1, "event": event.to_cloudevent()}))
        for payload, pick in ((batches.payload(event), lambda doc: doc),
                              (batches.envelope([event, event], None, "tr"), lambda doc: doc["records"][1])):
            got = json.loads(_encode({"seq": 1, "event": payload}))
            assert got["seq"] == 1 and list(got) == ["seq", "event"]
            assert repr(pick(got["event"])) == repr(expected["event"])  # repr: NaN == NaN


def test_value_bytes_and_encodings() -> None:
    raw = b'{"a":  1}'
    event = message_event(value_record(raw))
    assert event.value_json is raw and event.data["value"] == {"a": 1}  # the message's own bytes
    from hub.sandbox.pool import _encode
    assert b'"data":{"value":{"a":  1},"encoding":"json","key":"k","topic":"t","partition":2,"offset":9,' \
           b'"timestamp":1700000000000,"timestamp_type":"LOG_APPEND_TIME","headers":{"h":"v","bin":"base64:/w=="}}' \
           in _encode({"event": event.prepared()})
    assert message_event(value_record(b"NaN")).value_json is None  # only the stdlib reads it
    assert message_event(value_record(b"text")).value_json is None
    big = message_event(value_record(b"[123456789012345678901]")).data
    assert big["value"] == [123456789012345678901] and big["encoding"] == "json"
    assert message_event(value_record(b"[" * 2000 + b"]" * 2000)).data["encoding"] == "text"
    # deeper than an event may be stored (hub.events.MAX_PAYLOAD_DEPTH): text by either parser
    for deep in (b"[" * 65 + b"]" * 65, b'{"a":' * 65 + b"1" + b"}" * 65, b"[" * 1010 + b"]" * 1010):
        data = message_event(value_record(deep)).data
        assert (data["encoding"], data["value"]) == ("text", deep.decode())
        assert decode_value(deep) == (deep.decode(), "text")
    at_limit = b"[" * 64 + b"]" * 64
    assert message_event(value_record(at_limit)).data["encoding"] == "json"
    assert message_event(value_record(b'["[[[[' + b"[" * 70 + b'"]')).data["encoding"] == "json"  # in a string
    assert message_event(value_record(b"\xff")).data["encoding"] == "base64"


def test_new_event_is_the_dataclass() -> None:
    from hub.events import new_event

    fields: dict[str, Any] = dict(id="i", source="kafka://t", type="kafka.message", data={"a": 1}, subject=None,
                                  time="t0")
    fast, slow = new_event(**fields), Event(**fields)
    assert fast == slow and fast.__dict__ == slow.__dict__ and repr(fast) == repr(slow)


@pytest.mark.integration
@pytest.mark.timeout(90)
async def test_start_latest_skips_only_what_was_there_before(kafka_server: Any, unique: str) -> None:
    bs, topic, group = kafka_server.bootstrap, f"latest-{unique}", f"g-{unique}"
    await create_topic(bs, topic, 2)
    await produce(bs, topic, [f"before-{i}" for i in range(4)])
    assert await commit_start_offsets(bs, topic, group, "latest") == {0: 2, 1: 2}
    # Produced after the trigger was created but before its consumer group first joined.
    await produce(bs, topic, [f"early-{i}" for i in range(4)])
    got: list[str] = []

    async def sink(events: list[Event]) -> None:
        got.extend(event.data["value"] for event in events)

    async with observer(bs, group) as obs, running(subscription(bs, topic, group, sink)):
        await produce(bs, topic, [f"late-{i}" for i in range(4)])
        await eventually(lambda: obs.caught_up(topic))
    assert sorted(got) == sorted([f"early-{i}" for i in range(4)] + [f"late-{i}" for i in range(4)])


@pytest.mark.integration
@pytest.mark.timeout(90)
async def test_start_earliest_delivers_the_backlog(kafka_server: Any, unique: str) -> None:
    bs, topic, group = kafka_server.bootstrap, f"earliest-{unique}", f"g-{unique}"
    await create_topic(bs, topic, 2)
    await produce(bs, topic, [f"before-{i}" for i in range(4)])
    assert await commit_start_offsets(bs, topic, group, "earliest") == {0: 0, 1: 0}
    got: list[str] = []

    async def sink(events: list[Event]) -> None:
        got.extend(event.data["value"] for event in events)

    async with observer(bs, group) as obs, running(subscription(bs, topic, group, sink)):
        await produce(bs, topic, [f"after-{i}" for i in range(4)])
        await eventually(lambda: obs.caught_up(topic))
    assert sorted(got) == sorted([f"before-{i}" for i in range(4)] + [f"after-{i}" for i in range(4)])


@pytest.mark.integration
@pytest.mark.timeout(90)
async def test_start_latest_on_missing_topic_delivers_everything_later(kafka_server: Any, unique: str) -> None:
    bs, topic, group = kafka_server.bootstrap, f"missing-{unique}", f"g-{unique}"
    assert await commit_start_offsets(bs, topic, group, "latest") == {}
    got: list[str] = []

    async def sink(events: list[Event]) -> None:
        got.extend(event.data["value"] for event in events)

    async with observer(bs, group) as obs, running(subscription(bs, topic, group, sink)):
        await produce(bs, topic, [f"m-{i}" for i in range(5)], partitions=None)  # creates the topic
        await eventually(lambda: obs.caught_up(topic))
    assert sorted(got) == [f"m-{i}" for i in range(5)]


@pytest.mark.integration
@pytest.mark.timeout(30)
async def test_commit_start_offsets_raises_when_kafka_is_unreachable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(KafkaConnectionError):
        await commit_start_offsets(f"127.0.0.1:{port}", "t", "g", "latest")


@pytest.mark.integration
@pytest.mark.timeout(90)
async def test_sink_error_commits_only_finished_events_and_redelivers(kafka_server: Any, unique: str) -> None:
    bs, topic, group = kafka_server.bootstrap, f"fail-{unique}", f"g-{unique}"
    await create_topic(bs, topic, 2)
    await produce(bs, topic, [f"m-{i}" for i in range(12)])  # offsets 0..5 in each partition
    await commit_start_offsets(bs, topic, group, "earliest")
    delivered: list[tuple[int, int]] = []
    failed = False
    redelivered, checked = asyncio.Event(), asyncio.Event()

    async def sink(events: list[Event]) -> None:
        nonlocal failed
        for i, event in enumerate(events):
            where = (event.data["partition"], event.data["offset"])
            delivered.append(where)
            if where == (0, 2):
                if not failed:
                    failed = True
                    raise Unfinished(i, RuntimeError("function store unavailable"))
                redelivered.set()
                await checked.wait()

    sub = subscription(bs, topic, group, sink)
    async with observer(bs, group) as obs, running(sub):
        await asyncio.wait_for(redelivered.wait(), 60)
        # Offsets 0 and 1 finished before the failure; the failed one and everything after it not.
        assert await obs.committed(topic, 0) == 2
        checked.set()
        await eventually(lambda: obs.caught_up(topic))
    # the lane offers the unfinished events again itself: no consumer restart
    assert sub.runs == 1 and sub.state == "stopped"
    assert [o for p, o in delivered if p == 0] == [0, 1, 2, 2, 3, 4, 5]
    assert sorted({o for p, o in delivered if p == 1}) == [0, 1, 2, 3, 4, 5]


@pytest.mark.integration
@pytest.mark.timeout(90)
async def test_a_full_lane_resumes_its_partition_while_the_fetch_waits_on_another(
        kafka_server: Any, unique: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Partition 0 holds a backlog ten lanes deep, partition 1 nothing. The fetch loop pauses
    partition 0 whenever its lane is full, then waits in ``getmany`` on partition 1 alone; the lane
    emptying must resume partition 0 at once, not when that wait ends (a second per lane's worth:
    issue 21 lost a second at the tail of every backlog, once the first partitions were read)."""
    bs, topic, group = kafka_server.bootstrap, f"room-{unique}", f"g-{unique}"
    await create_topic(bs, topic, 2)
    await produce(bs, topic, [f"m-{i}" for i in range(40)], partitions=1)  # all to partition 0
    await commit_start_offsets(bs, topic, group, "earliest")
    got: list[int] = []
    empty_waits = 0  # getmany calls that waited their whole timeout and brought nothing
    getmany = AIOKafkaConsumer.getmany

    async def counting_getmany(self: AIOKafkaConsumer, *partitions: TopicPartition, **kw: Any) -> Any:
        nonlocal empty_waits
        batch = await getmany(self, *partitions, **kw)
        empty_waits += not batch and len(got) < 40
        return batch

    async def sink(events: list[Event]) -> None:
        got.extend(event.data["offset"] for event in events)

    monkeypatch.setattr(AIOKafkaConsumer, "getmany", counting_getmany)
    sub = CountingSubscription(name="room", bootstrap=bs, topic=topic, group_id=group, sink=sink,
                               max_chunk=4, lane_capacity=4, **GROUP_TIMING)
    async with observer(bs, group) as obs, running(sub):
        await eventually(lambda: obs.caught_up(topic))
    assert got == list(range(40))
    # Ten refills of the lane; before the fix each one waited out a getmany (ten or more). One or
    # two may still time out on a machine that stalls for a second.
    assert empty_waits <= 2, f"{empty_waits} fetch waits of a second each while partition 0 had a backlog"


@pytest.mark.integration
@pytest.mark.timeout(120)
async def test_rebalance_waits_for_the_in_flight_batch(kafka_server: Any, unique: str) -> None:
    bs, topic, group = kafka_server.bootstrap, f"rebalance-{unique}", f"g-{unique}"
    await create_topic(bs, topic, 2)
    await commit_start_offsets(bs, topic, group, "latest")
    await produce(bs, topic, [f"a-{i}" for i in range(20)])
    in_flight: dict[str, list[str]] = {}
    overlaps: list[tuple[str, list[str]]] = []
    delivered: dict[str, set[tuple[int, int]]] = {"first": set(), "second": set()}
    first_blocked, release = asyncio.Event(), asyncio.Event()

    def sink_for(name: str) -> Any:
        async def sink(events: list[Event]) -> None:
            for event in events:
                if in_flight.get(event.id):
                    overlaps.append((event.id, [*in_flight[event.id], name]))
                in_flight.setdefault(event.id, []).append(name)
                try:
                    delivered[name].add((event.data["partition"], event.data["offset"]))
                    if name == "first" and not release.is_set():  # a slow function, mid-batch
                        first_blocked.set()
                        await release.wait()
                finally:
                    in_flight[event.id].remove(name)
        return sink

    first = subscription(bs, topic, group, sink_for("first"), "first")
    second = subscription(bs, topic, group, sink_for("second"), "second")
    async with observer(bs, group) as obs, running(first):
        await asyncio.wait_for(first_blocked.wait(), 60)
        async with running(second):
            # The second member's join starts a rebalance while the first is mid-batch; the
            # rebalance must wait for that batch rather than hand its partitions over.
            await asyncio.wait_for(first.revoked_mid_batch.wait(), 60)
            # However long the batch runs, the second member gets nothing meanwhile (a member whose
            # revoke returned at once would have the partitions handed over within a join, ~1.5 s).
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(eventually(lambda: _assigned(second)), 2 * 3.0)
            release.set()
            await eventually(lambda: _assigned(second))
            await produce(bs, topic, [f"b-{i}" for i in range(20)])
            await eventually(lambda: obs.caught_up(topic))
            assert first.state == "running" and second.state == "running"
    assert overlaps == []
    assert first.runs == 1 and second.runs == 1
    assert delivered["first"] | delivered["second"] == {(p, o) for p in (0, 1) for o in range(20)}
    assert delivered["second"], "the second member never got a partition"


async def _assigned(sub: KafkaSubscription) -> bool:
    return bool(sub.consumer and sub.consumer.assignment())


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_consumer_is_closed_when_stopped_during_start() -> None:
    connected = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connected.set()  # never answers, so the consumer's start() hangs in bootstrap
        await reader.read()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]

    async def sink(events: list[Event]) -> None:
        raise AssertionError("nothing to deliver")

    sub = subscription(f"127.0.0.1:{port}", "t", "g", sink)
    # stop() waits this long for a start hung in bootstrap before it cancels it (the hub's own
    # grace is ~25 s of the same wait: the path is the same)
    sub.stop_grace_s = 1.0
    try:
        await sub.start()
        await asyncio.wait_for(connected.wait(), 30)
        consumer = sub.consumer
        assert consumer is not None and sub.state == "starting"
        await sub.stop()
        assert sub.consumer is None
        with pytest.raises(ConsumerStoppedError):
            await consumer.getmany(timeout_ms=0)
    finally:
        server.close()


def test_aws_format_gets_the_original_json_bytes() -> None:
    """event_format "aws": a JSON value is base64 of the message's own bytes (spacing, number
    spelling), not a compact re-serialisation; without them (a replayed dead letter) it still is."""
    import base64

    from hub.spec.aws_events import kafka_record

    raw = b'{ "a" : 1.50, "b": [ ] }'
    event = message_event(value_record(raw))
    assert base64.b64decode(kafka_record(event)["value"]) == raw
    replayed = Event.from_cloudevent(event.to_cloudevent())
    assert base64.b64decode(kafka_record(replayed)["value"]) == b'{"a":1.5,"b":[]}'
