"""The event every connector produces: a CloudEvents 1.0 envelope (structured JSON mode).

Handlers receive ``Event.to_cloudevent()``. ``id`` is stable across redeliveries of the same
change, so the dispatcher can recognise an event it has already run to success.

``traceparent``/``tracestate`` are the CloudEvents Distributed Tracing extension: set when the
hub traces (``hub.tracing``), they travel with the event through the inbox, dead letters and
replays, so its later spans continue the same trace wherever they run.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any


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

    @classmethod
    def from_cloudevent(cls, doc: dict[str, Any]) -> Event:
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
        )


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
