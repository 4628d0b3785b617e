"""A batching trigger's inbox items gather while a chunk of it runs (hub.intake.inbox ``_spawn``,
issue 21): a lone item starts at once, what arrives meanwhile goes as one chunk (a full batch at
once, a partial one after the linger), a stop starts what lingers within its grace instead of
handing it back, and replays neither wait nor gather. On real MongoDB; the dispatcher is gated so
the order is the test's."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

import hub.intake.inbox as inbox_module
from hub.events import Event
from hub.intake.router import Router, Trigger
from hub.store import Store
from tests.hubfixtures import eventually
from tests.test_inbox_fences import GatedDispatcher, inbox

pytestmark = pytest.mark.integration


def _router(unique: str, batch: int) -> Router:
    router = Router()
    router.triggers[f"t-{unique}"] = Trigger(name=f"t-{unique}", function="f",
                                             source={"type": "s3", "bucket": f"b-{unique}"}, batch_size=batch)
    return router


def _event(unique: str, n: int) -> Event:
    bucket = f"b-{unique}"
    return Event(id=f"s3:{bucket}/k{n}", source=f"s3://{bucket}", type="s3:ObjectCreated:Put", subject=f"k{n}",
                 data={"bucket": bucket, "key": f"k{n}", "event_name": "s3:ObjectCreated:Put"})


async def _store(servers: dict[str, Any], unique: str) -> Store:
    store = Store(servers["mongo"].url, f"linger_{unique}", 3600)
    await store.init()
    return store


async def _settled() -> None:
    for _ in range(5):  # a spawned worker starts its chunk within a loop iteration or two
        await asyncio.sleep(0)


async def test_items_arriving_while_a_chunk_runs_go_as_one_chunk(
    servers: dict[str, Any], unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inbox_module, "LINGER_S", 600.0)  # only a full batch or a stop ends the wait here
    store, gated = await _store(servers, unique), GatedDispatcher()
    box = inbox(store, "a", gated, router=_router(unique, batch=5))
    await box.start()
    try:
        await box.put_events([_event(unique, 0)])  # nothing running, nothing before it: at once
        await gated.entered.wait()
        for n in range(1, 5):  # one write each, while the first chunk runs: they wait
            await box.put_events([_event(unique, n)])
        await _settled()
        assert gated.calls == [[_event(unique, 0).id]]
        await box.put_events([_event(unique, 5)])  # a full batch waits for nothing
        await eventually(lambda: _true(len(gated.calls) == 2))
        assert gated.calls[1] == [_event(unique, n).id for n in range(1, 6)]
        gated.gate.set()
        await eventually(lambda: _inbox_empty(store))
    finally:
        await box.stop()
        await store.client.drop_database(f"linger_{unique}")
        await store.close()


async def test_a_stop_starts_what_lingers_within_its_grace(
    servers: dict[str, Any], unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inbox_module, "LINGER_S", 600.0)
    store, gated = await _store(servers, unique), GatedDispatcher()
    box = inbox(store, "a", gated, router=_router(unique, batch=5))
    await box.start()
    try:
        await box.put_events([_event(unique, 0)])
        await gated.entered.wait()
        await box.put_events([_event(unique, 1)])  # lingers behind the running chunk
        await _settled()
        assert len(gated.calls) == 1
        stopping = asyncio.create_task(box.stop())
        await eventually(lambda: _true(len(gated.calls) == 2))  # started, not handed back
        gated.gate.set()
        await stopping
        assert gated.calls == [[_event(unique, 0).id], [_event(unique, 1).id]]
        assert await store.db.inbox.count_documents({}) == 0  # both ran and were deleted
    finally:
        if box._tasks:
            await box.stop()
        await store.client.drop_database(f"linger_{unique}")
        await store.close()


@asynccontextmanager
async def _open_box(servers: dict[str, Any], unique: str, batch: int) -> AsyncIterator[tuple[Any, GatedDispatcher, Any]]:
    """A started inbox on real MongoDB whose dispatcher runs at once; stopped and dropped after."""
    store, gated = await _store(servers, unique), GatedDispatcher()
    gated.gate.set()
    box = inbox(store, "a", gated, router=_router(unique, batch=batch))
    await box.start()
    try:
        yield store, gated, box
    finally:
        await box.stop()
        await store.client.drop_database(f"linger_{unique}")
        await store.close()


async def test_items_flowing_in_gather_until_the_linger_ends(
    servers: dict[str, Any], unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing runs, but each item came right after the one before: they gather (not one chunk
    each), and the linger's end starts them without a full batch."""
    monkeypatch.setattr(inbox_module, "LINGER_S", 600.0)
    async with _open_box(servers, unique, batch=100) as (store, gated, box):
        await box.put_events([_event(unique, 0)])
        await eventually(lambda: _inbox_empty(store))
        # "right after": within LINGER_S (600 s here) of the one before
        for n in range(1, 4):
            await box.put_events([_event(unique, n)])
        await _settled()
        assert gated.calls == [[_event(unique, 0).id]]
        (queue,) = box._queues.values()
        assert queue.linger is not None
        queue.linger.cancel()
        box._lingered(queue)  # the timer's end, now
        await eventually(lambda: _inbox_empty(store))
        assert gated.calls == [[_event(unique, 0).id], [_event(unique, n).id for n in range(1, 4)]]


async def test_replays_of_a_batching_trigger_run_alone_and_do_not_linger(
    servers: dict[str, Any], unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replay's chunk is its own dead letter's: replays get a queue of their own (batch 1), never
    gathered into the trigger's batch nor held back by its linger."""
    monkeypatch.setattr(inbox_module, "LINGER_S", 600.0)
    async with _open_box(servers, unique, batch=5) as (store, gated, box):
        await box.put_events([_event(unique, 0)])
        await box.put_replays([{"_id": f"dl{n}", "event": _event(unique, n).to_cloudevent(), "function": "f",
                                "trigger": f"t-{unique}"} for n in range(1, 4)])
        await eventually(lambda: _inbox_empty(store))
        assert sorted(gated.calls) == [[_event(unique, n).id] for n in range(4)]


async def _true(value: bool) -> bool:
    return value


async def _inbox_empty(store: Store) -> bool:
    return await store.db.inbox.count_documents({}) == 0
