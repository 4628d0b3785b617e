"""Inbox completions carry the claim as a fence, the stop that must not hand back an item still
running, heartbeats on their own task, the S3 item's trigger set, and taking a dead instance's
work on its still heartbeat (issue 19: rollouts and scale-in lose nothing)."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from hub.app import Hub
from hub.delivery.dispatch import Target
from hub.events import Event
from hub.intake.inbox import Inbox
from hub.intake.router import Router
from hub.metrics import Metrics
from hub.store import Store
from pymongo import AsyncMongoClient

from tests.hubfixtures import Api, eventually, make_settings
from tests.test_sources import RECORD, minio_client

pytestmark = pytest.mark.integration

PAST = dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc)


class GatedDispatcher:
    """Stands in for the dispatcher: each delivery waits for ``gate``, then succeeds (or fails
    with ``fail``); ``_inflight`` is what the inbox waits on before handing back at stop."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.calls: list[list[str]] = []
        self.fail: Exception | None = None
        self._inflight: dict[str, asyncio.Future[None]] = {}

    async def deliver(self, target: Target, events: list[Event], *, request_id: str | None = None,
                      replay_of: str | None = None) -> dict[str, str]:
        self.calls.append([e.id for e in events])
        self.entered.set()
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        if self.fail is not None:
            raise self.fail
        return {e.id: "succeeded" for e in events}


def invoke_item(n: int = 1) -> dict[str, Any]:
    return Inbox._item("invoke", Event(id=f"invoke:{n}", source="invoke://f", type="hub.invoke", data={}),
                       function="f", request_id=f"r{n}")


async def two_stores(servers: dict[str, Any], unique: str) -> tuple[Store, Store]:
    a, b = Store(servers["mongo"].url, f"fence_{unique}", 3600), Store(servers["mongo"].url, f"fence_{unique}", 3600)
    await a.init()
    await b.init()
    return a, b


def inbox(store: Store, owner: str, dispatcher: Any, **kw: Any) -> Inbox:
    # a long lease: renewals (every third of it) do not come during the test unless asked for
    return Inbox(store, kw.pop("router", Router()), dispatcher, Metrics(), owner=owner, lease_s=30.0,
                 poll_interval_s=0.2, **kw)


async def lose_claim(store: Store, item_id: Any) -> None:
    """The holder's lease runs out (it stalled past it)."""
    await store.db.inbox.update_one({"_id": item_id}, {"$set": {"lease_until": PAST}})


async def test_a_completion_by_an_instance_that_lost_its_claim_is_refused(servers: dict[str, Any], unique: str) -> None:
    """A holds an item, stalls past its lease, B claims it: A's delete (the item succeeded on A)
    and A's renewal are refused, the item stays B's; B finishes it and deletes it."""
    store_a, store_b = await two_stores(servers, unique)
    da, db_ = GatedDispatcher(), GatedDispatcher()
    a, b = inbox(store_a, "a", da), inbox(store_b, "b", db_)
    deleted: list[int] = []
    real_done = store_a.inbox_done

    async def done_a(owner: str, held: list[tuple[Any, Any]]) -> int:
        deleted.append(await real_done(owner, held))
        return deleted[-1]

    store_a.inbox_done = done_a  # type: ignore[method-assign]
    item = invoke_item()
    try:
        await store_a.inbox_put([item])
        await a.start()
        await da.entered.wait()  # A runs it
        await lose_claim(store_a, item["_id"])
        await b.start()
        b.wake()
        await db_.entered.wait()  # B claimed it and runs it too
        doc = await store_b.db.inbox.find_one({"_id": item["_id"]})
        assert doc is not None and doc["owner"] == "b"
        assert await store_a.inbox_renew("a", [a._held[item["_id"]].fence], 30) == 0  # A's lease is gone
        da.gate.set()  # A's run ends: its delete is refused
        await eventually(lambda: _true(deleted))
        assert deleted == [0]
        doc = await store_b.db.inbox.find_one({"_id": item["_id"]})
        assert doc is not None and doc["owner"] == "b" and doc["state"] == "leased"
        db_.gate.set()  # B's run ends: B deletes it
        await eventually(lambda: _gone(store_b, item["_id"]))
    finally:
        await a.stop()
        await b.stop()
        await store_a.client.drop_database(f"fence_{unique}")
        await store_a.close()
        await store_b.close()


async def test_a_hand_back_by_an_instance_that_lost_its_claim_is_refused(servers: dict[str, Any], unique: str) -> None:
    """A's run fails after B took the item over: A's release (to retry later) must not turn B's
    running item back into a pending one that a third instance would claim."""
    store_a, store_b = await two_stores(servers, unique)
    da = GatedDispatcher()
    da.fail = RuntimeError("hub-side failure")
    a = inbox(store_a, "a", da)
    released: list[int] = []
    real_release = store_a.inbox_release

    async def release_a(owner: str, held: list[tuple[Any, Any]], delay_s: float = 0.0, error: str | None = None) -> int:
        released.append(await real_release(owner, held, delay_s, error))
        return released[-1]

    store_a.inbox_release = release_a  # type: ignore[method-assign]
    item = invoke_item()
    try:
        await store_a.inbox_put([item])
        await a.start()
        await da.entered.wait()
        await lose_claim(store_a, item["_id"])
        (taken,) = await store_b.inbox_claim("b", 30, 10)
        da.gate.set()
        await eventually(lambda: _true(released))
        assert released == [0]
        doc = await store_b.db.inbox.find_one({"_id": item["_id"]})
        assert doc is not None and (doc["owner"], doc["state"], doc["claim"]) == ("b", "leased", taken["claim"])
    finally:
        await a.stop()
        await store_a.client.drop_database(f"fence_{unique}")
        await store_a.close()
        await store_b.close()


async def test_stop_does_not_start_an_item_it_hands_back(servers: dict[str, Any], unique: str) -> None:
    """An S3 item naming a trigger this instance is still reloading when it stops: the stop
    hands it back, and the reload finishing afterwards must not start it (before, it routed the
    item and ran it while another instance could claim it)."""
    store_a, store_b = await two_stores(servers, unique)
    da = GatedDispatcher()
    da.gate.set()
    router = Router()
    reload_gate, reloading = asyncio.Event(), asyncio.Event()
    trigger = {"_id": "t-new", "function": "f", "source": {"type": "s3", "bucket": "b"}}

    async def reload() -> None:
        reloading.set()
        await reload_gate.wait()
        router.load([trigger])

    a = inbox(store_a, "a", da, router=router, reload_triggers=reload, shutdown_grace_s=0.2)
    event = Event(id="s3:b/k", source="s3://b", type="s3:ObjectCreated:Put", subject="k",
                  data={"bucket": "b", "key": "k", "event_name": "s3:ObjectCreated:Put"})
    item = Inbox._item("s3", event, triggers=["t-new"])
    try:
        await store_a.inbox_put([item])
        await a.start()
        await reloading.wait()
        await a.stop()
        doc = await store_b.db.inbox.find_one({"_id": item["_id"]})
        assert doc is not None and doc["state"] == "pending"  # handed back
        reload_gate.set()
        if a._side:
            await asyncio.wait(a._side)
        assert da.calls == []  # and not started here after that
    finally:
        reload_gate.set()
        await store_a.client.drop_database(f"fence_{unique}")
        await store_a.close()
        await store_b.close()


async def test_stop_hands_back_a_cut_off_item_only_once_its_writes_ended(servers: dict[str, Any], unique: str) -> None:
    """A run cut off at the end of the grace may have a record on its way to MongoDB (the
    dispatcher's claim on the event lasts until it landed): the item is handed back after that,
    never before (else another instance could run it before its success is durable)."""
    store_a, store_b = await two_stores(servers, unique)
    da = GatedDispatcher()  # the gate stays shut: the run is cut off
    write: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    da._inflight["f:invoke:1"] = write
    a = inbox(store_a, "a", da, shutdown_grace_s=0.1)  # the run outlasts the grace
    order: list[str] = []
    real_release = store_a.inbox_release

    async def release_a(owner: str, held: list[tuple[Any, Any]], delay_s: float = 0.0, error: str | None = None) -> int:
        order.append("release" if write.done() else "release before the write ended")
        return await real_release(owner, held, delay_s, error)

    store_a.inbox_release = release_a  # type: ignore[method-assign]
    item = invoke_item()
    try:
        await store_a.inbox_put([item])
        await a.start()
        await da.entered.wait()
        stopping = asyncio.create_task(a.stop())
        await da.cancelled.wait()
        await store_b.inbox_depth()  # a round trip: a release not waiting for the write comes first
        order.append("write ended")
        write.set_result(None)
        await stopping
        assert order == ["write ended", "release"]
        doc = await store_b.db.inbox.find_one({"_id": item["_id"]})
        assert doc is not None and doc["state"] == "pending"
    finally:
        await store_a.client.drop_database(f"fence_{unique}")
        await store_a.close()
        await store_b.close()


async def test_heartbeats_go_on_while_a_trigger_sync_is_slow(servers: dict[str, Any], tmp_path: Path, unique: str) -> None:
    """The heartbeat has its own task: a trigger sync that hangs does not hold it up (others
    would take a still heartbeat for a dead instance)."""
    hub = Hub(make_settings(servers, tmp_path, f"beat_{unique}", heartbeat_interval_s=0.1))
    await hub.start()
    gate, in_sync = asyncio.Event(), asyncio.Event()
    real_sync = hub.trigger_sync.sync

    async def slow_sync() -> None:
        in_sync.set()
        await gate.wait()
        await real_sync()

    hub.trigger_sync.sync = slow_sync  # type: ignore[method-assign]
    try:
        await in_sync.wait()
        seen: set[Any] = set()

        async def beats() -> bool:
            doc = await hub.store.db.instances.find_one({"_id": hub.instance_id})
            seen.add((doc or {}).get("last_seen"))
            return len(seen) >= 3

        await eventually(beats, timeout=30)
        assert not gate.is_set() and in_sync.is_set()  # all while the sync hung
    finally:
        gate.set()
        await hub.stop()
        await drop(servers, f"beat_{unique}")


async def test_an_s3_item_names_a_trigger_made_elsewhere_a_moment_ago(
    api: Api, hub: Hub, http: aiohttp.ClientSession, servers: dict[str, Any], unique: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two triggers on one bucket; this instance has not heard of the second yet (made through
    another instance a moment ago, which answered after waiting for this one in vain: its config
    watch does not vouch for its set). The notification matches the first, so it used to be
    queued for that one only; now the webhook's instance sees that the bucket has a trigger it
    does not know, reloads, and the item names both. (While the watch vouches, the write's wait
    is what holds: tests/test_triggers_everywhere.py.)"""
    monkeypatch.setattr(hub.inbox, "triggers_current", lambda: False)
    bucket = f"two-{unique}"
    await asyncio.to_thread(minio_client(servers["rgw"]).make_bucket, bucket)
    await api.put_function(f"rec-{unique}", RECORD)
    await api.put_trigger(f"one-{unique}", f"rec-{unique}", {"type": "s3", "bucket": bucket})
    await api.put_trigger(f"two-{unique}", f"rec-{unique}", {"type": "s3", "bucket": bucket})
    await eventually(lambda: _true(f"two-{unique}" in hub.router.triggers))
    hub.router.triggers.pop(f"two-{unique}")  # as if this instance had not heard of it yet
    event = Event(id=f"s3:{bucket}/k", source=f"s3://{bucket}", type="s3:ObjectCreated:Put", subject="k",
                  data={"bucket": bucket, "key": "k", "event_name": "s3:ObjectCreated:Put"})
    await hub.inbox.put_events([event])
    (one,) = await api.wait_invocations(1, trigger=f"one-{unique}")
    (two,) = await api.wait_invocations(1, trigger=f"two-{unique}")
    assert one["status"] == two["status"] == "succeeded"


async def test_a_dead_instances_work_is_taken_when_its_heartbeat_stands_still(
    servers: dict[str, Any], tmp_path: Path, unique: str
) -> None:
    """HUB_TAKEOVER_AFTER_S: an instance whose heartbeat stood still that long (here a "ghost"
    that beat once, holding a stream lease and an inbox claim long before they run out) loses
    both at once; the next holder's token is higher, so the ghost, were it only stalled, could
    no longer move the cursor. An instance that keeps beating keeps its lease."""
    db = f"takeover_{unique}"
    hub = Hub(make_settings(servers, tmp_path, db, heartbeat_interval_s=0.1, takeover_after_s=0.5))
    store = hub.store
    await store.init()
    await store.heartbeat("ghost", {}, "n-ghost")
    await store.heartbeat("alive", {}, "n-alive")
    assert await store.acquire_lease("stream:x", "ghost", 600) == 1
    assert await store.acquire_lease("stream:y", "alive", 600) == 1
    item = invoke_item()
    await store.inbox_put([item])
    (claimed,) = await store.inbox_claim("ghost", 600, 10)
    passes = 0
    real = hub._take_over_dead

    async def counted() -> None:
        nonlocal passes
        await real()
        passes += 1

    hub._take_over_dead = counted  # type: ignore[method-assign]
    stop_beating = asyncio.Event()

    async def keep_beating() -> None:
        while not stop_beating.is_set():
            await store.heartbeat("alive", {}, "n-alive")
            await asyncio.sleep(0.05)

    beating = asyncio.create_task(keep_beating())
    await hub.start()
    try:
        async def ghost_lease_gone() -> bool:
            return "stream:x" not in await store.lease_holders("stream:")

        await eventually(ghost_lease_gone, timeout=30)
        assert await store.acquire_lease("stream:x", "next", 30) == 2  # a new holder, a newer fence
        assert await store.save_position_fenced("stream:x", "x", {"resume_token": "t2"}, 2)
        assert not await store.save_position_fenced("stream:x", "x", {"resume_token": "t1"}, 1)  # the ghost's
        # the ghost's inbox claim was handed back: it is not the ghost's any more
        assert await store.inbox_done("ghost", [(claimed["_id"], claimed["claim"])]) == 0
        start = passes
        await eventually(lambda: _true(passes >= start + 10), timeout=30)  # many passes, 1 s+ of them
        assert (await store.lease_holders("stream:"))["stream:y"]["owner"] == "alive"
    finally:
        stop_beating.set()
        await beating
        await hub.stop()
        await drop(servers, db)


async def drop(servers: dict[str, Any], db: str) -> None:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(servers["mongo"].url)
    try:
        await client.drop_database(db)
    finally:
        await client.close()


async def _true(value: Any) -> Any:
    return value


async def _gone(store: Store, item_id: Any) -> bool:
    return await store.db.inbox.find_one({"_id": item_id}) is None

