"""The hub's HTTP connections: aiohttp's, with one answer changed.

A request head aiohttp cannot parse (a URL or a header over its limits, a NUL in a header) never
reaches the application or its middleware: aiohttp answers it from the connection's handler with
a plain-text 400 that echoes what it could not parse, and logs the client's mistake as an error
with a traceback. Here that answer has the JSON shape of every other error, says what was wrong
without echoing the input, and is logged as one line. Anything else (a real server error) is
aiohttp's own handling, unchanged.

Reached through :class:`HubRunner`, the admin listener's runner, and :class:`JsonErrorServer`, the
function-URL listener's server (hub.web.fn_server). It relies on aiohttp's
``AppRunner._make_server`` and ``RequestHandler.handle_error`` (aiohttp is pinned; the tests in
``tests/test_safe_defaults.py`` fail if an upgrade changes them).
"""

from __future__ import annotations

import json

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from hub.web.wire import MAX_URL_BYTES

log = structlog.get_logger("hub.web.protocol")

MAX_FIELD_SIZE = 8190  # aiohttp's header limit (its default)


def head_problem(exc: BaseException, max_url_bytes: int) -> str:
    if isinstance(exc, LineTooLong) or "too long" in str(exc).lower() or "got more than" in str(exc).lower():
        what = "the request line or a header is longer than the hub accepts"
    elif "invalid" in str(exc).lower() or "character" in str(exc).lower():
        what = "the request line or a header is malformed (e.g. a control character in a header)"
    else:
        what = "the request head cannot be parsed"
    return (f"bad request: {what}; URLs may have up to {max_url_bytes} bytes and each header up to "
            f"{MAX_FIELD_SIZE} bytes")


class _JsonErrorHandler(RequestHandler):
    def handle_error(self, request: BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if not (isinstance(exc, HttpProcessingError) and 400 <= status < 500):
            return super().handle_error(request, status, exc, message)
        log.info("malformed request refused", reason=type(exc).__name__, status=status, remote=request.remote)
        if request.writer.output_size > 0:
            raise ConnectionError("a response was already sent; cannot send the error")
        body = json.dumps({"error": head_problem(exc, MAX_URL_BYTES)})
        response = web.Response(status=status, text=body, content_type="application/json",
                                headers={"X-Content-Type-Options": "nosniff"})
        response.force_close()
        return response


class JsonErrorServer(web.Server):
    """``web.Server`` whose connections answer unparseable heads in JSON."""

    def __call__(self) -> RequestHandler:
        return _JsonErrorHandler(self, loop=self._loop, **self._kwargs)


class HubRunner(web.AppRunner):
    """``web.AppRunner`` whose connections answer unparseable heads in JSON."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = JsonErrorServer  # the same server, handing out the handler above
        return server
