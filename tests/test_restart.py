"""Hub restarts: stop the hub, write while it is down, start a new one: every write runs, once --
by the records and by the function's own reports of its runs (tests/witness.py)."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pymongo import AsyncMongoClient

from hub.app import Hub
from hub.events import Event
from hub.intake.inbox import Inbox
from tests.hubfixtures import Api, eventually, make_settings
from tests.test_sources import RECORD, produce
from tests.witness import Witness, wait_judged_clean

pytestmark = pytest.mark.integration


async def _started(servers: dict[str, Any], data_dir: Path, db: str) -> Hub:
    hub = Hub(make_settings(servers, data_dir, db))
    await hub.start()
    return hub


def _exactly_once(invs: list[dict[str, Any]], expected: int) -> None:
    succeeded = Counter(i["event_id"] for i in invs if i["status"] == "succeeded")
    assert len(succeeded) == expected, succeeded
    assert set(succeeded.values()) == {1}, f"an event ran twice: {succeeded}"


@pytest.mark.parametrize("source_type", ["kafka", "mongodb"])
async def test_restart_resumes_where_it_stopped(
    source_type: str, servers: dict[str, Any], tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    tag = uuid.uuid4().hex[:8]
    db = f"restart_{tag}"
    topic, app_db = f"restart-{tag}", f"data_{tag}"
    source = ({"type": "kafka", "topic": topic} if source_type == "kafka"
              else {"type": "mongodb", "database": app_db, "collection": "items", "operations": ["insert"]})
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(servers["mongo"].url)
    witness = Witness()
    seqs = [f"{source_type[0]}-{n:06d}" for n in range(9)]

    async def write(n: int) -> None:
        if source_type == "kafka":  # one partition: the stream is ordered
            await produce(servers["kafka"].bootstrap, topic, [(None, json.dumps({"seq": seqs[n]}).encode())])
        else:
            await mongo[app_db]["items"].insert_one({"seq": seqs[n]})

    try:
        first = await _started(servers, tmp_path, db)
        api = Api(http, first.url)
        await api.put_function("rec", witness.function(), network=witness.network)
        await api.put_trigger("t", "rec", source)
        for n in range(3):
            await write(n)
        await api.wait_invocations(3, trigger="t")
        await first.stop()

        for n in range(3, 8):  # the hub is down
            await write(n)

        second = await _started(servers, tmp_path, db)
        try:
            api = Api(http, second.url)
            await write(8)  # the marker, last: once it ran, nothing before it can come again
            await witness.wait_seen(seqs[8:], timeout=60)
            invs = await api.wait_invocations(9, trigger="t")
            _exactly_once(invs, 9)
            verdict = await wait_judged_clean(mongo[db], witness, seqs, timeout=30)
            assert [len(witness.runs_of(s)) for s in seqs] == [1] * 9, witness.runs
            assert not verdict.unrecorded, verdict.unrecorded
        finally:
            await second.stop()
    finally:
        witness.close()
        await mongo.close()


async def test_restarted_hub_takes_back_its_own_stream_and_inbox_claims_at_once(
    servers: dict[str, Any], tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """A hub that dies holds a change-stream lease and inbox claims; restarted on the same data
    dir it is the same instance (a stable id) and takes both back without waiting them out; the
    function runs each once."""
    tag = uuid.uuid4().hex[:8]
    db, app_db = f"reclaim_{tag}", f"data_{tag}"
    # leases far longer than the test: only "it is my own" can explain a prompt restart
    settings = make_settings(servers, tmp_path, db, lease_ttl_s=3600, inbox_lease_s=3600)
    first = Hub(settings)
    await first.start()
    instance = first.instance_id
    api = Api(http, first.url)
    witness = Witness()
    await api.put_function("rec", witness.function(), network=witness.network)
    await api.put_trigger("t", "rec", {"type": "mongodb", "database": app_db, "collection": "items",
                                       "operations": ["insert"]})
    await eventually(lambda: _is(first.sources.states().get("t"), "running"))
    await first.stop()
    # What a kill -9 leaves behind (a clean stop releases them): the stream lease, and an async
    # invoke claimed mid-run, both held by this instance for another hour.
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)
    item = Inbox._item("invoke", Event(id="invoke:left-behind", source="invoke://rec", type="hub.invoke",
                                       data={"seq": "a-000001"}), function="rec", request_id=f"req-{tag}")
    item.update(state="leased", owner=instance, lease_until=later, deliveries=1)
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(servers["mongo"].url)
    try:
        hub_db = mongo[db]
        await hub_db.leases.update_one({"_id": "stream:t"}, {"$set": {"owner": instance, "until": later}}, upsert=True)
        await hub_db.inbox.insert_one(item)
        await mongo[app_db]["items"].insert_one({"seq": "m-000002"})
        request_id = item["request_id"]

        second = Hub(make_settings(servers, tmp_path, db, lease_ttl_s=3600, inbox_lease_s=3600))
        assert second.instance_id == instance
        await second.start()
        try:
            api = Api(http, second.url)
            # both run long before any lease could run out
            await api.wait_invocations(1, trigger="t", timeout=30)
            await eventually(lambda: _invoked(api, request_id), timeout=30)
            await wait_judged_clean(hub_db, witness, ["a-000001", "m-000002"], timeout=30)
            assert [len(witness.runs_of(s)) for s in ("a-000001", "m-000002")] == [1, 1], witness.runs
        finally:
            await second.stop()
    finally:
        witness.close()
        await mongo.close()


async def _is(value: Any, expected: Any) -> bool:
    return bool(value == expected)


async def _invoked(api: Api, request_id: str) -> bool:
    status, body = await api.call("GET", f"/v1/invocations/{request_id}")
    return status == 200 and body.get("status") == "succeeded"


async def test_kafka_trigger_deleted_and_made_again_runs(api: Api, servers: dict[str, Any], unique: str) -> None:
    """Same name, same topic (and a topic switched away and back): a new consumer group each
    time, so its start offsets can be committed (reusing the old group answered 503 for ever)."""
    topic, other, name = f"again-{unique}", f"other-{unique}", f"again-{unique}"
    await api.put_function("rec-again", RECORD)
    for round_ in range(2):
        await api.put_trigger(name, "rec-again", {"type": "kafka", "topic": topic})
        await produce(servers["kafka"].bootstrap, topic, [(None, f'{{"round": {round_}}}'.encode())])
        await api.wait_invocations(round_ + 1, trigger=name)
        await api.ok("DELETE", f"/v1/triggers/{name}")
    await api.put_trigger(name, "rec-again", {"type": "kafka", "topic": topic})
    await api.put_trigger(name, "rec-again", {"type": "kafka", "topic": other})
    await api.put_trigger(name, "rec-again", {"type": "kafka", "topic": topic})
    await produce(servers["kafka"].bootstrap, topic, [(None, b'{"round": 2}')])
    invs = await api.wait_invocations(3, trigger=name)
    assert sorted(i["result"]["data"]["value"]["round"] for i in invs) == [0, 1, 2]
