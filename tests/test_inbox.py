"""The inbox on the real MongoDB: bulk claims, an item the hub itself cannot process, batches."""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import json
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from hub.app import Hub
from hub.events import Event
from hub.intake.inbox import MAX_DELIVERIES, Inbox
from tests.hubfixtures import WEBHOOK_TOKEN, Api, eventually, make_settings
from tests.test_sources import RECORD, minio_client
from tests.test_webhook import DATA

pytestmark = pytest.mark.integration


async def test_item_the_hub_cannot_process_is_dead_lettered_after_its_deliveries(
    servers: dict[str, Any], tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """Not the function failing: the hub itself failing on an item (here a stored event with no
    id) every time. It is offered again MAX_DELIVERIES times with a growing delay -- made
    immediate through the inbox's delay seam -- and then dead-lettered, never dropped."""
    hub = Hub(make_settings(servers, tmp_path, f"inbox_{uuid.uuid4().hex[:8]}"))
    hub.inbox.retry_delay = lambda deliveries: 0.0
    await hub.start()
    try:
        api = Api(http, hub.url)
        await api.put_function("rec", RECORD)
        broken = Inbox._item("invoke", Event(id="x", source="invoke://rec", type="hub.invoke", data={}),
                             function="rec", request_id="broken")
        del broken["event"]["id"]
        await hub.store.inbox_put([broken])

        async def dead_lettered() -> Any:
            dls = (await api.ok("GET", "/v1/dead-letters", params={"function": "rec"}))["dead_letters"]
            return dls or None

        (dl,) = await eventually(dead_lettered, timeout=60)
        assert dl["last_status"] == "undeliverable" and dl["last_error"]["type"] == "InboxDeliveryFailed"
        assert f"gave up after {MAX_DELIVERIES} deliveries" in dl["last_error"]["message"]
        assert "KeyError" in dl["last_error"]["message"]
        await eventually(lambda: _empty(hub))
    finally:
        await hub.stop()


async def _empty(hub: Hub) -> bool:
    return await hub.store.inbox_depth() == 0


async def test_many_async_invokes_are_claimed_and_deleted_in_bulk(
    servers: dict[str, Any], tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    hub = Hub(make_settings(servers, tmp_path, f"inbox_{uuid.uuid4().hex[:8]}"))
    await hub.start()
    claims = 0
    real_claim = hub.store.inbox_claim

    async def counting_claim(*args: Any, **kw: Any) -> list[dict[str, Any]]:
        nonlocal claims
        items = await real_claim(*args, **kw)
        claims += bool(items)
        return items

    hub.store.inbox_claim = counting_claim  # type: ignore[method-assign]
    try:
        api = Api(http, hub.url)
        await api.put_function("rec", RECORD, max_concurrency=8)
        events = [Inbox._item("invoke", Event(id=f"invoke:{i}", source="invoke://rec", type="hub.invoke",
                                              data={"i": i}), function="rec", request_id=f"r{i}")
                  for i in range(200)]
        await hub.store.inbox_put(events)
        hub.inbox._wake.set()
        invs = await api.wait_invocations(200, function="rec", timeout=120)
        assert sorted(i["result"]["data"]["i"] for i in invs) == list(range(200))
        assert claims < 50, f"{claims} claim calls for 200 items"
        await eventually(lambda: _empty(hub))
    finally:
        await hub.stop()


BATCH_S3 = """
def handler(event, context):
    keys = [r["subject"] for r in event["records"]]
    return {"keys": keys, "batchItemFailures": [{"itemIdentifier": r["id"]} for r in event["records"]
                                                 if "bad" in r["subject"]]}
"""


async def test_s3_batches_from_the_inbox_retry_only_the_failed_record(
    api: Api, servers: dict[str, Any], unique: str
) -> None:
    """The inbox is an unordered source: a record reported failed is retried (then dead-lettered)
    on its own, the others finished in the first call and never run again."""
    bucket = f"inbatch-{unique}"
    await asyncio.to_thread(minio_client(servers["rgw"]).make_bucket, bucket)
    await api.put_function(f"b-{unique}", BATCH_S3)
    await api.put_trigger(f"s3b-{unique}", f"b-{unique}", {"type": "s3", "bucket": bucket},
                          batch={"size": 4, "window_ms": 1000},
                          retry={"max_attempts": 2, "backoff_s": 0.05, "max_backoff_s": 0.1})
    template = json.loads((DATA / "rgw_put.json").read_text())
    keys = ["k0", "k1", "bad", "k3"]
    body: dict[str, list[dict[str, Any]]] = {"Records": []}
    for i, key in enumerate(keys):
        rec = copy.deepcopy(template["Records"][0])
        rec["s3"]["bucket"]["name"] = bucket
        rec["s3"]["object"].update(key=key, sequencer=f"{i:016X}", eTag=f"{i:032x}")
        rec["eventId"] = f"1715678467.{i}.{i:032x}"
        # now: an event older than the retry policy's max_event_age_s is not retried at all
        rec["eventTime"] = dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z")
        body["Records"].append(rec)
    async with api.session.post(api.base + f"/v1/sources/s3/events?token={WEBHOOK_TOKEN}", json=body) as r:
        assert r.status == 200 and (await r.json())["queued"] == 4

    async def dead_lettered() -> Any:
        dls = (await api.ok("GET", "/v1/dead-letters", params={"trigger": f"s3b-{unique}"}))["dead_letters"]
        return dls or None

    (dl,) = await eventually(dead_lettered)
    assert dl["event"]["subject"] == "bad"
    # in the order they were made: one hub's invocation ids count up (started_at is
    # finished_at less the duration, in ms: two quick runs in a row can tie or cross)
    invs = sorted(await api.wait_invocations(2, trigger=f"s3b-{unique}"), key=lambda i: i["invocation_id"])
    assert [sorted(i["result"]["keys"]) for i in invs] == [sorted(keys), ["bad"]]  # max_attempts 2
    assert [i["status"] for i in invs] == ["partial", "partial"]
    first = {it["event_id"]: it["status"] for it in invs[0]["items"]}
    assert sorted(first.values()) == ["failed", "succeeded", "succeeded", "succeeded"]


async def test_an_item_names_its_triggers_and_a_lagging_instance_looks_again(
    api: Api, hub: Hub, servers: dict[str, Any], unique: str
) -> None:
    """The instance that claims an S3 item may not know the trigger yet (made elsewhere a moment
    ago): it reloads and runs it rather than deleting the item unrun."""
    bucket = f"lag-{unique}"
    await asyncio.to_thread(minio_client(servers["rgw"]).make_bucket, bucket)
    await api.put_function(f"rec-{unique}", RECORD)
    await api.put_trigger(f"lag-{unique}", f"rec-{unique}", {"type": "s3", "bucket": bucket})
    event = Event(id=f"s3:lag-{unique}", source=f"s3://{bucket}", type="s3:ObjectCreated:Put",
                  subject="k", data={"bucket": bucket, "key": "k", "event_name": "s3:ObjectCreated:Put"})
    item = Inbox._item("s3", event, triggers=[f"lag-{unique}"])
    hub.router.triggers.pop(f"lag-{unique}")  # as if this instance had not heard of it yet
    await hub.store.inbox_put([item])
    hub.inbox._wake.set()
    (inv,) = await api.wait_invocations(1, trigger=f"lag-{unique}")
    assert inv["status"] == "succeeded" and inv["event_id"] == event.id


SLOW_S3 = "import time\n\ndef handler(event, context):\n    time.sleep(0.3)\n    return event['subject']\n"


async def test_a_backlog_of_single_events_runs_in_parallel(api: Api, servers: dict[str, Any], unique: str) -> None:
    """24 uploads queued at once for a batch-size-1 trigger: the inbox's workers share them
    (several calls at once, up to the function's max_concurrency) rather than one worker
    taking the whole backlog as one chunk and running it event after event."""
    bucket = f"inpar-{unique}"
    await asyncio.to_thread(minio_client(servers["rgw"]).make_bucket, bucket)
    await api.put_function(f"slow-{unique}", SLOW_S3, max_concurrency=8)
    await api.put_trigger(f"s3p-{unique}", f"slow-{unique}", {"type": "s3", "bucket": bucket})
    template = json.loads((DATA / "rgw_put.json").read_text())
    body: dict[str, Any] = {"Records": []}
    for i in range(24):
        rec = copy.deepcopy(template["Records"][0])
        rec["s3"]["bucket"]["name"] = bucket
        rec["s3"]["object"].update(key=f"k{i}", sequencer=f"{i:016X}", eTag=f"{i:032x}")
        rec["eventId"] = f"1715678467.{i}.{i:032x}"
        rec["eventTime"] = dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z")
        body["Records"].append(rec)
    async with api.session.post(api.base + f"/v1/sources/s3/events?token={WEBHOOK_TOKEN}", json=body) as r:
        assert r.status == 200 and (await r.json())["queued"] == 24
    invs = await api.wait_invocations(24, trigger=f"s3p-{unique}")
    assert sorted(i["result"] for i in invs) == sorted(f"k{i}" for i in range(24))
    spans = [(dt.datetime.fromisoformat(i["started_at"]), dt.datetime.fromisoformat(i["finished_at"])) for i in invs]
    most = max(sum(1 for s, f in spans if s <= t < f) for t, _ in spans)
    assert most >= 3, f"at most {most} ran at once"
