"""The event every connector produces: a CloudEvents 1.0 envelope (structured JSON mode).

Handlers receive ``Event.to_cloudevent()``. ``id`` is stable across redeliveries of the same
change, so the dispatcher can recognise an event it has already run to success.

``traceparent``/``tracestate`` are the CloudEvents Distributed Tracing extension: set when the
hub traces (``hub.tracing``), they travel with the event through the inbox, dead letters and
replays, so its later spans continue the same trace wherever they run.

``value_json`` is ``data["value"]`` as the JSON text it was read from, when a connector has that
text: the Kafka connector keeps a JSON message value as the bytes it came in (validated by
orjson's strict parser) instead of having it encoded again per handler call. ``prepared()`` then
hands the pool a :class:`Prepared` payload that orjson writes around those bytes. (They are the
message's own bytes, already in memory: nothing is copied to keep them.)
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import orjson

# Event data is stored inside inbox items and dead letters (item.event.data.<value>), and MongoDB
# stores at most 100 levels: payloads and message values may nest at most this deep as JSON.
MAX_PAYLOAD_DEPTH = 64


def json_depth_exceeds(value: Any, limit: int) -> bool:
    """True if ``value`` has more than ``limit`` levels of lists/objects (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        items = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if items is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in items if isinstance(child, (dict, list)))
    return False


# A run of 19 digits may be an integer beyond 64 bits, which orjson reads as a float (the stdlib as
# an int); such a value takes the stdlib's way. (The run may as well sit in a string or a float's
# fraction: then the stdlib reads the same thing, only slower.) Found by mapping every digit to
# "0" and searching for 19 of them: linear, where a regex backtracks on digit-heavy values. The
# same copy maps "[" to "{", so one count of "{" counts both brackets.
_SCAN = bytes(48 if 48 <= i <= 57 else 123 if i == 91 else i for i in range(256))
_LONG_RUN = b"0" * 19


def json_value(raw: bytes) -> tuple[Any, bytes] | None:
    """``raw`` decoded, when orjson's strict parser takes it and reads it as the stdlib would,
    with ``raw`` itself as the value's JSON text; else None (not JSON, or JSON only the stdlib
    reads: NaN, Infinity, integers beyond 64 bits, lone surrogates, a BOM; or nested deeper than
    MAX_PAYLOAD_DEPTH, which the Kafka connector's ``decode_value`` hands over as text).

    The text is valid JSON per orjson, so it can be spliced into a request as one value and
    nothing in it can add a field next to it (a hostile producer cannot forge the request).
    Also how the hub reads a worker's answer (hub.sandbox.worker): None sends it to the stdlib."""
    scan = raw.translate(_SCAN)  # one pass for both checks (0.70 -> 0.45 us a 70-byte value)
    if _LONG_RUN in scan:
        return None
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if scan.count(b"{") > MAX_PAYLOAD_DEPTH and json_depth_exceeds(value, MAX_PAYLOAD_DEPTH):
        return None  # connectors.kafka.decode_value hands it over as text
    return value, raw


def utc_now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Event:
    id: str
    source: str  # "s3://bucket", "mongodb://db/coll", "kafka://topic", "invoke://function"
    type: str  # "s3:ObjectCreated:Put", "mongodb.insert", "kafka.message", ...
    data: Any
    subject: str | None = None
    time: str = field(default_factory=utc_now_iso)
    datacontenttype: str = "application/json"
    traceparent: str | None = None
    tracestate: str | None = None
    # ``data["value"]`` as JSON text (see the module's docstring): set only by whoever decoded
    # that value from this very text, and only when the rest of ``data`` is what Prepared allows;
    # a copy of the event with other ``data`` must not keep it (none is made today)
    value_json: bytes | None = field(default=None, compare=False, repr=False)
    # ``data`` (and the envelope's text fields) hold only what orjson writes as the stdlib encoder
    # would: text without lone surrogates, integers within 64 bits, finite floats, booleans, None,
    # and str-keyed objects and lists of those -- true of what orjson's parser returned and of
    # values taken from it (the S3 webhook's events). Such an event is a Prepared record too.
    json_ready: bool = field(default=False, compare=False, repr=False)

    def to_cloudevent(self) -> dict[str, Any]:
        doc = {
            "specversion": "1.0",
            "id": self.id,
            "source": self.source,
            "type": self.type,
            "subject": self.subject,
            "time": self.time,
            "datacontenttype": self.datacontenttype,
            "data": self.data,
        }
        if self.traceparent:
            doc["traceparent"] = self.traceparent
            if self.tracestate:
                doc["tracestate"] = self.tracestate
        return doc

    def prepared(self) -> Prepared | None:
        """The CloudEvent as a :class:`Prepared` payload (``data["value"]`` spliced in as
        ``value_json``), or None without ``value_json`` (then ``to_cloudevent`` is the payload)."""
        doc = self.prepared_record()
        return None if doc is None else Prepared(doc)

    def prepared_record(self) -> dict[str, Any] | None:
        """What ``prepared`` holds, as a plain dict: a record of a :class:`Prepared` batch envelope
        (a dict display is a quarter cheaper than the subclass; one per event at batch 100)."""
        value_json = self.value_json
        if value_json is not None:
            data = dict(self.data)
            data["value"] = orjson.Fragment(value_json)
        elif self.json_ready:
            data = self.data
        else:
            return None
        doc = {"specversion": "1.0", "id": self.id, "source": self.source, "type": self.type,
               "subject": self.subject, "time": self.time, "datacontenttype": self.datacontenttype,
               "data": data}
        if self.traceparent:
            doc["traceparent"] = self.traceparent
            if self.tracestate:
                doc["tracestate"] = self.tracestate
        return doc

    @classmethod
    def from_cloudevent(cls, doc: dict[str, Any], json_ready: bool = False) -> Event:
        """``json_ready``: ``doc`` is one a json_ready event gave, stored and read back (BSON keeps
        each of those types as it is)."""
        return cls(
            id=str(doc["id"]),
            source=str(doc["source"]),
            type=str(doc["type"]),
            data=doc.get("data"),
            subject=doc.get("subject"),
            time=str(doc.get("time") or utc_now_iso()),
            datacontenttype=str(doc.get("datacontenttype") or "application/json"),
            traceparent=_text(doc.get("traceparent")),
            tracestate=_text(doc.get("tracestate")),
            json_ready=json_ready,
        )


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def new_event(*, id: str, source: str, type: str, data: Any, subject: str | None, time: str,
              value_json: bytes | None = None) -> Event:
    """``Event(...)`` without the frozen dataclass's ``__init__``, which sets each of its fields
    through ``object.__setattr__`` (~3 us an event: a connector's hot path at batch 100 makes
    thousands a second). The same object, defaults included (tests/test_kafka_connector.py
    compares the two)."""
    event = object.__new__(Event)
    event.__dict__.update(id=id, source=source, type=type, data=data, subject=subject, time=time,
                          datacontenttype="application/json", traceparent=None, tracestate=None,
                          value_json=value_json, json_ready=False)
    return event


class Prepared(dict[str, Any]):
    """A handler payload built to be written by ``orjson.dumps`` (no options): its leaves are
    ``str`` (the hub's own text or text decoded as strict UTF-8), ``int`` within 64 bits, ``None``,
    nested ``Prepared``/``list`` of those or dicts from ``Event.prepared_record`` (a json_ready
    event's data may also hold finite floats and booleans: the same values either way), and
    ``orjson.Fragment`` of JSON text orjson's strict parser accepted. orjson writes such a payload
    as the stdlib encoder would (same values; no NaN, no big int, no non-str key, no lone
    surrogate can be in it), so the pool
    (``hub.sandbox.pool``) takes the fast encoder for it and the stdlib's for anything else."""

    __slots__ = ()
