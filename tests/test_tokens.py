"""Scoped tokens against a real hub: each scope allowed and refused on every route (driven by the
one table, hub.web.scopes), an auth sweep over every operation of the OpenAPI document (path
variants included), revocation reaching a second instance at once, and /readyz and /metrics."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
import structlog.testing
from aiohttp import web

from hub.app import Hub
from hub.catalog import credentials
from hub.catalog.tokens import SCOPES, rank, token_hash
from hub.web.openapi import openapi_spec
from hub.web.scopes import ROUTE_SCOPES, check_routes
from tests.hubfixtures import API_TOKEN, Api, eventually, make_settings

pytestmark = pytest.mark.integration

PARAMS = {"name": "no-such-thing", "version": "0123456789abcdef", "alias": "no-alias", "id": "no-such-id",
          "file": "app.js"}
PROTECTED = sorted((m, p, s) for (m, p), s in ROUTE_SCOPES.items() if s is not None)


def _url(path: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: PARAMS[m.group(1)], path)


@pytest.fixture(scope="module")
async def tokens(api: Api) -> dict[str, str]:
    run = uuid.uuid4().hex[:6]
    out = {}
    for scope in SCOPES:
        created = await api.ok("POST", "/v1/tokens", {"name": f"t-{scope}-{run}", "scope": scope})
        assert created["scope"] == scope and created["token"].startswith("thk_")
        out[scope] = created["token"]
    return out


async def _status(http: aiohttp.ClientSession, base: str, method: str, path: str, token: str | None,
                  raw: bool = False) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    url = base + path
    body: dict[str, Any] | None = None if method in ("GET", "DELETE") else {}
    async with http.request(method, url if not raw else aiohttp.client.URL(url, encoded=True), json=body,
                            headers=headers) as r:
        return r.status, await r.json(content_type=None) if r.content_type == "application/json" else None


@pytest.mark.parametrize(("method", "path", "needed"), PROTECTED, ids=lambda v: str(v))
async def test_each_scope_on_each_route(api: Api, http: aiohttp.ClientSession, tokens: dict[str, str],
                                        method: str, path: str, needed: str) -> None:
    for scope, token in tokens.items():
        status, body = await _status(http, api.base, method, _url(path), token)
        if rank(scope) < rank(needed):
            assert status == 403, (scope, method, path, status, body)
            assert repr(needed) in body["error"] and body["details"][0]["required_scope"] == needed
        else:
            assert status not in (401, 403), (scope, method, path, status, body)


def _operations() -> list[tuple[str, str, str | None]]:
    ops = []
    for path, item in openapi_spec()["paths"].items():
        for method, op in item.items():
            if method in ("get", "put", "post", "delete") and "x-required-scope" in op:
                ops.append((method.upper(), path, op["x-required-scope"]))
    return ops


def test_every_route_and_operation_has_a_scope() -> None:
    documented = {(m, p): s for m, p, s in _operations()}
    assert documented == ROUTE_SCOPES  # every route documented, with the table's scope
    async def handler(request: web.Request) -> web.Response:
        return web.Response()

    app = web.Application()
    app.router.add_get("/v1/new-thing", handler)
    with pytest.raises(RuntimeError, match="/v1/new-thing"):
        check_routes(app)


@pytest.mark.parametrize(("method", "path", "needed"), [op for op in _operations() if op[2]], ids=lambda v: str(v))
async def test_auth_sweep(api: Api, http: aiohttp.ClientSession, tokens: dict[str, str],
                          method: str, path: str, needed: str) -> None:
    url = _url(path)
    wrong = ["wrong", "thk_" + "A" * 43, API_TOKEN + "x", API_TOKEN[:-1], tokens["admin"][:-1] + "B"]
    for token in [None, "", *wrong]:
        status, _ = await _status(http, api.base, method, url, token)
        assert status == 401, (method, path, token, status)
    variants = ["/" + url, url + "/", url.replace("/v1/", "/v1//", 1), url.replace("/v1/", "/v1%2F", 1),
                url.replace("/v1/", "/V1/", 1), url + "%2F"]
    for variant in variants:
        status, _ = await _status(http, api.base, method, variant, None, raw=True)
        assert status == 401, (method, variant, status)
    for scope, token in tokens.items():
        if rank(scope) < rank(needed):
            status, _ = await _status(http, api.base, method, url, token)
            assert status == 403, (method, path, scope, status)


async def test_token_lifecycle(hub: Hub, api: Api, http: aiohttp.ClientSession, unique: str) -> None:
    created = await api.ok("POST", "/v1/tokens", {"name": f"life-{unique}", "scope": "read"})
    token = created["token"]
    me = Api(http, api.base, token)
    assert (await me.ok("GET", "/v1/tokens/self")) == {"name": f"life-{unique}", "scope": "read",
                                                       "bootstrap": False, "scopes": ["read"]}
    assert (await api.ok("GET", "/v1/tokens/self"))["scope"] == "admin"  # HUB_API_TOKEN
    listed = {t["name"]: t for t in (await api.ok("GET", "/v1/tokens"))["tokens"]}
    assert listed[f"life-{unique}"]["scope"] == "read" and "token" not in listed[f"life-{unique}"]
    await eventually(lambda: _last_used(api, f"life-{unique}"), timeout=10)
    # stored hashed: the token itself is in no document
    doc = await hub.store.db.tokens.find_one({"_id": f"life-{unique}"})
    assert doc is not None and doc["hash"] == token_hash(token) and token not in str(doc)
    assert (await api.call("POST", "/v1/tokens", {"name": f"life-{unique}", "scope": "read"}))[0] == 409
    for bad in ({"name": "self", "scope": "read"}, {"name": "x", "scope": "root"}, {"name": "../x", "scope": "read"},
                {"name": "x"}, {"name": "x", "scope": "read", "token": "mine"}):
        assert (await api.call("POST", "/v1/tokens", bad))[0] == 400, bad
    # a smaller scope cannot mint a bigger one, nor read secrets' metadata
    assert (await me.call("POST", "/v1/tokens", {"name": f"up-{unique}", "scope": "admin"}))[0] == 403
    assert (await me.call("GET", "/v1/secrets"))[0] == 403
    assert (await me.call("DELETE", f"/v1/tokens/life-{unique}"))[0] == 403
    assert (await api.ok("DELETE", f"/v1/tokens/life-{unique}"))["deleted"] == f"life-{unique}"
    assert (await me.call("GET", "/v1/functions"))[0] == 401
    assert (await api.call("DELETE", f"/v1/tokens/life-{unique}"))[0] == 404


async def _last_used(api: Api, name: str) -> Any:
    listed = {t["name"]: t for t in (await api.ok("GET", "/v1/tokens"))["tokens"]}
    return listed[name]["last_used_at"]


async def test_readyz_detail_needs_a_token(api: Api, http: aiohttp.ClientSession, tokens: dict[str, str]) -> None:
    async with http.get(api.base + "/readyz") as r:
        assert set(await r.json()) == {"ready"}
    async with http.get(api.base + "/readyz", headers={"Authorization": "Bearer wrong"}) as r:
        assert set(await r.json()) == {"ready"}
    async with http.get(api.base + "/readyz", headers={"Authorization": f"Bearer {tokens['read']}"}) as r:
        assert "checks" in await r.json()
    async with http.get(api.base + "/metrics") as r:
        assert r.status == 401
    async with http.get(api.base + "/metrics", headers={"Authorization": f"Bearer {tokens['read']}"}) as r:
        assert r.status == 200


@pytest.fixture
async def pair(servers: dict[str, Any], tmp_path: Path) -> AsyncIterator[tuple[Hub, Hub]]:
    db = f"tok_{uuid.uuid4().hex[:8]}"
    a = Hub(make_settings(servers, tmp_path / "a", db, trigger_sync_interval_s=3600))
    b = Hub(make_settings(servers, tmp_path / "b", db, trigger_sync_interval_s=3600, metrics_public=True))
    await a.start()
    await b.start()
    try:
        await eventually(lambda: _following(a, b))
        yield a, b
    finally:
        await a.stop()
        await b.stop()


async def _following(a: Hub, b: Hub) -> bool:
    return a.tokens.cache_enabled and b.tokens.cache_enabled


async def test_revocation_is_immediate_on_another_instance(pair: tuple[Hub, Hub]) -> None:
    a, b = pair
    async with aiohttp.ClientSession() as http:
        api_a = Api(http, a.url)
        for round_ in range(3):
            token = (await api_a.ok("POST", "/v1/tokens", {"name": f"rev-{round_}", "scope": "deploy"}))["token"]
            on_b = Api(http, b.url, token)
            for _ in range(3):  # cached on b now
                assert (await on_b.call("GET", "/v1/functions"))[0] == 200
            await api_a.ok("DELETE", f"/v1/tokens/rev-{round_}")
            status, body = await on_b.call("GET", "/v1/functions")  # the very next request
            assert status == 401, body
        async with http.get(b.url + "/metrics") as r:  # HUB_METRICS_PUBLIC=true on b
            assert r.status == 200


def _trailing(hub: Hub) -> None:
    """``hub``'s reader hands credential changes on half a second late (a busy instance)."""
    loop = asyncio.get_running_loop()
    real = hub.tokens.changed

    def late(change: Any) -> None:
        loop.call_later(0.5, real, change)

    hub.tokens.changed = late  # type: ignore[method-assign]


async def _cached_on(api_a: Api, b: Hub, name: str) -> Api:
    """A deploy token made through ``api_a``, used on ``b`` until b has it cached."""
    token = (await api_a.ok("POST", "/v1/tokens", {"name": name, "scope": "deploy"}))["token"]
    on_b = Api(api_a.session, b.url, token)
    await eventually(lambda: _status_is(on_b, 200))  # the creation reached b: now cached there
    return on_b


async def test_revocation_waits_for_an_instance_whose_stream_trails(pair: tuple[Hub, Hub]) -> None:
    """b's reader sees deletions half a second late: the DELETE on a answers only once b has
    acknowledged, so b's very next request is refused all the same."""
    a, b = pair
    _trailing(b)
    async with aiohttp.ClientSession() as http:
        api_a = Api(http, a.url)
        on_b = await _cached_on(api_a, b, "late")
        await api_a.ok("DELETE", "/v1/tokens/late")
        assert (await on_b.call("GET", "/v1/functions"))[0] == 401
        acks = await a.store.db.credential_acks.find({"_id": f"tokens/late/{b.instance_id}"}).to_list(None)
        assert len(acks) == 1


async def test_revocation_waits_for_peers_while_its_own_stream_is_down(pair: tuple[Hub, Hub]) -> None:
    """a's config watch is down (it caches nothing and its stream tells it nothing), b's trails:
    a DELETE on a still answers only once b has acknowledged the deletion; two DELETEs of one
    token at once: one deletes (and waits), the other finds nothing."""
    a, b = pair
    _trailing(b)
    async with aiohttp.ClientSession() as http:
        api_a = Api(http, a.url)
        on_b = await _cached_on(api_a, b, "blind")
        a.tokens.following(False)  # what the watch does when its stream fails
        statuses = await asyncio.gather(*(api_a.call("DELETE", "/v1/tokens/blind") for _ in range(2)))
        assert sorted(status for status, _ in statuses) == [200, 404]
        assert (await on_b.call("GET", "/v1/functions"))[0] == 401


async def test_revocation_names_an_instance_that_never_acknowledges(
        pair: tuple[Hub, Hub], monkeypatch: pytest.MonkeyPatch) -> None:
    """A heartbeat without a process behind it (killed a moment ago): the revocation is done,
    answers after REVOKE_WAIT_S and says which instance did not acknowledge it."""
    a, _ = pair
    monkeypatch.setattr(credentials, "REVOKE_WAIT_S", 0.5)
    await a.store.db.instances.insert_one({"_id": "ghost", "nonce": "gone", "last_seen": a.store.now()})
    async with aiohttp.ClientSession() as http:
        api_a = Api(http, a.url)
        token = (await api_a.ok("POST", "/v1/tokens", {"name": "haunted", "scope": "read"}))["token"]
        with structlog.testing.capture_logs() as logs:
            # made anew inside the capture: the module's own may be bound to the processor list
            # of an earlier logs.configure and log past it (see test_triggers_everywhere)
            monkeypatch.setattr(credentials, "log", structlog.get_logger("hub.catalog.credentials"))
            await api_a.ok("DELETE", "/v1/tokens/haunted")
        assert (await Api(http, a.url, token).call("GET", "/v1/functions"))[0] == 401
    warned = [e for e in logs if e.get("name") == "haunted" and "acknowledged" in e["event"]]
    assert [e["instances"] for e in warned] == [["ghost"]]


async def _status_is(api: Api, status: int) -> bool:
    return (await api.call("GET", "/v1/functions"))[0] == status


async def test_guessing_costs_the_guesser_not_the_hub(hub: Hub, api: Api, http: aiohttp.ClientSession) -> None:
    """Wrong tokens: a string that cannot be a token is refused without a MongoDB read; one of the
    right form is read once, then refused from memory (while the watch follows the collection).
    Scoped tokens are found by their SHA-256, so response times tell nothing about stored ones;
    HUB_API_TOKEN is compared with hmac.compare_digest."""
    reads = 0
    real = hub.tokens.coll

    class Counting:  # the tokens collection, counting the reads a lookup makes
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        async def find_one(self, *args: Any, **kwargs: Any) -> Any:
            nonlocal reads
            reads += 1
            return await real.find_one(*args, **kwargs)

    hub.tokens.coll = Counting()  # type: ignore[assignment]
    try:
        await eventually(lambda: _value(hub.tokens.cache_enabled))
        for _ in range(5):
            assert (await _status(http, api.base, "GET", "/v1/functions", "not-a-token"))[0] == 401
        assert reads == 0
        guess = "thk_" + "Z" * 43
        for _ in range(5):
            assert (await _status(http, api.base, "GET", "/v1/functions", guess))[0] == 401
        assert reads == 1
    finally:
        hub.tokens.coll = real


async def _value(value: Any) -> Any:
    return value
