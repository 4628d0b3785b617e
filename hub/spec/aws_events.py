"""Lambda's own event shapes, built from the hub's events (``event_format: "aws"``).

Why: most people who want a self-hosted Lambda already have Lambda handlers -- code that reads
``event["Records"][0]["s3"]["object"]["key"]``, walks ``event["records"]["topic-0"]``, or hands the
event to Powertools or Mangum. A function marked ``event_format: "aws"`` gets exactly what Lambda
would have handed it, so that code runs unchanged. The hub's own :class:`hub.events.Event` stays
the one internal shape (ids, dedup, filters, records and dead letters are unchanged); this module
only *renders* a group of them as Lambda does, and reads a Lambda partial batch response back
into hub event ids.

Pure: no I/O. Where Lambda's shape needs something the hub does not know (an AWS account, an
IAM principal) it gets a stable placeholder; the README's "Bringing Lambda code" lists them.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus, unquote_plus

from bson import json_util
from bson.json_util import CANONICAL_JSON_OPTIONS

from hub.events import Event

DEFAULT_REGION = "us-east-1"
DEFAULT_ACCOUNT = "000000000000"  # a stable 12-digit placeholder (no AWS account behind it)

# hub event source prefixes -> the Lambda event source they become
S3, KAFKA, MONGODB, SCHEDULE, HTTP, INVOKE = "s3", "kafka", "mongodb", "schedule", "http", "invoke"
_PREFIXES = {"s3://": S3, "kafka://": KAFKA, "mongodb://": MONGODB, "schedule://": SCHEDULE,
             "http://": HTTP, "invoke://": INVOKE}
# sources whose Lambda event holds several records (a batch is one event); the others are
# single-event sources in Lambda: a hub batch of them becomes a JSON list of events
BATCHED = frozenset({S3, KAFKA, MONGODB})

# Kafka headers the hub could not decode as UTF-8 carry this prefix (connectors.kafka)
_B64_PREFIX = "base64:"
_PLACEHOLDER_PRINCIPAL = "AWS:TRIGGERHUB"


@dataclass(frozen=True)
class AwsEnvironment:
    """What the rendered events say about "where" they run (``HUB_AWS_REGION``,
    ``HUB_AWS_ACCOUNT``, the Kafka bootstrap servers)."""

    region: str = DEFAULT_REGION
    account: str = DEFAULT_ACCOUNT
    kafka_bootstrap: str = ""

    def function_arn(self, name: str, qualifier: str | None = None) -> str:
        """``arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER]`` (no qualifier for latest,
        as Lambda's ``invoked_function_arn`` is for an unqualified invoke)."""
        arn = f"arn:aws:lambda:{self.region}:{self.account}:function:{name}"
        return f"{arn}:{qualifier}" if qualifier and qualifier != "latest" else arn


def source_kind(event: Event) -> str:
    """Which Lambda event source a hub event becomes (``invoke`` for anything unknown: its data)."""
    for prefix, kind in _PREFIXES.items():
        if event.source.startswith(prefix):
            return kind
    return INVOKE


def render(events: Sequence[Event], env: AwsEnvironment, trigger: str | None, *,
           batch: bool = False) -> Any:
    """The payload a Lambda handler gets for ``events`` (one handler call).

    ``batch`` says the trigger batches (size > 1): single-event sources (schedule, invoke, http)
    then get a JSON list of their events, since Lambda never batches those; record sources (S3,
    Kafka, MongoDB) always put every event into one Lambda event, as Lambda does."""
    if not events:
        raise ValueError("no events to render")
    kind = source_kind(events[0])
    if kind == S3:
        return {"Records": [s3_record(e, env, trigger) for e in events]}
    if kind == KAFKA:
        return kafka_event(events, env)
    if kind == MONGODB:
        return docdb_event(events, env, trigger)
    one = [_single(kind, e, env, trigger) for e in events]
    return one if batch or len(one) > 1 else one[0]


def _single(kind: str, event: Event, env: AwsEnvironment, trigger: str | None) -> Any:
    if kind == SCHEDULE:
        return scheduled_event(event, env, trigger)
    return event.data  # http: the function-URL 2.0 payload itself; invoke: the body itself


# ---------------------------------------------------------------------------------------- S3

def s3_key(key: str) -> str:
    """An object key as S3 notifications carry it: form-URL-encoded (space -> ``+``), ``/`` kept."""
    return quote_plus(key, safe="/")


def _aws_event_name(name: str) -> str:
    return name[3:] if name.startswith("s3:") else name


def _iso_millis(value: str | None) -> str:
    """``2019-09-03T19:37:27.192Z``: S3's eventTime form (milliseconds, Z)."""
    if not value:
        return ""
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.timezone.utc)
    parsed = parsed.astimezone(dt.timezone.utc)
    return parsed.strftime("%Y-%m-%dT%H:%M:%S.") + f"{parsed.microsecond // 1000:03d}Z"


def s3_record(event: Event, env: AwsEnvironment, trigger: str | None) -> dict[str, Any]:
    """S3 event notification record 2.1, field by field.

    What the S3 server sent (``data.raw``) wins where it holds the field in AWS's form
    (identities, request ids, the wire key of a server that URL-encodes, sequencer, versionId);
    the rest comes from the hub's normalised fields. ``configurationId`` is the trigger's name
    and ``eventSource`` is ``aws:s3`` whatever server sent it (RGW says ``ceph:s3``)."""
    data: Mapping[str, Any] = event.data if isinstance(event.data, Mapping) else {}
    raw: Mapping[str, Any] = data.get("raw") if isinstance(data.get("raw"), Mapping) else {}  # type: ignore[assignment]
    raw_s3 = _mapping(raw.get("s3"))
    raw_bucket = _mapping(raw_s3.get("bucket"))
    raw_obj = _mapping(raw_s3.get("object"))
    bucket = str(data.get("bucket") or event.source.removeprefix("s3://"))
    key = str(data.get("key") if data.get("key") is not None else event.subject or "")
    wire_key = raw_obj.get("key")
    # a server that URL-encodes keys (AWS, MinIO) sent them as S3 does: keep its exact text
    # (RGW sends keys raw: those are encoded here)
    encoded_key = (wire_key if isinstance(wire_key, str) and wire_key != key and unquote_plus(wire_key) == key
                   else s3_key(key))
    obj: dict[str, Any] = {"key": encoded_key}
    size = data.get("size") if data.get("size") is not None else raw_obj.get("size")
    if size is not None:
        obj["size"] = size
    etag = raw_obj.get("eTag") or data.get("etag")
    if etag:
        obj["eTag"] = str(etag).strip('"')
    version_id = data.get("version_id") or raw_obj.get("versionId")
    if version_id:
        obj["versionId"] = version_id
    sequencer = data.get("sequencer") or raw_obj.get("sequencer")
    obj["sequencer"] = sequencer or _sequencer_for(event)
    owner = _mapping(raw_bucket.get("ownerIdentity")) or {"principalId": _PLACEHOLDER_PRINCIPAL}
    region = raw.get("awsRegion") if isinstance(raw.get("awsRegion"), str) and raw.get("awsRegion") else env.region
    record: dict[str, Any] = {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": region,
        "eventTime": _iso_millis(raw.get("eventTime") if isinstance(raw.get("eventTime"), str) else event.time),
        "eventName": _aws_event_name(str(data.get("event_name") or event.type)),
        "userIdentity": _mapping(raw.get("userIdentity")) or {"principalId": _PLACEHOLDER_PRINCIPAL},
        "requestParameters": _mapping(raw.get("requestParameters")) or {"sourceIPAddress": "127.0.0.1"},
        "responseElements": _mapping(raw.get("responseElements")) or {
            "x-amz-request-id": _short_id(event.id), "x-amz-id-2": _short_id("id2:" + event.id)},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": trigger or str(raw_s3.get("configurationId") or ""),
            "bucket": {"name": bucket, "ownerIdentity": owner, "arn": f"arn:aws:s3:::{bucket}"},
            "object": obj,
        },
    }
    for extra in ("glacierEventData", "restoreEventData", "replicationEventData",
                  "intelligentTieringEventData", "lifecycleEventData"):
        if isinstance(raw.get(extra), Mapping):
            record[extra] = raw[extra]
    return record


def _sequencer_for(event: Event) -> str:
    """A reconciled (listed) object has no sequencer: a stable hex one from the event id, so
    handlers that key on it still get one value per change."""
    return uuid.uuid5(uuid.NAMESPACE_URL, event.id).hex[:18].upper()


def _short_id(seed: str) -> str:
    return uuid.uuid5(uuid.NAMESPACE_URL, seed).hex[:16].upper()


def _mapping(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


# ------------------------------------------------------------------------------------- Kafka

def _bytes_of(value: Any, encoding: str | None) -> bytes | None:
    """The message bytes back from what the hub kept (``connectors.kafka.decode_value``), for an
    event without the value's own bytes (``Event.value_json``: a replayed dead letter, a JSON
    value only the stdlib reads): a JSON value is re-serialised compactly (``{"a":1}``); text and
    base64 values come back byte for byte."""
    if value is None and encoding in ("null", None):
        return None
    if encoding == "base64":
        return base64.b64decode(str(value))
    if encoding == "text":
        return str(value).encode("utf-8")
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _text_bytes(value: Any) -> bytes | None:
    """A key or header value as the connector kept it: text, or ``base64:...`` for non-UTF-8."""
    if value is None:
        return None
    text = str(value)
    if text.startswith(_B64_PREFIX):
        try:
            return base64.b64decode(text[len(_B64_PREFIX):], validate=True)
        except ValueError:
            pass
    return text.encode("utf-8")


def _b64(raw: bytes | None) -> str | None:
    return None if raw is None else base64.b64encode(raw).decode("ascii")


def kafka_record(event: Event) -> dict[str, Any]:
    d: Mapping[str, Any] = event.data if isinstance(event.data, Mapping) else {}
    headers = d.get("headers") if isinstance(d.get("headers"), Mapping) else {}
    record: dict[str, Any] = {
        "topic": d.get("topic") or event.source.removeprefix("kafka://"),
        "partition": d.get("partition", 0),
        "offset": d.get("offset", 0),
        "timestamp": d.get("timestamp") if isinstance(d.get("timestamp"), int) else 0,
        "timestampType": d.get("timestamp_type") or "CREATE_TIME",
        # the message's own bytes when the event still has them (hub.events: value_json)
        "value": _b64(event.value_json if event.value_json is not None and d.get("encoding") == "json"
                      else _bytes_of(d.get("value"), d.get("encoding"))),
        "headers": [{str(k): list(_text_bytes(v) or b"")} for k, v in headers.items()],  # type: ignore[union-attr]
    }
    key = _text_bytes(d.get("key"))
    if key is not None:
        record["key"] = _b64(key)
    return record


def kafka_event(events: Sequence[Event], env: AwsEnvironment) -> dict[str, Any]:
    """The self-managed Kafka event: records grouped by ``"topic-partition"``, in order."""
    records: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        rec = kafka_record(e)
        records.setdefault(f"{rec['topic']}-{rec['partition']}", []).append(rec)
    return {"eventSource": "SelfManagedKafka", "bootstrapServers": env.kafka_bootstrap, "records": records}


# ----------------------------------------------------------------------------------- MongoDB

def canonical(relaxed: Any) -> Any:
    """Relaxed Extended JSON (what the hub keeps) -> canonical Extended JSON (what Lambda's
    DocumentDB events carry). A relaxed number has lost its BSON type: integers become
    ``$numberInt`` (``$numberLong`` past 32 bits), floats ``$numberDouble``."""
    value = json_util.loads(json.dumps(relaxed))
    return json.loads(json_util.dumps(value, json_options=CANONICAL_JSON_OPTIONS))


def change_document(event: Event) -> dict[str, Any]:
    """The change event as the change stream produced it: ``_id`` (the resume token) first."""
    d: Mapping[str, Any] = event.data if isinstance(event.data, Mapping) else {}
    token = d.get("resume_token") or event.id.removeprefix("mongodb:")
    rest = {k: v for k, v in d.items() if k != "resume_token"}
    return {"_id": {"_data": token}, **canonical(rest)}


def docdb_event(events: Sequence[Event], env: AwsEnvironment, trigger: str | None) -> dict[str, Any]:
    """The DocumentDB change-stream event; the cluster in the ARN is named after the trigger."""
    cluster = trigger or events[0].source.removeprefix("mongodb://").replace("/", "-")
    return {
        "eventSourceArn": f"arn:aws:rds:{env.region}:{env.account}:cluster:{cluster}",
        "events": [{"event": change_document(e)} for e in events],
        "eventSource": "aws:docdb",
    }


# ---------------------------------------------------------------------------------- schedule

def scheduled_event(event: Event, env: AwsEnvironment, trigger: str | None) -> dict[str, Any]:
    """EventBridge's scheduled event; ``id`` is a UUID derived from the tick (stable on retries)."""
    d: Mapping[str, Any] = event.data if isinstance(event.data, Mapping) else {}
    rule = trigger or str(d.get("trigger") or event.source.removeprefix("schedule://"))
    when = str(d.get("scheduled_time") or event.time)
    return {
        "version": "0",
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, event.id)),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": env.account,
        "time": _iso_seconds(when),
        "region": env.region,
        "resources": [f"arn:aws:events:{env.region}:{env.account}:rule/{rule}"],
        "detail": {},
    }


def _iso_seconds(value: str) -> str:
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(dt.timezone.utc)
    return parsed.strftime("%Y-%m-%dT%H:%M:%SZ")


# ------------------------------------------------------------------- partial batch responses

def identifiers(events: Sequence[Event]) -> dict[str, set[str]]:
    """Every ``itemIdentifier`` a handler may use for these events -> the hub event ids it names.

    Always the hub event id; plus, per source, what Lambda uses: S3 the object's sequencer,
    Kafka ``"topic-partition-offset"`` (the dict form ``{"partition": "topic-0", "offset": 12}``
    is normalised to it by :func:`identifier_key`), MongoDB the resume token."""
    out: dict[str, set[str]] = {}
    for e in events:
        out.setdefault(e.id, set()).add(e.id)
        d: Mapping[str, Any] = e.data if isinstance(e.data, Mapping) else {}
        kind = source_kind(e)
        alias: str | None = None
        if kind == S3:
            alias = d.get("sequencer") or _sequencer_for(e)
        elif kind == KAFKA:
            topic = d.get("topic") or e.source.removeprefix("kafka://")
            alias = f"{topic}-{d.get('partition', 0)}-{d.get('offset', 0)}"
        elif kind == MONGODB:
            alias = d.get("resume_token")
        if alias:
            out.setdefault(str(alias), set()).add(e.id)
    return out


def identifier_key(ident: Any) -> str | None:
    """An ``itemIdentifier`` as a lookup key: a string as it is; Kafka's ``{"partition":
    "topic-0", "offset": 12}`` as ``"topic-0-12"``; anything else None (names nothing)."""
    if isinstance(ident, str):
        return ident
    if isinstance(ident, Mapping) and isinstance(ident.get("partition"), str):
        offset = ident.get("offset")
        if isinstance(offset, bool) or not isinstance(offset, (int, str)):
            return None
        return f"{ident['partition']}-{offset}"
    return None


def lambda_error(error: Mapping[str, Any] | None) -> dict[str, Any]:
    """The hub's ``{type, message, traceback}`` as Lambda's ``{errorMessage, errorType, stackTrace}``
    (``stackTrace``: the runtime's frame lines when it sent them, else the traceback's lines)."""
    error = error or {}
    stack = error.get("stackTrace")
    if not isinstance(stack, list):
        text = str(error.get("traceback") or "")
        lines = text.splitlines()
        stack = [line + "\n" for line in lines[1:-1]] if len(lines) > 2 else []
    return {"errorMessage": str(error.get("message") or ""), "errorType": str(error.get("type") or "Error"),
            "stackTrace": stack}


def lambda_env(name: str, version: str, memory_mb: int, env: AwsEnvironment) -> dict[str, str]:
    """The Lambda variables a worker of an ``aws`` function starts with (its own ``env`` cannot
    override them, as Lambda reserves them). The runtime adds ``LAMBDA_TASK_ROOT``, ``_HANDLER``,
    ``AWS_EXECUTION_ENV`` and the log stream (hub.sandbox.runtime)."""
    return {
        "AWS_LAMBDA_FUNCTION_NAME": name,
        "AWS_LAMBDA_FUNCTION_VERSION": version,
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(memory_mb),
        "AWS_REGION": env.region,
        "AWS_DEFAULT_REGION": env.region,
        "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{name}",
    }
