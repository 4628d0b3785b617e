"""Schedule triggers: each tick fires once across every hub instance, through the inbox.

Every instance computes the same ticks (``hub.spec.schedule_times``) and, when one comes due, queues
it as an inbox item whose ``_id`` is derived from (trigger, tick): MongoDB's unique ``_id`` is
the claim, so of any number of instances exactly one queues the tick, and from then on it has
the inbox's guarantees (durable, leased, retried per the trigger's policy, dead-lettered). The
event id is the same stable value, so a tick queued again later (an instance with a slow clock,
after the first was processed and deleted) is recognised by the duplicate check and not run.

Each queued tick also moves the trigger's ``last_tick`` forward in ``source_state``. A hub that
comes back after none ran looks there: with ``catch_up`` it fires *one* event for the missed
ticks (the latest, with how many were missed); without, it skips to the next tick.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass
from typing import Any

import structlog
from opentelemetry.trace import SpanKind
from pymongo.errors import BulkWriteError, DuplicateKeyError

from hub.spec import schedule_times
from hub.events import Event
from hub.intake.inbox import Inbox
from hub.driver import DUPLICATE_KEY, shielded
from hub.intake.router import Router, Trigger
from hub.store import Store, now
from hub.tracing import Tracing
from hub.catalog.triggers import source_state_key

log = structlog.get_logger("hub.intake.scheduler")

MAX_LATE_TICKS = 10  # ticks one trigger may fire in one pass when the loop fell behind
MAX_SLEEP_S = 1.0  # look at the trigger set at least this often


def _duplicate(exc: Exception) -> bool:
    if isinstance(exc, DuplicateKeyError):
        return True
    errors = exc.details.get("writeErrors", []) if isinstance(exc, BulkWriteError) else []
    return bool(errors) and all(e.get("code") == DUPLICATE_KEY for e in errors)


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class _Plan:
    """What this instance knows about one schedule trigger."""

    key: str  # the trigger's schedule identity: a changed schedule starts a new plan
    last: dt.datetime  # the latest tick handled (fired by someone, or skipped)
    next: dt.datetime
    last_fired: dt.datetime | None = None


class Scheduler:
    def __init__(self, store: Store, router: Router, inbox: Inbox, tracing: Tracing | None = None) -> None:
        self.tracing = tracing or Tracing()
        self.store = store
        self.router = router
        self.inbox = inbox
        self._plans: dict[str, _Plan] = {}
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.fired = 0  # ticks this instance queued (won the claim)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="scheduler")

    async def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._task is not None:
            await asyncio.wait([self._task])  # its driver calls are shielded and short

    def triggers_changed(self) -> None:
        self._wake.set()

    def describe(self, name: str) -> dict[str, Any]:
        plan = self._plans.get(name)
        if plan is None:
            return {"next_fire": None, "last_fired": None}
        return {"next_fire": _iso(plan.next),
                "last_fired": _iso(plan.last_fired) if plan.last_fired else None}

    def status(self) -> dict[str, Any]:
        return {name: self.describe(name) for name in self._plans}

    # -- the loop ---------------------------------------------------------------------------
    async def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                await self._pass()
            except Exception as exc:  # MongoDB away: the ticks wait for the next pass
                log.warning("scheduler pass failed; retrying", error=f"{type(exc).__name__}: {exc}")
                await self._sleep(1.0)
                continue
            due = [p.next for p in self._plans.values()]
            wait = MAX_SLEEP_S if not due else (min(due) - now()).total_seconds()
            await self._sleep(min(max(wait, 0.0), MAX_SLEEP_S))

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except TimeoutError:
            pass

    async def _pass(self) -> None:
        wanted = {t.name: t for t in self.router.triggers.values() if t.enabled and t.source_type == "schedule"}
        for name in list(self._plans):
            if name not in wanted:
                del self._plans[name]
        for name, trigger in wanted.items():
            plan = self._plans.get(name)
            if plan is None or plan.key != self._key(trigger):
                plan = self._plans[name] = await self._plan(trigger)
            late = 0
            t = now()
            while plan.next <= t and not self._stopping.is_set():
                if late == MAX_LATE_TICKS:
                    # fell far behind: go straight to the latest due tick instead of stepping
                    # through every missed one on the event loop
                    src = trigger.source
                    latest = schedule_times.last_tick(src.get("cron"), src.get("rate"), src.get("timezone", "UTC"),
                                                      trigger.schedule_anchor_time(), t)
                    if latest is not None and latest > plan.last:
                        plan.last = latest
                        plan.next = self._next(trigger, latest)
                    log.warning("scheduler fell behind; ticks skipped", trigger=name,
                                skipped=self._count(trigger, plan.last_fired or plan.last, plan.last))
                    break
                await self._fire(trigger, plan.next, t)
                plan.last_fired = plan.next
                late += 1
                plan.last = plan.next
                plan.next = self._next(trigger, plan.last)

    @staticmethod
    def _key(t: Trigger) -> str:
        return f"{t.source_identity}:{t.source_epoch}:{t.schedule_anchor}"

    def _next(self, t: Trigger, after: dt.datetime) -> dt.datetime:
        src = t.source
        return schedule_times.next_tick(src.get("cron"), src.get("rate"), src.get("timezone", "UTC"),
                                        t.schedule_anchor_time(), after)

    async def _plan(self, t: Trigger) -> _Plan:
        """Where a trigger stands when this instance first sees it: after its last tick (queued
        by any instance), catching up on what no hub fired while none ran if it asks to."""
        src = t.source
        anchor = t.schedule_anchor_time()
        state = await shielded(self.store.get_source_state(source_state_key(t.name, t.source_identity))) or {}
        saved = state.get("last_tick") if state.get("epoch") == t.source_epoch else None
        last: dt.datetime = saved if isinstance(saved, dt.datetime) and saved > anchor else anchor
        current = now()
        latest_due = schedule_times.last_tick(src.get("cron"), src.get("rate"), src.get("timezone", "UTC"),
                                              anchor, current)
        plan = _Plan(self._key(t), last, self._next(t, last))
        if latest_due is None or latest_due <= last:
            return plan  # nothing was missed
        missed = self._count(t, last, latest_due)
        if src.get("catch_up") and missed:
            log.info("schedule: catching up once for ticks missed while no hub ran", trigger=t.name,
                     missed=missed, since=_iso(last))
            await self._fire(t, latest_due, current, missed=missed, first_missed=self._next(t, last))
            plan.last_fired = latest_due
        elif missed:
            log.info("schedule: ticks missed while no hub ran are skipped (catch_up is off)",
                     trigger=t.name, missed=missed)
        plan.last, plan.next = latest_due, self._next(t, latest_due)
        return plan

    def _count(self, t: Trigger, after: dt.datetime, until: dt.datetime, limit: int = 10_000) -> int:
        """Ticks in (after, until], counted up to ``limit`` (stepping a cron costs ~0.1 ms a tick,
        on the event loop)."""
        n, tick = 0, self._next(t, after)
        while tick <= until and n < limit:
            n += 1
            tick = self._next(t, tick)
        return n

    async def _fire(self, t: Trigger, tick: dt.datetime, fired_at: dt.datetime, *, missed: int = 0,
                    first_missed: dt.datetime | None = None) -> None:
        """Queue the tick unless another instance already did (its _id is the claim)."""
        src = t.source
        ident = f"schedule:{t.name}:{t.source_epoch}:{_iso(tick)}"
        data: dict[str, Any] = {"trigger": t.name, "scheduled_time": _iso(tick), "fired_at": _iso(fired_at),
                                "cron": src.get("cron"), "rate": src.get("rate"),
                                "timezone": src.get("timezone", "UTC")}
        if missed:
            data.update(catch_up=True, missed=missed, first_missed=_iso(first_missed or tick))
        event = Event(id=ident, source=f"schedule://{t.name}", type="hub.schedule", subject=_iso(tick),
                      time=_iso(tick), data=data)
        if self.tracing.enabled:  # each tick is a trace of its own, kept in the queued item
            event = self.tracing.received(event, trigger=t.name, kind=SpanKind.PRODUCER)
        item = Inbox._item("schedule", event, trigger=t.name, function=t.function)
        item["_id"] = ident
        try:
            await shielded(self.store.inbox_put([item]))
            self.fired += 1
            self.inbox.wake()
        except (DuplicateKeyError, BulkWriteError) as exc:
            if not _duplicate(exc):
                raise  # another instance queued this tick: nothing to do
        await shielded(self.store.advance_tick(source_state_key(t.name, t.source_identity), t.name,
                                               t.source_epoch, tick))
