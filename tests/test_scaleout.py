"""Two hub instances on one MongoDB: change streams have a single reader (lease) that fails over
(when its holder stops, and when its holder is killed -9: counted by the function's own reports,
tests/witness.py); a trigger made through one instance works for webhook events arriving at the other."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pymongo import AsyncMongoClient

from devstack import free_port
from hub.app import Hub
from hub.settings import Settings
from hub.events import Event
from hub.intake.inbox import Inbox
from hub.store import Store
from tests.chaos import HubProcess, hub_env, paced
from tests.hubfixtures import WEBHOOK_TOKEN, Api, eventually, make_settings, watching_pair
from tests.test_sources import RECORD, minio_client
from tests.witness import Witness, wait_judged_clean

pytestmark = pytest.mark.integration


async def _hub(servers: dict[str, Any], data_dir: Path, db: str) -> Hub:
    hub = Hub(make_settings(servers, data_dir, db, lease_ttl_s=2.0, trigger_sync_interval_s=0.3))
    await hub.start()
    return hub


async def test_change_stream_single_reader_and_failover(
    servers: dict[str, Any], tmp_path: Path, http: aiohttp.ClientSession, unique: str
) -> None:
    """One reader; its holder stops (gracefully) and the other takes over: the function ran each
    insert exactly once, and every run has its record."""
    db = f"scale_{unique}"
    a = await _hub(servers, tmp_path / "a", db)
    b = await _hub(servers, tmp_path / "b", db)
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(servers["mongo"].url)
    witness = Witness()
    hubs = [a, b]
    try:
        api = Api(http, a.url)
        await api.put_function("rec", witness.function(), network=witness.network)
        await api.put_trigger("t", "rec", {"type": "mongodb", "database": f"app_{unique}", "collection": "c"})

        async def readers() -> list[Hub] | None:
            found = [h for h in hubs if h.sources.states().get("t") == "running"]
            return found if found else None

        (holder,) = await eventually(readers)
        coll = mongo[f"app_{unique}"]["c"]
        seqs = [f"m-{n:06d}" for n in range(8)]
        await coll.insert_many([{"seq": s} for s in seqs[:5]])
        await witness.wait_seen(seqs[:5], timeout=60)
        await b.sources.reconcile()  # one more round: still only one reader
        assert [h for h in hubs if "t" in h.sources.states()] == [holder]
        other = next(h for h in hubs if h is not holder)
        _, ready = await Api(http, other.url).call("GET", "/readyz")  # the detail needs a token
        sub = ready["subscriptions"]["t"]
        assert sub["state"] == f"held by {holder.instance_id}", sub

        hubs.remove(holder)
        await holder.stop()
        (survivor,) = await eventually(readers)
        assert survivor is hubs[0]
        await coll.insert_many([{"seq": s} for s in seqs[5:]])
        await witness.wait_seen(seqs, timeout=60)
        verdict = await wait_judged_clean(mongo[db], witness, seqs, timeout=30)
        assert {s: len(witness.runs_of(s)) for s in seqs} == dict.fromkeys(seqs, 1), witness.runs
        assert not verdict.unrecorded, verdict.unrecorded
    finally:
        for h in hubs:
            await h.stop()
        witness.close()
        await mongo.close()


async def test_change_stream_holder_killed_midstream(
    servers: dict[str, Any], tmp_path: Path, http: aiohttp.ClientSession, unique: str
) -> None:
    """Two hub processes; the one holding the change stream's lease (found through /readyz and the
    lease, not assumed) is killed -9 while inserts flow. The other takes the stream over once the
    lease runs out and resumes from the saved cursor: by the function's own reports every insert
    ran, none ran again after its success (runs the kill cut off before their record may repeat),
    and after the kill only the survivor ran anything. The stream ends with a marker insert."""
    db, app_db = f"killholder_{unique}", f"app_{unique}"
    hubs = []
    for name in "ab":
        port = free_port()
        env = hub_env(servers, mongo_url=servers["mongo"].url, db=db, data_dir=tmp_path / name, port=port,
                      instance_id=f"kh-{name}-{unique}", HUB_LEASE_TTL_S="2")
        hubs.append(HubProcess(env, tmp_path / f"hub-{name}.log", port))
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(servers["mongo"].url)
    witness = Witness()
    try:
        for h in hubs:
            h.start()
        for h in hubs:
            await h.wait_healthy(http)
        api = Api(http, hubs[0].url)
        await api.put_function("rec", witness.function(0.02), network=witness.network)
        await api.put_trigger("t", "rec", {"type": "mongodb", "database": app_db, "collection": "c",
                                           "operations": ["insert"]})

        async def holder() -> HubProcess | None:
            """The live instance whose /readyz says it runs the stream, the other's says "held
            by" it, and the lease in MongoDB names it."""
            states = {}
            for h in (h for h in hubs if h.alive()):
                _, body = await Api(http, h.url).call("GET", "/readyz")
                states[h.env["HUB_INSTANCE_ID"]] = (h, (body.get("subscriptions") or {}).get("t", {}).get("state"))
            running = [h for h, state in states.values() if state == "running"]
            lease = await mongo[db].leases.find_one({"_id": "stream:t"})
            if len(running) != 1 or not lease or lease["owner"] != running[0].env["HUB_INSTANCE_ID"]:
                return None
            agree = all(state == f"held by {lease['owner']}" for h, state in states.values() if h is not running[0])
            return running[0] if agree else None

        first: HubProcess = await eventually(holder, timeout=60, interval=0.2)
        coll = mongo[app_db]["c"]
        written: list[str] = []
        killed_at: list[int] = []  # how many runs the witness had seen at the kill

        async def insert(i: int) -> None:
            await coll.insert_one({"seq": f"m-{i:06d}"})
            written.append(f"m-{i:06d}")

        async def kill() -> None:
            await witness.wait_seen(["m-000010"], timeout=60)  # mid-stream: it is running events
            assert await holder() is first
            first.kill9()
            killed_at.append(len(witness.runs))

        await asyncio.gather(paced(60, 6.0, insert), kill())
        survivor = await eventually(holder, timeout=60, interval=0.2)
        assert survivor is not first and survivor.alive()
        await insert(60)  # the marker, last
        await witness.wait_seen(["m-000060"], timeout=90)
        verdict = await wait_judged_clean(mongo[db], witness, written, timeout=30)
        print(f"holder {first.env['HUB_INSTANCE_ID']} killed after {killed_at[0]} runs:", verdict.summary())
        later = [r.run for r in witness.runs[killed_at[0]:]]
        ran_by = await mongo[db].invocations.distinct("instance", {"result.run": {"$in": later}})
        assert later and ran_by == [survivor.env["HUB_INSTANCE_ID"]], ran_by
    except BaseException:
        for h in hubs:
            print(f"--- {h.env['HUB_INSTANCE_ID']} log tail ---\n{h.tail(40)}")
        raise
    finally:
        for h in hubs:
            h.cleanup()
        witness.close()
        await mongo.close()


async def test_webhook_at_another_instance_sees_a_new_trigger(
    servers: dict[str, Any], tmp_path: Path, http: aiohttp.ClientSession, unique: str
) -> None:
    db = f"hook_{unique}"
    # a long sync interval: only the look-again on a miss can make B know the trigger in time
    a = Hub(make_settings(servers, tmp_path / "a", db, trigger_sync_interval_s=3600))
    b = Hub(make_settings(servers, tmp_path / "b", db, trigger_sync_interval_s=3600))
    await a.start()
    await b.start()
    a.settings.public_url = a.url  # several instances: s3 triggers need a shared address
    try:
        bucket = f"late-{unique}"
        await asyncio.to_thread(minio_client(servers["rgw"]).make_bucket, bucket)
        api_a = Api(http, a.url)
        await api_a.put_function("rec", RECORD)
        await api_a.put_trigger("s3", "rec", {"type": "s3", "bucket": bucket})
        body = json.loads((Path(__file__).parent / "data/s3/rgw_put.json").read_text())
        body["Records"][0]["s3"]["bucket"]["name"] = bucket
        async with http.post(b.url + f"/v1/sources/s3/events?token={WEBHOOK_TOKEN}", json=body) as r:
            assert r.status == 200
            assert (await r.json())["queued"] == 1
        await Api(http, b.url).wait_invocations(1, trigger="s3")
    finally:
        await a.stop()
        await b.stop()


VERSIONED = "def handler(event, context):\n    return {'version': %r}\n"


async def test_new_version_through_one_instance_runs_on_the_other_next(
    servers: dict[str, Any], tmp_path: Path, http: aiohttp.ClientSession, unique: str
) -> None:
    async with watching_pair(servers, tmp_path, f"cache_{unique}") as (a, b):
        api_a, api_b = Api(http, a.url), Api(http, b.url)
        await api_a.put_function("fn", VERSIONED % "one")
        assert (await api_b.ok("POST", "/v1/functions/fn/invoke", {}))["result"] == {"version": "one"}
        assert "fn" in b.registry._cache  # B now runs it from its cache, without a MongoDB read
        await api_a.put_function("fn", VERSIONED % "two")
        # B hears of the new version from MongoDB (not from its own API) and drops its copy ...
        await eventually(lambda: _true("fn" not in b.registry._cache), timeout=10)
        # ... so its next event runs the new version
        assert (await api_b.ok("POST", "/v1/functions/fn/invoke", {}))["result"] == {"version": "two"}
        # and a trigger made through A reaches B's router the same way
        await api_a.put_trigger("t", "fn", {"type": "mongodb", "database": f"app_{unique}", "collection": "c"})
        await eventually(lambda: _true("t" in b.router.triggers), timeout=10)


async def _true(value: bool) -> bool:
    return value


async def test_a_holder_that_lost_its_lease_cannot_move_the_cursor(
    servers: dict[str, Any], tmp_path: Path, http: aiohttp.ClientSession, unique: str
) -> None:
    """Leases are fences: when another instance has taken a change stream over (a newer fencing
    token is on the cursor), the former holder's next save is refused and it stops reading."""
    hub = await _hub(servers, tmp_path, f"fence_{unique}")
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(servers["mongo"].url)
    try:
        api = Api(http, hub.url)
        await api.put_function("rec", RECORD)
        await api.put_trigger("t", "rec", {"type": "mongodb", "database": f"app_{unique}", "collection": "c"})
        await eventually(lambda: _running(hub, "t"))
        coll = mongo[f"app_{unique}"]["c"]
        await coll.insert_one({"n": 0})
        await api.wait_invocations(1, trigger="t")
        db = mongo[f"fence_{unique}"]
        lease = await db.leases.find_one({"_id": "stream:t"})
        state = await db.source_state.find_one({"trigger": "t"})
        assert lease is not None and state is not None
        assert state["fence"] == lease["token"]  # saves carry the holder's token
        # another instance takes over (a newer token) and saves once
        newer = lease["token"] + 1
        await db.leases.update_one({"_id": "stream:t"}, {"$set": {
            "owner": "other-instance", "token": newer, "until": dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)}})
        await db.source_state.update_one({"_id": state["_id"]}, {"$set": {"fence": newer, "marker": "new holder"}})
        await coll.insert_one({"n": 1})  # the former holder reads it, runs it (its local lease
        # may still look valid) -- but cannot move the cursor, and stops

        async def stopped() -> bool:
            return "t" not in hub.sources.running

        await eventually(stopped, timeout=30)
        after = await db.source_state.find_one({"_id": state["_id"]})
        assert after is not None
        assert after["fence"] == newer and after["marker"] == "new holder"

        async def held_elsewhere() -> bool:  # once the stopped stream's lease is tried again
            ready = (await api.call("GET", "/readyz"))[1]
            return (ready["subscriptions"].get("t") or {}).get("state") == "held by other-instance"

        await eventually(held_elsewhere, timeout=30)
    finally:
        await hub.stop()
        await mongo.close()


async def _running(hub: Hub, name: str) -> bool:
    return hub.sources.states().get(name) == "running"


async def test_an_s3_trigger_needs_the_shared_address_once_several_instances_run(
    servers: dict[str, Any], tmp_path: Path, http: aiohttp.ClientSession, unique: str
) -> None:
    """Without HUB_PUBLIC_URL the bucket would notify whichever instance served the PUT, and
    stop when it does: with another instance alive, the PUT is refused and says why."""
    db = f"shared_{unique}"
    bucket = f"shared-{unique}"
    await asyncio.to_thread(minio_client(servers["rgw"]).make_bucket, bucket)
    a = await _hub(servers, tmp_path / "a", db)
    b = await _hub(servers, tmp_path / "b", db)
    running = [a, b]
    try:
        api = Api(http, a.url)
        await api.put_function("rec", RECORD)
        status, body = await api.call("PUT", "/v1/triggers/s3", {"function": "rec", "source": {"type": "s3", "bucket": bucket}})
        assert status == 409, body
        assert "HUB_PUBLIC_URL" in body["error"] and "2 hub instances" in body["error"], body
        assert await a.store.get_trigger("s3") is None  # nothing half-made
        running.remove(b)
        await b.stop()  # a graceful stop removes B from the live instances at once
        hubs_left = [i["_id"] for i in await a.store.live_instances()]
        assert hubs_left == [a.instance_id], hubs_left
        a.settings.public_url = a.url  # alone again (a real deployment sets the shared address)
        trig = await api.put_trigger("s3", "rec", {"type": "s3", "bucket": bucket})
        assert trig["notifications"]["configured"] is True, trig
    finally:
        for h in running:
            await h.stop()


@pytest.mark.parametrize("change", ["public_url", "webhook_token"])
async def test_bucket_notifications_follow_a_changed_webhook(
    servers: dict[str, Any], tmp_path: Path, http: aiohttp.ClientSession, unique: str, change: str
) -> None:
    """A hub started with another webhook than the buckets were pointed at -- a new
    HUB_PUBLIC_URL, or a new HUB_WEBHOOK_TOKEN at the same address -- re-points them, so uploads
    reach it (the first hub is gone by then)."""
    db = f"repoint_{unique}"
    bucket = f"repoint-{unique}"
    s3 = minio_client(servers["rgw"])
    await asyncio.to_thread(s3.make_bucket, bucket)
    port = free_port()

    def settings(name: str, port: int, token: str) -> Any:
        # a trailing slash is the same address
        return make_settings(servers, tmp_path / name, db, http_port=port, public_url=f"http://127.0.0.1:{port}/",
                             webhook_token=token)

    first = Hub(settings("first", port, WEBHOOK_TOKEN))
    await first.start()
    stopped = False
    second: Hub | None = None
    try:
        api = Api(http, first.url)
        await api.put_function("rec", RECORD)
        trig = await api.put_trigger("s3", "rec", {"type": "s3", "bucket": bucket})
        assert trig["notifications"]["push_url"] == first.url, trig
        stopped = True
        await first.stop()
        if change == "public_url":
            second = Hub(settings("second", free_port(), WEBHOOK_TOKEN))
        else:
            second = Hub(settings("second", port, "a-new-webhook-token-0123456789abcdef"))  # 24+ chars
        await second.start()
        old_hash = trig["notifications"]["push_hash"]

        async def repointed() -> dict[str, Any] | None:
            doc = await second.store.get_trigger("s3")  # type: ignore[union-attr]
            notes = (doc or {}).get("notifications") or {}
            return notes if notes.get("push_hash") not in (None, old_hash) else None

        notes = await eventually(repointed, timeout=30)
        assert notes["configured"] is True and notes["push_url"] == second.url, notes
        await asyncio.to_thread(s3.put_object, bucket, "after-the-move.txt", io.BytesIO(b"x"), 1)
        (inv,) = await Api(http, second.url).wait_invocations(1, trigger="s3")
        assert inv["status"] == "succeeded" and inv["result"]["data"]["key"] == "after-the-move.txt", inv
    finally:
        if second is not None:
            await second.stop()
        if not stopped:
            await first.stop()


def test_a_trailing_slash_in_the_public_url_is_the_same_address() -> None:
    assert Settings(public_url="http://proxy:8080/").base_url() == "http://proxy:8080"
    assert Settings(public_url="").base_url() == "http://127.0.0.1:8080"


async def test_a_released_lease_keeps_its_fencing_token_growing(servers: dict[str, Any], unique: str) -> None:
    """A takes the lease, crashes (it expires), B takes it over (token 2) and saves a cursor with
    it, then stops cleanly (releases it): whoever takes it next must get a token above 2, or
    every save of the new holder would be refused as stale (the stream would stop and restart
    from the old position for ever)."""
    store = Store(servers["mongo"].url, f"lease_{unique}", 3600)
    await store.init()
    try:
        assert await store.acquire_lease("stream:t", "a", 30) == 1
        assert await store.acquire_lease("stream:t", "b", 30) is None  # held by A
        await store.db.leases.update_one({"_id": "stream:t"}, {"$set": {"until": dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc)}})
        assert await store.acquire_lease("stream:t", "b", 30) == 2  # A's lapsed: B takes over
        await store.release_lease("stream:t", "b")
        assert await store.lease_holders("stream:") == {}  # free at once
        assert await store.acquire_lease("stream:t", "a", 30) == 3
        assert await store.acquire_lease("stream:t", "a", 30) == 3  # a renewal keeps it
        await store.release_lease("stream:t", "nobody")  # only the holder can release it
        assert (await store.lease_holders("stream:"))["stream:t"]["owner"] == "a"
    finally:
        await store.client.drop_database(f"lease_{unique}")
        await store.close()


async def test_leases_and_claims_use_mongodb_time_not_a_skewed_host_clock(servers: dict[str, Any], unique: str) -> None:
    """An instance whose clock is two minutes slow: its leases and inbox claims would look long
    expired to the others (and its items not yet due to a host running ahead). Timed by
    MongoDB's clock, they hold as for any instance."""
    slow = Store(servers["mongo"].url, f"clock_{unique}", 3600,
                 clock=lambda: dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=120))
    honest = Store(servers["mongo"].url, f"clock_{unique}", 3600)
    try:
        await slow.init()
        await honest.init()
        assert abs((slow.now() - honest.now()).total_seconds()) < 1.0
        assert await slow.acquire_lease("stream:t", "slow", 30) == 1
        assert await honest.acquire_lease("stream:t", "honest", 30) is None  # still held
        item = Inbox._item("invoke", Event(id="invoke:1", source="invoke://f", type="hub.invoke", data={}),
                           function="f", request_id="r1")
        await honest.inbox_put([item])
        # due by the honest host's estimate of MongoDB's time, which may run a few ms ahead of
        # the slow host's (each is the server's clock +- half a round trip): due within moments
        claimed = await eventually(lambda: slow.inbox_claim("slow", 30, 10), timeout=5, interval=0.02)
        assert [i["_id"] for i in claimed] == [item["_id"]]
        assert await honest.inbox_claim("honest", 30, 10) == []  # the slow host's claim holds
        await slow.heartbeat("slow", {})
        assert [i["_id"] for i in await honest.live_instances()] == ["slow"]
    finally:
        await honest.client.drop_database(f"clock_{unique}")
        await slow.close()
        await honest.close()
