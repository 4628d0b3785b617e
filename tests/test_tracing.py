"""OpenTelemetry traces end to end (issue 20): the hub's real OTLP/HTTP exporter sends to a receiver
in this test, which decodes what arrives with ``opentelemetry-proto``; the events come from real
Kafka, MongoDB, S3 (RGW), function URLs and invokes, and the functions run in the real sandbox.
"""

from __future__ import annotations

import asyncio
import io
import os
import secrets
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiokafka import AIOKafkaProducer
from minio import Minio
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from pymongo import AsyncMongoClient

from hub.app import Hub
from hub.events import Event
from hub.tracing import Tracing, producer_context, s3_user_metadata, valid_traceparent
from tests.hubfixtures import Api, eventually, make_settings

SEES_TRACE = """
import os
def handler(event, context):
    return {'env': os.environ.get('TRACEPARENT'), 'ctx': context.traceparent, 'trace_id': context.trace_id}
"""
FLAKY = """
def handler(event, context):
    if context.attempt < 3:
        raise RuntimeError('not yet')
    return context.attempt
"""
BATCH = "def handler(event, context):\n    return len(event['records'])\n"


def producer_parent() -> tuple[str, str, str]:
    """A producer's span: (traceparent, trace id, span id), sampled."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


# -- pure parts (no server) --------------------------------------------------------------------
def test_tracing_is_off_without_an_endpoint() -> None:
    assert Tracing.from_environment({}).enabled is False
    assert Tracing.from_environment({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
                                     "OTEL_SDK_DISABLED": "true"}).enabled is False
    assert Tracing.from_environment({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
                                     "OTEL_TRACES_EXPORTER": "none"}).enabled is False
    off = Tracing()
    event = Event(id="e", source="kafka://t", type="kafka.message", data={})
    assert off.received(event, trigger="t") is event  # nothing made, nothing copied


def test_producer_context_per_source() -> None:
    tp, _, _ = producer_parent()
    kafka = Event(id="k", source="kafka://t", type="kafka.message",
                  data={"headers": {"traceparent": tp, "tracestate": "v=1"}})
    assert producer_context(kafka) == (tp, "v=1")
    mongo = Event(id="m", source="mongodb://d/c", type="mongodb.insert", data={"fullDocument": {"tp": tp}})
    assert producer_context(mongo) == (None, None)  # the trigger names no field
    assert producer_context(mongo, {"trace_field": "tp"}) == (tp, None)
    rgw_record = {"s3": {"object": {"metadata": [{"key": "x-amz-meta-traceparent", "val": tp}]}}}
    minio_record = {"s3": {"object": {"userMetadata": {"X-Amz-Meta-Traceparent": tp}}}}
    assert s3_user_metadata(rgw_record) == s3_user_metadata(minio_record) == {"traceparent": tp}
    s3 = Event(id="s", source="s3://b", type="s3:ObjectCreated:Put", data={"raw": rgw_record})
    assert producer_context(s3) == (None, None)  # only when the trigger asks
    assert producer_context(s3, {"trace_metadata": True}) == (tp, None)
    for bad in ("00-" + "0" * 32 + "-" + "1" * 16 + "-01", "zz", "00-abc-def-01", tp.upper(), 42, None):
        assert valid_traceparent(bad) is None


# -- the receiver and a traced hub ----------------------------------------------------------------
class Receiver:
    """An OTLP/HTTP trace endpoint: every span it got, decoded."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()

    async def _traces(self, request: web.Request) -> web.Response:
        req = ExportTraceServiceRequest()
        req.ParseFromString(await request.read())
        for rs in req.resource_spans:
            resource = {a.key: _value(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    self.spans.append({
                        "name": s.name, "trace_id": s.trace_id.hex(), "span_id": s.span_id.hex(),
                        "parent": s.parent_span_id.hex(), "kind": s.kind,
                        "attrs": {a.key: _value(a.value) for a in s.attributes},
                        "links": [(lk.trace_id.hex(), lk.span_id.hex()) for lk in s.links],
                        "events": [e.name for e in s.events], "status": s.status.code,
                        "resource": resource,
                    })
        return web.Response(status=200, content_type="application/x-protobuf", body=b"")

    def find(self, **attrs: Any) -> list[dict[str, Any]]:
        return [s for s in self.spans if all(s["attrs"].get(k) == v for k, v in attrs.items())]


def _value(v: Any) -> Any:
    return getattr(v, v.WhichOneof("value")) if v.WhichOneof("value") else None


@pytest.fixture(scope="module")
async def traced(servers: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[Hub, Api, Receiver]]:
    receiver = await Receiver().start()
    env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.url + "/v1/traces", "OTEL_BSP_SCHEDULE_DELAY": "50",
           "OTEL_SERVICE_NAME": "hub-under-test", "OTEL_TRACES_SAMPLER": "parentbased_always_on"}
    with pytest.MonkeyPatch.context() as mp:  # read when the hub is built; gone after
        for k, v in env.items():
            mp.setenv(k, v)
        # RGW pushes a non-persistent topic's notification during the PUT: the upload reaches the
        # webhook (which reads the uploader's trace from the record) before the bucket scan finds it
        hub = Hub(make_settings(servers, tmp_path_factory.mktemp("hub-traced"), f"traced_{uuid.uuid4().hex[:8]}",
                                s3_rgw_persistent=False))
    assert hub.tracing.enabled
    await hub.start()
    hub.settings.public_url = hub.url  # RGW pushes to this hub
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        yield hub, Api(session, hub.url, fn_base=hub.fn_url), receiver
    await hub.stop()
    await receiver.stop()


async def spans_of(receiver: Receiver, trace_id: str, n: int, name_prefix: str = "") -> list[dict[str, Any]]:
    async def enough() -> list[dict[str, Any]] | None:
        got = [s for s in receiver.spans if s["trace_id"] == trace_id and s["name"].startswith(name_prefix)]
        return got if len(got) >= n else None

    return list(await eventually(enough, 60))


def by_name(spans: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    return [s for s in spans if s["name"].startswith(prefix)]


# -- end to end ------------------------------------------------------------------------------------
@pytest.mark.integration
async def test_a_kafka_message_continues_its_producers_trace_into_the_function(
        traced: tuple[Hub, Api, Receiver], servers: dict[str, Any], unique: str) -> None:
    hub, api, receiver = traced
    topic = f"traced-{unique}"
    await api.put_function(f"sees-{unique}", SEES_TRACE)
    await api.put_trigger(f"k-{unique}", f"sees-{unique}", {"type": "kafka", "topic": topic})
    tp, trace_id, producer_span = producer_parent()
    producer = AIOKafkaProducer(bootstrap_servers=servers["kafka"].bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b'{"n": 1}', key=b"k1", partition=0,
                                     headers=[("traceparent", tp.encode())])
    finally:
        await producer.stop()
    [inv] = await api.wait_invocations(1, trigger=f"k-{unique}")
    spans = await spans_of(receiver, trace_id, 3)
    [receive] = by_name(spans, "receive ")
    [invoke] = by_name(spans, "invoke ")
    [write] = by_name(spans, "record write")
    assert receive["parent"] == producer_span  # the producer's span is the parent
    assert invoke["parent"] == receive["span_id"] and write["parent"] == invoke["span_id"]
    assert receive["attrs"]["messaging.system"] == "kafka"
    assert receive["attrs"]["messaging.destination.name"] == topic
    assert receive["attrs"]["messaging.kafka.offset"] == 0 and receive["attrs"]["messaging.operation.type"] == "receive"
    assert invoke["attrs"]["faas.trigger"] == "pubsub" and invoke["attrs"]["faas.invocation_id"] == inv["invocation_id"]
    assert invoke["attrs"]["faas.name"] == f"sees-{unique}" and invoke["attrs"]["hub.status"] == "succeeded"
    assert invoke["attrs"]["messaging.operation.type"] == "process" and "hub.wait_ms" in invoke["attrs"]
    assert invoke["resource"]["service.name"] == "hub-under-test"
    # into the function: TRACEPARENT and the context name the invocation span
    expected = f"00-{trace_id}-{invoke['span_id']}-01"
    assert inv["result"] == {"env": expected, "ctx": expected, "trace_id": trace_id}
    assert inv["trace_id"] == trace_id
    found = await api.ok("GET", "/v1/invocations", params={"trace_id": trace_id})
    assert [i["invocation_id"] for i in found["invocations"]] == [inv["invocation_id"]]


@pytest.mark.integration
async def test_function_urls_and_invokes_continue_the_callers_trace(traced: tuple[Hub, Api, Receiver],
                                                                    unique: str) -> None:
    hub, api, receiver = traced
    await api.put_function(f"url-{unique}", SEES_TRACE)
    trig = await api.put_trigger(f"u-{unique}", f"url-{unique}", {"type": "http", "path": f"/t{unique}", "auth": "none"})
    tp, trace_id, caller_span = producer_parent()
    async with api.session.get(trig["url"], headers={"traceparent": tp}) as r:
        assert r.status == 200
        seen = await r.json()
    spans = await spans_of(receiver, trace_id, 2)
    [receive], [invoke] = by_name(spans, "receive "), by_name(spans, "invoke ")
    assert receive["parent"] == caller_span and invoke["parent"] == receive["span_id"]
    assert invoke["attrs"]["faas.trigger"] == "http" and seen["trace_id"] == trace_id

    tp, trace_id, caller_span = producer_parent()
    out = await api.ok("POST", f"/v1/functions/url-{unique}/invoke", {"x": 1}, headers={"traceparent": tp})
    spans = await spans_of(receiver, trace_id, 2)
    [receive], [invoke] = by_name(spans, "receive "), by_name(spans, "invoke ")
    assert receive["parent"] == caller_span and invoke["parent"] == receive["span_id"]
    assert out["result"]["trace_id"] == trace_id and out["trace_id"] == trace_id
    # a CloudEvent body carrying the Distributed Tracing extension continues its trace too
    tp, trace_id, caller_span = producer_parent()
    body = {"specversion": "1.0", "id": "1", "source": "test", "type": "t", "traceparent": tp}
    out = await api.ok("POST", f"/v1/functions/url-{unique}/invoke", body)
    assert out["result"]["trace_id"] == trace_id


@pytest.mark.integration
async def test_an_upload_continues_the_uploaders_trace(traced: tuple[Hub, Api, Receiver], servers: dict[str, Any],
                                                       unique: str) -> None:
    hub, api, receiver = traced
    rgw = servers["rgw"]
    client = Minio(rgw.endpoint.split("://", 1)[1], access_key=rgw.access_key, secret_key=rgw.secret_key,
                   secure=False, region=rgw.region)
    bucket = f"traced-{unique}"
    await asyncio.to_thread(client.make_bucket, bucket)
    await api.put_function(f"up-{unique}", SEES_TRACE)
    await api.put_trigger(f"s-{unique}", f"up-{unique}", {"type": "s3", "bucket": bucket, "trace_metadata": True})
    tp, trace_id, uploader_span = producer_parent()
    await asyncio.to_thread(client.put_object, bucket, "a.txt", io.BytesIO(b"x"), 1,
                            metadata={"traceparent": tp})
    [inv] = await api.wait_invocations(1, trigger=f"s-{unique}", timeout=90)
    spans = await spans_of(receiver, trace_id, 2)
    [receive], [invoke] = by_name(spans, "receive "), by_name(spans, "invoke ")
    assert receive["parent"] == uploader_span and invoke["parent"] == receive["span_id"]
    assert receive["attrs"]["messaging.system"] == "aws_s3" and receive["attrs"]["aws.s3.key"] == "a.txt"
    assert inv["result"]["trace_id"] == trace_id


@pytest.mark.integration
async def test_a_document_field_carries_the_writers_trace(traced: tuple[Hub, Api, Receiver], servers: dict[str, Any],
                                                          unique: str) -> None:
    hub, api, receiver = traced
    db_name = f"traced_{unique}"
    await api.put_function(f"doc-{unique}", SEES_TRACE)
    await api.put_trigger(f"m-{unique}", f"doc-{unique}", {"type": "mongodb", "database": db_name,
                                                          "collection": "c", "trace_field": "tp"})
    tp, trace_id, writer_span = producer_parent()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(servers["mongo"].admin_url)
    try:
        await client[db_name].c.insert_one({"_id": 1, "tp": tp})
        [inv] = await api.wait_invocations(1, trigger=f"m-{unique}")
    finally:
        await client.close()
    spans = await spans_of(receiver, trace_id, 2)
    [receive] = by_name(spans, "receive ")
    assert receive["parent"] == writer_span and receive["attrs"]["messaging.system"] == "mongodb"
    assert inv["result"]["trace_id"] == trace_id


@pytest.mark.integration
async def test_retries_are_sibling_attempts_and_a_dead_letter_is_an_event(traced: tuple[Hub, Api, Receiver],
                                                                           unique: str) -> None:
    hub, api, receiver = traced
    await api.put_function(f"flaky-{unique}", FLAKY)
    tp, trace_id, caller_span = producer_parent()
    queued = await api.ok("POST", f"/v1/functions/flaky-{unique}/invoke?mode=async", {}, headers={"traceparent": tp})
    spans = await spans_of(receiver, trace_id, 3, "invoke ")
    [receive] = by_name(await spans_of(receiver, trace_id, 1, "receive "), "receive ")
    attempts = sorted(by_name(spans, "invoke "), key=lambda s: s["attrs"]["hub.attempt"])
    assert [s["attrs"]["hub.attempt"] for s in attempts] == [1, 2, 3]
    assert {s["parent"] for s in attempts} == {receive["span_id"]}  # siblings, one event's trace
    assert [s["status"] for s in attempts] == [2, 2, 0]  # ERROR, ERROR, UNSET
    assert attempts[0]["attrs"]["error.type"] == "RuntimeError"
    assert queued["invocation_id"]

    # one attempt only, failing: the dead letter is an event on that attempt
    await api.put_function(f"dead-{unique}", "def handler(event, context):\n    raise ValueError('no')\n")
    await api.put_trigger(f"s-dead-{unique}", f"dead-{unique}", {"type": "schedule", "rate": "1 second"},
                          retry={"max_attempts": 1})
    async def dead_span() -> dict[str, Any] | None:
        spans = [s for s in receiver.find(**{"faas.name": f"dead-{unique}"}) if "dead_lettered" in s["events"]]
        return spans[0] if spans else None
    span = await eventually(dead_span, 60)
    assert span["attrs"]["faas.trigger"] == "timer" and span["status"] == 2
    await api.ok("DELETE", f"/v1/triggers/s-dead-{unique}")


@pytest.mark.integration
async def test_a_batch_links_every_record(traced: tuple[Hub, Api, Receiver], servers: dict[str, Any],
                                          unique: str) -> None:
    hub, api, receiver = traced
    topic = f"batch-{unique}"
    await api.put_function(f"b-{unique}", BATCH)
    await api.put_trigger(f"b-{unique}", f"b-{unique}", {"type": "kafka", "topic": topic},
                          batch={"size": 3, "window_ms": 2000})
    parents = [producer_parent() for _ in range(3)]
    producer = AIOKafkaProducer(bootstrap_servers=servers["kafka"].bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        for tp, _, _ in parents:
            await producer.send(topic, b"{}", partition=0, headers=[("traceparent", tp.encode())])
        await producer.flush()
    finally:
        await producer.stop()
    invs = await api.wait_invocations(1, trigger=f"b-{unique}")
    assert sum(i.get("batch_size", 1) for i in invs) >= 1

    async def batch_span() -> dict[str, Any] | None:
        spans = [s for s in receiver.find(**{"faas.name": f"b-{unique}"}) if s["attrs"].get("hub.batch_size") == 3]
        return spans[0] if spans else None

    span = await eventually(batch_span, 60)
    # the messaging conventions' batch "process" span: it links every record's producer context
    # (no receive span per record: at batch 100 one would cost more than the delivery itself)
    assert sorted(span["links"]) == sorted((trace_id, span_id) for _, trace_id, span_id in parents)
    assert span["attrs"]["messaging.batch.message_count"] == 3
    assert span["parent"] == parents[0][2]
    assert span["trace_id"] == parents[0][1]  # the child of the first record's producer
    assert not [s for s in receiver.spans if s["name"].startswith("receive ") and s["trace_id"] in
                {trace_id for _, trace_id, _ in parents}]


@pytest.mark.integration
async def test_a_function_passes_its_traceparent_on(traced: tuple[Hub, Api, Receiver], unique: str) -> None:
    """A function that calls another service with its TRACEPARENT: that service sees the trace."""
    hub, api, receiver = traced
    seen: list[str] = []

    async def downstream(request: web.Request) -> web.Response:
        seen.append(request.headers.get("traceparent", ""))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", downstream)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        code = ("import os, urllib.request\n"
                "def handler(event, context):\n"
                f"    req = urllib.request.Request('http://127.0.0.1:{port}/', headers={{'traceparent': os.environ['TRACEPARENT']}})\n"
                "    return urllib.request.urlopen(req, timeout=10).read().decode()\n")
        await api.put_function(f"calls-{unique}", code, network={"allow": [f"127.0.0.1:{port}"]})
        tp, trace_id, _ = producer_parent()
        out = await api.ok("POST", f"/v1/functions/calls-{unique}/invoke", {}, headers={"traceparent": tp})
        assert out["status"] == "succeeded", out
        assert len(seen) == 1 and seen[0].split("-")[1] == trace_id
        [invoke] = by_name(await spans_of(receiver, trace_id, 1, "invoke "), "invoke ")
        assert seen[0].split("-")[2] == invoke["span_id"]  # the downstream call's parent is the invocation
    finally:
        await runner.cleanup()
        os.environ.pop("TRACEPARENT", None)  # (never set here; the worker's environment is its own)
