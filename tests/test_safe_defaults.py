"""Safe defaults (issue 16, section 5): no built-in tokens, function URLs on their own origin,
headers that act on the whole origin never come from a function, a token route's Authorization
never reaches the function, slow and greedy clients are cut off, the webhook token is never shown
or stored, and the SNS confirmation follows no redirect."""

from __future__ import annotations

import asyncio
import json
import stat
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from hub.app import Hub
from hub.settings import MIN_TOKEN_CHARS, Settings
from hub.web import s3_webhook
from tests.hubfixtures import API_TOKEN, WEBHOOK_TOKEN, Api, eventually, make_settings

HTML = """
def handler(event, context):
    return {'statusCode': 200, 'headers': {'Content-Type': 'text/html', 'Service-Worker-Allowed': '/',
            'Clear-Site-Data': '"*"', 'X-Kept': 'yes'},
            'body': '<script>fetch("/v1/functions")</script>'}
"""
HEADERS = "def handler(event, context):\n    return {'statusCode': 200, 'body': __import__('json').dumps(event['data']['headers'])}\n"


# -- tokens (no server) ----------------------------------------------------------------------
def test_unset_tokens_are_generated_once_into_the_data_dir(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path, api_token=None, webhook_token=None)
    made = s.ensure_tokens()
    assert sorted(p.name for p in made) == ["api-token", "webhook-token"]
    assert s.api_token and len(s.api_token) >= MIN_TOKEN_CHARS and s.webhook_token != s.api_token
    for path in made:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = Settings(data_dir=tmp_path, api_token=None, webhook_token=None)
    assert again.ensure_tokens() == []  # read back, not made anew
    assert (again.api_token, again.webhook_token) == (s.api_token, s.webhook_token)


@pytest.mark.parametrize("field,env", [("api_token", "HUB_API_TOKEN"), ("webhook_token", "HUB_WEBHOOK_TOKEN")])
@pytest.mark.parametrize("value", ["", "short", "x" * (MIN_TOKEN_CHARS - 1)])
def test_empty_or_short_tokens_are_refused(tmp_path: Path, field: str, env: str, value: str) -> None:
    values: dict[str, Any] = {"api_token": API_TOKEN, "webhook_token": WEBHOOK_TOKEN, field: value}
    with pytest.raises(ValueError) as err:
        Settings(data_dir=tmp_path, **values).ensure_tokens()
    message = str(err.value)
    assert env in message and str(MIN_TOKEN_CHARS) in message and "secrets.token_urlsafe" in message


def test_the_hub_refuses_to_start_with_a_short_token(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="HUB_API_TOKEN"):
        Hub(Settings(data_dir=tmp_path, api_token="dev-token", webhook_token=WEBHOOK_TOKEN))


def test_an_unset_expected_token_never_matches() -> None:
    from hub.web.wire import token_ok

    assert not token_ok("", None) and not token_ok(None, None) and not token_ok("", "")
    assert token_ok(API_TOKEN, API_TOKEN) and not token_ok(API_TOKEN + "x", API_TOKEN)


# -- listeners and headers (real servers) ----------------------------------------------------
@pytest.fixture(scope="module")
async def tight_hub(servers: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Hub]:
    """A hub with short head/body timeouts and a small budget for public bodies."""
    hub = Hub(make_settings(servers, tmp_path_factory.mktemp("hub-tight"), f"tight_{uuid.uuid4().hex[:8]}",
                            http_head_timeout_s=1.0, http_body_timeout_s=1.0, public_body_budget=4096))
    await hub.start()
    yield hub
    await hub.stop()


@pytest.mark.integration
async def test_function_urls_have_their_own_origin(api: Api, unique: str) -> None:
    await api.put_function(f"html-{unique}", HTML)
    trig = await api.put_trigger(f"html-{unique}", f"html-{unique}",
                                 {"type": "http", "path": f"/h{unique}", "auth": "none"})
    assert trig["url"] == f"{api.fn_base}/fn/h{unique}"  # the full URL, as Lambda's FunctionUrl
    assert (await api.ok("GET", f"/v1/triggers/html-{unique}"))["url"] == trig["url"]
    assert api.fn_base != api.base  # another port: another origin than the console and the admin API
    async with api.session.get(trig["url"]) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/html")
        assert r.headers["X-Kept"] == "yes" and r.headers["X-Content-Type-Options"] == "nosniff"
        assert "Service-Worker-Allowed" not in r.headers and "Clear-Site-Data" not in r.headers
    # not served on the admin listener, with or without the admin token
    for headers, statuses in (({}, {401, 404}), ({"Authorization": f"Bearer {API_TOKEN}"}, {404})):
        async with api.session.get(f"{api.base}/fn/h{unique}", headers=headers) as r:
            assert r.status in statuses and r.content_type == "application/json"
            assert "<script>" not in await r.text()
    # and the function listener serves nothing else
    async with api.session.get(f"{api.fn_base}/v1/functions", headers={"Authorization": f"Bearer {API_TOKEN}"}) as r:
        assert r.status == 404 and r.content_type == "application/json"
    async with api.session.get(f"{api.fn_base}/") as r:
        assert r.status == 404


@pytest.mark.integration
async def test_every_admin_answer_says_nosniff(api: Api) -> None:
    for path in ("/healthz", "/v1/functions", "/", "/v1/nothing-here"):
        async with api.session.get(api.base + path, headers=api.headers) as r:
            assert r.headers.get("X-Content-Type-Options") == "nosniff", path


@pytest.mark.integration
async def test_a_token_route_does_not_hand_the_caller_authorization_to_the_function(api: Api, unique: str) -> None:
    await api.put_function(f"hdr-{unique}", HEADERS)
    trig = await api.put_trigger(f"hdr-{unique}", f"hdr-{unique}",
                                 {"type": "http", "path": f"/t{unique}", "auth": "token"})
    token = trig["token"]
    async with api.session.get(trig["url"], headers={"Authorization": f"Bearer {token}", "X-Other": "1"}) as r:
        assert r.status == 200
        seen = json.loads(await r.text())
    assert seen.get("x-other") == "1" and "authorization" not in seen
    # the record follows the answer (the function-URL writer lingers): read it once it is there,
    # so that the check cannot pass on an empty list
    records = await eventually(lambda: api.invocations(trigger=f"hdr-{unique}"))
    assert "x-other" in json.dumps(records) and token not in json.dumps(records)
    # an auth "none" route is the function's own business: it sees what the caller sent
    await api.put_trigger(f"hdr2-{unique}", f"hdr-{unique}", {"type": "http", "path": f"/n{unique}", "auth": "none"})
    async with api.session.get(f"{api.fn_base}/fn/n{unique}", headers={"Authorization": "Basic abc"}) as r:
        assert json.loads(await r.text())["authorization"] == "Basic abc"


async def _closed_by_server(host: str, port: int, send: bytes) -> bytes:
    """Send ``send`` and never finish; what the server says before it closes (b"" if nothing)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(send)
        await writer.drain()
        # bounded by the test, far above the hub's 1 s: the server must close, not the client
        return await asyncio.wait_for(reader.read(), 60)
    finally:
        writer.close()


@pytest.mark.integration
@pytest.mark.parametrize("listener", ["admin", "fn"])
async def test_a_slow_head_is_cut_off(tight_hub: Hub, listener: str) -> None:
    port = tight_hub.port if listener == "admin" else tight_hub.fn_port
    assert port is not None
    said = await _closed_by_server("127.0.0.1", port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    assert said == b""  # closed without an answer: no request was ever complete
    said = await _closed_by_server("127.0.0.1", port, b"")  # a connection that sends nothing
    assert said == b""


@pytest.mark.integration
async def test_a_slow_body_gets_408(tight_hub: Hub, unique: str) -> None:
    assert tight_hub.port is not None
    head = (f"PUT /v1/triggers/slow-{unique} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_TOKEN}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{").encode()
    said = await _closed_by_server("127.0.0.1", tight_hub.port, head)
    status_line, _, rest = said.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 408"), said[:200]
    assert b'"error"' in rest and b"did not arrive" in rest


@pytest.mark.integration
async def test_public_bodies_over_the_budget_get_503_with_retry_after(tight_hub: Hub, unique: str) -> None:
    async with aiohttp.ClientSession() as session:
        api = Api(session, tight_hub.url, fn_base=tight_hub.fn_url)
        await api.put_function(f"len-{unique}", "def handler(event, context):\n    return 'ok'\n")
        await api.put_trigger(f"len-{unique}", f"len-{unique}",
                              {"type": "http", "path": f"/b{unique}", "methods": ["POST"], "auth": "none"})
        async with session.post(f"{tight_hub.fn_url}/fn/b{unique}", data=b"x" * 1000) as r:
            assert r.status == 200  # within the budget
        async with session.post(f"{tight_hub.fn_url}/fn/b{unique}", data=b"x" * 5000) as r:
            assert r.status == 503 and r.headers["Retry-After"] == "1"
        async with session.post(f"{tight_hub.url}/v1/sources/s3/events?token={WEBHOOK_TOKEN}", data=b"x" * 5000) as r:
            assert r.status == 503 and r.headers["Retry-After"] == "1"
            assert (await r.json())["error"].startswith("the hub is receiving too many")


@pytest.mark.integration
async def test_the_webhook_token_is_never_stored_or_shown(hub: Hub, api: Api, unique: str, servers: dict[str, Any]) -> None:
    await api.put_function(f"s3-{unique}", "def handler(event, context):\n    return 1\n")
    bucket = f"tok-{unique}"
    servers["rgw"].s3_client().create_bucket(Bucket=bucket)
    trig = await api.put_trigger(f"s3-{unique}", f"s3-{unique}", {"type": "s3", "bucket": bucket})
    assert trig["notifications"]["configured"] is True
    shown = json.dumps([trig, await api.ok("GET", f"/v1/triggers/s3-{unique}"), await api.ok("GET", "/v1/triggers")])
    assert WEBHOOK_TOKEN not in shown
    stored = await hub.store.get_trigger(f"s3-{unique}")
    assert stored is not None and WEBHOOK_TOKEN not in json.dumps(stored, default=str)
    await api.ok("DELETE", f"/v1/triggers/s3-{unique}")


@pytest.mark.integration
async def test_sns_confirmation_follows_no_redirect(monkeypatch: pytest.MonkeyPatch) -> None:
    """A SubscribeURL that passes the AWS check but answers a redirect must not take the hub to
    the redirect's target (a local server stands in for both)."""
    hits: list[str] = []

    async def redirect(request: web.Request) -> web.Response:
        hits.append("sns")
        raise web.HTTPFound("/elsewhere")

    async def elsewhere(request: web.Request) -> web.Response:
        hits.append("elsewhere")
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/confirm", redirect)
    app.router.add_get("/elsewhere", elsewhere)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    monkeypatch.setattr(s3_webhook, "is_aws_sns_url", lambda url: True)
    try:
        from connectors.s3_records import SubscriptionConfirmation
        from hub.web.wire import ApiError

        confirm = SubscriptionConfirmation(f"http://127.0.0.1:{port}/confirm", "arn:aws:sns:us-east-1:1:t", "tok")
        with pytest.raises(ApiError) as err:
            await s3_webhook._confirm_sns(confirm)
        assert err.value.status == 502 and hits == ["sns"]
    finally:
        await runner.cleanup()


@pytest.mark.integration
@pytest.mark.parametrize("head", [
    b"GET /healthz?" + b"q" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",       # a 100 KB URL
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 100_000 + b"\r\n\r\n",  # a 100 KB header
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Nul: a\x00b\r\n\r\n",                   # a NUL in a header
], ids=["long-url", "long-header", "nul-header"])
async def test_a_malformed_head_gets_a_json_4xx_without_an_echo(tight_hub: Hub, head: bytes) -> None:
    for port in (tight_hub.port, tight_hub.fn_port):
        assert port is not None
        said = await _closed_by_server("127.0.0.1", port, head)
        status_line, _, rest = said.partition(b"\r\n")
        assert status_line.split()[1].startswith(b"4"), said[:300]
        headers, _, body = rest.partition(b"\r\n\r\n")
        assert b"application/json" in headers.lower() and b"nosniff" in headers.lower()
        error = json.loads(body)["error"]
        assert error.startswith("bad request:") and "qqqq" not in error and "bbbb" not in error
