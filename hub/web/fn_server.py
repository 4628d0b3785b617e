"""The function-URL listener as aiohttp's low-level server: one handler, no ``Application``.

The fn port serves ``/fn`` and below and nothing else, so aiohttp's ``Application`` (its router,
middleware chain, match info and ``on_response_prepare`` signal) did little per request beyond
what this module does in a few lines: under 16 connections of function-URL calls it was ~6-8 %
of the hub's busy time (bench/README.md, "Function URLs", third pass). What the ``Application``
did here, and what does it now:

- ``/fn`` and ``/fn/...`` go to :meth:`hub.web.function_urls.FunctionUrls.handle`; any other
  path is a JSON 404, as the router's miss was (matched like its two routes, on the decoded path
  with ``%2F`` kept);
- a URL over ``MAX_URL_BYTES`` is a JSON 414 (``hub.web.wire.fn_errors``, the middleware that
  was, now called directly);
- ``Expect: 100-continue`` gets its interim ``100 Continue`` when the body is about to be read,
  after the route, its token and the Content-Length were checked (``hub.web.limits.read_body``;
  the router's default expect handler sent it before any check), any other ``Expect`` a JSON 417;
- every answer, aiohttp's own error answers included, carries ``X-Content-Type-Options:
  nosniff`` (the request's prepare hook, which is where the signal ran);
- bodies are capped at ``MAX_BODY`` by ``read()`` (the Application's ``client_max_size``);
  ``FunctionUrls`` enforces its own smaller limit first;
- unparseable request heads get the JSON 400 of :mod:`hub.web.protocol`, as on the admin port.

The runner is made in ``Hub.start`` and stopped like the admin one (``cleanup()`` stops taking
connections and waits for the requests in flight).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from aiohttp import web
from aiohttp.http import HttpVersion11

from hub.web.function_urls import PREFIX, FunctionUrls
from hub.web.limits import EXPECTS_CONTINUE
from hub.web.protocol import JsonErrorServer
from hub.web.wire import MAX_BODY, MAX_REQUEST_LINE, fn_errors, reply

# What the Application's routes "/fn" and "/fn/{tail:.*}" matched (fullmatch: "." stops at a
# newline, as there).
_FN_PATH = re.compile(re.escape(PREFIX) + r"(?:/.*)?")


class _FnRequest(web.BaseRequest):
    async def _prepare_hook(self, response: web.StreamResponse) -> None:
        # every answer of the hub: a browser never guesses a type the hub did not send
        response.headers["X-Content-Type-Options"] = "nosniff"


class FnListener:
    """The fn port's request handler: the checks above, then the function URLs."""

    def __init__(self, function_urls: FunctionUrls) -> None:
        self.function_urls = function_urls

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        expect = request.headers.get("Expect")
        if expect and request.version == HttpVersion11:  # HTTP/1.0 has no interim answers
            if expect.lower() != "100-continue":
                return reply({"error": "Expectation Failed: only 100-continue is supported"}, 417)
            request[EXPECTS_CONTINUE] = True  # sent by read_body, once the checks let it in
        return await fn_errors(request, self._route)  # type: ignore[arg-type]  # a 414 and the JSON 404

    async def _route(self, request: web.BaseRequest) -> web.StreamResponse:
        if _FN_PATH.fullmatch(request.rel_url.path_safe) is None:
            raise web.HTTPNotFound()
        return await self.function_urls.handle(request)


class FnRunner(web.BaseRunner):
    """Runs :class:`FnListener` on a low-level ``web.Server`` whose connections answer
    unparseable heads in JSON (``kwargs``: the connections' options, e.g. ``keepalive_timeout``,
    ``access_log``)."""

    def __init__(self, function_urls: FunctionUrls, **kwargs: Any) -> None:
        super().__init__(**kwargs)  # BaseRunner keeps what is not its own in self._kwargs
        self.listener = FnListener(function_urls)

    async def shutdown(self) -> None:
        pass  # no application to shut down: cleanup() drains the connections

    async def _make_server(self) -> web.Server:
        loop = asyncio.get_running_loop()

        def make_request(message: Any, payload: Any, protocol: Any, writer: Any, task: Any) -> web.BaseRequest:
            return _FnRequest(message, payload, protocol, writer, task, loop, client_max_size=MAX_BODY)

        return JsonErrorServer(self.listener.handle, request_factory=make_request,
                               **{"max_line_size": MAX_REQUEST_LINE, **self._kwargs})

    async def _cleanup_server(self) -> None:
        pass
