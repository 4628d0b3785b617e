"""The function-URL listener (hub.web.fn_server: aiohttp's low-level server, no Application)
against a real hub: what the Application's router, middleware and signal used to do there
still happens: JSON 404 outside /fn, JSON 414 for a long URL, ``Expect: 100-continue``,
``nosniff`` on every answer, the body cap."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.hubfixtures import Api

ECHO_BODY = "def handler(event, context):\n    return {'body': event['data']['body']}\n"


async def _exchange(port: int, head: bytes, body: bytes = b"", wait_for_continue: bool = False) -> bytes:
    """Send ``head`` (then ``body``, after the interim 100 when asked to wait for it); the whole
    answer, read until the server closes (the head asks for ``Connection: close``)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        await writer.drain()
        interim = b""
        if wait_for_continue:
            interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert interim.startswith(b"HTTP/1.1 100"), interim
        writer.write(body)
        await writer.drain()
        return interim + await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()


def _split(answer: bytes) -> tuple[int, str, bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), head.decode("latin-1").lower(), body


def _fn_port(api: Api) -> int:
    return int(api.fn_base.rsplit(":", 1)[1])


@pytest.mark.integration
async def test_expect_100_continue_gets_its_interim_answer(api: Api, unique: str) -> None:
    await api.put_function(f"echo-{unique}", ECHO_BODY)
    await api.put_trigger(f"echo-{unique}", f"echo-{unique}",
                          {"type": "http", "path": f"/e{unique}", "auth": "none"})
    head = (f"POST /fn/e{unique} HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n"
            f"Expect: 100-continue\r\nConnection: close\r\n\r\n").encode()
    answer = await _exchange(_fn_port(api), head, b"hello", wait_for_continue=True)
    final = answer.partition(b"\r\n\r\n")[2]  # after the interim 100
    status, headers, body = _split(final)
    assert status == 200 and json.loads(body) == {"body": "hello"}
    assert "x-content-type-options: nosniff" in headers
    # any other expectation is refused, in JSON
    head = (f"POST /fn/e{unique} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nExpect: something-else\r\n"
            f"Connection: close\r\n\r\n").encode()
    status, headers, body = _split(await _exchange(_fn_port(api), head))
    assert status == 417 and "application/json" in headers and "nosniff" in headers
    assert "something-else" not in body.decode()


@pytest.mark.integration
async def test_a_refused_request_is_answered_before_its_body_is_asked_for(api: Api, unique: str) -> None:
    """The interim 100 is sent only once the body is about to be read: a request without its
    token, to no route, or whose Content-Length is over the limit gets its final answer at once,
    and its sender never sends the body (it is never asked to)."""
    await api.put_function(f"echo-{unique}", ECHO_BODY)
    await api.put_trigger(f"tok-{unique}", f"echo-{unique}", {"type": "http", "path": f"/t{unique}", "auth": "token"})
    await api.put_trigger(f"open-{unique}", f"echo-{unique}", {"type": "http", "path": f"/o{unique}", "auth": "none"})
    for path, length, want in ((f"/t{unique}", 5, 401), (f"/nothing-{unique}", 5, 404),
                               (f"/o{unique}", 2**31, 413)):
        head = (f"POST /fn{path} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n"
                f"Expect: 100-continue\r\nConnection: close\r\n\r\n").encode()
        reader, writer = await asyncio.open_connection("127.0.0.1", _fn_port(api))
        try:
            writer.write(head)
            await writer.drain()
            first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)  # no body sent
        finally:
            writer.close()
        assert int(first.split()[1]) == want, (path, first)


@pytest.mark.integration
async def test_only_fn_paths_are_served_and_every_answer_says_nosniff(api: Api, unique: str) -> None:
    await api.put_function(f"echo-{unique}", ECHO_BODY)
    await api.put_trigger(f"echo-{unique}", f"echo-{unique}", {"type": "http", "path": "/", "auth": "none"})
    for path, want in (("/fn", 200), ("/fn/", 200), ("/fnx", 404), ("/f", 404), ("/v1/functions", 404),
                       ("/fn%2F", 404), ("/fn/x%0Ay", 404), ("/fn?" + "q" * 9000, 414)):
        async with api.session.get(api.fn_base + path) as r:
            assert r.status == want, path
            assert r.headers["X-Content-Type-Options"] == "nosniff", path
            if want != 200:
                assert r.content_type == "application/json" and "error" in await r.json(), path
