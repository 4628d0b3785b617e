"""MongoDB outages: the hub says so, acks nothing it could not record, and catches up afterwards."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from devstack import MongoServer
from hub.app import Hub
from tests.hubfixtures import WEBHOOK_TOKEN, Api, eventually, make_settings
from tests.test_sources import RECORD, produce

pytestmark = pytest.mark.integration


async def test_mongodb_outage_loses_no_kafka_event(
    servers: dict[str, Any], tmp_path: Path, http: aiohttp.ClientSession, unique: str
) -> None:
    mongo = MongoServer(tmp_path / "mongo")
    await asyncio.to_thread(mongo.start)
    hub = Hub(make_settings({**servers, "mongo": mongo}, tmp_path / "hub", "outage"))
    try:
        await hub.start()
        api = Api(http, hub.url)
        topic = f"outage-{unique}"
        await api.put_function("rec", RECORD)
        await api.put_trigger("t", "rec", {"type": "kafka", "topic": topic})
        await produce(servers["kafka"].bootstrap, topic, [(None, b'{"n": 0}'), (None, b'{"n": 1}')])
        await api.wait_invocations(2, trigger="t")

        await asyncio.to_thread(mongo.stop)
        await produce(servers["kafka"].bootstrap, topic, [(None, f'{{"n": {n}}}'.encode()) for n in range(2, 6)])

        async def not_ready() -> Any:
            status, body = await api.call("GET", "/readyz")
            return body if status == 503 and body["checks"]["mongodb"].startswith("error") else None

        await eventually(not_ready, timeout=60)
        # the webhook must not say 2xx for what it cannot store: the S3 server will retry
        async with http.post(hub.url + f"/v1/sources/s3/events?token={WEBHOOK_TOKEN}",
                             data=(Path(__file__).parent / "data/s3/rgw_put.json").read_bytes()) as r:
            assert r.status == 503

        await asyncio.to_thread(mongo.start)  # same dbpath and port: the hub reconnects by itself
        invs = await api.wait_invocations(6, trigger="t", timeout=120)
        succeeded = Counter(i["result"]["data"]["value"]["n"] for i in invs if i["status"] == "succeeded")
        assert succeeded == {n: 1 for n in range(6)}, succeeded
    finally:
        await hub.stop()
        await asyncio.to_thread(mongo.stop)
