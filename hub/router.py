"""Which triggers an event runs: source match, then the trigger's content filter.

The router keeps the current trigger set in memory. The hub reloads it whenever a trigger is
written through this instance and on a short timer (writes made through other instances).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from connectors.s3_records import event_matches_s3_source
from hub import filters
from hub.events import Event
from hub.models import RetryPolicy


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

    @property
    def source_type(self) -> str:
        return str(self.source["type"])

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Trigger:
        return cls(
            name=doc["_id"],
            function=doc["function"],
            source=doc["source"],
            filter=doc.get("filter") or {},
            retry=RetryPolicy.model_validate(doc.get("retry") or {}),
            enabled=bool(doc.get("enabled", True)),
            source_hash=str(doc.get("source_hash", "")),
            source_identity=str(doc.get("source_identity", "")),
        )


class Router:
    def __init__(self) -> None:
        self.triggers: dict[str, Trigger] = {}

    def load(self, docs: list[dict[str, Any]]) -> None:
        self.triggers = {d["_id"]: Trigger.from_doc(d) for d in docs}

    def get(self, name: str) -> Trigger | None:
        trigger = self.triggers.get(name)
        return trigger if trigger and trigger.enabled else None

    def of_type(self, source_type: str) -> list[Trigger]:
        return [t for t in self.triggers.values() if t.enabled and t.source_type == source_type]

    def passes_filter(self, trigger: Trigger, event: Event) -> bool:
        return not trigger.filter or filters.matches(trigger.filter, event.to_cloudevent())

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
