"""Runs events through a function to a final outcome: batches, retries with backoff, invocation
records, dead letters.

``deliver`` takes a chunk of events in source order and returns only when each is *finished*
(succeeded or dead-lettered) and that is durable in MongoDB; connectors ack (commit an offset,
save a resume token, delete an inbox item) only after that. When only a prefix finished (a
store outage, say) it raises :class:`Unfinished` with how many, and the rest comes back.

The hot path costs, per chunk: one duplicate check (two queries, run together), the handler
calls, and records that go out in bulk through :class:`hub.delivery.records.RecordWriter` while the next
event already runs. Nothing acks before its record is durable, so "at least once" holds, and a
success is marked by the very record that says it succeeded (see :mod:`hub.delivery.records`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import random
import itertools
import json
import logging
from dataclasses import dataclass, replace
from typing import Any

import structlog
from pymongo import ReplaceOne

from connectors.base import Unfinished
from hub.delivery import batches
from hub.spec import aws_events
from hub.catalog.code import CodeUnavailable
from hub.catalog.secrets import SecretUnavailable, mask
from hub.events import Event
from hub.logs import INVOCATION
from hub.logs import enabled as log_enabled
from hub.metrics import Metrics
from hub.spec.models import RetryPolicy
from hub.delivery.records import Completions, RecordWriter, completion_key, dead_letter_id
from hub.driver import shielded
from hub.catalog.registry import Registry
from hub.sandbox.base import FunctionRuntime, InvocationReport, InvokeContext, Status, WorkerPool
from hub.tracing import Tracing, finish_attempt, trace_id_of, traceparent_of
from hub.store import Store, now, storable

log = structlog.get_logger("hub.delivery.dispatch")

FAILED = {Status.failed, Status.timeout, Status.out_of_memory, Status.crashed}

# Invocation ids: 32 hex digits, a random prefix per process and a counter (uuid4 per invocation
# showed up in profiles at thousands a second).
_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count()


def new_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


@dataclass(frozen=True)
class Target:
    """Where events go: a trigger's function, or a function invoked directly (trigger None)."""

    function: str  # NAME, or NAME:QUALIFIER (an alias, a version, latest): resolved at each call
    trigger: str | None
    retry: RetryPolicy
    batch_size: int = 1  # above 1: the handler gets a hub.batch envelope
    ordered: bool = True  # after a partial batch failure, retry from the first failed record on
    source: str | None = None  # the envelope's "source"

    @property
    def key(self) -> str:
        # completions and dead letters are keyed per trigger; direct invokes get a pseudo-trigger
        return self.trigger or f"invoke:{self.function}"

    @property
    def function_name(self) -> str:
        return self.function.partition(":")[0]

    @property
    def qualifier(self) -> str:
        return self.function.partition(":")[2] or "latest"

    @property
    def bisect(self) -> bool:
        return bool(getattr(self.retry, "bisect_on_error", False))


def backoff_delay(policy: RetryPolicy, attempt: int) -> float:
    """Exponential backoff with equal jitter: half fixed, half random, so retries spread out."""
    base = min(policy.max_backoff_s, policy.backoff_s * (2 ** (attempt - 1)))
    return base / 2 + random.uniform(0, base / 2)


def _parse_time(value: str) -> dt.datetime | None:
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


class Chunk:
    """One ``deliver`` call's bookkeeping: when each of its events is durably finished."""

    def __init__(self, events: list[Event]) -> None:
        self.events = events
        self.durable: dict[str, asyncio.Future[Any]] = {}
        # the futures of ``durable`` that are writes (a success's record, a dead letter), each
        # once and in the order made: a batch's events share one, so waits go over this list and
        # not over every event
        self.writes: list[asyncio.Future[Any]] = []
        self.broken: BaseException | None = None  # a write failed: start nothing more
        self.unique: int | None = None  # how many distinct event ids, once the duplicate check ran
        self.outcomes: dict[str, str] = {}  # event id -> succeeded | dead_lettered | duplicate

    def note_failure(self, fut: asyncio.Future[Any]) -> None:
        """A record did not make it to MongoDB: run nothing more of this chunk."""
        if self.broken is None and not fut.cancelled() and fut.exception() is not None:
            self.broken = fut.exception()

    def finished_prefix(self) -> tuple[int, BaseException | None]:
        if (self.unique is not None and len(self.durable) == self.unique
                and all(f.done() and not f.cancelled() and f.exception() is None for f in self.writes)):
            # every event has an outcome (``durable`` holds only this chunk's ids) and every write
            # landed: the walk below would say the same, one event at a time
            return len(self.events), None
        last: asyncio.Future[Any] | None = None  # a batch's events share their record's future
        for i, event in enumerate(self.events):
            fut = self.durable.get(event.id)
            if fut is last and fut is not None:
                continue
            last = fut
            if fut is None or not fut.done():
                return i, self.broken or RuntimeError("not run")
            if fut.cancelled():
                return i, asyncio.CancelledError()
            if fut.exception() is not None:
                return i, fut.exception()
        return len(self.events), None


class Dispatcher:
    def __init__(self, store: Store, registry: Registry, pool: WorkerPool, metrics: Metrics,
                 writer: RecordWriter, completions: Completions, crash_point: str = "",
                 instance: str = "", tracing: Tracing | None = None, log_successes: bool = False) -> None:
        self.store = store
        # A success is in its record; a log line for it (HUB_LOG_INVOCATIONS=all, a REPORT line's
        # worth of CPU) only when the operator asks. Failures are always logged.
        self.log_successes = log_successes
        self.tracing = tracing or Tracing()  # OpenTelemetry (hub.tracing); disabled unless configured
        self.instance = instance  # written on every record: which instance ran it
        # A test seam (HUB_TEST_CRASH_POINT): die at once, as kill -9 would, right after an
        # outcome is durable and before the source is acked -- "after_record" (a success's
        # record) or "after_dead_letter" -- so a test can prove the redelivery does not run again.
        self.crash_point = crash_point
        self.registry = registry
        self.pool = pool
        self.metrics = metrics
        self.writer = writer
        self.completions = completions
        # (target, event id) -> the delivery of it running now: a duplicate that arrives
        # meanwhile (a webhook retry, a rebalance) waits for it and is then skipped, not run twice.
        self._inflight: dict[str, asyncio.Future[None]] = {}
        self._counters: dict[tuple[str, str], Any] = {}
        self._histograms: dict[str, Any] = {}

    # -- the entry point -------------------------------------------------------------------
    async def deliver(self, target: Target, events: list[Event], *, request_id: str | None = None,
                      replay_of: str | None = None) -> dict[str, str]:
        """Run ``events`` (in order) until each succeeded or was dead-lettered, durably.

        Returns each event's outcome: "succeeded", "dead_lettered" or "duplicate" (it had
        finished before). ``replay_of`` names a dead letter that must not count as finished."""
        return await self.settle(await self.run(target, events, request_id=request_id, replay_of=replay_of))

    async def run(self, target: Target, events: list[Event], *, request_id: str | None = None,
                  replay_of: str | None = None) -> Chunk:
        """The first half of ``deliver``: every handler call, in order; their records may still
        be on their way to MongoDB (``settle`` waits for that)."""
        chunk = Chunk(events)
        try:
            await self._deliver(target, chunk, request_id, replay_of)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            chunk.broken = chunk.broken or exc
        return chunk

    async def settle(self, chunk: Chunk) -> dict[str, str]:
        """The second half: wait until every outcome is durable; ``Unfinished`` if not all are."""
        for fut in chunk.writes:
            if not fut.done():
                try:
                    # shielded: a cancelled wait must not cancel the write's own future (the
                    # claim on these events lasts until the write really ended)
                    await asyncio.shield(fut)
                except Exception:
                    pass
        finished, error = chunk.finished_prefix()
        if finished < len(chunk.events):
            raise Unfinished(finished, error or RuntimeError("unfinished"))
        return chunk.outcomes

    async def _deliver(self, target: Target, chunk: Chunk, request_id: str | None,
                       replay_of: str | None) -> None:
        todo = await self._not_finished(target, chunk, chunk.events, replay_of)
        chunk.unique = len(todo) + len(chunk.durable)  # the ones to run and the ones that finished before
        size = max(1, target.batch_size)
        for start in range(0, len(todo), size):
            if chunk.broken:
                return
            group = todo[start:start + size]
            group, keys, claim = await self._claim(target, chunk, group, replay_of)
            if not group:
                continue
            writes = len(chunk.writes)
            try:
                await self._run_to_end(target, chunk, group, request_id)
            finally:
                self._release(keys, claim, chunk.writes[writes:])

    async def _not_finished(self, target: Target, chunk: Chunk, events: list[Event],
                            replay_of: str | None) -> list[Event]:
        done = await self.completions.finished(target.key, [e.id for e in events], replay_of)
        if not done and not chunk.durable:  # the usual chunk: nothing ran before
            fresh = {e.id: e for e in events}
            if len(fresh) == len(events):  # no id twice (else the loop keeps each one's first)
                return events
        todo: dict[str, Event] = {}
        for event in events:
            if event.id in todo:
                continue  # the same event twice in one chunk (a notification sent twice) runs once
            if event.id in done or event.id in chunk.durable:
                if event.id not in chunk.durable:
                    chunk.durable[event.id] = _resolved()
                    chunk.outcomes[event.id] = "duplicate"
                    self.metrics.duplicates.labels(target.key).inc()
                    log.info("duplicate event skipped", trigger=target.key, event_id=event.id,
                             outcome=done.get(event.id))
                continue
            todo[event.id] = event
        return list(todo.values())

    async def _claim(self, target: Target, chunk: Chunk, group: list[Event],
                     replay_of: str | None) -> tuple[list[Event], list[str], asyncio.Future[None]]:
        """Wait for any delivery of these events already running here (until its outcome is
        durable), re-check them, and claim what is left for this one: the events, their keys in
        ``_inflight`` (made once per group, for the claim and its release) and the claim."""
        key = target.key
        inflight = self._inflight
        while True:
            keys = [completion_key(key, e.id) for e in group]
            busy = {id(f): f for k in keys if (f := inflight.get(k)) is not None}
            if not busy:
                break
            await asyncio.gather(*(asyncio.shield(f) for f in busy.values()), return_exceptions=True)
            group = await self._not_finished(target, chunk, group, replay_of)
        claim: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        inflight.update(dict.fromkeys(keys, claim))
        return group, keys, claim

    def _release(self, keys: list[str], claim: asyncio.Future[None], writes: list[asyncio.Future[Any]]) -> None:
        """Drop the claim once the group's outcomes are durable (or failed): a duplicate that
        arrives before that waits, then finds them finished. ``writes``: the durable writes the
        group made (its successes' records, its dead letters)."""
        inflight = self._inflight

        def done(_: object = None) -> None:
            for key in keys:
                if inflight.get(key) is claim:
                    del inflight[key]
            if not claim.done():
                claim.set_result(None)

        pending = [f for f in writes if not f.done()]
        if len(pending) == 1:  # one record (batch 1, or one batch): no gather to build per group
            pending[0].add_done_callback(done)
        elif pending:
            asyncio.gather(*pending, return_exceptions=True).add_done_callback(done)
        else:
            done()

    # -- one group (one event, or one batch) to the end ------------------------------------
    async def _run_to_end(self, target: Target, chunk: Chunk, events: list[Event],
                          request_id: str | None) -> None:
        """Run one group (an event, or a batch) until every event in it succeeded or was
        dead-lettered. Attempts are counted per event: a record is dead-lettered once it has
        failed ``max_attempts`` times itself, whatever the others in its batch did."""
        policy = target.retry
        # each event's failed attempts; an event gets its list at its first failure (the usual
        # batch never fails: no list per event to make)
        history: dict[str, list[dict[str, Any]]] = {}
        remaining = list(events)
        request_id = request_id or new_id()
        throttled = 0
        while remaining:
            tried = max(len(history.get(e.id, ())) for e in remaining) if history else 0
            if tried or throttled:
                age = self._age_s(remaining[0])
                if age is not None and age > policy.max_event_age_s:
                    error = {"type": "EventTooOld",
                             "message": f"event is {age:.0f}s old; max_event_age_s is {policy.max_event_age_s}"}
                    for e in remaining:
                        attempts = history.setdefault(e.id, [])
                        attempts.append({"attempt": len(attempts) + 1, "status": "expired", "at": now(),
                                         "error": error})
                    await self._dead_letter(target, chunk, remaining, history)
                    return
            attempt = tried + 1
            record, outcome = await self._attempt(target, chunk, remaining, request_id, attempt, throttled)
            if outcome is None:  # throttled: our own capacity, not the function's fault
                throttled += 1
                await asyncio.sleep(backoff_delay(policy, min(throttled, 8)) or 0.1)
                continue
            for e in outcome.failed:
                attempts = history.setdefault(e.id, [])
                attempts.append({"attempt": len(attempts) + 1, "invocation_id": record["_id"],
                                 "status": record["status"], "error": record["error"] or _item_error(),
                                 "at": record["finished_at"]})
            if not outcome.failed:
                return
            whole_call_failed = not outcome.succeeded and not outcome.not_processed
            if whole_call_failed and target.bisect and len(remaining) > 1:
                half = len(remaining) // 2
                self.metrics.retries.labels(target.key).inc()
                await self._run_to_end(target, chunk, remaining[:half], None)
                await self._run_to_end(target, chunk, remaining[half:], None)
                return
            # Out of attempts: those records are dead-lettered; the others (what followed them in
            # an ordered batch included) go on with the attempts they have left.
            exhausted = [e for e in outcome.failed if len(history[e.id]) >= policy.max_attempts]
            if exhausted:
                await self._dead_letter(target, chunk, exhausted, history)
            again = ({e.id for e in outcome.failed} | {e.id for e in outcome.not_processed}) - \
                {e.id for e in exhausted}
            remaining = [e for e in remaining if e.id in again]
            failures = max((len(history.get(e.id, ())) for e in remaining), default=0)
            if failures:  # someone left failed before: back off; only untried records run at once
                self.metrics.retries.labels(target.key).inc()
                await asyncio.sleep(backoff_delay(policy, failures))

    async def _attempt(self, target: Target, chunk: Chunk, events: list[Event], request_id: str,
                       attempt: int, throttled: int) -> tuple[dict[str, Any], batches.Split | None]:
        if not self.tracing.enabled:
            return await self._attempt_traced(target, chunk, events, request_id, attempt, None)
        with self.tracing.attempt(events, function=target.function_name, trigger=target.trigger,
                                  invocation_id=request_id, attempt=attempt,
                                  wait_s=self._age_s(events[0])) as span:
            return await self._attempt_traced(target, chunk, events, request_id, attempt, span)

    async def _attempt_traced(self, target: Target, chunk: Chunk, events: list[Event], request_id: str,
                              attempt: int, span: Any) -> tuple[dict[str, Any], batches.Split | None]:
        report, fn = await self._invoke(target, events, request_id, attempt, span)
        if report.status is Status.throttled:
            return {}, None
        is_batch = target.batch_size > 1
        failed_ids: set[str] = set()
        # event_format "aws": Lambda's identifiers too, and read for single events as well (Lambda
        # reads a stream source's batchItemFailures whatever the batch size)
        aws = fn is not None and fn.event_format == "aws"
        result = report.result
        if (report.status is Status.succeeded and (is_batch or aws) and isinstance(result, dict)
                and "batchItemFailures" in result):  # else it names none (reported_failures' rule)
            try:
                failed_ids = batches.reported_failures(report.result, [e.id for e in events],
                                                       aws_events.identifiers(events) if aws else None)
            except batches.BadItemFailures as exc:
                report.status = Status.failed
                report.error = {"type": "InvalidBatchItemFailures", "message": str(exc), "traceback": ""}
        if report.status in FAILED:
            failed_ids = {e.id for e in events}
        outcome = batches.split(events, failed_ids, target.ordered)
        record = self._record(target, events, report, fn, request_id, attempt, outcome, is_batch)
        durable = self._submit(record, report, span, last=attempt >= target.retry.max_attempts)
        if outcome.succeeded and self.crash_point == "after_record":
            durable.add_done_callback(_crash_unless_failed)
        if outcome.succeeded:
            if durable.done():
                chunk.note_failure(durable)
            else:
                durable.add_done_callback(chunk.note_failure)
        if outcome.succeeded:
            chunk.writes.append(durable)
            ids = [e.id for e in outcome.succeeded]
            chunk.durable.update(dict.fromkeys(ids, durable))
            chunk.outcomes.update(dict.fromkeys(ids, "succeeded"))
        self._observe(target, record, report)
        return record, outcome

    def _submit(self, record: dict[str, Any], report: InvocationReport, span: Any,
                last: bool = True) -> asyncio.Future[Any]:
        """Hand the record to the group-commit writer; with a traced attempt, the record keeps the
        trace id, the attempt span says how it went, and a span covers the write until durable."""
        if span is None:
            return self.writer.submit(record)
        record["trace_id"] = trace_id_of(span)
        span.set_attribute("faas.invocation_id", record["_id"])  # the record's id (GET /v1/invocations/ID)
        finish_attempt(span, status=record["status"], error=report.error, cold=report.cold_start,
                       billed_ms=report.billed_ms,
                       dead_lettered=last and record["status"] not in ("succeeded", "throttled"))
        write = self.tracing.record_write(span)
        durable = self.writer.submit(record)
        if write is not None:
            durable.add_done_callback(lambda _: write.end())
        return durable

    async def _invoke(self, target: Target, events: list[Event], invocation_id: str,
                      attempt: int, span: Any = None) -> tuple[InvocationReport, FunctionRuntime | None]:
        try:
            # the version the reference resolves to now (a moved alias counts from its next event)
            fn = await self.registry.runtime(target.function)
        except CodeUnavailable as exc:  # this host cannot lay the code out (a full disk, say)
            return InvocationReport(status=Status.failed, error={
                "type": "CodeUnavailable", "message": str(exc)}), None
        except SecretUnavailable as exc:  # deleted under it, or another instance's key
            log.warning("a function's secret is unavailable", function=target.function_name, error=str(exc))
            return InvocationReport(status=Status.failed, error={
                "type": "SecretUnavailable", "message": str(exc)}), None
        if fn is None:
            missing = (f"function {target.function_name!r} does not exist" if target.qualifier == "latest" else
                       f"function {target.function_name!r} has no alias or version {target.qualifier!r} "
                       f"(or does not exist)")
            return InvocationReport(status=Status.failed, error={
                "type": "FunctionNotFound", "message": missing}), None
        aws = fn.event_format == "aws"
        if aws:  # Lambda's own shapes (hub.spec.aws_events); the events' ids stay the hub's
            payload: Any = aws_events.render(events, self.registry.aws, target.trigger,
                                             batch=target.batch_size > 1)
        else:
            payload = (batches.envelope(events, target.source, target.trigger) if target.batch_size > 1
                       else batches.payload(events[0]))
        traceparent = traceparent_of(span)
        ctx = InvokeContext(invocation_id=invocation_id, trigger=target.trigger, attempt=attempt,
                            traceparent=traceparent)
        context = {"invocation_id": invocation_id, "function": target.function_name, "trigger": target.trigger}
        if traceparent:
            context["trace_id"], context["span_id"] = traceparent.split("-")[1:3]
        bound = INVOCATION.set(context)  # every line logged meanwhile carries it (hub.logs)
        try:
            if not aws:
                return await self.pool.invoke(fn, payload, ctx), fn
            arn = self.registry.aws.function_arn(target.function_name, target.qualifier)
            report = await self.pool.invoke(fn, payload, replace(ctx, function_arn=arn))
            report.handed = payload  # recorded with the invocation: what the handler got
            return report, fn
        finally:
            INVOCATION.reset(bound)

    def _record(self, target: Target, events: list[Event], report: InvocationReport, fn: FunctionRuntime | None,
                request_id: str, attempt: int, outcome: batches.Split, is_batch: bool) -> dict[str, Any]:
        finished_at = now()
        secret_values = getattr(fn, "secret_values", ())
        if secret_values:  # only functions with secrets pay for this
            _mask_report(report, secret_values)
        status = report.status.value
        target_key = target.key
        if report.status is Status.succeeded and outcome.failed:
            status = "partial"
        record: dict[str, Any] = {
            "_id": new_id(),
            "request_id": request_id,
            "function": target.function_name,
            "version": fn.version if fn else None,  # what ran
            "memory_mb": fn.memory_mb if fn else None,  # its limit: usage (GB-seconds, hub.delivery.usage)
            "qualifier": target.qualifier,  # what was asked for: latest, an alias or a version
            "trigger": target.trigger,
            "event_id": events[0].id,
            "event_ids": [e.id for e in events],
            "event_source": events[0].source,
            "event_type": events[0].type,
            "attempt": attempt,
            "instance": self.instance,
            "started_at": finished_at - dt.timedelta(milliseconds=report.duration_ms),
            "finished_at": finished_at,
            **report.to_doc(),
            "status": status,
            # the success markers: see hub.delivery.records
            "done": [completion_key(target_key, e.id) for e in outcome.succeeded],
        }
        if fn is not None and fn.event_format == "aws":
            _lambda_view(record, report)
        if is_batch:
            record["batch_size"] = len(events)
            if len(outcome.succeeded) == len(events):  # the usual batch: no sets to build and ask
                record["items"] = [{"event_id": i, "status": "succeeded"} for i in record["event_ids"]]
            else:
                failed = {e.id for e in outcome.failed}
                skipped = {e.id for e in outcome.not_processed}
                record["items"] = [{"event_id": e.id, "status": "failed" if e.id in failed else
                                    "not_processed" if e.id in skipped else "succeeded"} for e in events]
        return record

    def _observe(self, target: Target, record: dict[str, Any], report: InvocationReport) -> None:
        name = target.function_name
        counter = self._counters.get((name, record["status"]))
        if counter is None:  # prometheus' labels() takes a lock and builds a key every call
            counter = self._counters[(name, record["status"])] = \
                self.metrics.invocations.labels(name, record["status"])
        counter.inc()
        histogram = self._histograms.get(name)
        if histogram is None:
            histogram = self._histograms[name] = self.metrics.duration.labels(name)
        histogram.observe(report.duration_ms / 1000)
        if record["status"] == "succeeded" and not (self.log_successes and log_enabled(logging.INFO)):
            return  # the record is the log; the line is only for who asked for it
        fields = dict(invocation_id=record["_id"], function=name, version=record["version"], trigger=target.trigger,
                      status=record["status"], attempt=record["attempt"],
                      duration_ms=round(report.duration_ms, 2), billed_ms=report.billed_ms,
                      max_memory_mb=report.max_memory_mb, cold_start=report.cold_start)
        if "batch_size" in record:
            fields["batch_size"] = record["batch_size"]
        if record.get("trace_id"):  # the invocation's own lines carry it through bound context
            fields["trace_id"] = record["trace_id"]
        if record["status"] == "succeeded":
            log.info("invocation finished", **fields)
        elif record["status"] == "partial":
            log.warning("invocation reported failed records", **fields,
                        failed=sum(1 for i in record["items"] if i["status"] == "failed"))
        else:
            log.warning("invocation failed", **fields, error=(report.error or {}).get("message"))

    async def _dead_letter(self, target: Target, chunk: Chunk, events: list[Event],
                           history: dict[str, list[dict[str, Any]]]) -> None:
        """One dead letter per event, with its own attempts; the document is the event's marker."""
        t = now()
        ops = []
        for e in events:
            attempts = history[e.id]
            last = attempts[-1] if attempts else {}
            ops.append(ReplaceOne({"_id": dead_letter_id(target.key, e.id)}, storable({
                "_id": dead_letter_id(target.key, e.id), "trigger": target.trigger,
                "function": target.function_name, "qualifier": target.qualifier,
                "event": e.to_cloudevent(), "attempts": attempts, "last_error": last.get("error"),
                "last_status": last.get("status"), "created_at": t,
            }), upsert=True))
        write: asyncio.Future[Any] = asyncio.ensure_future(
            shielded(self.store.write_dead_letters(ops)))
        chunk.writes.append(write)
        for e in events:
            chunk.durable[e.id] = write
            chunk.outcomes[e.id] = "dead_lettered"
        await asyncio.shield(write)
        if self.crash_point == "after_dead_letter":
            _crash("after_dead_letter")
        self.metrics.dead_letters.labels(target.key).inc(len(events))
        for e in events:
            log.warning("event dead-lettered", trigger=target.trigger, function=target.function_name,
                        event_id=e.id, attempts=len(history[e.id]), dead_letter_id=dead_letter_id(target.key, e.id))

    # -- synchronous invoke (the HTTP API) --------------------------------------------------
    async def run_once(self, target: Target, event: Event, invocation_id: str, request_id: str,
                       attempt: int, *, durable: bool = True) -> dict[str, Any]:
        """One attempt at one event (sync invoke, http triggers: no retries, the caller sees the
        error). With ``durable`` it returns once the record is in MongoDB; without, the record
        follows in the next group commit (an http answer does not wait for it)."""
        if not self.tracing.enabled:  # tracing off costs nothing here, not even its context manager
            written, record, report = await self._run_once(target, event, invocation_id, request_id, attempt,
                                                           None, durable)
        else:
            with self.tracing.attempt([event], function=target.function_name, trigger=target.trigger,
                                      invocation_id=invocation_id, attempt=attempt) as span:
                written, record, report = await self._run_once(target, event, invocation_id, request_id,
                                                               attempt, span, durable)
        if written is not None:
            await asyncio.shield(written)
        self._observe(target, record, report)
        return record

    async def _run_once(self, target: Target, event: Event, invocation_id: str, request_id: str, attempt: int,
                        span: Any, durable: bool
                        ) -> tuple[asyncio.Future[Any] | None, dict[str, Any], InvocationReport]:
        """The record, and the write to wait for (None: nobody waits)."""
        report, fn = await self._invoke(target, [event], invocation_id, attempt, span)
        outcome = batches.split([event], {event.id} if report.status is not Status.succeeded else set(), True)
        record = self._record(target, [event], report, fn, request_id, attempt, outcome, False)
        record["_id"] = invocation_id
        if durable or span is not None:  # a traced write has a span of its own, ended when durable
            written = self._submit(record, report, span)
            return (written if durable else None), record, report
        self.writer.post(record)  # no future for a caller that never waits (hub.delivery.records)
        return None, record, report

    @staticmethod
    def _age_s(event: Event) -> float | None:
        t = _parse_time(event.time)
        return (now() - t).total_seconds() if t else None


def _mask_report(report: InvocationReport, values: tuple[str, ...]) -> None:
    """Replace the function's secret values by ``***`` in everything recorded or logged of this
    invocation: output, error and traceback, result (the record, the log line and the caller's
    answer all come from the report)."""
    report.stdout = mask(report.stdout, values)
    report.stderr = mask(report.stderr, values)
    if report.error is not None:
        report.error = mask(report.error, values)
    if report.result is not None:
        report.result = mask(report.result, values)


AWS_EVENT_RECORD_MAX = 256 * 1024  # bytes of a handed Lambda event kept in the record (16 MB BSON cap)


def _lambda_view(record: dict[str, Any], report: InvocationReport) -> None:
    """event_format "aws": the record keeps what the handler got (bounded: a 10,000-record batch
    would not fit a record) and the error also in Lambda's form (errorMessage, errorType,
    stackTrace), beside the hub's type, message and traceback."""
    record["event_format"] = "aws"
    try:
        size = len(json.dumps(report.handed, separators=(",", ":"), default=str))
    except (TypeError, ValueError):
        size = AWS_EVENT_RECORD_MAX + 1
    record["aws_event"] = report.handed if size <= AWS_EVENT_RECORD_MAX else {"omitted": True, "bytes": size}
    if isinstance(record.get("error"), dict):
        record["error"] = {**record["error"], **aws_events.lambda_error(record["error"])}


def _crash_unless_failed(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled() and fut.exception() is None:
        _crash("after_record")


def _crash(point: str) -> None:
    log.error("test crash point reached: exiting now", crash_point=point)
    os._exit(137)


def _item_error() -> dict[str, Any]:
    return {"type": "BatchItemFailure", "message": "the handler reported this record in batchItemFailures"}


def _resolved() -> asyncio.Future[None]:
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    fut.set_result(None)
    return fut
