"""Lambda code nobody here wrote, run unchanged as hub functions with ``event_format: "aws"``:
Powertools for AWS Lambda (Python) on S3, Kafka (its batch processor, with a partial failure)
and EventBridge scheduled events, and a Starlette app behind Mangum on a function URL.

The dependencies come from ``requirements`` like any function's (pip, from the index), pinned;
every Powertools function uses the same set, so the hub builds it once per test session's data
dir and each later PUT reuses it."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import pytest

from tests.hubfixtures import Api, eventually
from tests.test_batches import _produce
from tests.test_kafka_connector import create_topic
from tests.test_sources import minio_client

pytestmark = pytest.mark.integration

POWERTOOLS = ["aws-lambda-powertools==3.37.0"]
MANGUM = ["mangum==0.22.0", "starlette==0.46.2"]

S3_HANDLER = """
from aws_lambda_powertools.utilities.data_classes import S3Event, event_source

@event_source(data_class=S3Event)
def handler(event: S3Event, context):
    record = event.record
    obj = record.s3.get_object
    return {"bucket": event.bucket_name, "key": event.object_key, "raw_key": obj.key,
            "event_name": record.event_name, "event_source": record.event_source,
            "region": record.aws_region, "size": obj.size, "etag": obj.etag, "sequencer": obj.sequencer,
            "configuration_id": record.s3.configuration_id, "bucket_arn": record.s3.bucket.arn,
            "records": len(list(event.records)), "function": context.function_name}
"""


async def test_powertools_s3_event(api: Api, servers: dict[str, Any], unique: str) -> None:
    bucket = f"pt-{unique}"
    client = minio_client(servers["rgw"])
    await asyncio.to_thread(client.make_bucket, bucket)
    await api.put_function(f"pts3-{unique}", S3_HANDLER, event_format="aws", requirements=POWERTOOLS)
    await api.put_trigger(f"pts3-{unique}", f"pts3-{unique}",
                          {"type": "s3", "bucket": bucket, "events": ["s3:ObjectCreated:*"]})
    body = b"hello, lambda"
    await asyncio.to_thread(client.put_object, bucket, "in/red flower (2).txt", io.BytesIO(body), len(body))
    invs = await api.wait_invocations(1, trigger=f"pts3-{unique}", timeout=90)
    assert invs[0]["status"] == "succeeded", invs[0]
    got = invs[0]["result"]
    assert got["bucket"] == bucket and got["key"] == "in/red flower (2).txt"
    assert got["raw_key"] == "in/red+flower+%282%29.txt"  # URL-encoded as S3 sends it
    assert got["event_name"] == "ObjectCreated:Put" and got["event_source"] == "aws:s3"
    assert got["region"] and got["size"] == len(body) and got["etag"] and got["sequencer"]
    assert got["configuration_id"] == f"pts3-{unique}" and got["bucket_arn"] == f"arn:aws:s3:::{bucket}"
    assert got["records"] == 1 and got["function"] == f"pts3-{unique}"


KAFKA_HANDLER = """
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.kafka_event import KafkaEvent, KafkaEventRecord

processor = BatchProcessor(event_type=EventType.Kafka)
seen = []

def record_handler(record: KafkaEventRecord):
    value = record.json_value
    seen.append({"n": value["n"], "topic": record.topic, "partition": record.partition,
                 "offset": record.offset, "key": record.decoded_key.decode(),
                 "timestamp_type": record.timestamp_type,
                 "headers": {k: v.decode() for k, v in record.decoded_headers.items()}})
    if value.get("poison"):
        raise ValueError("poison record %d" % value["n"])

def handler(event, context):
    seen.clear()
    kafka = KafkaEvent(event)
    response = process_partial_response(event=event, record_handler=record_handler,
                                        processor=processor, context=context)
    response["seen"] = list(seen)
    response["servers"] = kafka.bootstrap_servers
    return response
"""


async def test_powertools_kafka_batch_processor_partial_failure(api: Api, servers: dict[str, Any],
                                                                 unique: str) -> None:
    topic = f"ptk-{unique}"
    bootstrap = servers["kafka"].bootstrap
    await create_topic(bootstrap, topic, 1)
    await api.put_function(f"ptk-{unique}", KAFKA_HANDLER, event_format="aws", requirements=POWERTOOLS)
    await api.put_trigger(f"ptk-{unique}", f"ptk-{unique}", {"type": "kafka", "topic": topic},
                          batch={"size": 5, "window_ms": 1000},
                          retry={"max_attempts": 2, "backoff_s": 0.05, "max_backoff_s": 0.1})
    # the last record of the batch is the poison: only it comes again (an ordered source retries
    # the failed record and what follows it; nothing follows it here)
    await _produce(bootstrap, topic, [(0, b"order-key", {"n": n, "poison": n == 4}) for n in range(5)])

    async def dead() -> list[dict[str, Any]] | None:
        dls = (await api.ok("GET", "/v1/dead-letters", params={"trigger": f"ptk-{unique}"}))["dead_letters"]
        return dls or None

    dls = await eventually(dead, timeout=90)
    assert [d["event"]["data"]["value"]["n"] for d in dls] == [4]
    # in the order they were made: one hub's invocation ids count up (started_at is
    # finished_at less the duration, in ms: two quick runs in a row can tie or cross)
    invs = sorted(await api.invocations(trigger=f"ptk-{unique}"), key=lambda i: i["invocation_id"])
    assert [i["status"] for i in invs] == ["partial", "failed"]
    # only the failed record came again; alone, it made Powertools raise (all records failed)
    assert invs[1]["event_ids"] == [dls[0]["event"]["id"]] == [invs[0]["event_ids"][4]]
    assert invs[1]["error"]["type"] == "BatchProcessingError" and "poison record 4" in invs[1]["error"]["message"]
    first = invs[0]["result"]
    assert [s["n"] for s in first["seen"]] == [0, 1, 2, 3, 4]
    assert first["batchItemFailures"] == [{"itemIdentifier": {"partition": f"{topic}-0", "offset": 4}}]
    assert first["servers"] == bootstrap
    rec = first["seen"][0]
    assert rec["topic"] == topic and rec["partition"] == 0 and rec["offset"] == 0
    assert rec["key"] == "order-key" and rec["timestamp_type"] == "CREATE_TIME" and rec["headers"] == {}
    assert [s["offset"] for s in first["seen"]] == [0, 1, 2, 3, 4]
    # the records before the poison ran once: their events are finished
    items = (await api.ok("GET", f"/v1/invocations/{invs[0]['invocation_id']}"))["items"]
    assert [i["status"] for i in items] == ["succeeded"] * 4 + ["failed"]


EVENTBRIDGE_HANDLER = """
from aws_lambda_powertools.utilities.data_classes import EventBridgeEvent, event_source

@event_source(data_class=EventBridgeEvent)
def handler(event: EventBridgeEvent, context):
    return {"id": event.get_id, "detail_type": event.detail_type, "source": event.source,
            "account": event.account, "region": event.region, "resources": event.resources,
            "time": event.time, "detail": event.detail, "version": event.version}
"""


async def test_powertools_eventbridge_scheduled_event(api: Api, unique: str) -> None:
    name = f"pteb-{unique}"
    await api.put_function(name, EVENTBRIDGE_HANDLER, event_format="aws", requirements=POWERTOOLS)
    await api.put_trigger(name, name, {"type": "schedule", "rate": "1 second"})
    invs = await api.wait_invocations(1, trigger=name, timeout=60)
    await api.ok("DELETE", f"/v1/triggers/{name}")
    got = invs[0]["result"]
    assert invs[0]["status"] == "succeeded", invs[0]
    assert got["detail_type"] == "Scheduled Event" and got["source"] == "aws.events"
    assert got["account"] == "000000000000" and got["region"] == "us-east-1" and got["version"] == "0"
    assert got["resources"] == [f"arn:aws:events:us-east-1:000000000000:rule/{name}"]
    assert got["detail"] == {} and len(got["id"]) == 36 and got["time"].endswith("Z")


MANGUM_APP = """
from mangum import Mangum
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

async def create(request: Request):
    body = await request.json()
    return JSONResponse({"path": request.url.path, "item": request.path_params["item_id"],
                         "query": dict(request.query_params), "agent": request.headers.get("x-agent"),
                         "body": body, "method": request.method},
                        status_code=201, headers={"x-made-by": "starlette"})

app = Starlette(routes=[Route("/{prefix}/items/{item_id}", create, methods=["POST"])])
handler = Mangum(app, lifespan="off")
"""


async def test_mangum_starlette_behind_a_function_url(api: Api, unique: str) -> None:
    name = f"asgi-{unique}"
    await api.put_function(name, MANGUM_APP, event_format="aws", requirements=MANGUM)
    await api.put_trigger(name, name, {"type": "http", "path": f"/{unique}/items/{{id}}", "methods": ["POST"],
                                       "auth": "none"})
    url = f"{api.fn_base}/fn/{unique}/items/42?color=red&size=9"

    async def answered() -> tuple[int, dict[str, str], bytes] | None:
        async with api.session.post(url, json={"qty": 3}, headers={"X-Agent": "tests"}) as r:
            return (r.status, dict(r.headers), await r.read()) if r.status != 404 else None

    status, headers, raw = await eventually(answered, timeout=30)
    assert status == 201, raw
    assert headers["x-made-by"] == "starlette" and headers["Content-Type"].startswith("application/json")
    assert json.loads(raw) == {"path": f"/{unique}/items/42", "item": "42", "query": {"color": "red", "size": "9"},
                               "agent": "tests", "body": {"qty": 3}, "method": "POST"}
