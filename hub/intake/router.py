"""Which triggers an event runs: source match, then the trigger's content filter.

The router keeps the current trigger set in memory. The hub reloads it whenever a trigger is
written through this instance and on a short timer (writes made through other instances).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import structlog

from connectors.s3_records import event_matches_s3_source
from hub.spec import filters
from hub.events import Event
from hub.spec.models import RetryPolicy

log = structlog.get_logger("hub.intake.router")


@dataclass(frozen=True)
class Trigger:
    name: str
    function: str
    source: dict[str, Any]
    filter: dict[str, Any] = field(default_factory=dict)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    enabled: bool = True
    source_hash: str = ""  # changes when the source changes; its subscription is then restarted
    source_identity: str = ""  # what is read (db/collection, topic); progress is kept per identity
    source_epoch: str = ""  # new each time the trigger starts reading a source afresh
    batch_size: int = 1
    batch_window_s: float = 0.0
    ordering: str = "partition"  # kafka: "key" lets different keys of a partition run in parallel
    schedule_anchor: dt.datetime | None = None  # schedules: ticks are counted from here

    @property
    def source_type(self) -> str:
        return str(self.source["type"])

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Trigger:
        batch = doc.get("batch")
        if not isinstance(batch, dict):  # written before batches: {"batch": 1}
            batch = {}
        return cls(
            name=doc["_id"],
            function=doc["function"],
            source=doc["source"],
            filter=doc.get("filter") or {},
            retry=RetryPolicy.model_validate(doc.get("retry") or {}),
            enabled=bool(doc.get("enabled", True)),
            source_hash=str(doc.get("source_hash", "")),
            source_identity=str(doc.get("source_identity", "")),
            source_epoch=str(doc.get("source_epoch", "")),
            batch_size=int(batch.get("size") or 1),
            batch_window_s=float(batch.get("window_ms") or 0) / 1000,
            ordering=str(doc.get("ordering") or "partition"),
            schedule_anchor=doc.get("schedule_anchor") or doc.get("created_at"),
        )

    def schedule_anchor_time(self) -> dt.datetime:
        anchor = self.schedule_anchor or dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc)
        return anchor if anchor.tzinfo else anchor.replace(tzinfo=dt.timezone.utc)


class Router:
    def __init__(self) -> None:
        self.triggers: dict[str, Trigger] = {}
        self._bad: set[Any] = set()

    def load(self, docs: list[dict[str, Any]]) -> None:
        triggers: dict[str, Trigger] = {}
        for doc in docs:
            try:
                triggers[doc["_id"]] = Trigger.from_doc(doc)
            except Exception as exc:  # one bad stored trigger (older, looser rules) must not stop the rest
                if doc.get("_id") not in self._bad:
                    log.error("stored trigger is invalid; it is not run", trigger=doc.get("_id"), error=str(exc))
                self._bad.add(doc.get("_id"))
        self.triggers = triggers

    def get(self, name: str) -> Trigger | None:
        trigger = self.triggers.get(name)
        return trigger if trigger and trigger.enabled else None

    def of_type(self, source_type: str) -> list[Trigger]:
        return [t for t in self.triggers.values() if t.enabled and t.source_type == source_type]

    def passes_filter(self, trigger: Trigger, event: Event) -> bool:
        return not trigger.filter or filters.matches(trigger.filter, event.to_cloudevent())

    def passing(self, trigger: Trigger, events: list[Event]) -> list[int]:
        """The indexes of ``events`` that pass the trigger's filter (all of them, without a call
        per event, for the usual trigger that has none)."""
        if not trigger.filter:
            return list(range(len(events)))
        return [i for i, e in enumerate(events) if self.passes_filter(trigger, e)]

    def match_s3(self, event: Event) -> list[Trigger]:
        """s3 events come from one shared webhook, so they are matched against every s3 trigger."""
        out = []
        for t in self.of_type("s3"):
            src = t.source
            if event_matches_s3_source(
                event, src["bucket"], src.get("events") or ["s3:ObjectCreated:*"],
                src.get("prefix") or "", src.get("suffix") or "",
            ) and self.passes_filter(t, event):
                out.append(t)
        return out
