"""Invocation records read as logs: paging cursors, time ranges, and the follow stream.

``GET /v1/invocations`` pages newest first by ``(started_at, _id)``, both descending. A page's
``next_cursor`` is that key of its last record, made opaque (base64 of a small JSON array) so
clients do not build it; keyset paging stays cheap however deep one pages, and a page never
repeats or skips a record that existed when the first page was read (a record written later,
behind the cursor, is not seen: invocations are written when they *finish*, so one that started
long ago can land there; follow the stream to see every record as it is written).

``GET /v1/functions/{name}/logs`` sends a function's records as JSON lines
(``application/x-ndjson``, chunked): oldest first, each the record as ``GET /v1/invocations/{id}``
shows it, output included. JSON lines rather than server-sent events: every line is a complete
JSON document a program (the CLI, ``jq``) reads with no framing to undo, and what SSE adds --
browser ``EventSource`` reconnection -- is of no use here because EventSource cannot send the
``Authorization`` header the API requires. A blank line every ``HEARTBEAT_S`` keeps proxies and
idle timeouts from closing a quiet stream; readers skip blank lines. A failure after the first
byte ends the stream with one ``{"error": ...}`` line (the status line is long gone).

With ``follow``, new records are found by a MongoDB change stream on the invocations collection,
filtered by function (and status) on the server: records are written by insert
(``hub.delivery.records``), and a change stream hands them over in commit order, whatever their
``started_at`` -- polling by a ``(started_at, _id)`` cursor would miss a long invocation that
finishes after a shorter one that started later. The change stream is opened *before* the
backlog is read, so nothing written between the two is lost; records seen in both are sent once.

Shutdown and disconnects never cancel into the driver (``hub.driver``, ``hub.delivery.records.shielded``):
each stream runs in a task of its own that nothing cancels; the change stream's
``max_await_time_ms`` wakes its reader every ``MAX_AWAIT_MS`` to look at a stop flag (set when the
hub stops) and at the client's transport (closed when the client went away); the task then closes
the change stream itself and ends. ``LogStreams.live`` counts the streams in progress.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import json
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

if TYPE_CHECKING:
    from hub.store import Store

log = structlog.get_logger("hub.web.logstream")

HEARTBEAT_S = 15.0
# ``max_s``: a following stream ends cleanly after this many seconds, so a script, a pasted
# README block or an API fuzzer that reads a stream to its end is not held for ever (the OpenAPI
# document marks the stream with x-hub-stream and names this parameter).
MAX_S_LIMIT = 86400.0
MAX_AWAIT_MS = 1000  # how often a following stream's reader looks at the stop flag and the client
WRITE_TIMEOUT_S = 30.0  # a client that reads nothing for this long is treated as gone
MAX_FOLLOWERS = 32  # each following stream keeps a MongoDB connection busy in its getMore
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
MAX_EPOCH_S = 253402300799  # 9999-12-31T23:59:59Z
_EPOCH_RE = re.compile(r"\+?([0-9]{1,20}(\.[0-9]{0,20})?|\.[0-9]{1,20})([eE][+-]?[0-9]{1,3})?")
_CURSOR_VERSION = 1
MAX_CURSOR = 512


class LogQueryError(ValueError):
    """A query parameter that cannot be used (the API answers 400 with this message)."""


class StreamRefused(Exception):
    """The stream cannot start now (the API answers with ``status``)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# -- query parameters ----------------------------------------------------------------------------
def parse_time(text: str, name: str) -> dt.datetime:
    """An ISO 8601 time (a naive one is UTC) or seconds since the epoch, as an aware datetime."""
    shown = text if len(text) <= 60 else text[:60] + "..."
    problem = LogQueryError(f"{name} must be an ISO 8601 time (e.g. 2025-05-01T12:00:00Z) or seconds since "
                            f"the epoch (e.g. 1746100800), not {shown!r}")
    s = text.strip()
    if _EPOCH_RE.fullmatch(s):
        seconds = float(s)
        if not 0 <= seconds <= MAX_EPOCH_S:
            raise problem
        return EPOCH + dt.timedelta(seconds=seconds)
    if not 8 <= len(s) <= 64:
        raise problem
    s = s[:10] + s[10:].replace("z", "Z").replace("t", "T", 1)
    candidates = [s]
    if " " in s[10:]:  # an unescaped '+' in a URL arrives as a space: 12:00:00 02:00
        i = s.rindex(" ")
        candidates.append(s[:i] + "+" + s[i + 1:])
    for candidate in candidates:
        try:
            parsed = dt.datetime.fromisoformat(candidate)
        except ValueError:
            continue
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.timezone.utc)
        try:
            return parsed.astimezone(dt.timezone.utc)
        except (OverflowError, ValueError):
            raise problem from None
    raise problem


def parse_bool(text: str, name: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no", ""):
        return False
    shown = text if len(text) <= 20 else text[:20] + "..."
    raise LogQueryError(f"{name} must be true or false, not {shown!r}")


def parse_include(text: str) -> set[str]:
    parts = {p.strip() for p in text.split(",") if p.strip()}
    unknown = sorted(parts - {"output"})
    if unknown:
        shown = ", ".join(repr(u[:40]) for u in unknown[:3])
        raise LogQueryError(f"include: unknown {shown}; the only choice is include=output (stdout and stderr)")
    return parts


def parse_max_s(text: str | None) -> float | None:
    """``max_s``: seconds, more than 0 and at most a day (None when not given)."""
    if text is None:
        return None
    shown = text if len(text) <= 20 else text[:20] + "..."
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value <= MAX_S_LIMIT:  # NaN fails this too
        raise LogQueryError(f"max_s must be a number of seconds above 0 and at most {MAX_S_LIMIT:.0f} "
                            f"(e.g. max_s=30), not {shown!r}")
    return value


def parse_statuses(text: str) -> list[str]:
    """``failed`` or ``failed,timeout,crashed``."""
    return [s for s in (p.strip() for p in text.split(",")) if s]


def _millis(t: dt.datetime) -> int:
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    return (t - EPOCH) // dt.timedelta(milliseconds=1)


def encode_cursor(doc: dict[str, Any]) -> str | None:
    """The position just after ``doc`` in (started_at desc, _id desc) order, opaque."""
    started, ident = doc.get("started_at"), doc.get("_id")
    if not isinstance(started, dt.datetime) or not isinstance(ident, str):
        return None
    raw = json.dumps([_CURSOR_VERSION, _millis(started), ident], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(text: str) -> tuple[dt.datetime, str]:
    problem = LogQueryError("cursor is not one this API gave out: pass a page's next_cursor unchanged")
    if len(text) > MAX_CURSOR or not re.fullmatch(r"[A-Za-z0-9_-]+", text):
        raise problem
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        value = json.loads(raw)
    except (binascii.Error, ValueError):
        raise problem from None
    if (not isinstance(value, list) or len(value) != 3 or value[0] != _CURSOR_VERSION
            or type(value[1]) is not int or not isinstance(value[2], str)):
        raise problem
    try:
        started = EPOCH + dt.timedelta(milliseconds=value[1])
    except OverflowError:
        raise problem from None
    return started, value[2]


# -- the stream ----------------------------------------------------------------------------------
Render = Callable[[dict[str, Any]], bytes]


class LogStreams:
    """The log streams of one hub's HTTP app: counted, and ended when the hub stops."""

    def __init__(self, max_followers: int = MAX_FOLLOWERS, heartbeat_s: float = HEARTBEAT_S,
                 max_await_ms: int = MAX_AWAIT_MS) -> None:
        self.max_followers = max_followers
        self.heartbeat_s = heartbeat_s
        self.max_await_ms = max_await_ms
        self.live = 0  # streams in progress (tests and /metrics-minded readers)
        self.following = 0
        self._stopping = False
        self._tasks: dict[asyncio.Task[web.StreamResponse], web.Request] = {}

    async def serve(self, request: web.Request, store: Store, function: str, *, render: Render,
                    since: dt.datetime | None, statuses: list[str] | None, limit: int,
                    follow: bool) -> web.StreamResponse:
        """Answer ``request`` with the function's records (and, following, the new ones, until
        the client leaves, the hub stops or the request's ``max_s`` seconds have passed)."""
        try:
            max_s = parse_max_s(request.query.get("max_s"))
        except LogQueryError as exc:
            raise StreamRefused(400, str(exc)) from None
        if self._stopping:
            raise StreamRefused(503, "the hub is stopping; reconnect to another instance")
        if follow and self.following >= self.max_followers:
            raise StreamRefused(503, f"this hub already follows {self.following} log streams (the limit); "
                                     "try again later")
        if follow:
            self.following += 1  # here, not in the task: a burst of requests cannot pass the limit
        task = asyncio.ensure_future(self._serve(request, store, function, render, since, statuses,
                                                 limit, follow, max_s))
        self._tasks[task] = request
        task.add_done_callback(self._done)
        # Shielded: if aiohttp cancels the handler (its own shutdown timeout), the stream still
        # ends on its own terms -- never with a cancel inside a driver call.
        return await asyncio.shield(task)

    def _done(self, task: asyncio.Task[web.StreamResponse]) -> None:
        self._tasks.pop(task, None)
        if not task.cancelled():
            task.exception()  # retrieved here: the handler may be gone

    async def stop(self, timeout_s: float = 5.0) -> None:
        """End every stream: they see the flag within ``max_await_ms``; one stuck writing to a
        client that reads nothing has its connection closed."""
        self._stopping = True
        if not self._tasks:
            return
        await asyncio.wait(list(self._tasks), timeout=self.max_await_ms / 1000 + 1.0)
        for task, request in list(self._tasks.items()):
            if request.transport is not None:
                request.transport.close()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout_s)

    async def _serve(self, request: web.Request, store: Store, function: str, render: Render,
                     since: dt.datetime | None, statuses: list[str] | None, limit: int,
                     follow: bool, max_s: float | None = None) -> web.StreamResponse:
        self.live += 1
        ends_at = asyncio.get_running_loop().time() + max_s if max_s is not None else None
        stream: Any = None
        response: web.StreamResponse | None = None
        try:
            if follow:
                # First, so that every record written from now on is seen (by the stream or below).
                stream = await store.watch_invocations(function, statuses, self.max_await_ms)
            query: dict[str, Any] = {"function": function}
            if statuses:
                query["status"] = statuses
            backlog = await store.list_invocations(query, limit, start=since, output=True)
            response = web.StreamResponse(headers={
                "Content-Type": "application/x-ndjson", "Cache-Control": "no-store",
                "X-Accel-Buffering": "no"})  # nginx: pass each line on at once
            await response.prepare(request)
            sent: set[str] = set()
            for doc in reversed(backlog):  # oldest first, like a log
                sent.add(doc["_id"])
                await self._write(response, render(doc))
            if stream is not None:
                await self._follow(request, response, stream, render, sent, ends_at)
            await response.write_eof()
        except _ClientGone:
            pass
        except Exception as exc:
            if response is None or not response.prepared:
                raise  # the API's middleware answers it (503 when MongoDB is away)
            log.warning("log stream failed", function=function, error=f"{type(exc).__name__}: {exc}")
            try:
                await self._write(response, json.dumps(
                    {"error": f"the log stream failed ({type(exc).__name__}); reconnect to continue"}
                ).encode() + b"\n")
                await response.write_eof()
            except (_ClientGone, Exception):
                pass
        finally:
            if stream is not None:
                try:
                    await stream.close()  # in this task, never cancelled: nothing left in the driver
                except Exception:
                    pass
            self.live -= 1
            if follow:
                self.following -= 1
        assert response is not None  # None only when an exception left before the first byte
        return response

    async def _follow(self, request: web.Request, response: web.StreamResponse, stream: Any,
                      render: Render, sent: set[str], ends_at: float | None = None) -> None:
        loop = asyncio.get_running_loop()
        last_write = loop.time()
        # max_s is looked at between reads: a stream ends within max_await_ms of it
        while not self._stopping and (ends_at is None or loop.time() < ends_at):
            if request.transport is None or request.transport.is_closing():
                raise _ClientGone()
            change = await stream.try_next()  # returns within max_await_ms when nothing comes
            if change is not None:
                doc = change.get("fullDocument")
                if not isinstance(doc, dict):
                    continue
                if doc.get("_id") in sent:  # already in the backlog
                    sent.discard(doc["_id"])
                    continue
                await self._write(response, render(doc))
                last_write = loop.time()
                continue
            if not stream.alive:  # invalidated: the collection was dropped or renamed
                await self._write(response, b'{"error": "the invocations collection went away; '
                                            b'reconnect to continue"}\n')
                return
            if loop.time() - last_write >= self.heartbeat_s:
                await self._write(response, b"\n")
                last_write = loop.time()

    @staticmethod
    async def _write(response: web.StreamResponse, data: bytes) -> None:
        try:
            await asyncio.wait_for(response.write(data), WRITE_TIMEOUT_S)
        except (ConnectionError, asyncio.TimeoutError, RuntimeError) as exc:
            # RuntimeError: aiohttp refuses to write to a closed connection on some paths
            raise _ClientGone() from exc


class _ClientGone(Exception):
    """The client disconnected (or stopped reading): end quietly."""
