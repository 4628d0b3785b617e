"""OpenTelemetry traces that follow one event from its producer through the hub into the function.

Why it is shaped this way:

- **Off costs nothing.** Without an OTLP endpoint (``OTEL_EXPORTER_OTLP_ENDPOINT`` or
  ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``), or with ``OTEL_TRACES_EXPORTER=none`` or
  ``OTEL_SDK_DISABLED=true``, :class:`Tracing` is disabled and every hook is one attribute test on
  the hot path. The standard ``OTEL_*`` variables (service name, resource attributes, sampler and
  its argument, the batch processor's timings, the exporter's headers) are read by the SDK itself.
- **The event carries its context.** Where a span starts for a received event, the event gets
  that span's W3C ``traceparent`` (the CloudEvents Distributed Tracing extension: it travels in
  the CloudEvent through the inbox, dead letters and replays), so every later span of the event
  (each invocation attempt, the record write) is its child, in whatever task or instance runs it.
- **Sampling is decided once per event.** The sampler is parent-based (``parentbased_*``): the
  receive span decides, or follows the producer's flag, and every child follows it; an event that
  is not sampled makes non-recording spans, which cost next to nothing: a span starts without
  attributes, links or its full name, and gets them only once it is known to be recording (so
  a sampler that decides on attributes sees none: the standard ones do not look at them), and
  the traceparents are parsed and written by slicing and one format, not the propagator.
- **One provider per hub** (not the global one): several hubs run in one test process.

Semantic conventions followed: messaging (``messaging.system``, ``messaging.operation.type``
``receive``/``process``, ``messaging.destination.name``, ``messaging.kafka.offset``,
``messaging.destination.partition.id``, ``messaging.batch.message_count``, span links for a
batch) and FaaS (``faas.trigger``, ``faas.invocation_id``, ``faas.name``, ``faas.version``,
``faas.coldstart``). Where they disagree — messaging wants a batch's "process" span to link every
message, FaaS wants the invocation as the server span of its trigger — an attempt is one span that
carries both sets of attributes, is the child of the first record's context and links every record.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

from hub.events import Event

_TRACEPARENT_RE = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
# faas.trigger by source: https://opentelemetry.io/docs/specs/semconv/faas/
FAAS_TRIGGER = {"kafka": "pubsub", "mongodb": "datasource", "s3": "datasource", "http": "http",
                "schedule": "timer", "invoke": "other"}
MESSAGING_SYSTEM = {"kafka": "kafka", "mongodb": "mongodb", "s3": "aws_s3"}


def valid_traceparent(value: object) -> str | None:
    """A W3C traceparent as given (lower-case, version 00 layout), else None: a producer's
    header is untrusted input."""
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    if not isinstance(value, str):
        return None
    value = value.strip()
    if not _TRACEPARENT_RE.match(value) or value.startswith("ff") or "-" + "0" * 32 + "-" in value:
        return None
    return value


def source_type(event: Event) -> str:
    return event.source.split(":", 1)[0]


class Tracing:
    """The hub's tracer, or a disabled stand-in (``enabled`` False) whose hooks do nothing."""

    def __init__(self, provider: Any | None = None) -> None:
        self.provider = provider
        self.enabled = provider is not None
        self._tracer = provider.get_tracer("trigger-hub") if provider is not None else None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None, *, instance_id: str = "",
                         exporter: Any | None = None) -> Tracing:
        """Enabled when the standard variables name an OTLP endpoint (or an exporter is given)."""
        env = os.environ if environ is None else environ
        if exporter is None:
            if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
                return cls()
            if env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() in ("none", ""):
                return cls()
            if not (env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")):
                return cls()
        # imported only when on: the SDK and the exporter cost nothing for a hub without tracing
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        attrs = {"service.name": env.get("OTEL_SERVICE_NAME") or "trigger-hub"}
        if instance_id:
            attrs["service.instance.id"] = instance_id
        # Resource.create merges OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME over these
        provider = TracerProvider(resource=Resource.create(attrs))  # sampler: OTEL_TRACES_SAMPLER
        provider.add_span_processor(BatchSpanProcessor(exporter or OTLPSpanExporter()))
        return cls(provider)

    def shutdown(self) -> None:
        """Flush what is queued (bounded by the exporter's own timeout) and stop."""
        if self.provider is not None:
            self.provider.shutdown()

    # -- spans ----------------------------------------------------------------------------------
    def received(self, event: Event, *, trigger: str | None, parent: str | None = None,
                 tracestate: str | None = None, kind: SpanKind = SpanKind.CONSUMER) -> Event:
        """One short span for an event the hub received, the child of ``parent`` (the producer's
        traceparent, if any) or the root of a new trace; the event comes back carrying it."""
        if self._tracer is None:
            return event
        ctx = _context(parent or event.traceparent, tracestate or event.tracestate)
        # the sampler decides first; names and attributes only for a span that records
        span = self._tracer.start_span("receive", context=ctx, kind=kind)
        if span.is_recording():
            st = source_type(event)
            attrs = _source_attributes(event, st)
            attrs["hub.trigger"] = trigger or ""
            attrs["hub.event_id"] = event.id
            attrs["faas.trigger"] = FAAS_TRIGGER.get(st, "other")
            if st in MESSAGING_SYSTEM:
                attrs["messaging.operation.type"] = "receive"
            span.update_name(f"receive {attrs.get('messaging.destination.name') or st}")
            span.set_attributes(attrs)
        sc = span.get_span_context()
        span.end()
        if not sc.is_valid:
            return event
        return _with_trace(event, _traceparent(sc), sc.trace_state.to_header() or None if sc.trace_state else None)

    def received_from_source(self, event: Event, trigger: str | None,
                             source: Mapping[str, Any] | None = None) -> Event:
        """:meth:`received`, the child of what the producer left with the event (see
        :func:`producer_context`)."""
        if self._tracer is None:
            return event
        parent, state = producer_context(event, source)
        return self.received(event, trigger=trigger, parent=parent, tracestate=state)

    def with_producer_context(self, event: Event, source: Mapping[str, Any] | None = None) -> Event:
        """The event carrying its producer's context, no span made: for batch triggers, whose one
        attempt span per batch is the child of its first record's producer and links every
        record's producer (the messaging conventions' batch "process" span) -- a receive span per
        record would cost more than the batch's whole delivery (bench/README.md)."""
        if self._tracer is None or event.traceparent:
            return event
        parent, state = producer_context(event, source)
        return _with_trace(event, parent, state) if parent else event

    @contextmanager
    def attempt(self, events: list[Event], *, function: str, trigger: str | None, invocation_id: str,
                attempt: int, version: str | None = None, kind: SpanKind = SpanKind.SERVER,
                wait_s: float | None = None) -> Iterator[Span | None]:
        """The span of one invocation attempt: the child of the first record's context, linking
        every record of a batch. Retries are its siblings."""
        if self._tracer is None or not events:
            yield None
            return
        first = events[0]
        span = self._tracer.start_span(f"invoke {function}", context=_context(first.traceparent, first.tracestate),
                                       kind=kind)
        if span.is_recording():  # attributes and links only for a span that records
            self._describe_attempt(span, events, function=function, trigger=trigger, invocation_id=invocation_id,
                                   attempt=attempt, version=version, wait_s=wait_s)
        try:
            yield span
        finally:
            span.end()

    @staticmethod
    def _describe_attempt(span: Span, events: list[Event], *, function: str, trigger: str | None,
                          invocation_id: str, attempt: int, version: str | None, wait_s: float | None) -> None:
        first = events[0]
        st = source_type(first)
        attrs: dict[str, Any] = {
            "faas.trigger": FAAS_TRIGGER.get(st, "other"), "hub.request_id": invocation_id,
            "faas.name": function, "hub.trigger": trigger or "", "hub.attempt": attempt,
            "hub.batch_size": len(events), "hub.event_id": first.id,
        }
        if version:
            attrs["faas.version"] = version
        if wait_s is not None:
            attrs["hub.wait_ms"] = round(wait_s * 1000, 3)
        if st in MESSAGING_SYSTEM:
            attrs.update(_source_attributes(first, st))
            attrs["messaging.operation.type"] = "process"
            if len(events) > 1:
                attrs["messaging.batch.message_count"] = len(events)
        span.set_attributes(attrs)
        if len(events) > 1:
            for e in events:
                sc = _span_context(e.traceparent, e.tracestate)
                if sc is not None:
                    span.add_link(sc, {"hub.event_id": e.id})

    def record_write(self, parent: Span | None) -> Span | None:
        """A span for the record write of an attempt, ended by the caller when it is durable."""
        if self._tracer is None or parent is None or not parent.is_recording():
            return None
        return self._tracer.start_span("record write", context=trace.set_span_in_context(parent),
                                       kind=SpanKind.CLIENT, attributes={"db.system.name": "mongodb",
                                                                         "db.operation.name": "insert"})


def traceparent_of(span: Span | None) -> str | None:
    """The W3C traceparent that continues ``span`` (for the function: TRACEPARENT)."""
    if span is None:
        return None
    sc = span.get_span_context()
    return _traceparent(sc) if sc.is_valid else None


def trace_id_of(span: Span | None) -> str | None:
    if span is None:
        return None
    sc = span.get_span_context()
    return format(sc.trace_id, "032x") if sc.is_valid else None


def finish_attempt(span: Span | None, *, status: str, error: Mapping[str, Any] | None, cold: bool | None,
                   billed_ms: float | None, dead_lettered: bool = False) -> None:
    """What the attempt came to, on its span."""
    if span is None or not span.is_recording():
        return
    span.set_attribute("hub.status", status)
    if cold is not None:
        span.set_attribute("faas.coldstart", bool(cold))
    if billed_ms is not None:
        span.set_attribute("hub.billed_ms", billed_ms)
    if status != "succeeded":
        kind = str((error or {}).get("type") or status)
        span.set_status(Status(StatusCode.ERROR, kind))
        span.set_attribute("error.type", kind)
    if dead_lettered:
        span.add_event("dead_lettered")


def _span_context(traceparent: str | None, tracestate: str | None) -> SpanContext | None:
    """The remote span context of a W3C traceparent (the layout checked, then sliced: cheaper
    than the propagator, which does the same checks through a larger regex and a Context)."""
    if not traceparent or not _TRACEPARENT_RE.match(traceparent):
        return None
    state = None
    if tracestate:
        state = TraceState.from_header([tracestate])
    sc = SpanContext(trace_id=int(traceparent[3:35], 16), span_id=int(traceparent[36:52], 16), is_remote=True,
                     trace_flags=TraceFlags(int(traceparent[53:55], 16)), trace_state=state)
    return sc if sc.is_valid else None


def _context(traceparent: str | None, tracestate: str | None) -> Any:
    sc = _span_context(traceparent, tracestate)
    return trace.set_span_in_context(NonRecordingSpan(sc)) if sc is not None else None


def _with_trace(event: Event, traceparent: str, tracestate: str | None) -> Event:
    """``dataclasses.replace(event, traceparent=..., tracestate=...)`` without running ``__init__``
    over every field again (Event is a plain frozen dataclass: no ``__post_init__``, no slots)."""
    new = object.__new__(Event)
    new.__dict__.update(event.__dict__, traceparent=traceparent, tracestate=tracestate)
    return new


def _traceparent(sc: SpanContext) -> str:
    return f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{sc.trace_flags:02x}"


def _source_attributes(event: Event, st: str) -> dict[str, Any]:
    data = event.data if isinstance(event.data, dict) else {}
    attrs: dict[str, Any] = {}
    if st in MESSAGING_SYSTEM:
        attrs["messaging.system"] = MESSAGING_SYSTEM[st]
    if st == "kafka":
        attrs["messaging.destination.name"] = data.get("topic") or event.source.removeprefix("kafka://")
        if data.get("partition") is not None:
            attrs["messaging.destination.partition.id"] = str(data["partition"])
        if data.get("offset") is not None:
            attrs["messaging.kafka.offset"] = int(data["offset"])
        if event.subject:
            attrs["messaging.kafka.message.key"] = event.subject
    elif st == "mongodb":
        attrs["messaging.destination.name"] = event.source.removeprefix("mongodb://")
        attrs["db.operation.name"] = event.type.removeprefix("mongodb.")
    elif st == "s3":
        attrs["messaging.destination.name"] = event.source.removeprefix("s3://")
        attrs["aws.s3.bucket"] = event.source.removeprefix("s3://")
        if event.subject:
            attrs["aws.s3.key"] = event.subject
    return attrs


# -- where each source carries its producer's context ----------------------------------------
def producer_context(event: Event, source: Mapping[str, Any] | None = None) -> tuple[str | None, str | None]:
    """(traceparent, tracestate) the producer left with the event, by source: Kafka record
    headers; a document field named by the trigger (``trace_field``) for MongoDB; the object's
    user metadata (``x-amz-meta-traceparent``, in the notification record as RGW and MinIO send
    it) for S3 triggers that ask (``trace_metadata``); the event's own CloudEvents extension."""
    if event.traceparent:
        return event.traceparent, event.tracestate
    data = event.data if isinstance(event.data, dict) else {}
    st = source_type(event)
    parent: object = None
    state: object = None
    if st == "kafka":
        headers = data.get("headers") or {}
        parent, state = headers.get("traceparent"), headers.get("tracestate")
    elif st == "mongodb" and source and source.get("trace_field"):
        doc = data.get("fullDocument")
        if isinstance(doc, dict):
            parent = doc.get(str(source["trace_field"]))
    elif st == "s3" and source and source.get("trace_metadata"):
        meta = s3_user_metadata(data.get("raw"))
        parent, state = meta.get("traceparent"), meta.get("tracestate")
    tp = valid_traceparent(parent)
    return tp, (state if tp and isinstance(state, str) and len(state) <= 512 else None)


def s3_user_metadata(record: object) -> dict[str, str]:
    """``x-amz-meta-*`` of the object as a notification record carries it: RGW's
    ``s3.object.metadata`` list of {key, val}, MinIO's ``s3.object.userMetadata`` map (lower-cased,
    prefix removed)."""
    if not isinstance(record, Mapping):
        return {}
    obj = (record.get("s3") or {}).get("object") if isinstance(record.get("s3"), Mapping) else None
    if not isinstance(obj, Mapping):
        return {}
    out: dict[str, str] = {}
    items: list[tuple[object, object]] = []
    if isinstance(obj.get("metadata"), list):
        items += [(m.get("key"), m.get("val")) for m in obj["metadata"] if isinstance(m, Mapping)]
    if isinstance(obj.get("userMetadata"), Mapping):
        items += list(obj["userMetadata"].items())
    for key, value in items:
        if isinstance(key, str) and isinstance(value, str) and key.lower().startswith("x-amz-meta-"):
            out[key.lower().removeprefix("x-amz-meta-")] = value
    return out


def s3_record_carries_metadata(record: object) -> bool:
    """Whether a notification record has a user-metadata field at all (RGW's ``metadata``,
    MinIO's ``userMetadata``, empty or not). AWS S3's records (through SNS) have none: the
    uploader's traceparent can then be read only with a HEAD of the object."""
    if not isinstance(record, Mapping) or not isinstance(record.get("s3"), Mapping):
        return False
    obj = record["s3"].get("object")
    return isinstance(obj, Mapping) and ("metadata" in obj or "userMetadata" in obj)


def http_context(headers: Mapping[str, str], body: object = None) -> tuple[str | None, str | None]:
    """(traceparent, tracestate) of an HTTP request (function URL, invoke), else of a body that
    is itself a CloudEvent carrying the Distributed Tracing extension."""
    tp = valid_traceparent(headers.get("traceparent"))
    if tp:
        state = headers.get("tracestate")
        return tp, (state if state and len(state) <= 512 else None)
    if isinstance(body, Mapping) and body.get("specversion") and body.get("traceparent"):
        tp = valid_traceparent(body.get("traceparent"))
        state = body.get("tracestate")
        return tp, (state if tp and isinstance(state, str) and len(state) <= 512 else None)
    return None, None
