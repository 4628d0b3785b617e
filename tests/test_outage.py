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


async def test_hub_stops_while_mongodb_is_down(servers: dict[str, Any], tmp_path: Path) -> None:
    """SIGTERM's path (Hub.stop) ends while MongoDB is away. It did not: a heartbeat takes 5 s to
    give up on a dead server, longer than the interval, so the beat loop's wait for the stop flag
    had no time left, raised TimeoutError without looking at the flag, beat again, and stop()
    waited for it for ever. Now stop() also skips the goodbye writes MongoDB cannot answer."""
    mongo = MongoServer(tmp_path / "mongo")
    await asyncio.to_thread(mongo.start)
    hub = Hub(make_settings({**servers, "mongo": mongo}, tmp_path / "hub", "stopdown"))
    try:
        await hub.start()
        await asyncio.to_thread(mongo.stop)

        async def beat_failed() -> bool:  # the case that hung: a beat slower than the interval
            return hub._beat_failed

        await eventually(beat_failed, timeout=60, interval=0.2)
    except BaseException:
        await asyncio.to_thread(mongo.start)
        await hub.stop()
        await asyncio.to_thread(mongo.stop)
        raise
    try:
        # a bound that only a hang reaches: this stop takes a few seconds
        await asyncio.wait_for(hub.stop(), 120)
    except TimeoutError:
        raise AssertionError("Hub.stop() still running 120 s after MongoDB went away") from None
    finally:
        await asyncio.to_thread(mongo.stop)
