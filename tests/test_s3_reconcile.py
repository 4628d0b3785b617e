"""S3 triggers catch up by themselves (hub/s3_reconcile.py), on real Ceph RGW and real MongoDB.

Uploads whose notifications never come run through the reconciling scan, exactly once; when both
the notification and the scan see an upload, it still runs once; the same bytes uploaded twice run
twice; claims are atomic; a pass is bounded; an S3 outage is reported, not fatal.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import boto3
import pytest
from pymongo import AsyncMongoClient

from connectors.s3_records import parse_notification
from connectors.s3_scan import BucketLister, ListedObject, covering_prefixes, scan_event
from devstack import free_port
from hub.app import Hub
from hub.events import Event
from hub.intake.s3_reconcile import Observation, SeenObjects, observation_of
from tests.hubfixtures import WEBHOOK_TOKEN, Api, eventually, make_settings
from tests.test_sources import minio_client

# Returns what the tests count: which object, which path found it, which change (etag, event id).
SEEN_FN = (
    "def handler(event, context):\n"
    "    d = event['data']\n"
    "    return {'key': event['subject'], 'etag': d['etag'], 'id': event['id'], 'type': event['type'],\n"
    "            'reconciled': bool(d.get('reconciled')), 'source': d.get('event_source')}\n"
)


async def start_hub(servers: dict[str, Any], data_dir: Path, db: str, **overrides: Any) -> Hub:
    values: dict[str, Any] = dict(s3_reconcile_interval_s=1.0, s3_reconcile_grace_s=1.0)
    values.update(overrides)
    hub = Hub(make_settings(servers, data_dir, db, **values))
    await hub.start()
    hub.settings.public_url = hub.url  # RGW pushes to the real port, known only now
    return hub


@pytest.fixture
async def hubs() -> AsyncIterator[list[Hub]]:
    """Hubs a test starts; stopped at the end whatever happens."""
    started: list[Hub] = []
    yield started
    for hub in started:
        await hub.stop()


def make_bucket(servers: dict[str, Any], bucket: str) -> None:
    minio_client(servers["rgw"]).make_bucket(bucket)


def upload(servers: dict[str, Any], bucket: str, key: str, body: bytes) -> None:
    minio_client(servers["rgw"]).put_object(bucket, key, io.BytesIO(body), len(body))


def silence_notifications(servers: dict[str, Any], bucket: str) -> None:
    """Point the bucket's notification at a topic that pushes to a closed port: RGW still sends,
    nobody receives (the hub's webhook is unreachable)."""
    rgw = servers["rgw"]
    kw = dict(endpoint_url=rgw.endpoint, aws_access_key_id=rgw.access_key,
              aws_secret_access_key=rgw.secret_key, region_name=rgw.region)
    arn = boto3.client("sns", **kw).create_topic(
        Name=f"nowhere-{bucket}",
        Attributes={"push-endpoint": f"http://127.0.0.1:{free_port()}/dead", "persistent": "false"},
    )["TopicArn"]
    boto3.client("s3", **kw).put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={
        "TopicConfigurations": [{"Id": "trigger-hub", "TopicArn": arn, "Events": ["s3:ObjectCreated:*"]}]})


async def runs(api: Api, trigger: str) -> list[dict[str, Any]]:
    return [i["result"] for i in await api.invocations(trigger=trigger) if i["status"] == "succeeded"]


async def runs_per_key(api: Api, trigger: str) -> Counter[str]:
    return Counter(r["key"] for r in await runs(api, trigger))


async def quiet_passes(hub: Hub, bucket: str, passes: int = 3) -> None:
    """Let ``passes`` more scan passes of ``bucket`` happen and the inbox drain: whatever a
    duplicate would need to show up has then had its chance."""
    status: Callable[[], dict[str, Any]] = lambda: hub.s3_reconciler.status()["buckets"].get(bucket, {})
    target = status().get("passes", 0) + passes

    async def passed() -> bool:
        return bool(status().get("passes", 0) >= target)

    await eventually(passed, timeout=60)
    await hub.inbox.idle()


def metric(hub: Hub, name: str, labels: dict[str, str] | None = None) -> float:
    return hub.metrics.registry.get_sample_value(name, labels or {}) or 0.0


@pytest.mark.integration
async def test_uploads_while_hub_down_and_notifications_lost_run_once_via_scan(
    servers: dict[str, Any], tmp_path: Path, http: aiohttp.ClientSession, unique: str, hubs: list[Hub]
) -> None:
    db, bucket = f"rec_{unique}", f"lost-{unique}"
    await asyncio.to_thread(make_bucket, servers, bucket)
    first = await start_hub(servers, tmp_path / "a", db)
    hubs.append(first)
    api = Api(http, first.url)
    await api.put_function("seen", SEEN_FN)
    await api.put_trigger("t", "seen", {"type": "s3", "bucket": bucket, "prefix": "in/"})
    await first.stop()
    hubs.remove(first)

    # While the hub is down its notifications go nowhere (as with RGW's stalled queue).
    await asyncio.to_thread(silence_notifications, servers, bucket)
    keys = [f"in/{n:02d}.csv" for n in range(6)]
    for key in keys:
        await asyncio.to_thread(upload, servers, bucket, key, key.encode())
    await asyncio.to_thread(upload, servers, bucket, "out/ignored.csv", b"x")  # no trigger wants it

    hub = await start_hub(servers, tmp_path / "b", db, s3_reconcile_interval_s=2.0, s3_reconcile_grace_s=2.0)
    ready_at = time.monotonic()
    hubs.append(hub)
    api = Api(http, hub.url)

    async def all_ran() -> Counter[str] | None:
        per_key = await runs_per_key(api, "t")
        return per_key if len(per_key) == len(keys) else None

    await eventually(all_ran, timeout=90)
    print(f"\nuploads made while the hub was down ran {time.monotonic() - ready_at:.1f}s after it was ready")
    await quiet_passes(hub, bucket)
    results = await runs(api, "t")
    assert Counter(r["key"] for r in results) == {k: 1 for k in keys}
    assert all(r["reconciled"] and r["source"] == "trigger-hub:s3-scan" for r in results)
    assert all(r["type"] == "s3:ObjectCreated:Put" for r in results)
    assert metric(hub, "hub_s3_reconciled_events_total", {"bucket": bucket}) == len(keys)

    # The notification turns up late after all (RGW's queue came unstuck): dropped as a duplicate.
    stat = await asyncio.to_thread(minio_client(servers["rgw"]).stat_object, bucket, keys[0])
    listed = next(r for r in results if r["key"] == keys[0])
    body = json.loads((Path(__file__).parent / "data/s3/rgw_put.json").read_text())
    record = body["Records"][0]
    record["s3"]["bucket"]["name"] = bucket
    record["s3"]["object"].update(key=keys[0], eTag=listed["etag"], size=stat.size)
    modified = await listed_time(servers, bucket, keys[0])
    record["eventTime"] = (modified + dt.timedelta(milliseconds=3)).isoformat().replace("+00:00", "Z")
    async with http.post(f"{hub.url}/v1/sources/s3/events?token={WEBHOOK_TOKEN}", json=body) as r:
        assert r.status == 200
        assert await r.json() == {"received": 1, "queued": 0, "duplicates": 1}

    ready = await api.call("GET", "/readyz")
    state = ready[1]["s3_reconcile"]["buckets"][bucket]
    assert state["state"] == "ok" and state["queued"] == len(keys) and state["watermark"], state
    assert state["prefixes"] == ["in/"]


async def listed_time(servers: dict[str, Any], bucket: str, key: str) -> dt.datetime:
    def find() -> dt.datetime:
        for obj in minio_client(servers["rgw"]).list_objects(bucket, prefix=key):
            if obj.object_name == key and obj.last_modified:
                return obj.last_modified
        raise AssertionError(f"{key} not listed")

    return await asyncio.to_thread(find)


@pytest.mark.integration
async def test_notification_and_scan_both_deliver_each_upload_runs_once(
    servers: dict[str, Any], tmp_path: Path, http: aiohttp.ClientSession, unique: str, hubs: list[Hub]
) -> None:
    # Two buckets, both paths working for both. "sync" has a non-persistent topic: RGW pushes during
    # the PUT, so the notification usually comes first and the scan finds the change seen. "late"
    # has a persistent topic: RGW pushes ~6 s later, so with a 0.5 s grace the scan usually comes
    # first and the notification is dropped. Either way each upload must run exactly once.
    db = f"rec_{unique}"
    buckets = {"sync": f"sync-{unique}", "late": f"late-{unique}"}
    for bucket in buckets.values():
        await asyncio.to_thread(make_bucket, servers, bucket)
    hub = await start_hub(servers, tmp_path, db, s3_reconcile_interval_s=0.5, s3_reconcile_grace_s=0.5)
    hubs.append(hub)
    api = Api(http, hub.url)
    await api.put_function("seen", SEEN_FN)
    for kind, bucket in buckets.items():
        hub.settings.s3_rgw_persistent = kind == "late"  # read when the trigger sets up the topic
        await api.put_trigger(kind, "seen", {"type": "s3", "bucket": bucket})
    keys = [f"k{n:02d}" for n in range(6)]
    for key in keys:
        for bucket in buckets.values():
            await asyncio.to_thread(upload, servers, bucket, key, key.encode())

    async def every_notification_arrived() -> bool:
        return metric(hub, "hub_events_total", {"source_type": "s3"}) >= 2 * len(keys)

    await eventually(every_notification_arrived, timeout=120)
    for bucket in buckets.values():
        await quiet_passes(hub, bucket)
    by_scan = by_notification = 0
    for kind, bucket in buckets.items():
        results = await runs(api, kind)
        assert Counter(r["key"] for r in results) == {k: 1 for k in keys}, kind
        scanned = sum(r["reconciled"] for r in results)
        assert metric(hub, "hub_s3_reconciled_events_total", {"bucket": bucket}) == scanned
        by_scan += scanned
        by_notification += len(results) - scanned
    # both paths took part, and every notification the scan beat was dropped as a duplicate
    assert by_scan and by_notification, (by_scan, by_notification)
    assert metric(hub, "hub_s3_notification_duplicates_total") >= by_scan
    print(f"\n{by_scan} uploads were taken by the scan, {by_notification} by their notification")


@pytest.mark.integration
async def test_same_content_uploaded_twice_runs_twice(
    servers: dict[str, Any], tmp_path: Path, http: aiohttp.ClientSession, unique: str, hubs: list[Hub]
) -> None:
    db, bucket = f"rec_{unique}", f"twice-{unique}"
    await asyncio.to_thread(make_bucket, servers, bucket)
    hub = await start_hub(servers, tmp_path, db, s3_reconcile_interval_s=0.5, s3_reconcile_grace_s=0.5,
                          s3_reconcile_slack_s=0.5)
    hubs.append(hub)
    api = Api(http, hub.url)
    await api.put_function("seen", SEEN_FN)
    await api.put_trigger("t", "seen", {"type": "s3", "bucket": bucket})
    await asyncio.to_thread(upload, servers, bucket, "same.txt", b"identical bytes")
    first = await api.wait_invocations(1, trigger="t", timeout=60)
    first_time = await listed_time(servers, bucket, "same.txt")
    await asyncio.to_thread(upload, servers, bucket, "same.txt", b"identical bytes")
    second_time = await listed_time(servers, bucket, "same.txt")
    assert second_time - first_time > dt.timedelta(seconds=0.5)  # two changes, by the slack's measure

    async def two_runs() -> list[dict[str, Any]] | None:
        found = await runs(api, "t")
        return found if len(found) >= 2 else None

    await eventually(two_runs, timeout=60)

    async def notifications_in() -> bool:
        return metric(hub, "hub_events_total", {"source_type": "s3"}) >= 2

    await eventually(notifications_in, timeout=120)
    await quiet_passes(hub, bucket)
    results = await runs(api, "t")
    assert len(results) == 2, results
    assert results[0]["etag"] == results[1]["etag"] and results[0]["id"] != results[1]["id"]
    assert first[0]["status"] == "succeeded"


@pytest.mark.integration
async def test_claims_are_atomic_and_pending_claims_are_recovered(servers: dict[str, Any], unique: str) -> None:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(servers["mongo"].url, tz_aware=True)
    try:
        seen = SeenObjects(client[f"claims_{unique}"], slack_s=2.0, pending_ttl_s=0.3)
        await seen.init()
        t = dt.datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=dt.timezone.utc)

        def obs(at: dt.datetime, n: int = 0) -> Observation:
            event = Event(id=f"e-{n}", source="s3://b", type="s3:ObjectCreated:Put", subject="k",
                          data={"bucket": "b", "key": "k", "etag": "abc"})
            return Observation("b", "k", "abc", at, event)

        # 20 observers of one change at once (scan and notifications on several instances)
        claims = await asyncio.gather(*(seen.claim([obs(t + dt.timedelta(milliseconds=n), n)], "x")
                                        for n in range(20)))
        winners = [c[0] for c in claims if c[0] is not None]
        assert len(winners) == 1
        # within the slack: the same change; beyond it: a new change of the same bytes
        assert await seen.claim([obs(t + dt.timedelta(seconds=1.5))], "x") == [None]
        later = await seen.claim([obs(t + dt.timedelta(seconds=5), 99)], "x")
        assert later[0] is not None
        unseen = await seen.filter_unseen([obs(t), obs(t + dt.timedelta(seconds=9))])
        assert [o.time for o in unseen] == [t + dt.timedelta(seconds=9)]

        # Confirmed claims are done; a claim left pending (claimer died before queueing) has its
        # stored event queued again, with the same id, exactly once.
        winner_index = next(i for i, c in enumerate(claims) if c[0] is not None)
        await seen.confirm([(obs(t + dt.timedelta(milliseconds=winner_index), winner_index), winners[0])])
        queued: list[Event] = []

        async def put(events: list[Event]) -> None:
            queued.extend(events)

        async def recovered() -> bool:
            await seen.recover_stale(put)
            return bool(queued)

        await eventually(recovered, timeout=10)
        assert [e.id for e in queued] == ["e-99"]
        assert await seen.recover_stale(put) == 0 and len(queued) == 1
        doc = await client[f"claims_{unique}"]["s3_seen"].find_one({})
        assert doc is not None and {o["state"] for o in doc["obs"]} == {"queued"}
        assert all("event" not in o for o in doc["obs"])
    finally:
        await client.close()


@pytest.mark.integration
async def test_bounded_passes_get_through_a_bucket(
    servers: dict[str, Any], tmp_path: Path, http: aiohttp.ClientSession, unique: str, hubs: list[Hub]
) -> None:
    db, bucket = f"rec_{unique}", f"bounded-{unique}"
    await asyncio.to_thread(make_bucket, servers, bucket)
    hub = await start_hub(servers, tmp_path, db, s3_reconcile_max_keys=5, s3_reconcile_grace_s=0.5,
                          s3_reconcile_interval_s=1.0)
    hubs.append(hub)
    api = Api(http, hub.url)
    await api.put_function("seen", SEEN_FN)
    await api.put_trigger("t", "seen", {"type": "s3", "bucket": bucket})
    await asyncio.to_thread(silence_notifications, servers, bucket)
    keys = [f"obj-{n:02d}" for n in range(12)]
    for key in keys:
        await asyncio.to_thread(upload, servers, bucket, key, key.encode())

    async def all_ran() -> bool:
        return len(await runs_per_key(api, "t")) == len(keys)

    await eventually(all_ran, timeout=90)
    await quiet_passes(hub, bucket)
    assert await runs_per_key(api, "t") == {k: 1 for k in keys}
    state = hub.s3_reconciler.status()["buckets"][bucket]
    assert state["passes"] >= 3 and state["last_listed"] <= 5, state
    doc = await hub.store.db["s3_reconcile"].find_one({"_id": bucket})
    assert doc is not None and doc["watermark"] is not None


@pytest.mark.integration
async def test_s3_outage_during_scan_is_reported_not_fatal(
    servers: dict[str, Any], tmp_path: Path, http: aiohttp.ClientSession, unique: str, hubs: list[Hub]
) -> None:
    db, bucket = f"rec_{unique}", f"outage-{unique}"
    await asyncio.to_thread(make_bucket, servers, bucket)
    good = await start_hub(servers, tmp_path / "a", db)
    hubs.append(good)
    await Api(http, good.url).put_function("seen", SEEN_FN)
    await Api(http, good.url).put_trigger("t", "seen", {"type": "s3", "bucket": bucket})
    # a second instance whose S3 endpoint is a closed port
    broken = await start_hub(servers, tmp_path / "b", db, s3_endpoint=f"http://127.0.0.1:{free_port()}")
    hubs.append(broken)

    async def failing_repeatedly() -> dict[str, Any] | None:
        state = broken.s3_reconciler.status()["buckets"].get(bucket)
        return state if state and state["errors"] >= 2 else None

    state = await eventually(failing_repeatedly, timeout=60)
    assert state["state"] == "error" and state["last_error"], state
    status, ready = await Api(http, broken.url).call("GET", "/readyz")
    assert ready["s3_reconcile"]["buckets"][bucket]["state"] == "error"
    assert metric(broken, "hub_s3_reconcile_errors_total", {"bucket": bucket}) >= 2
    # the instance still works: the webhook and the good instance's scan are unaffected
    assert (await Api(http, broken.url).call("GET", "/healthz"))[0] == 200
    await asyncio.to_thread(upload, servers, bucket, "after-outage", b"1")
    await Api(http, good.url).wait_invocations(1, trigger="t", timeout=60)
    assert good.s3_reconciler.status()["buckets"][bucket]["errors"] == 0


@pytest.mark.integration
async def test_instances_sharing_a_bucket_each_take_scan_turns(
    servers: dict[str, Any], tmp_path: Path, http: aiohttp.ClientSession, unique: str, hubs: list[Hub]
) -> None:
    """All three wake when the shared turn falls due; each goes for it a random moment later, so
    none loses every race (without that, the quickest instance won every turn: in a full suite,
    one of three never scanned). The third here is 10 ms slower to ask for a turn."""
    db, bucket = f"rec_{unique}", f"turns-{unique}"
    await asyncio.to_thread(make_bucket, servers, bucket)
    for n in range(3):
        hubs.append(await start_hub(servers, tmp_path / str(n), db, s3_reconcile_interval_s=1.0))
    states = hubs[2].s3_reconciler.states
    take_turn = states.find_one_and_update

    async def slowly(*args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0.01)
        return await take_turn(*args, **kwargs)

    states.find_one_and_update = slowly  # type: ignore[method-assign]
    await Api(http, hubs[0].url).put_function("seen", SEEN_FN)
    await Api(http, hubs[0].url).put_trigger("t", "seen", {"type": "s3", "bucket": bucket})
    passes = lambda hub: hub.s3_reconciler.status()["buckets"].get(bucket, {}).get("passes", 0)

    async def each_won_turns() -> list[int] | None:
        counts = [passes(h) for h in hubs]
        return counts if min(counts) >= 2 else None  # its first pass (no turn needed) and a turn

    await eventually(each_won_turns, timeout=60)
    doc = await hubs[0].store.db["s3_reconcile"].find_one({"_id": bucket})
    assert doc is not None and doc["last_owner"] in {h.s3_reconciler.owner for h in hubs}


@pytest.mark.integration
async def test_bounded_listing_walks_only_the_triggers_prefixes(servers: dict[str, Any], unique: str) -> None:
    rgw, bucket = servers["rgw"], f"walk-{unique}"
    await asyncio.to_thread(make_bucket, servers, bucket)
    keys = [f"{p}{n}" for p in ("a/", "a/x/", "b/", "c/", "ca") for n in range(3)]
    for key in keys:
        await asyncio.to_thread(upload, servers, bucket, key, b"1")
    lister = BucketLister(rgw.endpoint, rgw.access_key, rgw.secret_key, rgw.region)
    prefixes = ["c/", "a/x/", "a/"]
    assert covering_prefixes(prefixes) == ["a/", "c/"] and covering_prefixes(["x", ""]) == [""]
    walked: list[str] = []
    position: str | None = None
    for _ in range(10):
        page = await asyncio.to_thread(lister.list_page, bucket, prefixes, position, 4)
        assert len(page.objects) <= 4
        walked += [o.key for o in page.objects]
        position = page.next_start_after
        if position is None:
            break
    assert walked == sorted(k for k in keys if k.startswith(("a/", "c/")))


def test_scan_events_look_like_notifications() -> None:
    obj = ListedObject(key="in/a b.csv", etag="d41d8cd98f00b204e9800998ecf8427e-3", size=7,
                       last_modified=dt.datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=dt.timezone.utc))
    event = scan_event("bkt", obj)
    assert event == scan_event("bkt", obj)  # stable id: queueing it twice cannot run it twice
    assert event.source == "s3://bkt" and event.subject == "in/a b.csv"
    assert event.type == "s3:ObjectCreated:CompleteMultipartUpload"  # a multipart ETag says so much
    assert event.time == "2026-01-02T03:04:05.678Z"
    assert event.data["reconciled"] is True and event.data["sequencer"] is None
    assert event.data["raw"]["LastModified"] == event.time
    # a notification of an ObjectCreated change can be deduplicated; a removal passes through
    rgw = parse_notification((Path(__file__).parent / "data/s3/rgw_put.json").read_bytes())[0]
    seen = observation_of(rgw)
    assert seen is not None and seen.etag == rgw.data["etag"] and seen.time.year == 2024
    removal = parse_notification((Path(__file__).parent / "data/s3/minio_delete.json").read_bytes())[0]
    assert observation_of(removal) is None
