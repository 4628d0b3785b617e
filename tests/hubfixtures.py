"""Fixtures that run real hub instances against the session's real servers."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from hub.app import Hub
from hub.settings import Settings

API_TOKEN = "test-api-token-0123456789abcdef"
WEBHOOK_TOKEN = "test-webhook-token-0123456789abcdef"


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 30.0, interval: float = 0.1) -> Any:
    """Poll ``check`` until it returns something truthy; fail with the last value after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = await check()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s; last value: {last!r}")
        await asyncio.sleep(interval)


class Api:
    """A small client for the hub's HTTP API, as a user would call it."""

    def __init__(self, session: aiohttp.ClientSession, base: str, token: str = API_TOKEN,
                 fn_base: str | None = None) -> None:
        self.session = session
        self.base = base
        self.fn_base = fn_base or base  # function URLs: the hub's own listener (Hub.fn_url)
        self.headers = {"Authorization": f"Bearer {token}"}

    async def call(self, method: str, path: str, json: Any = None, **kw: Any) -> tuple[int, Any]:
        headers = {**self.headers, **kw.pop("headers", {})}
        async with self.session.request(method, self.base + path, json=json, headers=headers, **kw) as r:
            body = await r.json(content_type=None) if r.content_type == "application/json" else await r.text()
            return r.status, body

    async def ok(self, method: str, path: str, json: Any = None, **kw: Any) -> Any:
        status, body = await self.call(method, path, json, **kw)
        assert status < 300, f"{method} {path} -> {status}: {body}"
        return body

    async def put_function(self, name: str, code: str, handler: str = "main.handler", **cfg: Any) -> Any:
        return await self.ok("PUT", f"/v1/functions/{name}",
                             {"handler": handler, "code": {"files": {"main.py": code}}, **cfg})

    async def put_trigger(self, name: str, function: str, source: dict[str, Any], **cfg: Any) -> Any:
        return await self.ok("PUT", f"/v1/triggers/{name}", {"function": function, "source": source, **cfg})

    async def invocations(self, **query: str) -> list[dict[str, Any]]:
        body = await self.ok("GET", "/v1/invocations", params={"limit": "1000", **query})
        return list(body["invocations"])

    async def wait_invocations(self, n: int, timeout: float = 60.0, **query: str) -> list[dict[str, Any]]:
        async def enough() -> list[dict[str, Any]] | None:
            invs = await self.invocations(**query)
            return invs if len(invs) >= n else None

        return list(await eventually(enough, timeout))


def make_settings(servers: dict[str, Any], data_dir: Path, db: str, **overrides: Any) -> Settings:
    mongo, kafka, rgw = servers["mongo"], servers["kafka"], servers["rgw"]
    values: dict[str, Any] = dict(
        mongo_url=mongo.url,
        mongo_db=db,
        kafka_bootstrap=kafka.bootstrap,
        kafka_session_timeout_ms=3000,
        kafka_heartbeat_interval_ms=500,
        s3_endpoint=rgw.endpoint,
        s3_access_key=rgw.access_key,
        s3_secret_key=rgw.secret_key,
        s3_region=rgw.region,
        s3_flavor="rgw",
        api_token=API_TOKEN,
        webhook_token=WEBHOOK_TOKEN,
        http_host="127.0.0.1",
        http_port=0,
        fn_port=0,
        data_dir=data_dir,
        # bubblewrap or a failed start: "auto" would quietly fall back to plain processes where
        # bwrap cannot run, and every isolation test would pass without isolation.
        sandbox="bwrap",
        trigger_sync_interval_s=0.5,
        inbox_poll_interval_s=0.2,
        worker_idle_ttl_s=30.0,
    )
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="session")
def servers(mongo_server: Any, kafka_server: Any, rgw_server: Any) -> dict[str, Any]:
    return {"mongo": mongo_server, "kafka": kafka_server, "rgw": rgw_server}


@pytest.fixture(scope="session")
async def hub(servers: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Hub]:
    settings = make_settings(servers, tmp_path_factory.mktemp("hub-data"), f"hub_{uuid.uuid4().hex[:8]}")
    instance = Hub(settings)
    await instance.start()
    # RGW pushes to the hub's real port, which is only known now.
    instance.settings.public_url = instance.url
    yield instance
    await instance.stop()


@pytest.fixture(scope="session")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        yield session


@pytest.fixture(scope="session")
async def api(hub: Hub, http: aiohttp.ClientSession) -> Api:
    return Api(http, hub.url, fn_base=hub.fn_url)


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:8]


@asynccontextmanager
async def watching_pair(servers: dict[str, Any], tmp_path: Path, db: str) -> AsyncIterator[tuple[Hub, Hub]]:
    """Two instances on one database whose trigger timer never fires: whatever B learns of A's
    changes, it learns through the config watch. Yields once B's function cache is on."""
    a = Hub(make_settings(servers, tmp_path / "a", db, trigger_sync_interval_s=3600))
    b = Hub(make_settings(servers, tmp_path / "b", db, trigger_sync_interval_s=3600))
    await a.start()
    await b.start()
    try:
        await eventually(lambda: _value(b.registry.cache_enabled))
        yield a, b
    finally:
        await a.stop()
        await b.stop()


async def _value(value: Any) -> Any:
    return value
