"""Batches, partial failures, concurrency and ordering, end to end on the real servers."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from pymongo import AsyncMongoClient

from tests.hubfixtures import Api, eventually
from tests.test_kafka_connector import create_topic

pytestmark = pytest.mark.integration

# Returns what it saw and when, so the tests can check batch shapes, order and overlap.
SEEN = """
import time

def handler(event, context):
    start = time.time()
    records = event["records"] if event.get("type") == "hub.batch" else [event]
    delay = float(records[0]["data"].get("value", {}).get("sleep", 0)) if isinstance(records[0]["data"].get("value"), dict) else 0.0
    time.sleep(delay)
    failures = [{"itemIdentifier": r["id"]} for r in records
                if isinstance(r["data"].get("value"), dict) and r["data"]["value"].get("poison")]
    out = {"start": start, "end": time.time(), "n": [r["data"]["value"]["n"] for r in records if "value" in r["data"]],
           "keys": [r["subject"] for r in records]}
    if event.get("type") == "hub.batch":
        out["batchItemFailures"] = failures
    elif failures:
        raise RuntimeError("poison")
    return out
"""


async def _produce(bootstrap: str, topic: str, messages: list[tuple[int, bytes | None, dict[str, Any]]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, acks="all")
    await producer.start()
    try:
        for partition, key, value in messages:
            await producer.send(topic, json.dumps(value).encode(), key=key, partition=partition)
        await producer.flush()
    finally:
        await producer.stop()


def _succeeded_n(invs: list[dict[str, Any]]) -> list[int]:
    return [n for i in sorted(invs, key=lambda i: i["result"]["start"])
            if i["status"] in ("succeeded", "partial") for n in i["result"]["n"]]


async def test_kafka_batch_closes_at_size_or_window(api: Api, servers: dict[str, Any], unique: str) -> None:
    topic = f"batch-{unique}"
    await create_topic(servers["kafka"].bootstrap, topic, 1)
    await api.put_function(f"seen-{unique}", SEEN)
    await api.put_trigger(f"b-{unique}", f"seen-{unique}", {"type": "kafka", "topic": topic},
                          batch={"size": 5, "window_ms": 1000})
    await _produce(servers["kafka"].bootstrap, topic, [(0, None, {"n": n}) for n in range(12)])
    invs = await api.wait_invocations(3, trigger=f"b-{unique}")
    # two batches closed at the size, the last (2 records) when its window ran out
    assert sorted(i["batch_size"] for i in invs) == [2, 5, 5]
    assert _succeeded_n(invs) == list(range(12))
    one = invs[0]
    assert len(one["event_ids"]) == one["batch_size"] and all(it["status"] == "succeeded" for it in one["items"])
    # every event can be traced to the record that handled it
    found = await api.ok("GET", "/v1/invocations", params={"event_id": one["event_ids"][-1]})
    assert [i["invocation_id"] for i in found["invocations"]] == [one["invocation_id"]]


ECHO_DEPTH = """
def handler(event, context):
    records = event["records"] if event.get("type") == "hub.batch" else [event]
    return [[r["data"]["encoding"], len(r["data"]["value"]) if r["data"]["encoding"] == "text" else r["data"]["value"]]
            for r in records]
"""


@pytest.mark.parametrize("batch", [None, {"size": 10, "window_ms": 200}])
async def test_kafka_values_nested_too_deep_reach_the_handler_as_text(
    api: Api, servers: dict[str, Any], unique: str, batch: dict[str, Any] | None
) -> None:
    """A value nested deeper than an event may be stored (64) is handed over as its text: at
    1,010 levels, orjson reads it but the worker's stdlib decoder would not, and every worker
    that got it crashed before the function ran (its dead letter could not be stored either),
    stopping the partition behind it. The messages after it run."""
    topic = f"deep-{unique}"
    await create_topic(servers["kafka"].bootstrap, topic, 1)
    await api.put_function(f"echo-{unique}", ECHO_DEPTH)
    await api.put_trigger(f"d-{unique}", f"echo-{unique}", {"type": "kafka", "topic": topic},
                          **({"batch": batch} if batch else {}))
    values = [b'{"ok": 1}', b"[" * 1010 + b"]" * 1010, b"[" * 995 + b"]" * 995, b"[" * 65 + b"]" * 65, b'{"ok": 2}']
    producer = AIOKafkaProducer(bootstrap_servers=servers["kafka"].bootstrap, enable_idempotence=False, acks="all")
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value, partition=0)
    finally:
        await producer.stop()

    async def all_seen() -> list[Any]:
        invs = await api.invocations(trigger=f"d-{unique}")
        seen = [r for i in invs if i["status"] == "succeeded" for r in i["result"]]
        return seen if len(seen) >= len(values) else []

    seen = await eventually(all_seen, timeout=60)
    assert sorted(map(repr, seen)) == sorted(map(repr, [["json", {"ok": 1}], ["text", 2020], ["text", 1990],
                                                         ["text", 130], ["json", {"ok": 2}]]))


async def test_kafka_partial_failure_keeps_order_and_dead_letters_the_poison(
    api: Api, servers: dict[str, Any], unique: str
) -> None:
    topic = f"partial-{unique}"
    await create_topic(servers["kafka"].bootstrap, topic, 1)
    await api.put_function(f"seen-{unique}", SEEN)
    await api.put_trigger(f"p-{unique}", f"seen-{unique}", {"type": "kafka", "topic": topic},
                          batch={"size": 10, "window_ms": 500},
                          retry={"max_attempts": 2, "backoff_s": 0.05, "max_backoff_s": 0.1})
    values = [{"n": n, "poison": n == 4} for n in range(10)]
    await _produce(servers["kafka"].bootstrap, topic, [(0, None, v) for v in values])

    async def finished() -> list[dict[str, Any]] | None:
        invs = await api.invocations(trigger=f"p-{unique}")
        return invs if sorted(_finished_n(invs)) == [n for n in range(10) if n != 4] else None

    def _finished_n(invs: list[dict[str, Any]]) -> list[int]:
        out = []
        for inv in invs:
            for item, n in zip(inv["items"], inv["result"]["n"] if inv["result"] else []):
                if item["status"] == "succeeded":
                    out.append(n)
        return out

    await eventually(finished)
    invs = sorted(await api.invocations(trigger=f"p-{unique}"), key=lambda i: i["result"]["start"])
    # 0-3 finished in the first call; 4 (poison) and what follows it were retried together;
    # 4 was dead-lettered on its own and 5-9 then ran in order
    assert [i["result"]["n"] for i in invs] == [list(range(10)), list(range(4, 10)), list(range(5, 10))]
    assert [i["status"] for i in invs] == ["partial", "partial", "succeeded"]
    assert _finished_n(invs) == [0, 1, 2, 3, 5, 6, 7, 8, 9]  # each once, in order
    dls = (await api.ok("GET", "/v1/dead-letters", params={"trigger": f"p-{unique}"}))["dead_letters"]
    assert [d["event"]["data"]["value"]["n"] for d in dls] == [4]
    assert [a["error"]["type"] for a in dls[0]["attempts"]] == ["BatchItemFailure", "BatchItemFailure"]


async def test_backlog_on_four_partitions_runs_four_at_once(api: Api, servers: dict[str, Any], unique: str) -> None:
    topic = f"conc-{unique}"
    await create_topic(servers["kafka"].bootstrap, topic, 4)
    await api.put_function(f"seen-{unique}", SEEN, max_concurrency=4)
    # a backlog first, then the trigger (start: earliest)
    await _produce(servers["kafka"].bootstrap, topic,
                   [(p, None, {"n": p * 100 + i, "sleep": 0.3}) for i in range(4) for p in range(4)])
    await api.put_trigger(f"c-{unique}", f"seen-{unique}", {"type": "kafka", "topic": topic, "start": "earliest"})
    invs = await api.wait_invocations(16, trigger=f"c-{unique}")
    spans = [(i["result"]["start"], i["result"]["end"]) for i in invs]
    most = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
    assert most == 4, f"at most {most} invocations overlapped"
    # each partition in order
    for p in range(4):
        mine = [n for n in _succeeded_n(invs) if n // 100 == p]
        assert mine == sorted(mine) and len(mine) == 4


async def test_ordering_key_runs_keys_in_parallel_and_each_in_order(
    api: Api, servers: dict[str, Any], unique: str
) -> None:
    topic = f"keys-{unique}"
    await create_topic(servers["kafka"].bootstrap, topic, 1)
    await api.put_function(f"seen-{unique}", SEEN, max_concurrency=4)
    await _produce(servers["kafka"].bootstrap, topic,
                   [(0, f"k{k}".encode(), {"n": k * 100 + i, "sleep": 0.2}) for i in range(4) for k in range(4)])
    await api.put_trigger(f"o-{unique}", f"seen-{unique}", {"type": "kafka", "topic": topic, "start": "earliest"},
                          ordering="key")
    invs = await api.wait_invocations(16, trigger=f"o-{unique}")
    by_key: dict[str, list[int]] = {}
    for n in _succeeded_n(invs):
        by_key.setdefault(f"k{n // 100}", []).append(n)
    assert by_key == {f"k{k}": [k * 100 + i for i in range(4)] for k in range(4)}  # per-key order
    spans = [(i["result"]["start"], i["result"]["end"]) for i in invs]
    assert max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans) > 1  # keys overlapped


async def test_mongodb_batches_in_change_stream_order(api: Api, servers: dict[str, Any], unique: str) -> None:
    db_name = f"mb_{unique}"
    await api.put_function(f"rec-{unique}", "def handler(event, context):\n    return [r['data']['fullDocument']['n'] for r in event['records']]\n")
    await api.put_trigger(f"m-{unique}", f"rec-{unique}", {
        "type": "mongodb", "database": db_name, "collection": "c", "operations": ["insert"]},
        batch={"size": 50, "window_ms": 300})
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(servers["mongo"].url)
    try:
        await client[db_name]["c"].insert_many([{"n": n} for n in range(120)])

        async def all_ran() -> list[dict[str, Any]] | None:
            invs = await api.invocations(trigger=f"m-{unique}")
            return invs if sum(i.get("batch_size", 0) for i in invs) >= 120 else None

        invs = await eventually(all_ran)
    finally:
        await client.close()
    # in the order they were made: one hub's invocation ids count up (started_at is finished_at
    # less the duration, in ms: two quick batches in a row can tie or cross)
    ran = [n for i in sorted(invs, key=lambda i: i["invocation_id"]) for n in i["result"]]
    assert ran == list(range(120))
    assert max(i["batch_size"] for i in invs) == 50 and len(invs) < 120
    assert Counter(i["status"] for i in invs) == {"succeeded": len(invs)}
