"""HTTP triggers (function URLs under /fn/) against a real hub, real MongoDB and the real sandbox:
routing, the event, the response mapping, the error mapping, token auth and rotation, CORS, the
invocation records, and a hypothesis fuzz of the public routes."""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import os
import string
import urllib.parse
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pymongo
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from hub.app import Hub
from hub.web import function_urls
from hub.web.function_urls import MAX_REQUEST_BODY, REQUEST_ID_HEADER, RouteTable, split_path, to_response
from hub.intake.router import Trigger
from tests.hubfixtures import API_TOKEN, Api, eventually, make_settings

ECHO = "def handler(event, context):\n    return event\n"
MIRROR = """
def handler(event, context):
    d = event['data']
    return {'statusCode': 200, 'body': d['body'], 'isBase64Encoded': d['isBase64Encoded'],
            'headers': {'Content-Type': d['headers'].get('content-type', 'application/octet-stream')}}
"""
LENGTH = """
import base64

def handler(event, context):
    d = event['data']
    body = base64.b64decode(d['body']) if d['isBase64Encoded'] else d['body'].encode()
    return {'n': len(body)}
"""
SHAPES = """
import os

CASES = {
    'created': {'statusCode': 201, 'headers': {'Content-Type': 'text/plain', 'X-Num': 7, 'X-Flag': True},
                'multiValueHeaders': {'X-Multi': ['a', 'b']}, 'cookies': ['a=1; Path=/', 'b=2; HttpOnly'],
                'body': 'made'},
    'nobody': {'statusCode': 202},
    'nocontent': {'statusCode': 204, 'body': 'ignored'},
    'teapot': {'statusCode': 418, 'body': '{"short": "stout"}'},
    'list': [1, 'two', None],
    'string': 'just text',
    'none': None,
    'badstatus': {'statusCode': 'abc'},
    'lowstatus': {'statusCode': 100},
    'boolstatus': {'statusCode': True},
    'crlf': {'statusCode': 200, 'headers': {'X-Evil': 'a\\r\\nSet-Cookie: pwned=1'}},
    'crlfcookie': {'statusCode': 200, 'cookies': ['a=1\\r\\nX-Evil: 1']},
    'badname': {'statusCode': 200, 'headers': {'Bad Name': 'x'}},
    'badb64': {'statusCode': 200, 'body': '***', 'isBase64Encoded': True},
    'dictbody': {'statusCode': 200, 'body': {'a': 1}},
}


def handler(event, context):
    case = event['data']['pathParameters']['case']
    if case == 'raise':
        raise ValueError('secret detail in /var/task/main.py')
    if case == 'exit':
        os._exit(3)
    if case == 'huge':
        return {'statusCode': 200, 'body': 'x' * (6 * 1024 * 1024 + 1)}
    return CASES[case]
"""
SLEEP = """
import time

def handler(event, context):
    time.sleep(float(event['data']['queryStringParameters'].get('s', '0')))
    return {'slept': True}
"""


async def fn(api: Api, method: str, path: str, **kw: Any) -> tuple[int, CIMultiDict[str], bytes]:
    """A /fn request as a public client sends it: no admin token."""
    async with api.session.request(method, api.fn_base + "/fn" + path, **kw) as r:
        return r.status, CIMultiDict(r.headers), await r.read()


def public(api: Api) -> Api:
    return Api(api.session, api.base, token="", fn_base=api.fn_base)


async def http_trigger(api: Api, name: str, function: str, path: str, **source: Any) -> dict[str, Any]:
    return dict(await api.put_trigger(name, function, {"type": "http", "path": path, **source}))


def assert_safe_error(status: int, headers: CIMultiDict[str], body: bytes, expected: int) -> dict[str, Any]:
    assert status == expected, (status, body[:500])
    doc = json.loads(body)
    assert doc["requestId"] == headers[REQUEST_ID_HEADER], doc
    text = body.decode()
    for leak in ("Traceback", "secret detail", "/var/task", "ValueError", "File \""):
        assert leak not in text, text
    return dict(doc)


# -- routing ---------------------------------------------------------------------------------
def test_route_precedence() -> None:
    def t(name: str, path: str) -> Trigger:
        return Trigger(name=name, function="f", source={"type": "http", "path": path, "methods": ["ANY"], "auth": "none"})

    table = RouteTable([t("param", "/a/{x}"), t("literal", "/a/b"), t("greedy", "/a/{rest+}"),
                        t("deep", "/a/{x}/c"), t("left", "/{y}/b/c"), t("root", "/")])
    assert [r.trigger.name for r in table.candidates(split_path("/a/b"))] == ["literal", "param", "greedy"]
    assert [r.trigger.name for r in table.candidates(split_path("/a/b/c"))] == ["deep", "greedy", "left"]
    assert [r.trigger.name for r in table.candidates(split_path("/"))] == ["root"]
    assert [r.trigger.name for r in table.candidates(split_path("/a"))] == []  # a greedy needs a segment
    assert split_path("/a%2Fb//c/") == ["a/b", "c"]


def test_lookups_are_remembered_per_table_and_bounded() -> None:
    """``RouteTable.lookup`` answers as the trie does, per method, and its memo stays bounded
    (client-made paths cannot grow it) and dies with the table (a router reload builds a new one)."""
    def t(name: str, path: str, methods: list[str]) -> Trigger:
        return Trigger(name=name, function="f", source={"type": "http", "path": path, "methods": methods, "auth": "none"})

    table = RouteTable([t("get", "/a/{x}", ["GET"]), t("any", "/a/{rest+}", ["ANY"])])
    first = table.lookup("GET", "/a/%2Fb")
    assert (first.segments, [r.trigger.name for r in first.matched]) == (["a", "/b"], ["get", "any"])
    assert first.route is not None and first.route.trigger.name == "get"
    assert table.lookup("GET", "/a/%2Fb") is first  # remembered
    post = table.lookup("POST", "/a/%2Fb")
    assert post.route is not None and post.route.trigger.name == "any"  # the method is part of the key
    missing = table.lookup("GET", "/nothing/here")
    assert (missing.matched, missing.route) == ([], None)
    for i in range(function_urls.MEMO_ENTRIES + 10):
        table.lookup("GET", f"/a/{i}")
    assert len(table._memo) <= function_urls.MEMO_ENTRIES
    long_path = "/a/" + "x" * function_urls.MEMO_PATH_CHARS
    assert table.lookup("GET", long_path).route is not None
    assert ("GET", long_path) not in table._memo  # long paths are answered, not kept


def test_the_event_goes_to_orjson_only_as_the_stdlib_would_write_it() -> None:
    """``HttpEvent.prepared()`` is what the pool writes with orjson: the same JSON values as the
    stdlib's encoding of ``to_cloudevent()``; a lone surrogate (header bytes that are not UTF-8)
    leaves the event to the stdlib encoder."""
    data = {"version": "2.0", "headers": {"x-text": "h\u00e9 \u2603 \U0001f600", "x-ctl": "a\tb\x01"},
            "cookies": ["a=1", "b=2"], "queryStringParameters": {"q": "1,2"}, "pathParameters": {},
            "requestContext": {"timeEpoch": 1_765_000_000_000, "http": {"method": "GET"}},
            "body": "{\"k\": [1, 2]}", "isBase64Encoded": False}
    event = function_urls.HttpEvent(id="r1", source="http://t", type="http.request", subject="/p", time="t0",
                                    data=data)
    prepared = event.prepared()
    assert prepared is not None
    assert json.loads(orjson.dumps(prepared)) == json.loads(json.dumps(event.to_cloudevent())) == {
        **event.to_cloudevent(), "data": data}
    odd = function_urls.HttpEvent(id="r2", source="http://t", type="http.request", subject="/p", time="t0",
                                  data={"headers": {"x-bytes": b"\xff".decode("utf-8", "surrogateescape")}})
    assert odd.prepared() is None


def test_response_mapping_rules() -> None:
    status, headers, body = to_response({"statusCode": 200, "headers": {"Content-Length": "1", "Connection": "close",
                                                                         "X-Hub-Request-Id": "forged", "X-A": "1"},
                                         "multiValueHeaders": {"x-a": ["2", "3"]}, "body": "hi"})
    assert (status, body) == (200, b"hi")
    assert list(headers.items()) == [("x-a", "2"), ("x-a", "3"), ("Content-Type", "application/json")]
    for bad in ({"statusCode": 99}, {"statusCode": 600}, {"statusCode": 200.0}, {"statusCode": 200, "headers": []},
                {"statusCode": 200, "cookies": "a=1"}, {"statusCode": 200, "headers": {"X": "a\nb"}},
                {"statusCode": 200, "headers": {"X": {"a": 1}}}, {"statusCode": 200, "body": "x\ud800"}):
        with pytest.raises(ValueError):
            to_response(bad)


@pytest.mark.integration
async def test_methods_and_path_parameters_are_routed(api: Api, unique: str) -> None:
    p = f"/r{unique}"
    await api.put_function(f"echo-{unique}", ECHO)
    for name, path, methods in [("get", "/orders/{id}", ["GET"]), ("post", "/orders/{order_id}", ["POST"]),
                                ("new", "/orders/new", ["ANY"]), ("files", "/files/{path+}", ["GET", "HEAD"])]:
        await http_trigger(api, f"{name}-{unique}", f"echo-{unique}", p + path, methods=methods, auth="none")

    async def call(method: str, path: str) -> dict[str, Any]:
        status, headers, body = await fn(api, method, p + path)
        assert status == 200, (method, path, status, body)
        event = json.loads(body)
        assert event["id"] == headers[REQUEST_ID_HEADER] == event["data"]["requestContext"]["requestId"]
        return dict(event)

    event = await call("GET", "/orders/42")
    assert event["source"] == f"http://get-{unique}"
    assert event["data"]["routeKey"] == f"GET {p}/orders/{{id}}" and event["data"]["pathParameters"] == {"id": "42"}
    event = await call("POST", "/orders/42")
    assert event["source"] == f"http://post-{unique}" and event["data"]["pathParameters"] == {"order_id": "42"}
    for method in ("GET", "DELETE", "PATCH"):  # the literal route wins over {id}, for every method
        event = await call(method, "/orders/new")
        assert event["source"] == f"http://new-{unique}" and event["data"]["routeKey"] == f"ANY {p}/orders/new"
    event = await call("GET", "/orders/a%20b%2Fc")
    assert event["data"]["pathParameters"] == {"id": "a b/c"} and event["subject"] == f"{p}/orders/a%20b%2Fc"
    event = await call("GET", "/files/a/b/c.txt")
    assert event["data"]["pathParameters"] == {"path": "a/b/c.txt"}
    status, headers, body = await fn(api, "HEAD", p + "/files/x")
    assert status == 200 and body == b""

    status, headers, body = await fn(api, "DELETE", p + "/orders/42")
    assert_safe_error(status, headers, body, 405)
    assert headers["Allow"] == "GET, POST"
    for path in ("/files", "/orders", "/orders/42/more", "/nothing", ""):
        status, headers, body = await fn(api, "GET", p + path)
        assert_safe_error(status, headers, body, 404)
    # /fn is never the admin API, with or without the admin token
    status, headers, body = await fn(api, "GET", "/v1/functions", headers={"Authorization": f"Bearer {API_TOKEN}"})
    assert_safe_error(status, headers, body, 404)


@pytest.mark.integration
async def test_the_event_carries_query_headers_cookies_and_body(api: Api, unique: str) -> None:
    p = f"/e{unique}"
    await api.put_function(f"echo-{unique}", ECHO)
    await http_trigger(api, f"ev-{unique}", f"echo-{unique}", p + "/items/{id}", methods=["POST"], auth="none")
    headers = CIMultiDict([("X-Multi", "one"), ("X-Multi", "two"), ("Cookie", "a=1; b=2"), ("Cookie", "c=3"),
                           ("User-Agent", "hub-test/1"), ("Content-Type", "application/json")])
    status, reply_headers, body = await fn(api, "POST", p + "/items/7?x=1&y=two&x=3&empty=&sp=a%20b",
                                           headers=headers, data=b'{"n": 1}')
    assert status == 200, body
    event = json.loads(body)
    assert event["specversion"] == "1.0" and event["type"] == "http.request"
    assert event["subject"] == f"{p}/items/7"
    d = event["data"]
    assert d["version"] == "2.0" and d["routeKey"] == f"POST {p}/items/{{id}}"
    assert d["rawPath"] == f"{p}/items/7" and d["rawQueryString"] == "x=1&y=two&x=3&empty=&sp=a%20b"
    assert d["queryStringParameters"] == {"x": "1,3", "y": "two", "empty": "", "sp": "a b"}
    assert d["pathParameters"] == {"id": "7"}
    assert d["cookies"] == ["a=1", "b=2", "c=3"] and "cookie" not in d["headers"]
    assert d["headers"]["x-multi"] == "one,two" and d["headers"]["user-agent"] == "hub-test/1"
    assert all(k == k.lower() for k in d["headers"])
    assert d["body"] == '{"n": 1}' and d["isBase64Encoded"] is False
    ctx = d["requestContext"]
    assert ctx["requestId"] == reply_headers[REQUEST_ID_HEADER] == event["id"]
    assert ctx["routeKey"] == d["routeKey"] and ctx["stage"] == "$default"
    assert isinstance(ctx["timeEpoch"], int) and ctx["time"].endswith("+0000")
    assert ctx["http"] == {"method": "POST", "path": f"{p}/items/7", "protocol": "HTTP/1.1",
                           "sourceIp": "127.0.0.1", "userAgent": "hub-test/1"}
    assert ctx["domainName"].startswith("127.0.0.1:")


@pytest.mark.integration
async def test_binary_bodies_round_trip(api: Api, unique: str) -> None:
    p = f"/b{unique}"
    await api.put_function(f"mirror-{unique}", MIRROR)
    await api.put_function(f"echo-{unique}", ECHO)
    await http_trigger(api, f"mirror-{unique}", f"mirror-{unique}", p + "/mirror", auth="none")
    await http_trigger(api, f"echo-{unique}", f"echo-{unique}", p + "/echo", auth="none")
    blob = bytes(range(256)) * 64 + os.urandom(4096)
    for content_type, data in [("application/octet-stream", blob), ("image/png", b"\x89PNG\r\n\x1a\n\x00\xff"),
                               ("text/plain", b"\xff\xfe not utf-8"), ("text/plain; charset=utf-8", "héllo ✓".encode())]:
        status, headers, body = await fn(api, "POST", p + "/mirror", data=data, headers={"Content-Type": content_type})
        assert status == 200 and body == data and headers["Content-Type"] == content_type, (content_type, status)
    # what the function sees: text for UTF-8 text types, base64 otherwise
    status, _, body = await fn(api, "PUT", p + "/echo", data="héllo".encode(), headers={"Content-Type": "text/csv"})
    assert json.loads(body)["data"]["body"] == "héllo" and json.loads(body)["data"]["isBase64Encoded"] is False
    status, _, body = await fn(api, "PUT", p + "/echo", data=b"abc", headers={"Content-Type": "application/zip"})
    d = json.loads(body)["data"]
    assert d["isBase64Encoded"] is True and base64.b64decode(d["body"]) == b"abc"
    status, _, body = await fn(api, "GET", p + "/echo")
    assert json.loads(body)["data"]["body"] == "" and json.loads(body)["data"]["isBase64Encoded"] is False


@pytest.mark.integration
async def test_status_headers_and_cookies_are_mapped(api: Api, unique: str) -> None:
    p = f"/m{unique}"
    await api.put_function(f"shapes-{unique}", SHAPES)
    await http_trigger(api, f"shapes-{unique}", f"shapes-{unique}", p + "/{case}", auth="none")
    status, headers, body = await fn(api, "GET", p + "/created")
    assert status == 201 and body == b"made" and headers["Content-Type"] == "text/plain"
    assert headers["X-Num"] == "7" and headers["X-Flag"] == "true"
    assert headers.getall("X-Multi") == ["a", "b"]
    assert headers.getall("Set-Cookie") == ["a=1; Path=/", "b=2; HttpOnly"]
    status, headers, body = await fn(api, "GET", p + "/nobody")
    assert status == 202 and body == b""
    status, headers, body = await fn(api, "GET", p + "/nocontent")
    assert status == 204 and body == b""
    status, headers, body = await fn(api, "GET", p + "/teapot")
    assert status == 418 and json.loads(body) == {"short": "stout"} and headers["Content-Type"] == "application/json"
    for case, expected in [("list", [1, "two", None]), ("string", "just text"), ("none", None)]:
        status, headers, body = await fn(api, "GET", f"{p}/{case}")
        assert status == 200 and headers["Content-Type"] == "application/json" and json.loads(body) == expected
        assert headers[REQUEST_ID_HEADER]


async def _record(api: Api, invocation_id: str) -> Any:
    """A function URL's record: written after the answer (it may linger, RECORD_LINGER_S)."""
    async def written() -> Any:
        status, body = await api.call("GET", f"/v1/invocations/{invocation_id}")
        return body if status == 200 else None

    return await eventually(written, timeout=10, interval=0.02)


@pytest.mark.integration
async def test_function_failures_are_502_without_details(api: Api, unique: str) -> None:
    p = f"/f{unique}"
    await api.put_function(f"shapes-{unique}", SHAPES)
    await http_trigger(api, f"shapes-{unique}", f"shapes-{unique}", p + "/{case}", auth="none")
    for case in ("raise", "exit", "huge", "nosuchcase", "badstatus", "lowstatus", "boolstatus", "crlf",
                 "crlfcookie", "badname", "badb64", "dictbody"):
        status, headers, body = await fn(api, "GET", f"{p}/{case}")
        doc = assert_safe_error(status, headers, body, 502)
        assert doc["message"] == "Internal Server Error", (case, doc)
        assert "pwned" not in str(headers) and "X-Evil" not in headers
        if case == "raise":  # the details are in the invocation record, for the admin
            record = await _record(api, doc["requestId"])
            assert record["status"] == "failed" and "secret detail" in record["error"]["message"]
            assert "Traceback" in record["error"]["traceback"] and record["trigger"] == f"shapes-{unique}"


@pytest.mark.integration
async def test_timeout_is_504(api: Api, unique: str) -> None:
    p = f"/t{unique}"
    await api.put_function(f"sleep-{unique}", SLEEP, timeout_s=0.5)
    await http_trigger(api, f"sleep-{unique}", f"sleep-{unique}", p + "/sleep", auth="none")
    status, headers, body = await fn(api, "GET", p + "/sleep?s=0")
    assert status == 200
    status, headers, body = await fn(api, "GET", p + "/sleep?s=5")
    doc = assert_safe_error(status, headers, body, 504)
    record = await _record(api, doc["requestId"])
    assert record["status"] == "timeout"


@pytest.fixture(scope="module")
async def small_queue_hub(servers: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Api]:
    """A hub whose functions may have one invocation waiting, not a thousand."""
    hub = Hub(make_settings(servers, tmp_path_factory.mktemp("hub-q1"), f"httpq_{uuid.uuid4().hex[:8]}",
                            max_queue_per_function=1))
    await hub.start()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        yield Api(session, hub.url, fn_base=hub.fn_url)
    await hub.stop()


@pytest.mark.integration
async def test_throttled_is_429(small_queue_hub: Api, unique: str) -> None:
    api = small_queue_hub
    await api.put_function(f"slow-{unique}", SLEEP, max_concurrency=1)
    await http_trigger(api, f"slow-{unique}", f"slow-{unique}", f"/q{unique}", auth="none")
    results = await asyncio.gather(*(fn(api, "GET", f"/q{unique}?s=2") for _ in range(5)))
    statuses = Counter(status for status, _, _ in results)
    assert statuses[200] >= 1 and statuses[429] >= 2, statuses  # one runs, one may wait, the rest are refused
    assert set(statuses) <= {200, 429}, statuses
    for status, headers, body in results:
        if status == 429:
            assert_safe_error(status, headers, body, 429)
            assert headers["Retry-After"] == "1"
    throttled = await api.wait_invocations(statuses[429], trigger=f"slow-{unique}", status="throttled")
    assert len(throttled) == statuses[429]


@pytest.mark.integration
async def test_request_body_over_6_mb_is_413(api: Api, unique: str) -> None:
    p = f"/l{unique}"
    await api.put_function(f"len-{unique}", LENGTH, memory_mb=256)
    await http_trigger(api, f"len-{unique}", f"len-{unique}", p + "/len", auth="none")
    status, headers, body = await fn(api, "POST", p + "/len", data=b"\x00" * MAX_REQUEST_BODY)
    assert status == 200 and json.loads(body) == {"n": MAX_REQUEST_BODY}
    status, headers, body = await fn(api, "POST", p + "/len", data=b"\x00" * (MAX_REQUEST_BODY + 1))
    assert_safe_error(status, headers, body, 413)

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: refused once the limit is passed
        for _ in range(7):
            yield b"\x00" * (1024 * 1024)

    status, headers, body = await fn(api, "POST", p + "/len", data=chunks())
    assert_safe_error(status, headers, body, 413)


# -- auth ------------------------------------------------------------------------------------
@pytest.mark.integration
async def test_token_auth_and_rotation(api: Api, unique: str) -> None:
    p = f"/a{unique}"
    name = f"sec-{unique}"
    await api.put_function(f"echo-{unique}", ECHO)
    created = await http_trigger(api, name, f"echo-{unique}", p + "/{id}")  # auth "token" is the default
    token = created["token"]
    assert token and "token_hash" not in created

    async def get(auth: str | None) -> tuple[int, CIMultiDict[str], bytes]:
        return await fn(api, "GET", p + "/1", headers={"Authorization": auth} if auth is not None else {})

    status, headers, body = await get(None)
    assert_safe_error(status, headers, body, 401)
    assert headers["WWW-Authenticate"].startswith("Bearer")
    for wrong in (f"Bearer {token}x", "Bearer nope", f"Bearer {API_TOKEN}", f"Basic {token}", "Bearer "):
        status, headers, body = await get(wrong)
        assert_safe_error(status, headers, body, 401 if wrong.startswith("Basic") or wrong == "Bearer " else 403)
    status, headers, body = await get(f"Bearer {token}")
    assert status == 200 and json.loads(body)["data"]["pathParameters"] == {"id": "1"}

    # shown once: never in GET or the list
    for doc in [await api.ok("GET", f"/v1/triggers/{name}"),
                *[t for t in (await api.ok("GET", "/v1/triggers"))["triggers"] if t["name"] == name]]:
        assert "token" not in doc and "token_hash" not in doc and token not in json.dumps(doc)
    # re-sending the same definition keeps the token
    again = await http_trigger(api, name, f"echo-{unique}", p + "/{id}")
    assert "token" not in again
    assert (await get(f"Bearer {token}"))[0] == 200

    # rotation: admin only; the old token stops working at once, the new one works
    status, _ = await public(api).call("POST", f"/v1/triggers/{name}/token")
    assert status == 401
    rotated = await api.ok("POST", f"/v1/triggers/{name}/token")
    new = rotated["token"]
    assert new != token and "token_hash" not in rotated
    status, headers, body = await get(f"Bearer {token}")
    assert_safe_error(status, headers, body, 403)
    assert (await get(f"Bearer {new}"))[0] == 200
    assert "token" not in await api.ok("GET", f"/v1/triggers/{name}")

    status, reply = await api.call("POST", f"/v1/triggers/nope-{unique}/token")
    assert status == 404
    await http_trigger(api, f"open-{unique}", f"echo-{unique}", p + "/open", auth="none")
    status, reply = await api.call("POST", f"/v1/triggers/open-{unique}/token")
    assert status == 409 and "auth 'token'" in reply["error"]


@pytest.mark.integration
async def test_auth_none_is_public(api: Api, unique: str) -> None:
    p = f"/o{unique}"
    await api.put_function(f"echo-{unique}", ECHO)
    created = await http_trigger(api, f"pub-{unique}", f"echo-{unique}", p, auth="none")
    assert "token" not in created
    for headers in ({}, {"Authorization": "Bearer anything"}, {"Authorization": f"Bearer {API_TOKEN}"}):
        status, _, body = await fn(api, "GET", p, headers=headers)
        assert status == 200, body


@pytest.mark.integration
async def test_disabled_or_deleted_trigger_stops_answering(api: Api, unique: str) -> None:
    p = f"/d{unique}"
    name = f"onoff-{unique}"
    await api.put_function(f"echo-{unique}", ECHO)
    await http_trigger(api, name, f"echo-{unique}", p, auth="none")
    assert (await fn(api, "GET", p))[0] == 200
    await api.put_trigger(name, f"echo-{unique}", {"type": "http", "path": p, "auth": "none"}, enabled=False)

    async def status_is(code: int) -> bool:
        return (await fn(api, "GET", p))[0] == code

    await eventually(lambda: status_is(404))
    await api.put_trigger(name, f"echo-{unique}", {"type": "http", "path": p, "auth": "none"})
    await eventually(lambda: status_is(200))
    await api.ok("DELETE", f"/v1/triggers/{name}")
    await eventually(lambda: status_is(404))


@pytest.mark.integration
async def test_every_request_is_an_invocation_record(api: Api, unique: str) -> None:
    p = f"/i{unique}"
    name = f"rec-{unique}"
    await api.put_function(f"shapes-{unique}", SHAPES)
    await http_trigger(api, name, f"shapes-{unique}", p + "/{case}", auth="none")
    # the record says what the function did; a 502 for an answer that is not a valid response
    # (badstatus) is a succeeded invocation
    expected = {"created": "succeeded", "list": "succeeded", "raise": "failed", "badstatus": "succeeded",
                "nobody": "succeeded"}
    ids = {}
    for case in expected:
        _, headers, _ = await fn(api, "GET", f"{p}/{case}")
        ids[headers[REQUEST_ID_HEADER]] = case
    await fn(api, "GET", f"{p}/a/b")  # 404: nothing ran, no record
    records = await api.wait_invocations(len(ids), trigger=name)
    assert {r["invocation_id"] for r in records} == set(ids)
    for r in records:
        assert r["trigger"] == name and r["function"] == f"shapes-{unique}" and r["attempt"] == 1
        assert r["event_type"] == "http.request" and r["event_source"] == f"http://{name}"
        assert r["event_id"] == r["request_id"] == r["invocation_id"]
        assert r["status"] == expected[ids[r["invocation_id"]]], r


@pytest.mark.integration
async def test_a_graceful_stop_writes_every_answered_requests_record(
        servers: dict[str, Any], tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Function-URL records wait on a writer of their own (RECORD_LINGER_S) after the answer has
    gone: a stop right after the last answer still writes every one of them (here they would
    linger 3 s, longer than the rest of the stop takes: only the stop's flush writes them)."""
    monkeypatch.setattr("hub.app.RECORD_LINGER_S", 3.0)
    settings = make_settings(servers, tmp_path_factory.mktemp("hub-stop"), f"httpstop_{uuid.uuid4().hex[:8]}")
    hub = Hub(settings)
    await hub.start()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
            api = Api(session, hub.url, fn_base=hub.fn_url)
            await api.put_function("stop-echo", ECHO)
            await http_trigger(api, "stop-echo", "stop-echo", "/stop", auth="none")
            answers = await asyncio.gather(*(fn(api, "GET", "/stop") for _ in range(40)))
    finally:
        await hub.stop()  # at once: the last records are still lingering
    assert {status for status, _, _ in answers} == {200}
    ids = {headers[REQUEST_ID_HEADER] for _, headers, _ in answers}
    client: pymongo.AsyncMongoClient[dict[str, Any]] = pymongo.AsyncMongoClient(settings.mongo_url)
    try:
        found = await client[settings.mongo_db].invocations.find(
            {"_id": {"$in": sorted(ids)}}, {"status": 1}).to_list(None)
    finally:
        await client.close()
    assert {d["_id"] for d in found} == ids
    assert {d["status"] for d in found} == {"succeeded"}


@pytest.mark.integration
async def test_cors(api: Api, unique: str) -> None:
    p = f"/c{unique}"
    name = f"cors-{unique}"
    await api.put_function(f"shapes-{unique}", SHAPES)
    created = await http_trigger(api, name, f"shapes-{unique}", p + "/{case}", methods=["GET", "POST"], cors={
        "allow_origins": ["https://app.example"], "allow_methods": ["GET", "POST"],
        "allow_headers": ["authorization", "content-type"], "expose_headers": ["x-num"],
        "allow_credentials": True, "max_age": 600})
    token = created["token"]
    pre = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
           "Access-Control-Request-Headers": "authorization"}
    status, headers, body = await fn(api, "OPTIONS", p + "/created", headers=pre)
    assert status == 204 and body == b""
    assert headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert headers["Access-Control-Allow-Methods"] == "GET, POST"
    assert headers["Access-Control-Allow-Headers"] == "authorization, content-type"
    assert headers["Access-Control-Allow-Credentials"] == "true" and headers["Access-Control-Max-Age"] == "600"
    status, headers, _ = await fn(api, "OPTIONS", p + "/created", headers={**pre, "Origin": "https://evil.example"})
    assert status == 204 and "Access-Control-Allow-Origin" not in headers

    ran = []
    status, headers, body = await fn(api, "GET", p + "/created", headers={
        "Origin": "https://app.example", "Authorization": f"Bearer {token}"})
    ran.append(headers[REQUEST_ID_HEADER])
    assert status == 201 and headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert headers["Access-Control-Expose-Headers"] == "x-num" and headers["Access-Control-Allow-Credentials"] == "true"
    assert "Origin" in headers.getall("Vary")
    status, headers, body = await fn(api, "GET", p + "/created", headers={
        "Origin": "https://evil.example", "Authorization": f"Bearer {token}"})
    ran.append(headers[REQUEST_ID_HEADER])
    assert status == 201 and "Access-Control-Allow-Origin" not in headers
    # a browser can read the error of a request without the token
    status, headers, body = await fn(api, "GET", p + "/created", headers={"Origin": "https://app.example"})
    assert status == 401 and headers["Access-Control-Allow-Origin"] == "https://app.example"
    # the preflights (sent first) never ran the function: the two GETs with the token did, and
    # records are written in the order they were made
    async def both_recorded() -> list[dict[str, Any]] | None:
        records = await api.invocations(trigger=name)
        return records if set(ran) <= {r["invocation_id"] for r in records} else None

    records = await eventually(both_recorded)
    assert {r["invocation_id"] for r in records} == set(ran)


# -- fuzz ------------------------------------------------------------------------------------
SINGLETONS = {"user-agent", "content-type"}
_SEG = st.text(alphabet=string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@%", max_size=10)
_HEADER_VALUE = st.text(alphabet=string.printable.replace("\r", "").replace("\n", "").replace("\x0b", "")
                        .replace("\x0c", ""), max_size=40).map(str.strip)


@pytest.mark.timeout(600)
@pytest.mark.integration
async def test_fuzz_public_routes(api: Api, unique: str) -> None:
    """Random methods, paths, query strings, headers and bodies against a few real routes: never a
    5xx except the function's own 502/504, never a traceback, always a request id; the mirror
    route returns exactly the bytes it was sent. (Methods are ones aiohttp's parser knows: it
    answers an unknown one with a plain 400 before any handler runs.)"""
    p = f"/z{unique}"
    await api.put_function(f"echo-{unique}", ECHO)
    await api.put_function(f"mirror-{unique}", MIRROR)
    await api.put_function(f"shapes-{unique}", SHAPES)
    await http_trigger(api, f"zm-{unique}", f"mirror-{unique}", p + "/mirror/{rest+}", auth="none")
    await http_trigger(api, f"zi-{unique}", f"echo-{unique}", p + "/items/{id}", methods=["GET", "POST"],
                       auth="none", cors={"allow_origins": ["https://ok.example"]})
    token = (await http_trigger(api, f"zs-{unique}", f"echo-{unique}", p + "/secret/{id}"))["token"]
    await http_trigger(api, f"zf-{unique}", f"shapes-{unique}", p + "/shape/{case}", auth="none")
    host, port = api.fn_base.removeprefix("http://").split(":")
    cases = ["created", "nobody", "list", "raise", "badstatus", "crlf", "teapot", "nope"]
    statuses: Counter[int] = Counter()

    request = st.fixed_dictionaries({
        "method": st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "PROPFIND"]),
        "base": st.sampled_from([f"{p}/mirror", f"{p}/items", f"{p}/secret", f"{p}/shape", p, "", "/v1"]),
        # mostly one segment (what the routes take), sometimes none or several
        "segments": st.one_of(*[st.lists(st.one_of(_SEG.filter(bool), st.sampled_from(cases)), min_size=1,
                                         max_size=1)] * 3, st.lists(_SEG, max_size=4)),
        "query": st.one_of(st.just(""), st.lists(st.tuples(_SEG, _SEG), max_size=4).map(urllib.parse.urlencode),
                           _SEG),
        "headers": st.lists(st.tuples(st.sampled_from(["x-a", "X-A", "x-b", "accept", "user-agent", "cookie",
                                                       "content-type", "origin", "access-control-request-method"]),
                                      _HEADER_VALUE), max_size=5),
        "auth": st.sampled_from([None, f"Bearer {token}", f"Bearer {API_TOKEN}", "Bearer junk", "junk"]),
        "body": st.one_of(st.just(b""), st.binary(max_size=3000)),
    })

    def run() -> None:
        @given(req=request)
        @settings(max_examples=400, derandomize=True, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def one(req: dict[str, Any]) -> None:
            path = "/fn" + req["base"] + "".join("/" + s for s in req["segments"])
            if req["query"]:
                path += "?" + req["query"]
            headers, seen = [], set()
            for k, v in req["headers"]:  # aiohttp's parser answers a repeated singleton header with a 400
                if k.lower() not in SINGLETONS or k.lower() not in seen:
                    headers.append((k, v))
                    seen.add(k.lower())
            if req["auth"] is not None:
                headers.append(("Authorization", req["auth"]))
            conn = http.client.HTTPConnection(host, int(port), timeout=60)
            try:
                conn.putrequest(req["method"], path, skip_accept_encoding=True)
                for k, v in headers:
                    conn.putheader(k, v)
                conn.putheader("Content-Length", str(len(req["body"])))
                conn.endheaders(req["body"])
                resp = conn.getresponse()
                body = resp.read()
            finally:
                conn.close()
            statuses[resp.status] += 1
            # only the shapes function fails (502/504); a path reaches its route also through
            # segments the server normalizes away ("/shape/0/.", "/shape//0")
            shape_route = req["base"] == f"{p}/shape"
            assert resp.status < 500 or (resp.status in (502, 504) and shape_route), (req, resp.status, body[:300])
            assert resp.getheader(REQUEST_ID_HEADER), (req["method"], path, headers, resp.status, body[:300])
            for leak in (b"Traceback", b"secret detail", b"/var/task", b'File "'):
                assert leak not in body, (req, body[:300])
            if resp.status in (401, 403, 404, 405, 413, 429, 502, 504) and req["method"] != "HEAD":
                assert json.loads(body)["requestId"] == resp.getheader(REQUEST_ID_HEADER), (path, body[:300])
            if (req["base"] == f"{p}/mirror" and any(s.strip(".") for s in req["segments"])
                    and req["method"] != "HEAD"):
                assert resp.status == 200 and body == req["body"], (req, resp.status, body[:300])

        one()

    await asyncio.to_thread(run)
    print(f"fuzz statuses: {dict(sorted(statuses.items()))}")
    assert statuses[200] and statuses[404] and statuses[502]


UNSTORABLE = """
def handler(event, context):
    # what a hostile or careless function may put in its result: an integer beyond 64 bits, a
    # lone surrogate, a NUL in a key -- the answer is fine, the record cannot be stored as it is
    return {"statusCode": 200, "body": "ok", "big": 2 ** 70, "odd": "x\\ud800", "k\\u0000ey": 1}
"""


@pytest.mark.integration
async def test_a_result_mongodb_cannot_hold_still_leaves_its_record(api: Api, unique: str) -> None:
    """Function-URL records are posted (nobody waits for them: hub.delivery.records): one that
    MongoDB refuses as it is still lands, made storable, next to the others of its batch."""
    await api.put_function(f"odd-{unique}", UNSTORABLE)
    await api.put_function(f"echo-{unique}", ECHO)
    await http_trigger(api, f"odd-{unique}", f"odd-{unique}", f"/odd{unique}", auth="none")
    await http_trigger(api, f"ok-{unique}", f"echo-{unique}", f"/ok{unique}", auth="none")
    answers = await asyncio.gather(*(fn(api, "GET", f"/odd{unique}" if i % 2 else f"/ok{unique}") for i in range(8)))
    assert [a[0] for a in answers] == [200] * 8
    assert {a[2] for i, a in enumerate(answers) if i % 2} == {b"ok"}
    ids = {a[1][REQUEST_ID_HEADER] for a in answers}

    async def recorded() -> list[dict[str, Any]] | None:
        records = await api.invocations(trigger=f"odd-{unique}") + await api.invocations(trigger=f"ok-{unique}")
        return records if {r["invocation_id"] for r in records} >= ids else None

    records = await eventually(recorded)
    odd = [r for r in records if r["trigger"] == f"odd-{unique}"]
    assert len(odd) == 4 and all(r["status"] == "succeeded" for r in records)
    assert {r["result"]["big"] for r in odd} == {str(2 ** 70)}  # as text, not lost
