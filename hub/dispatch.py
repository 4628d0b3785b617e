"""Runs an event's function to a final outcome: retries with backoff, invocation records, dead letters.

``deliver`` returns only when the event is *finished* (succeeded or dead-lettered); connectors ack
(commit an offset, persist a resume token, delete an inbox item) only after that. Store errors
propagate, so the connector does not ack and the event comes back.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import random
import uuid
from dataclasses import dataclass
from typing import Any

import structlog

from hub.events import Event
from hub.metrics import Metrics
from hub.models import RetryPolicy
from hub.registry import Registry
from hub.sandbox.base import InvocationReport, InvokeContext, Status, WorkerPool
from hub.store import Store, now

log = structlog.get_logger("hub.dispatch")


@dataclass(frozen=True)
class Target:
    """Where an event goes: a trigger's function, or a function invoked directly (trigger None)."""

    function: str
    trigger: str | None
    retry: RetryPolicy

    @property
    def key(self) -> str:
        # completions and dead letters are keyed per trigger; direct invokes get a pseudo-trigger
        return self.trigger or f"invoke:{self.function}"


def dead_letter_id(target_key: str, event_id: str) -> str:
    return hashlib.sha256(f"{target_key}|{event_id}".encode()).hexdigest()[:24]


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


class Dispatcher:
    def __init__(self, store: Store, registry: Registry, pool: WorkerPool, metrics: Metrics) -> None:
        self.store = store
        self.registry = registry
        self.pool = pool
        self.metrics = metrics
        # (target, event id) pairs being delivered right now: a duplicate that arrives meanwhile
        # (a webhook retry, a rebalance) waits for the first and is then skipped, not run in parallel.
        self._inflight: dict[str, tuple[asyncio.Lock, int]] = {}

    async def deliver(self, target: Target, event: Event, request_id: str | None = None) -> str:
        """Run ``event`` through ``target`` until it succeeds or is dead-lettered. Returns the outcome."""
        key = f"{target.key}|{event.id}"
        lock, users = self._inflight.get(key, (asyncio.Lock(), 0))
        self._inflight[key] = (lock, users + 1)
        try:
            async with lock:
                return await self._deliver(target, event, request_id)
        finally:
            lock, users = self._inflight[key]
            if users == 1:
                del self._inflight[key]
            else:
                self._inflight[key] = (lock, users - 1)

    async def _deliver(self, target: Target, event: Event, request_id: str | None) -> str:
        done = await self.store.is_completed(target.key, event.id)
        if done is not None:
            self.metrics.duplicates.labels(target.key).inc()
            log.info("duplicate event skipped", trigger=target.key, event_id=event.id, outcome=done["outcome"])
            return "duplicate"
        request_id = request_id or uuid.uuid4().hex
        attempts: list[dict[str, Any]] = []
        policy = target.retry
        attempt = 0
        throttled = 0
        while attempt < policy.max_attempts:
            age = self._age_s(event)
            if (attempt or throttled) and age is not None and age > policy.max_event_age_s:
                attempts.append({"attempt": attempt + 1, "status": "expired", "at": now(), "error": {
                    "type": "EventTooOld",
                    "message": f"event is {age:.0f}s old; max_event_age_s is {policy.max_event_age_s}"}})
                break
            attempt += 1
            suffix = f"-{attempt}" if attempt > 1 else ""
            invocation_id = f"{request_id}{suffix}" + (f"-t{throttled}" if throttled else "")
            record = await self.run_once(target, event, invocation_id, request_id, attempt)
            if record["status"] == Status.throttled.value:
                # Our own capacity, not the function's fault: wait and try again without using up
                # an attempt (bounded by max_event_age_s, as Lambda does for throttled events).
                attempt -= 1
                throttled += 1
                await asyncio.sleep(backoff_delay(policy, min(throttled, 8)) or 0.1)
                continue
            attempts.append({
                "attempt": attempt, "invocation_id": invocation_id, "status": record["status"],
                "error": record["error"], "at": record["finished_at"],
            })
            if record["status"] == Status.succeeded.value:
                await self.store.mark_completed(target.key, event.id, "succeeded", invocation_id)
                return "succeeded"
            if attempt < policy.max_attempts:
                self.metrics.retries.labels(target.key).inc()
                await asyncio.sleep(backoff_delay(policy, attempt))
        await self._dead_letter(target, event, attempts)
        return "dead_lettered"

    async def run_once(
        self, target: Target, event: Event, invocation_id: str, request_id: str, attempt: int
    ) -> dict[str, Any]:
        """One attempt: run the function and record what happened."""
        bound = log.bind(invocation_id=invocation_id, function=target.function, trigger=target.trigger)
        started = now()
        fn = await self.registry.runtime(target.function)
        if fn is None:
            report = InvocationReport(
                status=Status.failed,
                error={"type": "FunctionNotFound", "message": f"function {target.function!r} does not exist"},
            )
            version = None
        else:
            version = fn.version
            ctx = InvokeContext(invocation_id=invocation_id, trigger=target.trigger, attempt=attempt)
            with structlog.contextvars.bound_contextvars(
                invocation_id=invocation_id, function=target.function, trigger=target.trigger
            ):
                report = await self.pool.invoke(fn, event.to_cloudevent(), ctx)
        record = {
            "_id": invocation_id,
            "request_id": request_id,
            "function": target.function,
            "version": version,
            "trigger": target.trigger,
            "event_id": event.id,
            "event_source": event.source,
            "event_type": event.type,
            "attempt": attempt,
            "started_at": started,
            "finished_at": now(),
            **report.to_doc(),
        }
        await self.store.record_invocation(record)
        self.metrics.invocations.labels(target.function, report.status.value).inc()
        self.metrics.duration.labels(target.function).observe(report.duration_ms / 1000)
        bound.info(
            "invocation finished", status=report.status.value, attempt=attempt,
            duration_ms=round(report.duration_ms, 2), billed_ms=report.billed_ms,
            max_memory_mb=report.max_memory_mb, cold_start=report.cold_start,
        )
        return record

    async def _dead_letter(self, target: Target, event: Event, attempts: list[dict[str, Any]]) -> None:
        dl_id = dead_letter_id(target.key, event.id)
        last = attempts[-1] if attempts else {}
        doc = {
            "_id": dl_id,
            "trigger": target.trigger,
            "function": target.function,
            "event": event.to_cloudevent(),
            "attempts": attempts,
            "last_error": last.get("error"),
            "last_status": last.get("status"),
            "created_at": now(),
        }
        await self.store.put_dead_letter(doc)
        await self.store.mark_completed(target.key, event.id, "dead_lettered", dl_id)
        self.metrics.dead_letters.labels(target.key).inc()
        log.warning(
            "event dead-lettered", trigger=target.trigger, function=target.function,
            event_id=event.id, attempts=len(attempts), dead_letter_id=dl_id,
        )

    @staticmethod
    def _age_s(event: Event) -> float | None:
        t = _parse_time(event.time)
        return (now() - t).total_seconds() if t else None
