"""What a slow or greedy client may cost the hub: the time to send a body, and the memory its
body takes while it is buffered.

A request head is bounded by aiohttp itself: the hub's runners set ``keepalive_timeout`` to
``HUB_HTTP_HEAD_TIMEOUT_S``, and aiohttp closes a connection whose next message is not complete
when it runs out (from the connect, or from the previous answer). A body is read here, under
``HUB_HTTP_BODY_TIMEOUT_S`` (then 408). Public routes (function URLs, the S3 webhook) also share a
:class:`BodyBudget`: the bytes all their bodies in flight may hold at once, so a crowd of large
uploads gets 503 with ``Retry-After`` instead of the hub's memory.

A client that sent ``Expect: 100-continue`` on the fn port is told to go on only here, once the
body is about to be read (:data:`EXPECTS_CONTINUE`): a request refused first (401, 403, 404, 413
from its Content-Length, 503) is answered without the client ever sending its body.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web

# Set on a request by the fn listener (hub.web.fn_server) for ``Expect: 100-continue``: the
# interim answer is owed, and sent by :func:`read_body` before it reads.
EXPECTS_CONTINUE = "hub.expects_continue"


class BodyTimeout(Exception):
    """The client took longer than the body timeout to send its body (a 408)."""


class OverBudget(Exception):
    """Public bodies in flight already hold the budget (a 503 with Retry-After)."""


class BodyBudget:
    """Bytes that request bodies of public routes may hold at once (one event loop: no lock)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    @asynccontextmanager
    async def hold(self, size: int) -> AsyncIterator[None]:
        if size and self.held + size > self.limit:
            raise OverBudget(f"{self.held} bytes of request bodies are being received; try again shortly")
        self.held += size
        try:
            yield
        finally:
            self.held -= size


async def read_body(request: web.BaseRequest, limit: int, timeout_s: float,
                    budget: BodyBudget | None = None) -> bytes | None:
    """The body, or None when it is larger than ``limit`` (refused from Content-Length before
    reading when the client sends one; otherwise read no further than the limit). Raises
    :class:`BodyTimeout` past ``timeout_s`` and :class:`OverBudget` when the budget is spent.

    Without a Content-Length the budget is charged the limit, the most the body can take."""
    if not request.body_exists:
        return b""
    length = request.content_length
    if length is not None and length > limit:
        return None
    reserve = length if length is not None else limit
    if budget is None:
        return await _read(request, limit, timeout_s)
    async with budget.hold(reserve):
        return await _read(request, limit, timeout_s)


async def _continue(request: web.BaseRequest) -> None:
    """The interim ``100 Continue`` the request is owed, if any (once)."""
    if request.get(EXPECTS_CONTINUE):
        request[EXPECTS_CONTINUE] = False
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the answer itself has not started
        await request.writer.drain()


async def _read(request: web.BaseRequest, limit: int, timeout_s: float) -> bytes | None:
    if request.content_length is not None and request.content.is_eof() and not request.get(EXPECTS_CONTINUE):
        # all of it came with the headers (a small POST): nothing to wait for, so no timer
        # (asyncio.timeout is ~5 us, ~2 % of an S3 notification's hub CPU)
        return await request.read()
    try:
        async with asyncio.timeout(timeout_s):
            await _continue(request)
            if request.content_length is not None:
                return await request.read()
            chunks: list[bytes] = []
            size = 0
            async for chunk in request.content.iter_chunked(64 * 1024):
                size += len(chunk)
                if size > limit:
                    return None
                chunks.append(chunk)
            return b"".join(chunks)
    except TimeoutError:
        raise BodyTimeout(f"the request body did not arrive within {timeout_s:g} s") from None
