"""/readyz: answers within a second whatever is down, says what is, and does not flap while a
new trigger's subscription is starting."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp

from devstack import TansuServer, free_port
from hub.app import Hub
from tests.hubfixtures import Api, eventually, make_settings
from tests.test_sources import RECORD


async def _readyz(api: Api) -> tuple[int, Any, float]:
    t0 = time.monotonic()
    async with api.session.get(api.base + "/readyz", timeout=aiohttp.ClientTimeout(total=5)) as r:
        return r.status, await r.json(), time.monotonic() - t0


async def test_a_starting_subscription_does_not_make_the_hub_unready(api: Api, hub: Hub, unique: str) -> None:
    await api.put_function(f"rec-{unique}", RECORD)
    await api.put_trigger(f"k-{unique}", f"rec-{unique}", {"type": "kafka", "topic": f"ready-{unique}"})
    seen: list[str] = []
    while True:  # joining the consumer group takes a few seconds; readiness stays 200 throughout
        status, body, _ = await _readyz(api)
        state = body["subscriptions"].get(f"k-{unique}", {}).get("state", "absent")
        seen.append(state)
        assert status == 200, body
        if state == "running":
            break
        await asyncio.sleep(0.1)
    assert "starting" in seen or len(seen) == 1
    assert body["checks"]["kafka"] == "ok" and body["checks"]["mongodb"] == "ok"


async def test_kafka_and_s3_outages_are_reported(
    servers: dict[str, Any], tmp_path: Path, http: aiohttp.ClientSession, unique: str
) -> None:
    kafka = TansuServer(data_dir=tmp_path / "tansu")
    await asyncio.to_thread(kafka.start)
    closed = free_port()  # an S3 endpoint nobody listens on
    hub = Hub(make_settings({**servers, "kafka": kafka}, tmp_path / "hub", f"ready_{unique}"))
    try:
        await hub.start()
        api = Api(http, hub.url)
        await api.put_function("rec", RECORD)
        await api.put_trigger("k", "rec", {"type": "kafka", "topic": "t"})
        # an s3 trigger whose server has gone away (written directly: the API would refuse it)
        await hub.store.put_trigger({"_id": "s", "function": "rec", "source": {"type": "s3", "bucket": "gone"},
                                     "enabled": True})
        hub.settings.s3_endpoint = f"http://127.0.0.1:{closed}"
        await hub.trigger_sync.reload()
        status, body, took = await _readyz(api)
        assert status == 503 and body["checks"]["s3"].startswith("error: S3 endpoint") and took < 1.5
        hub.settings.s3_endpoint = servers["rgw"].endpoint
        await eventually(lambda: _check(api, "kafka", "ok"))

        await asyncio.to_thread(kafka.stop)
        status, body, took = await _readyz(api)
        assert status == 503 and body["checks"]["kafka"].startswith("error: Kafka unreachable"), body
        assert took < 1.5
        await asyncio.to_thread(kafka.start)  # same port
        await eventually(lambda: _check(api, "kafka", "ok"))
    finally:
        await hub.stop()
        await asyncio.to_thread(kafka.stop)


async def _check(api: Api, name: str, value: str) -> bool:
    _, body, _ = await _readyz(api)
    return bool(body["checks"].get(name) == value)
