"""Dispatcher rules, with a scripted pool (pure logic) over the real MongoDB store."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from connectors.base import Unfinished
from hub.delivery.dispatch import Dispatcher, Target, backoff_delay
from hub.events import Event
from hub.metrics import Metrics
from hub.spec.models import FunctionSpec, RetryPolicy
from hub.delivery.records import Completions, Entries, RecordWriter, dead_letter_id
from hub.catalog.registry import Registry
from hub.sandbox.base import FunctionRuntime, InvocationReport, InvokeContext, Status
from hub.store import Store


Script = Callable[[dict[str, Any], InvokeContext], InvocationReport]


class ScriptedPool:
    """Answers invocations from a list of statuses (or a script); counts calls and concurrency."""

    isolation = "process"

    def __init__(self, statuses: list[Status], hold: asyncio.Event | None = None,
                 script: Script | None = None) -> None:
        self.statuses = statuses
        self.hold = hold
        self.script = script
        self.calls: list[InvokeContext] = []
        self.payloads: list[dict[str, Any]] = []
        self.running = 0
        self.max_running = 0

    async def invoke(self, fn: FunctionRuntime, event: dict[str, Any], ctx: InvokeContext) -> InvocationReport:
        self.calls.append(ctx)
        self.payloads.append(event)
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            if self.hold is not None:
                await self.hold.wait()
            if self.script is not None:
                return self.script(event, ctx)
            status = self.statuses.pop(0) if self.statuses else Status.succeeded
            error = None if status == Status.succeeded else {"type": "X", "message": status.value}
            return InvocationReport(status=status, error=error, duration_ms=1.0, billed_ms=1)
        finally:
            self.running -= 1

    async def start(self) -> None: ...
    async def retire(self, name: str) -> None: ...

    async def retire_version(self, name: str, version: str) -> None: ...
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


@pytest.fixture
async def writer(store: Store) -> AsyncIterator[RecordWriter]:
    w = RecordWriter(store.db)
    w.start()
    yield w
    await w.close()


async def _dispatcher(store: Store, tmp_path: Path, pool: ScriptedPool, writer: RecordWriter) -> Dispatcher:
    registry = Registry(store, tmp_path)
    spec = FunctionSpec.model_validate({"handler": "main.handler",
                                        "code": {"files": {"main.py": "def handler(e, c): pass\n"}}})
    await registry.put("fn", spec)
    return Dispatcher(store, registry, pool, Metrics(), writer, Completions(store.db))  # type: ignore[arg-type]


FAST = RetryPolicy(max_attempts=3, backoff_s=0.01, max_backoff_s=0.02)


def _event(age_s: float = 0) -> Event:
    t = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=age_s)
    return Event(id=uuid.uuid4().hex, source="test://x", type="t", data={},
                 time=t.isoformat().replace("+00:00", "Z"))


async def _one(d: Dispatcher, target: Target, event: Event, **kw: Any) -> str:
    return (await d.deliver(target, [event], **kw))[event.id]


@pytest.mark.integration
async def test_throttled_runs_do_not_use_up_attempts(store: Store, tmp_path: Path, writer: RecordWriter) -> None:
    pool = ScriptedPool([Status.throttled, Status.throttled, Status.failed, Status.throttled, Status.succeeded])
    d = await _dispatcher(store, tmp_path, pool, writer)
    assert await _one(d, Target("fn", "t", FAST), _event()) == "succeeded"
    assert [c.attempt for c in pool.calls] == [1, 1, 1, 2, 2]


@pytest.mark.integration
async def test_old_events_are_not_retried_past_max_age(store: Store, tmp_path: Path, writer: RecordWriter) -> None:
    pool = ScriptedPool([Status.failed] * 5)
    d = await _dispatcher(store, tmp_path, pool, writer)
    policy = RetryPolicy(max_attempts=5, backoff_s=0.01, max_event_age_s=60)
    event = _event(age_s=120)
    assert await _one(d, Target("fn", "t", policy), event) == "dead_lettered"
    assert len(pool.calls) == 1  # it runs once, then is too old to retry
    (dl,) = await store.list_dead_letters({"trigger": "t"}, 10)
    assert [a["status"] for a in dl["attempts"]] == ["failed", "expired"]


@pytest.mark.integration
async def test_concurrent_duplicates_run_once(store: Store, tmp_path: Path, writer: RecordWriter) -> None:
    hold = asyncio.Event()
    pool = ScriptedPool([], hold)
    d = await _dispatcher(store, tmp_path, pool, writer)
    event = _event()
    tasks = [asyncio.create_task(_one(d, Target("fn", "t", FAST), event)) for _ in range(3)]
    while not pool.calls:
        await asyncio.sleep(0.01)
    hold.set()
    outcomes = sorted(await asyncio.gather(*tasks))
    assert outcomes == ["duplicate", "duplicate", "succeeded"]
    assert len(pool.calls) == 1 and pool.max_running == 1
    assert d._inflight == {}
    # a fourth copy, long after: still recognised
    assert await _one(d, Target("fn", "t", FAST), event) == "duplicate"


@pytest.mark.integration
async def test_dead_letter_keeps_every_attempt_and_replay_never_forgets_success(
    store: Store, tmp_path: Path, writer: RecordWriter
) -> None:
    pool = ScriptedPool([Status.failed, Status.timeout, Status.crashed])
    d = await _dispatcher(store, tmp_path, pool, writer)
    event = _event()
    assert await _one(d, Target("fn", "t", FAST), event) == "dead_lettered"
    (dl,) = await store.list_dead_letters({"trigger": "t"}, 10)
    assert [a["status"] for a in dl["attempts"]] == ["failed", "timeout", "crashed"]
    # the dead letter is the event's marker: a redelivery does not run it again ...
    assert await _one(d, Target("fn", "t", FAST), event) == "duplicate"
    # ... a replay of it does; once it succeeded, a stale replay cannot run it again
    assert await _one(d, Target("fn", "t", FAST), event, replay_of=dl["_id"]) == "succeeded"
    assert await _one(d, Target("fn", "t", FAST), event, replay_of=dl["_id"]) == "duplicate"
    assert len(pool.calls) == 4


@pytest.mark.integration
async def test_a_chunk_runs_once_per_event_with_one_duplicate_check(
    store: Store, tmp_path: Path, writer: RecordWriter
) -> None:
    pool = ScriptedPool([])
    d = await _dispatcher(store, tmp_path, pool, writer)
    events = [_event() for _ in range(50)]
    target = Target("fn", "t", FAST)
    outcomes = await d.deliver(target, events[:30])
    assert set(outcomes.values()) == {"succeeded"} and len(outcomes) == 30
    # the first 30 again with 20 new ones (a redelivery after a crash before the ack)
    outcomes = await d.deliver(target, events)
    assert [outcomes[e.id] for e in events] == ["duplicate"] * 30 + ["succeeded"] * 20
    assert len(pool.calls) == 50
    # every record went through the group commit: far fewer writes than records
    assert writer.records == 50 and writer.writes < 50
    docs = await store.db.invocations.find({"trigger": "t"}).to_list(None)
    assert sorted(k for doc in docs for k in doc["done"]) == sorted(f"t|{e.id}" for e in events)


@pytest.mark.integration
async def test_duplicate_check_sees_a_dead_letter_written_after_it_found_none(store: Store) -> None:
    """The check asks a trigger with no dead letters only whether it has any; "none" is never
    remembered, so one written meanwhile (another instance, the inbox) still counts, and one of
    another trigger or a replayed one does not."""
    completions = Completions(store.db)
    ids = [f"e{i}" for i in range(5)]
    assert await completions.finished("t", ids) == {}
    await store.put_dead_letter({"_id": dead_letter_id("t", "e3"), "trigger": "t", "event": {"id": "e3"}})
    await store.put_dead_letter({"_id": dead_letter_id("other", "e1"), "trigger": "other", "event": {"id": "e1"}})
    assert await completions.finished("t", ids) == {"e3": "dead_lettered"}
    assert await completions.finished("t", ids, dead_letter_id("t", "e3")) == {}
    # a direct invoke's key (no trigger in its dead letters) takes the full query every time
    await store.put_dead_letter({"_id": dead_letter_id("invoke:fn", "e2"), "trigger": None, "event": {"id": "e2"}})
    assert await completions.finished("invoke:fn", ids) == {"e2": "dead_lettered"}
    # a success is found whatever else the record's done list holds
    await store.db.invocations.insert_one({"_id": "r1", "done": ["t|e0", "t|zz", "other|e4"]})
    assert await completions.finished("t", ids) == {"e0": "succeeded", "e3": "dead_lettered"}


def _batch_script(fail: Callable[[list[str]], list[str] | Exception]) -> Script:
    def script(payload: dict[str, Any], ctx: InvokeContext) -> InvocationReport:
        ids = [r["id"] for r in payload["records"]]
        answer = fail(ids)
        if isinstance(answer, Exception):
            return InvocationReport(status=Status.failed, error={"type": "Boom", "message": str(answer)},
                                    duration_ms=1.0)
        return InvocationReport(status=Status.succeeded, duration_ms=1.0,
                                result={"batchItemFailures": [{"itemIdentifier": i} for i in answer]})
    return script


@pytest.mark.integration
async def test_batches_hold_batch_size_records_in_order(store: Store, tmp_path: Path, writer: RecordWriter) -> None:
    pool = ScriptedPool([], script=_batch_script(lambda ids: []))
    d = await _dispatcher(store, tmp_path, pool, writer)
    events = [_event() for _ in range(7)]
    await d.deliver(Target("fn", "t", FAST, batch_size=3, source="test://x"), events)
    assert [[r["id"] for r in p["records"]] for p in pool.payloads] == [
        [e.id for e in events[0:3]], [e.id for e in events[3:6]], [events[6].id]]
    assert pool.payloads[0]["type"] == "hub.batch" and pool.payloads[0]["source"] == "test://x"
    records = await store.db.invocations.find({"trigger": "t"}).sort("started_at", 1).to_list(None)
    assert len(records) == 3 and all(r["status"] == "succeeded" for r in records)
    assert records[0]["batch_size"] == 3 and [i["status"] for i in records[0]["items"]] == ["succeeded"] * 3
    found = await store.list_invocations({"event_id": events[4].id}, 10)
    assert [r["event_ids"] for r in found] == [[e.id for e in events[3:6]]]


@pytest.mark.integration
async def test_partial_failure_ordered_retries_from_the_first_failed_record(
    store: Store, tmp_path: Path, writer: RecordWriter
) -> None:
    events = [_event() for _ in range(5)]
    poison = events[2].id
    pool = ScriptedPool([], script=_batch_script(lambda ids: [poison] if poison in ids else []))
    d = await _dispatcher(store, tmp_path, pool, writer)
    outcomes = await d.deliver(Target("fn", "t", FAST, batch_size=5), events)
    calls = [[r["id"] for r in p["records"]] for p in pool.payloads]
    ids = [e.id for e in events]
    # 3 attempts at [2, 3, 4] (what follows the failed record in an ordered source is not
    # finished), then 2 is dead-lettered alone and 3, 4 run on their own
    assert calls == [ids, ids[2:], ids[2:], ids[3:]]
    assert outcomes == {ids[0]: "succeeded", ids[1]: "succeeded", ids[2]: "dead_lettered",
                        ids[3]: "succeeded", ids[4]: "succeeded"}
    (dl,) = await store.list_dead_letters({"trigger": "t"}, 10)
    assert dl["event"]["id"] == poison and [a["error"]["type"] for a in dl["attempts"]] == ["BatchItemFailure"] * 3
    first = await store.db.invocations.find_one({"event_ids": ids, "trigger": "t"})
    assert first is not None and first["status"] == "partial"
    assert [i["status"] for i in first["items"]] == ["succeeded", "succeeded", "failed", "not_processed", "not_processed"]


@pytest.mark.integration
async def test_partial_failure_unordered_retries_only_the_failed(
    store: Store, tmp_path: Path, writer: RecordWriter
) -> None:
    events = [_event() for _ in range(4)]
    flaky = {events[1].id: 1, events[3].id: 1}  # each fails once

    def fail(ids: list[str]) -> list[str]:
        out = [i for i in ids if flaky.get(i, 0) > 0]
        for i in out:
            flaky[i] -= 1
        return out

    pool = ScriptedPool([], script=_batch_script(fail))
    d = await _dispatcher(store, tmp_path, pool, writer)
    outcomes = await d.deliver(Target("fn", "t", FAST, batch_size=4, ordered=False), events)
    calls = [[r["id"] for r in p["records"]] for p in pool.payloads]
    assert calls == [[e.id for e in events], [events[1].id, events[3].id]]
    assert set(outcomes.values()) == {"succeeded"}


@pytest.mark.integration
async def test_bisect_isolates_the_poison_record(store: Store, tmp_path: Path, writer: RecordWriter) -> None:
    events = [_event() for _ in range(8)]
    poison = events[5].id
    pool = ScriptedPool([], script=_batch_script(lambda ids: RuntimeError("boom") if poison in ids else []))
    d = await _dispatcher(store, tmp_path, pool, writer)
    policy = RetryPolicy(max_attempts=2, backoff_s=0.01, max_backoff_s=0.02, bisect_on_error=True)
    outcomes = await d.deliver(Target("fn", "t", policy, batch_size=8), events)
    assert [i for i, o in outcomes.items() if o == "dead_lettered"] == [poison]
    assert sum(o == "succeeded" for o in outcomes.values()) == 7
    sizes = [len(p["records"]) for p in pool.payloads]
    # 8 fails -> [0-3] ok, [4-7] fails -> [4,5] fails -> [4] ok, [5] twice (dead-lettered), then [6,7] ok
    assert sizes == [8, 4, 4, 2, 1, 1, 1, 2]
    (dl,) = await store.list_dead_letters({"trigger": "t"}, 10)
    assert dl["event"]["id"] == poison and dl["last_error"]["type"] == "Boom"


@pytest.mark.integration
async def test_bad_batch_item_failures_fail_the_whole_batch(store: Store, tmp_path: Path, writer: RecordWriter) -> None:
    events = [_event() for _ in range(2)]
    answers = iter([["not-an-id"], []])
    pool = ScriptedPool([], script=_batch_script(lambda ids: next(answers)))
    d = await _dispatcher(store, tmp_path, pool, writer)
    outcomes = await d.deliver(Target("fn", "t", FAST, batch_size=2), events)
    assert set(outcomes.values()) == {"succeeded"} and len(pool.payloads) == 2
    first = await store.db.invocations.find_one({"trigger": "t", "attempt": 1})
    assert first is not None and first["status"] == "failed" and first["error"]["type"] == "InvalidBatchItemFailures"


class BrokenWriter(RecordWriter):
    """A record store that fails from the ``ok``-th record on (a MongoDB outage mid-chunk)."""

    def __init__(self, store: Store, ok: int) -> None:
        super().__init__(store.db)
        self.ok = ok

    def submit(self, doc: dict[str, Any]) -> asyncio.Future[None]:
        if self.ok > 0:
            self.ok -= 1
            return super().submit(doc)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_exception(ConnectionError("mongod went away"))
        fut.add_done_callback(lambda f: f.exception())
        return fut


@pytest.mark.integration
async def test_only_a_durable_prefix_counts_as_finished(store: Store, tmp_path: Path) -> None:
    writer = BrokenWriter(store, ok=3)
    writer.start()
    try:
        pool = ScriptedPool([])
        d = await _dispatcher(store, tmp_path, pool, writer)
        events = [_event() for _ in range(10)]
        with pytest.raises(Unfinished) as info:
            await d.deliver(Target("fn", "t", FAST), events)
        assert info.value.finished == 3 and isinstance(info.value.cause, ConnectionError)
        assert len(pool.calls) == 4  # it stops starting new events once a record failed
        # delivered again (the connector did not ack past 3): the first three are not re-run
        writer.ok = 100
        outcomes = await d.deliver(Target("fn", "t", FAST), events)
        assert [outcomes[e.id] for e in events] == ["duplicate"] * 3 + ["succeeded"] * 7
    finally:
        await writer.close()


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    policy = RetryPolicy(backoff_s=1.0, max_backoff_s=5.0)
    for attempt, (low, high) in {1: (0.5, 1.0), 2: (1.0, 2.0), 3: (2.0, 4.0), 6: (2.5, 5.0)}.items():
        delays = [backoff_delay(policy, attempt) for _ in range(200)]
        assert all(low <= x <= high for x in delays)
        assert len(set(delays)) > 1


class SlowWriter(RecordWriter):
    """Holds every write until ``go`` is set: a record on its way to MongoDB."""

    def __init__(self, store: Store) -> None:
        super().__init__(store.db)
        self.go = asyncio.Event()

    async def _write(self, batch: Entries) -> Entries:
        await self.go.wait()
        return await super()._write(batch)  # what to retry, as the writer's own


@pytest.fixture
async def slow_writer(store: Store) -> AsyncIterator[SlowWriter]:
    writer = SlowWriter(store)
    writer.start()
    yield writer
    writer.go.set()
    await writer.close()


@pytest.mark.integration
async def test_a_duplicate_during_the_record_write_waits_and_is_skipped(
    store: Store, tmp_path: Path, slow_writer: SlowWriter
) -> None:
    writer = slow_writer
    pool = ScriptedPool([])
    d = await _dispatcher(store, tmp_path, pool, writer)
    event = _event()
    first = asyncio.create_task(_one(d, Target("fn", "t", FAST), event))
    while not pool.calls:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # the handler is done; its record is held back
    second = asyncio.create_task(_one(d, Target("fn", "t", FAST), event))
    await asyncio.sleep(0.05)
    assert not second.done() and len(pool.calls) == 1  # it waits for the first's record
    writer.go.set()
    assert sorted(await asyncio.gather(first, second)) == ["duplicate", "succeeded"]
    assert len(pool.calls) == 1 and d._inflight == {}


@pytest.mark.integration
async def test_attempts_are_counted_per_record(store: Store, tmp_path: Path, writer: RecordWriter) -> None:
    """A record that fails for the first time on the batch's third call is not dead-lettered
    because another record used up the batch's earlier calls."""
    events = [_event() for _ in range(6)]
    fails = {events[0].id: 2, events[5].id: 1}
    calls: list[list[str]] = []

    def fail(ids: list[str]) -> list[str]:
        calls.append(ids)
        first = next((i for i in ids if fails.get(i)), None)
        if first is None:
            return []
        fails[first] -= 1
        return [first]

    pool = ScriptedPool([], script=_batch_script(fail))
    d = await _dispatcher(store, tmp_path, pool, writer)
    outcomes = await d.deliver(Target("fn", "t", FAST, batch_size=6), events)
    assert set(outcomes.values()) == {"succeeded"}, outcomes
    # r0 fails twice, then r5 fails once (its first failure, on the batch's third call): retried,
    # not dead-lettered
    assert [len(c) for c in calls] == [6, 6, 6, 1]
    assert await store.list_dead_letters({"trigger": "t"}, 10) == []


@pytest.mark.integration
async def test_a_cancelled_wait_keeps_the_claim_until_the_record_lands(
    store: Store, tmp_path: Path, slow_writer: SlowWriter
) -> None:
    """A lane closing cancels its wait for a chunk's records; the claim on those events must
    last until the write itself ends, or a redelivery meanwhile runs them again."""
    writer = slow_writer
    pool = ScriptedPool([])
    d = await _dispatcher(store, tmp_path, pool, writer)
    event = _event()
    first = asyncio.create_task(_one(d, Target("fn", "t", FAST), event))
    while not pool.calls:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    second = asyncio.create_task(_one(d, Target("fn", "t", FAST), event))
    await asyncio.sleep(0.05)
    assert not second.done() and len(pool.calls) == 1
    writer.go.set()
    assert await second == "duplicate" and len(pool.calls) == 1