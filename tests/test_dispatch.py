"""Dispatcher rules, with a scripted pool (pure logic) over the real MongoDB store."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hub.dispatch import Dispatcher, Target, backoff_delay
from hub.events import Event
from hub.metrics import Metrics
from hub.models import FunctionSpec, RetryPolicy
from hub.registry import Registry
from hub.sandbox.base import FunctionRuntime, InvocationReport, InvokeContext, Status
from hub.store import Store


class ScriptedPool:
    """Answers invocations from a list of statuses; counts calls and concurrency."""

    isolation = "process"

    def __init__(self, statuses: list[Status], hold: asyncio.Event | None = None) -> None:
        self.statuses = statuses
        self.hold = hold
        self.calls: list[InvokeContext] = []
        self.running = 0
        self.max_running = 0

    async def invoke(self, fn: FunctionRuntime, event: dict[str, Any], ctx: InvokeContext) -> InvocationReport:
        self.calls.append(ctx)
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            if self.hold is not None:
                await self.hold.wait()
            status = self.statuses.pop(0) if self.statuses else Status.succeeded
            error = None if status == Status.succeeded else {"type": "X", "message": status.value}
            return InvocationReport(status=status, error=error, duration_ms=1.0, billed_ms=1)
        finally:
            self.running -= 1

    async def start(self) -> None: ...
    async def retire(self, name: str) -> None: ...
    def stats(self) -> dict[str, Any]:
        return {}
    async def close(self) -> None: ...


@pytest.fixture
async def store(mongo_server: Any) -> AsyncIterator[Store]:
    s = Store(mongo_server.url, f"dispatch_{uuid.uuid4().hex[:8]}")
    await s.init()
    yield s
    await s.client.drop_database(s.db.name)
    await s.close()


async def _dispatcher(store: Store, tmp_path: Path, pool: ScriptedPool) -> Dispatcher:
    registry = Registry(store, tmp_path)
    spec = FunctionSpec.model_validate({"handler": "main.handler",
                                        "code": {"files": {"main.py": "def handler(e, c): pass\n"}}})
    await registry.put("fn", spec)
    return Dispatcher(store, registry, pool, Metrics())  # type: ignore[arg-type]


FAST = RetryPolicy(max_attempts=3, backoff_s=0.01, max_backoff_s=0.02)


def _event(age_s: float = 0) -> Event:
    t = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=age_s)
    return Event(id=uuid.uuid4().hex, source="test://x", type="t", data={},
                 time=t.isoformat().replace("+00:00", "Z"))


async def test_throttled_runs_do_not_use_up_attempts(store: Store, tmp_path: Path) -> None:
    pool = ScriptedPool([Status.throttled, Status.throttled, Status.failed, Status.throttled, Status.succeeded])
    d = await _dispatcher(store, tmp_path, pool)
    assert await d.deliver(Target("fn", "t", FAST), _event()) == "succeeded"
    assert [c.attempt for c in pool.calls] == [1, 1, 1, 2, 2]


async def test_old_events_are_not_retried_past_max_age(store: Store, tmp_path: Path) -> None:
    pool = ScriptedPool([Status.failed] * 5)
    d = await _dispatcher(store, tmp_path, pool)
    policy = RetryPolicy(max_attempts=5, backoff_s=0.01, max_event_age_s=60)
    event = _event(age_s=120)
    assert await d.deliver(Target("fn", "t", policy), event) == "dead_lettered"
    assert len(pool.calls) == 1  # it runs once, then is too old to retry
    (dl,) = await store.list_dead_letters({"trigger": "t"}, 10)
    assert [a["status"] for a in dl["attempts"]] == ["failed", "expired"]


async def test_concurrent_duplicates_run_once(store: Store, tmp_path: Path) -> None:
    hold = asyncio.Event()
    pool = ScriptedPool([], hold)
    d = await _dispatcher(store, tmp_path, pool)
    event = _event()
    tasks = [asyncio.create_task(d.deliver(Target("fn", "t", FAST), event)) for _ in range(3)]
    while not pool.calls:
        await asyncio.sleep(0.01)
    hold.set()
    outcomes = sorted(await asyncio.gather(*tasks))
    assert outcomes == ["duplicate", "duplicate", "succeeded"]
    assert len(pool.calls) == 1 and pool.max_running == 1
    assert d._inflight == {}
    # a fourth copy, long after: still recognised
    assert await d.deliver(Target("fn", "t", FAST), event) == "duplicate"


async def test_dead_letter_keeps_every_attempt_and_replay_never_forgets_success(
    store: Store, tmp_path: Path
) -> None:
    pool = ScriptedPool([Status.failed, Status.timeout, Status.crashed])
    d = await _dispatcher(store, tmp_path, pool)
    event = _event()
    assert await d.deliver(Target("fn", "t", FAST), event) == "dead_lettered"
    (dl,) = await store.list_dead_letters({"trigger": "t"}, 10)
    assert [a["status"] for a in dl["attempts"]] == ["failed", "timeout", "crashed"]
    # replaying lets the dead-lettered event run again; once it succeeded, a stale replay cannot
    await store.forget_dead_lettered("t", event.id, dl["_id"])
    assert await d.deliver(Target("fn", "t", FAST), event) == "succeeded"
    await store.forget_dead_lettered("t", event.id, dl["_id"])
    assert await d.deliver(Target("fn", "t", FAST), event) == "duplicate"


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    policy = RetryPolicy(backoff_s=1.0, max_backoff_s=5.0)
    for attempt, (low, high) in {1: (0.5, 1.0), 2: (1.0, 2.0), 3: (2.0, 4.0), 6: (2.5, 5.0)}.items():
        delays = [backoff_delay(policy, attempt) for _ in range(200)]
        assert all(low <= x <= high for x in delays)
        assert len(set(delays)) > 1
