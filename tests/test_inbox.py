"""The inbox on the real MongoDB: bulk claims, an item the hub itself cannot process, batches."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import aiohttp

from hub.app import Hub
from hub.inbox import MAX_DELIVERIES, Inbox
from hub.events import Event
from tests.hubfixtures import Api, eventually, make_settings
from tests.test_sources import RECORD


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
