"""Hub restarts: stop the hub, write while it is down, start a new one: every write runs, once."""

from __future__ import annotations

import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pymongo import AsyncMongoClient

from hub.app import Hub
from tests.hubfixtures import Api, make_settings
from tests.test_sources import RECORD, produce


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

    async def write(n: int) -> None:
        if source_type == "kafka":
            await produce(servers["kafka"].bootstrap, topic, [(None, f'{{"n": {n}}}'.encode())])
        else:
            await mongo[app_db]["items"].insert_one({"n": n})

    try:
        first = await _started(servers, tmp_path, db)
        api = Api(http, first.url)
        await api.put_function("rec", RECORD)
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
            invs = await api.wait_invocations(8, trigger="t")
            _exactly_once(invs, 8)
        finally:
            await second.stop()
    finally:
        await mongo.close()
