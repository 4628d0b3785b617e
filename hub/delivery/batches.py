"""The batch envelope handed to a handler, and how its answer is read (Lambda parity).

With a trigger batch size above 1 the handler gets, once per batch::

    {"type": "hub.batch", "source": "kafka://orders", "trigger": "on-order",
     "records": [CloudEvent, ...]}          # in source order; 1..batch.size records

and may answer ``{"batchItemFailures": [{"itemIdentifier": "<event id>"}, ...]}`` (Lambda's
ReportBatchItemFailures) to say which records failed; anything else means every record
succeeded, and an exception (or a timeout, a crash) means every record failed.

What is retried after a partial failure depends on the source:
- ordered sources (Kafka, MongoDB): the first failed record and every record after it (the
  handler may have stopped at the first failure, as Lambda's examples do); records before it
  are finished;
- unordered sources (the inbox: S3 notifications, async invokes): just the failed records.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hub.events import Event, Prepared
from hub.spec import aws_events

ENVELOPE_TYPE = "hub.batch"


def envelope(events: list[Event], source: str | None, trigger: str | None) -> dict[str, Any]:
    """The batch payload; a :class:`Prepared` one (written by orjson around each record's
    ``value_json``) when every record has its value as JSON text already."""
    records = [e.prepared_record() for e in events]
    source = source or (events[0].source if events else None)
    if all(r is not None for r in records):
        return Prepared(type=ENVELOPE_TYPE, source=source, trigger=trigger, records=records)
    return {
        "type": ENVELOPE_TYPE,
        "source": source,
        "trigger": trigger,
        "records": [e.to_cloudevent() for e in events],
    }


def payload(event: Event) -> dict[str, Any]:
    """What a handler gets for one event (batch size 1): its CloudEvent."""
    return event.prepared() or event.to_cloudevent()


class BadItemFailures(ValueError):
    """The handler's batchItemFailures cannot be trusted: the whole batch counts as failed."""


def reported_failures(result: Any, event_ids: list[str],
                      aliases: dict[str, set[str]] | None = None) -> set[str]:
    """The ids the handler reported as failed ({} when it reported none).

    ``aliases`` (``event_format: "aws"``, from ``hub.spec.aws_events.identifiers``) adds the
    identifiers Lambda uses for the source -- an S3 sequencer, Kafka's ``{"partition":
    "topic-0", "offset": 12}`` or ``"topic-0-12"``, a change stream's resume token -- each naming
    the hub event ids it stands for; the hub's own event ids are always accepted."""
    if not isinstance(result, dict) or "batchItemFailures" not in result:
        return set()
    items = result["batchItemFailures"]
    if items is None:
        return set()
    if not isinstance(items, list):
        raise BadItemFailures("batchItemFailures must be a list of {\"itemIdentifier\": EVENT_ID}")
    known = {i: {i} for i in event_ids} if aliases is None else aliases
    failed: set[str] = set()
    for item in items:
        ident = item.get("itemIdentifier") if isinstance(item, dict) else None
        key = ident if aliases is None or isinstance(ident, str) else aws_events.identifier_key(ident)
        if not isinstance(key, str) or key not in known:
            raise BadItemFailures(f"batchItemFailures names {str(ident)[:200]!r}, which is not an event id "
                                  "of this batch" + ("" if aliases is None else " (nor a sequencer, "
                                                     "topic-partition-offset or resume token of one)"))
        failed |= known[key]
    return failed


@dataclass
class Split:
    """How one handler call's records came out."""

    succeeded: list[Event]
    failed: list[Event]  # reported failed (or all, when the call failed)
    not_processed: list[Event]  # ordered sources: after the first failure, to run again


def split(events: list[Event], failed_ids: set[str], ordered: bool) -> Split:
    if not failed_ids:
        return Split(list(events), [], [])
    if not ordered:
        return Split([e for e in events if e.id not in failed_ids],
                     [e for e in events if e.id in failed_ids], [])
    first = next(i for i, e in enumerate(events) if e.id in failed_ids)
    rest = events[first:]
    return Split(events[:first], [e for e in rest if e.id in failed_ids],
                 [e for e in rest if e.id not in failed_ids])
