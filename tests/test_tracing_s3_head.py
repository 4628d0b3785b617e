"""The uploader's trace for S3 notification records without user metadata (issue 20): AWS S3's
records (through SNS) carry none, so with ``trace_metadata`` the webhook reads
``x-amz-meta-traceparent`` with a HEAD of the object. RGW always puts the metadata in its records,
so the records here are RGW's with the field taken out, and the objects are real ones in RGW.
"""

from __future__ import annotations

import asyncio
import copy
import io
import json
import secrets
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from minio import Minio
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from connectors.s3_records import parse_notification
from devstack import free_port
from hub.events import Event
from hub.tracing import Tracing, s3_record_carries_metadata
from hub.web.s3_webhook import _traced

pytestmark = pytest.mark.integration

TEMPLATE = json.loads((Path(__file__).parent / "data/s3/rgw_put.json").read_text())["Records"][0]


def record(bucket: str, key: str, metadata: bool) -> dict[str, Any]:
    rec = copy.deepcopy(TEMPLATE)
    rec["s3"]["bucket"]["name"] = bucket
    rec["s3"]["object"]["key"] = key
    rec["s3"]["object"]["sequencer"] = secrets.token_hex(8).upper()
    if metadata:
        rec["s3"]["object"]["metadata"] = []  # RGW's record of an object without user metadata
    else:
        del rec["s3"]["object"]["metadata"]  # AWS S3's shape: no user metadata in the record
    return rec


def services(endpoint: str, rgw: Any, asking: bool) -> tuple[Any, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trigger = SimpleNamespace(name="t-head", source={"type": "s3", "trace_metadata": asking})
    svc = SimpleNamespace(
        router=SimpleNamespace(match_s3=lambda event: [trigger]),
        settings=SimpleNamespace(s3_endpoint=endpoint, s3_access_key=rgw.access_key,
                                 s3_secret_key=rgw.secret_key, s3_region=rgw.region),
        tracing=Tracing(provider))
    return svc, exporter


async def test_a_record_without_metadata_gets_the_uploaders_trace_from_a_head(rgw_server: Any) -> None:
    rgw = rgw_server
    client = Minio(rgw.endpoint.split("://", 1)[1], access_key=rgw.access_key, secret_key=rgw.secret_key,
                   secure=False, region=rgw.region)
    bucket = f"head-{uuid.uuid4().hex[:10]}"
    await asyncio.to_thread(client.make_bucket, bucket)
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    tp = f"00-{trace_id}-{span_id}-01"
    for key in ("traced.txt", "plain.txt"):
        meta: dict[str, str | list[str] | tuple[str]] = {"traceparent": tp, "tracestate": "up=1"} if key == "traced.txt" else {"owner": "alice"}
        await asyncio.to_thread(client.put_object, bucket, key, io.BytesIO(b"x"), 1, metadata=meta)

    notification = {"Records": [record(bucket, "traced.txt", metadata=False),  # HEAD finds the parent
                                record(bucket, "plain.txt", metadata=False),  # HEAD finds no traceparent
                                record(bucket, "missing.txt", metadata=False),  # HEAD fails: 404
                                record(bucket, "traced.txt", metadata=True)]}  # the record says: none
    events = parse_notification(notification)
    assert [s3_record_carries_metadata(e.data["raw"]) for e in events] == [False, False, False, True]

    svc, exporter = services(rgw.endpoint, rgw, asking=True)
    out = await _traced(svc, events)
    assert [e.id for e in out] == [e.id for e in events]  # every event kept, in order
    assert all(e.traceparent for e in out)
    got = [e.traceparent.split("-")[1] for e in out if e.traceparent]
    assert got[0] == trace_id and out[0].tracestate == "up=1"  # the uploader's trace, from the HEAD
    assert len({trace_id, *got[1:]}) == 4  # the others: a new trace each
    spans = exporter.get_finished_spans()
    assert len(spans) == 4 and all(s.name == f"receive {bucket}" for s in spans)
    first = next(s for s in spans if s.context.trace_id == int(trace_id, 16))
    assert first.parent is not None and first.parent.span_id == int(span_id, 16)
    assert first.attributes is not None and first.attributes["aws.s3.key"] == "traced.txt"

    # a trigger that does not ask: no HEAD, a new trace
    svc, _ = services(rgw.endpoint, rgw, asking=False)
    [quiet] = await _traced(svc, parse_notification({"Records": [record(bucket, "traced.txt", metadata=False)]}))
    assert quiet.traceparent and quiet.traceparent.split("-")[1] != trace_id

    # an S3 server that does not answer: no parent, the event still comes back
    svc, _ = services(f"http://127.0.0.1:{free_port()}", rgw, asking=True)
    [lone] = await _traced(svc, parse_notification({"Records": [record(bucket, "traced.txt", metadata=False)]}))
    assert isinstance(lone, Event) and lone.traceparent and lone.traceparent.split("-")[1] != trace_id
