"""Each source end to end on real servers: event in -> function ran -> invocation recorded.

To show that something did NOT run without sleeping, each test sends a matching "marker" event
last, in order behind the others; once the marker has run, anything skipped was skipped for good.
"""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from minio import Minio
from pymongo import AsyncMongoClient

from hub.app import Hub
from tests.hubfixtures import Api

pytestmark = pytest.mark.integration

RECORD = "def handler(event, context):\n    return {'id': event['id'], 'type': event['type'], 'subject': event['subject'], 'data': event['data'], 'source': event['source'], 'specversion': event['specversion']}\n"


async def produce(bootstrap: str, topic: str, messages: list[tuple[bytes | None, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, acks="all")
    await producer.start()
    try:
        for key, value in messages:
            await producer.send_and_wait(topic, value, key=key, partition=0)
    finally:
        await producer.stop()


def minio_client(rgw: Any) -> Minio:
    return Minio(rgw.endpoint.split("://", 1)[1], access_key=rgw.access_key, secret_key=rgw.secret_key,
                 secure=False, region=rgw.region)


async def test_kafka_end_to_end_with_filter(api: Api, servers: dict[str, Any], unique: str) -> None:
    topic = f"orders-{unique}"
    await api.put_function(f"rec-{unique}", RECORD)
    await api.put_trigger(f"k-{unique}", f"rec-{unique}", {"type": "kafka", "topic": topic},
                          filter={"data": {"value": {"kind": ["order"]}}})
    await produce(servers["kafka"].bootstrap, topic, [
        (b"k1", json.dumps({"kind": "order", "n": 1}).encode()),
        (b"k2", json.dumps({"kind": "refund", "n": 2}).encode()),
        (None, b"\xff\xfe not json"),
        (b"k3", json.dumps({"kind": "order", "n": 3}).encode()),
    ])
    invs = await api.wait_invocations(2, trigger=f"k-{unique}")
    assert len(invs) == 2
    results = sorted((i["result"] for i in invs), key=lambda r: r["data"]["offset"])
    assert [r["data"]["value"]["n"] for r in results] == [1, 3]
    first = results[0]
    assert first["specversion"] == "1.0" and first["type"] == "kafka.message"
    assert first["source"] == f"kafka://{topic}" and first["subject"] == "k1"
    assert first["data"]["partition"] == 0 and first["data"]["encoding"] == "json"
    assert all(i["status"] == "succeeded" and i["duration_ms"] > 0 for i in invs)


async def test_kafka_trigger_delete_stops_it(api: Api, servers: dict[str, Any], unique: str) -> None:
    topic = f"del-{unique}"
    await api.put_function(f"rec-{unique}", RECORD)
    await api.put_trigger(f"gone-{unique}", f"rec-{unique}", {"type": "kafka", "topic": topic})
    await produce(servers["kafka"].bootstrap, topic, [(b"a", b'{"n": 1}')])
    await api.wait_invocations(1, trigger=f"gone-{unique}")
    await api.ok("DELETE", f"/v1/triggers/gone-{unique}")
    # a witness trigger created after the delete sees the next message; the deleted one must not
    await api.put_trigger(f"witness-{unique}", f"rec-{unique}", {"type": "kafka", "topic": topic})
    await produce(servers["kafka"].bootstrap, topic, [(b"b", b'{"n": 2}')])
    await api.wait_invocations(1, trigger=f"witness-{unique}")
    assert len(await api.invocations(trigger=f"gone-{unique}")) == 1


async def test_mongodb_end_to_end_operations_and_full_document(
    api: Api, servers: dict[str, Any], unique: str
) -> None:
    db_name, coll_name = f"app_{unique}", "orders"
    await api.put_function(f"rec-{unique}", RECORD)
    await api.put_trigger(f"m-{unique}", f"rec-{unique}", {
        "type": "mongodb", "database": db_name, "collection": coll_name,
        "operations": ["insert", "update"], "full_document": "updateLookup",
    }, filter={"data": {"fullDocument": {"status": [{"anything-but": "ignored"}]}}})
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(servers["mongo"].url)
    try:
        coll = client[db_name][coll_name]
        await coll.insert_one({"_id": 1, "status": "new"})
        await coll.update_one({"_id": 1}, {"$set": {"status": "paid"}})
        await coll.insert_one({"_id": 2, "status": "ignored"})  # filtered out
        await coll.delete_one({"_id": 2})  # operation not watched
        # (not _id 1: updateLookup reads the document when the stream gets to the update, and a
        # delete by then would leave fullDocument null)
        await coll.insert_one({"_id": 3, "status": "marker"})
        invs = await api.wait_invocations(3, trigger=f"m-{unique}")
    finally:
        await client.close()
    by_type = sorted((i["result"] for i in invs), key=lambda r: (
        r["data"]["clusterTime"]["$timestamp"]["t"], r["data"]["clusterTime"]["$timestamp"]["i"]))
    assert [r["type"] for r in by_type] == ["mongodb.insert", "mongodb.update", "mongodb.insert"]
    update = by_type[1]
    assert update["source"] == f"mongodb://{db_name}/{coll_name}"
    assert update["data"]["fullDocument"] == {"_id": 1, "status": "paid"}
    assert update["data"]["updateDescription"]["updatedFields"] == {"status": "paid"}
    assert json.loads(update["subject"]) == {"_id": 1}
    assert len(await api.invocations(trigger=f"m-{unique}")) == 3


async def test_s3_end_to_end_prefix_suffix(api: Api, servers: dict[str, Any], unique: str) -> None:
    bucket = f"uploads-{unique}"
    client = minio_client(servers["rgw"])
    await asyncio.to_thread(client.make_bucket, bucket)
    await api.put_function(f"rec-{unique}", RECORD)
    trig = await api.put_trigger(f"s3-{unique}", f"rec-{unique}", {
        "type": "s3", "bucket": bucket, "events": ["s3:ObjectCreated:*"], "prefix": "in/", "suffix": ".csv",
    })
    assert trig["notifications"]["configured"] is True

    def put(key: str, body: bytes) -> None:
        client.put_object(bucket, key, io.BytesIO(body), len(body))

    for key in ("in/a b.csv", "in/skip.txt", "out/c.csv", "in/zz-marker.csv"):
        await asyncio.to_thread(put, key, b"x,y\n1,2\n")
    invs = await api.wait_invocations(2, trigger=f"s3-{unique}", timeout=90)
    subjects = sorted(i["result"]["subject"] for i in invs)
    assert subjects == ["in/a b.csv", "in/zz-marker.csv"]
    rec = invs[0]["result"]
    assert rec["type"] == "s3:ObjectCreated:Put" and rec["source"] == f"s3://{bucket}"
    assert rec["data"]["bucket"] == bucket and rec["data"]["size"] == 8
    # a later upload must not make the skipped keys run (they were never queued)
    await asyncio.to_thread(put, "in/zzz-second-marker.csv", b"1")
    await api.wait_invocations(3, trigger=f"s3-{unique}", timeout=90)
    assert sorted(i["result"]["subject"] for i in await api.invocations(trigger=f"s3-{unique}")) == [
        "in/a b.csv", "in/zz-marker.csv", "in/zzz-second-marker.csv"]


async def test_hub_metrics_count_invocations(api: Api, hub: Hub, unique: str) -> None:
    await api.put_function(f"m-{unique}", "def handler(e, c):\n    return 1\n")
    await api.ok("POST", f"/v1/functions/m-{unique}/invoke", {})
    async with api.session.get(api.base + "/metrics", headers=api.headers) as r:
        text = await r.text()
    assert f'hub_invocations_total{{function="m-{unique}",status="succeeded"}} 1.0' in text


async def test_mongodb_collection_dropped_and_recreated_keeps_running(
    api: Api, servers: dict[str, Any], unique: str
) -> None:
    db_name = f"drop_{unique}"
    await api.put_function(f"rec-{unique}", RECORD)
    await api.put_trigger(f"d-{unique}", f"rec-{unique}", {
        "type": "mongodb", "database": db_name, "collection": "items", "operations": ["insert"]})
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(servers["mongo"].url)
    try:
        coll = client[db_name]["items"]
        await coll.insert_one({"_id": "before"})
        await api.wait_invocations(1, trigger=f"d-{unique}")
        await coll.drop()  # invalidates the change stream
        await coll.insert_one({"_id": "after"})
        invs = await api.wait_invocations(2, trigger=f"d-{unique}")
    finally:
        await client.close()
    assert sorted(i["result"]["data"]["documentKey"]["_id"] for i in invs) == ["after", "before"]
