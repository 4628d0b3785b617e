"""Two processes claiming one instance id (issue 19): the second refuses to start.

On Kubernetes the id is the pod's name (``HUB_INSTANCE_ID`` from the downward API); elsewhere an
operator may give two instances one id, or one data dir. Two processes under one id would renew
each other's leases and inbox claims and share one heartbeat, unnoticed. A container restarted
in the same pod after a crash has the same id too, and must start: its predecessor's heartbeat
is not renewed, and it takes the id over once that heartbeat has stayed still for the live
window. Real hubs on the real MongoDB, two in one process.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from hub.app import Hub
from hub.settings import Settings
from hub.store import InstanceTaken
from tests.hubfixtures import API_TOKEN, WEBHOOK_TOKEN

pytestmark = pytest.mark.integration


def _settings(mongo_server: Any, data_dir: Path, db: str, instance: str) -> Settings:
    # MongoDB only: no trigger here reads Kafka or S3; isolation does not matter to this test
    return Settings(mongo_url=mongo_server.url, mongo_db=db, s3_endpoint="", api_token=API_TOKEN,
                    webhook_token=WEBHOOK_TOKEN, http_host="127.0.0.1", http_port=0, fn_port=0,
                    data_dir=data_dir, sandbox="process", instance_id=instance, trigger_sync_interval_s=0.5)


async def test_a_second_process_with_a_live_id_refuses_to_start(mongo_server: Any, tmp_path: Path, unique: str) -> None:
    db = f"instance_{unique}"
    first = Hub(_settings(mongo_server, tmp_path / "a", db, "pod-a"))
    await first.start()
    try:
        second = Hub(_settings(mongo_server, tmp_path / "b", db, "pod-a"))
        with pytest.raises(InstanceTaken) as refused:
            await second.start()
        message = str(refused.value)
        assert "another hub instance is running with the id 'pod-a'" in message
        assert first.url in message and "HUB_INSTANCE_ID" in message
        assert second.port is None  # it never listened
        # the first one is untouched: its heartbeat is still its own and it still beats
        doc = await first.store.db.instances.find_one({"_id": "pod-a"})
        assert doc is not None and doc["nonce"] == first._nonce
        assert await first.store.heartbeat("pod-a", {}, first._nonce)
        # another id on the same database starts beside it
        other = Hub(_settings(mongo_server, tmp_path / "c", db, "pod-b"))
        await other.start()
        await other.stop()
    finally:
        await first.stop()
    # a graceful stop frees the id at once: the replacement starts without waiting
    again = Hub(_settings(mongo_server, tmp_path / "b", db, "pod-a"))
    again.instance_live_s = 3600.0  # were it to wait for the old heartbeat, the test would time out
    await asyncio.wait_for(again.start(), 120)
    await again.stop()


async def test_a_crashed_process_id_is_taken_over_once_its_heartbeat_stands_still(
    mongo_server: Any, tmp_path: Path, unique: str
) -> None:
    db = f"instance_{unique}"
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_server.url)
    try:
        instances = client[db]["instances"]
        now = dt.datetime.now(dt.timezone.utc)
        # what kill -9 leaves: a heartbeat with the dead process's nonce, just written
        await instances.insert_one({"_id": "pod-c", "nonce": "dead-process", "last_seen": now, "url": "http://gone"})
        restarted = Hub(_settings(mongo_server, tmp_path / "c", db, "pod-c"))
        restarted.instance_live_s = 2.0
        await restarted.start()  # watched the heartbeat stand still, then took the id
        try:
            doc = await instances.find_one({"_id": "pod-c"})
            assert doc is not None and doc["nonce"] == restarted._nonce and doc["url"] == restarted.url
        finally:
            await restarted.stop()
        assert await instances.find_one({"_id": "pod-c"}) is None  # graceful stop: gone

        # an old heartbeat (older than the live window) is taken over at once
        await instances.insert_one({"_id": "pod-d", "nonce": "long-dead",
                                    "last_seen": now - dt.timedelta(hours=1)})
        late = Hub(_settings(mongo_server, tmp_path / "d", db, "pod-d"))
        late.instance_live_s = 3600.0  # would wait an hour if it did not see the beat is old
        await asyncio.wait_for(late.start(), 120)
        await late.stop()
    finally:
        await client.close()


async def test_a_process_that_lost_its_id_does_not_take_it_back(mongo_server: Any, tmp_path: Path, unique: str) -> None:
    """One that stalled past the live window and was replaced: its heartbeat writes nothing over
    the new owner's, and its graceful stop leaves the new owner's heartbeat in place."""
    db = f"instance_{unique}"
    hub = Hub(_settings(mongo_server, tmp_path / "e", db, "pod-e"))
    await hub.start()
    try:
        instances = hub.store.db.instances
        await instances.update_one({"_id": "pod-e"}, {"$set": {"nonce": "successor"}})
        assert not await hub.store.heartbeat("pod-e", {"url": hub.url}, hub._nonce)
        assert (await instances.find_one({"_id": "pod-e"}) or {}).get("nonce") == "successor"
    finally:
        await hub.stop()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_server.url)
    try:
        assert (await client[db]["instances"].find_one({"_id": "pod-e"}) or {}).get("nonce") == "successor"
    finally:
        await client.close()


async def test_autoscaling_metrics_backlog_by_trigger_and_slots(mongo_server: Any, tmp_path: Path, unique: str) -> None:
    """What KEDA reads (deploy/kubernetes/components/keda): the shared inbox's items by trigger
    and this instance's worker slots, on /metrics."""
    import aiohttp

    hub = Hub(_settings(mongo_server, tmp_path / "m", f"instance_{unique}", "pod-m"))
    await hub.start()
    try:
        later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1)  # not due: nobody claims them
        await hub.store.db.inbox.insert_many([
            {"kind": "s3", "triggers": ["up", "thumbs"], "state": "pending", "not_before": later},
            {"kind": "s3", "triggers": ["up"], "state": "pending", "not_before": later},
            {"kind": "schedule", "trigger": "nightly", "state": "pending", "not_before": later},
            {"kind": "invoke", "function": "f", "state": "pending", "not_before": later},
        ])
        auth = {"Authorization": f"Bearer {API_TOKEN}"}
        async with aiohttp.ClientSession(headers=auth) as http:
            async def scrape() -> dict[str, float]:
                async with http.get(hub.url + "/metrics") as r:
                    assert r.status == 200
                    text = await r.text()
                return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                        for line in text.splitlines() if line and not line.startswith("#")}

            samples = await scrape()
            fn = {"handler": "main.handler", "max_concurrency": 3,
                  "code": {"files": {"main.py": "def handler(event, context):\n    return 1\n"}}}
            async with http.put(hub.url + "/v1/functions/f", json=fn) as r:
                assert r.status in (200, 201), await r.text()
            async with http.post(hub.url + "/v1/functions/f/invoke", json={}) as r:
                assert (await r.json())["status"] == "succeeded"
            after = await scrape()
        assert samples['hub_inbox_backlog{trigger="up"}'] == 2
        assert samples['hub_inbox_backlog{trigger="thumbs"}'] == 1
        assert samples['hub_inbox_backlog{trigger="nightly"}'] == 1
        assert samples['hub_inbox_backlog{trigger="(invoke)"}'] == 1
        assert samples["hub_worker_slots_in_use"] == 0
        assert samples["hub_worker_slots_total"] == 0  # no function has run here yet
        assert after["hub_worker_slots_total"] == 3  # f's version, warm: its max_concurrency
        assert after["hub_worker_slots_in_use"] == 0  # finished
    finally:
        await hub.stop()
