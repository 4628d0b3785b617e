"""Schedule triggers on the real servers: each tick once across instances, catch-up, cron."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pymongo import AsyncMongoClient

from hub.app import Hub
from tests.hubfixtures import Api, eventually, make_settings

pytestmark = pytest.mark.integration

TICK = "def handler(event, context):\n    return event['data']\n"


def _t(iso: str) -> dt.datetime:
    return dt.datetime.fromisoformat(iso.replace("Z", "+00:00"))


async def _ticks(api: Api, trigger: str) -> list[dict[str, Any]]:
    invs = await api.invocations(trigger=trigger)
    return sorted((i["result"] for i in invs if i["status"] == "succeeded"), key=lambda r: r["scheduled_time"])


async def test_each_tick_runs_once_across_two_instances(
    servers: dict[str, Any], tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    db = f"sched_{uuid.uuid4().hex[:8]}"
    a = Hub(make_settings(servers, tmp_path / "a", db))
    b = Hub(make_settings(servers, tmp_path / "b", db))
    await a.start()
    await b.start()
    try:
        api = Api(http, a.url)
        await api.put_function("tick", TICK)
        body = await api.put_trigger("every-second", "tick", {"type": "schedule", "rate": "1 second"})
        assert body["source"]["rate"] == "1 second"
        await eventually(lambda: _count(api, "every-second", 6), timeout=60)
    finally:
        await a.stop()
        await b.stop()
    # both instances computed and tried every tick; each ran once
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(servers["mongo"].url)
    try:
        records = await client[db].invocations.find({"trigger": "every-second", "status": "succeeded"}).to_list(None)
    finally:
        await client.close()
    times = Counter(r["result"]["scheduled_time"] for r in records)
    assert len(times) >= 6 and set(times.values()) == {1}, times
    ordered = sorted(_t(t) for t in times)
    steps = {round((later - earlier).total_seconds(), 3) for earlier, later in zip(ordered, ordered[1:])}
    assert steps == {1.0}, f"ticks are one second apart, none skipped or doubled: {steps}"
    assert len({r["event_id"] for r in records}) == len(records)
    fired = a.scheduler.fired + b.scheduler.fired
    assert fired >= len(records)  # whoever won each claim queued it; the other found it queued


async def _count(api: Api, trigger: str, n: int) -> bool:
    return len(await _ticks(api, trigger)) >= n


async def test_catch_up_fires_once_for_the_ticks_missed_while_down(
    servers: dict[str, Any], tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    db = f"catch_{uuid.uuid4().hex[:8]}"
    hub = Hub(make_settings(servers, tmp_path, db))
    await hub.start()
    api = Api(http, hub.url)
    await api.put_function("tick", TICK)
    await api.put_trigger("with", "tick", {"type": "schedule", "rate": "1 second", "catch_up": True})
    await api.put_trigger("without", "tick", {"type": "schedule", "rate": "1 second"})
    await eventually(lambda: _count(api, "with", 1), timeout=30)
    await eventually(lambda: _count(api, "without", 1), timeout=30)
    await hub.stop()
    down_at = dt.datetime.now(dt.timezone.utc)
    await asyncio.sleep(4.5)  # no hub runs for at least four ticks
    up_at = dt.datetime.now(dt.timezone.utc)
    hub = Hub(make_settings(servers, tmp_path, db))
    await hub.start()
    try:
        api = Api(http, hub.url)
        await eventually(lambda: _after(api, "with", up_at, 2), timeout=30)
        await eventually(lambda: _after(api, "without", up_at, 2), timeout=30)
        with_ticks, without_ticks = await _ticks(api, "with"), await _ticks(api, "without")
    finally:
        await hub.stop()
    # nothing fired while no hub ran ...
    for ticks in (with_ticks, without_ticks):
        assert not [t for t in ticks if down_at < _t(t["fired_at"]) < up_at], ticks
    # ... with catch_up one event stands for the ticks of the outage, once it is back ...
    caught = [t for t in with_ticks if t.get("catch_up")]
    assert len(caught) == 1, caught
    before = max(_t(t["scheduled_time"]) for t in with_ticks if _t(t["fired_at"]) < down_at)
    assert caught[0]["missed"] >= 4 and before < _t(caught[0]["first_missed"]) <= _t(caught[0]["scheduled_time"])
    assert _t(caught[0]["fired_at"]) >= up_at
    # ... and without it, nothing stands for them
    assert not [t for t in without_ticks if t.get("catch_up")]
    assert not [t for t in without_ticks if down_at < _t(t["scheduled_time"]) and _t(t["fired_at"]) < up_at]


async def _after(api: Api, trigger: str, since: dt.datetime, n: int) -> bool:
    return len([t for t in await _ticks(api, trigger) if _t(t["fired_at"]) >= since]) >= n


async def test_cron_in_a_time_zone_and_the_next_fire_time(api: Api, unique: str) -> None:
    await api.put_function(f"tick-{unique}", TICK)
    await api.put_trigger(f"cron-{unique}", f"tick-{unique}",
                          {"type": "schedule", "cron": "* * * * * */2", "timezone": "Asia/Kolkata"})
    await eventually(lambda: _count(api, f"cron-{unique}", 2), timeout=30)
    ticks = await _ticks(api, f"cron-{unique}")
    assert all(_t(t["scheduled_time"]).second % 2 == 0 for t in ticks)
    assert all(_t(t["fired_at"]) >= _t(t["scheduled_time"]) for t in ticks)
    shown = await api.ok("GET", f"/v1/triggers/cron-{unique}")
    assert _t(shown["next_fire"]) > _t(ticks[-1]["scheduled_time"])
    status, ready = await api.call("GET", "/readyz")
    assert f"cron-{unique}" in ready["schedules"]
    await api.ok("DELETE", f"/v1/triggers/cron-{unique}")


async def test_bad_schedules_are_refused(api: Api, unique: str) -> None:
    await api.put_function(f"tick-{unique}", TICK)
    for source, words in (({"type": "schedule", "cron": "61 * * * *"}, "not a valid expression"),
                          ({"type": "schedule", "rate": "1 second", "timezone": "Mars/Olympus"}, "unknown time zone"),
                          ({"type": "schedule", "rate": "0 seconds"}, "rate"),
                          ({"type": "schedule"}, "exactly one of cron or rate"),
                          ({"type": "schedule", "cron": "* * * * *", "rate": "1 minute"}, "exactly one")):
        status, body = await api.call("PUT", f"/v1/triggers/bad-{unique}", {"function": f"tick-{unique}",
                                                                           "source": source})
        assert status == 400 and words in body["error"], body
