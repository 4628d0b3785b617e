"""/readyz: answers promptly whatever is down (within the client's 5 s bound, never waiting out a
server's own timeouts), says what is, and does not flap while a new trigger's subscription is
starting."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from devstack import TansuServer, free_port
from hub.app import Hub
from tests.hubfixtures import Api, eventually, make_settings
from tests.test_sources import RECORD

pytestmark = pytest.mark.integration


async def _readyz(api: Api) -> tuple[int, Any]:
    async with api.session.get(api.base + "/readyz", headers=api.headers,
                               timeout=aiohttp.ClientTimeout(total=5)) as r:
        return r.status, await r.json()


async def test_a_starting_subscription_does_not_make_the_hub_unready(api: Api, hub: Hub, unique: str) -> None:
    await api.put_function(f"rec-{unique}", RECORD)
    await api.put_trigger(f"k-{unique}", f"rec-{unique}", {"type": "kafka", "topic": f"ready-{unique}"})
    seen: list[str] = []
    bodies: list[Any] = []

    async def running() -> bool:
        status, body = await _readyz(api)
        assert status == 200, body  # readiness stays 200 while the consumer group is joined
        state = body["subscriptions"].get(f"k-{unique}", {}).get("state", "absent")
        seen.append(state)
        bodies.append(body)
        return state == "running"

    await eventually(running, timeout=60)
    assert "starting" in seen or len(seen) == 1
    assert bodies[-1]["checks"]["kafka"] == "ok" and bodies[-1]["checks"]["mongodb"] == "ok"


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
        status, body = await _readyz(api)
        assert status == 503 and body["checks"]["s3"].startswith("error: S3 endpoint"), body
        hub.settings.s3_endpoint = servers["rgw"].endpoint
        await eventually(lambda: _check(api, "kafka", "ok"))

        await asyncio.to_thread(kafka.stop)
        status, body = await _readyz(api)
        assert status == 503 and body["checks"]["kafka"].startswith("error: Kafka unreachable"), body
        await asyncio.to_thread(kafka.start)  # same port
        await eventually(lambda: _check(api, "kafka", "ok"))
    finally:
        await hub.stop()
        await asyncio.to_thread(kafka.stop)


async def _check(api: Api, name: str, value: str) -> bool:
    _, body = await _readyz(api)
    return bool(body["checks"].get(name) == value)
