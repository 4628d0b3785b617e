"""Admin handlers for what happened: invocation records (paged, filtered, followed as a log
stream), dead letters (listed, replayed one by one or all at once, purged) and usage.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

import structlog
from aiohttp import web
from pymongo.errors import PyMongoError

from hub.web.logstream import (
    LogStreams,
    LogQueryError,
    StreamRefused,
    decode_cursor,
    encode_cursor,
    parse_bool,
    parse_include,
    parse_statuses,
    parse_time,
)
from hub.spec.models import LATEST, NAME_RE
from hub.delivery.usage import UsageError
from hub.web.services import SERVICES
from hub.web.wire import (
    ApiError,
    check_version,
    finite,
    invocation_view,
    json_default,
    path_name,
    query_filters,
    query_limit,
    reply,
)

log = structlog.get_logger("hub.web.admin_history")
LOG_STREAMS: web.AppKey[LogStreams] = web.AppKey("log_streams", LogStreams)


# -- invocations ----------------------------------------------------------------------------
INVOCATION_FILTERS = ("function", "trigger", "status", "event_id", "request_id", "trace_id")
DEAD_LETTER_FILTERS = ("trigger", "function")


async def list_invocations(request: web.Request) -> web.Response:
    """Newest first, paged by an opaque cursor; started in [from, to); include=output adds stdout/stderr."""
    svc = request.app[SERVICES]
    query: dict[str, Any] = query_filters(request, INVOCATION_FILTERS)
    if "status" in query:  # one status, or several: failed,timeout
        statuses = parse_statuses(query["status"])
        query["status"] = statuses[0] if len(statuses) == 1 else statuses
    given = query_filters(request, ("from", "to", "cursor", "include"))
    try:
        start = parse_time(given["from"], "from") if "from" in given else None
        end = parse_time(given["to"], "to") if "to" in given else None
        after = decode_cursor(given["cursor"]) if "cursor" in given else None
        output = "output" in parse_include(given.get("include", ""))
    except LogQueryError as exc:
        raise ApiError(400, str(exc)) from None
    if start is not None and end is not None and start > end:
        raise ApiError(400, "from is after to: the range is [from, to)")
    limit = query_limit(request)
    docs = await svc.store.list_invocations(query, limit + 1, start=start, end=end, after=after, output=output)
    page = docs[:limit]
    return reply({"invocations": [invocation_view(d, full=output) for d in page],
                  "next_cursor": encode_cursor(page[-1]) if len(docs) > limit else None})


def _json_line(doc: dict[str, Any]) -> bytes:
    """One record as one line of JSON (control characters are escaped: never a newline inside)."""
    view = invocation_view(doc, full=True)
    try:
        text = json.dumps(view, default=json_default, allow_nan=False)
    except ValueError:
        text = json.dumps(finite(view), default=json_default, allow_nan=False)
    return text.encode() + b"\n"


async def function_logs(request: web.Request) -> web.StreamResponse:
    """A function's records as JSON lines, oldest first; follow=true keeps sending new ones (hub.web.logstream)."""
    svc = request.app[SERVICES]
    name = path_name(request)
    given = query_filters(request, ("follow", "since", "status"))
    try:
        follow = parse_bool(given.get("follow", "false"), "follow")
        since = parse_time(given["since"], "since") if "since" in given else None
    except LogQueryError as exc:
        raise ApiError(400, str(exc)) from None
    statuses = parse_statuses(given["status"]) if "status" in given else None
    limit = query_limit(request)
    await svc.registry.head(name)
    try:
        return await request.app[LOG_STREAMS].serve(request, svc.store, name, render=_json_line, since=since,
                                                     statuses=statuses, limit=limit, follow=follow)
    except StreamRefused as exc:
        raise ApiError(exc.status, exc.message) from None


async def stop_log_streams(app: web.Application) -> None:
    """on_shutdown: before aiohttp waits for (and then cancels) handlers, streams end on their own."""
    await app[LOG_STREAMS].stop()


async def get_invocation(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    inv_id = request.match_info["id"]
    doc = await svc.store.get_invocation(inv_id)
    if doc is None:
        if await svc.store.inbox_find_request(inv_id) is not None:
            return reply({"invocation_id": inv_id, "status": "queued"})
        raise ApiError(404, f"no invocation {inv_id!r}")
    view = invocation_view(doc, full=True)
    template = svc.settings.trace_url_template
    if template and isinstance(doc.get("trace_id"), str):  # the console links the trace there
        view["trace_url"] = template.replace("{trace_id}", doc["trace_id"])
    return reply(view)


# -- dead letters ---------------------------------------------------------------------------
def _dead_letter_view(doc: dict[str, Any]) -> dict[str, Any]:
    return {"id": doc["_id"], **{k: v for k, v in doc.items() if k != "_id"}}


async def list_dead_letters(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    query = query_filters(request, DEAD_LETTER_FILTERS)
    docs = await svc.store.list_dead_letters(query, query_limit(request))
    return reply({"dead_letters": [_dead_letter_view(d) for d in docs]})


async def get_dead_letter(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    doc = await svc.store.get_dead_letter(request.match_info["id"])
    if doc is None:
        raise ApiError(404, f"no dead letter {request.match_info['id']!r}")
    return reply(_dead_letter_view(doc))


async def replay_dead_letter(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    doc = await svc.store.get_dead_letter(request.match_info["id"])
    if doc is None:
        raise ApiError(404, f"no dead letter {request.match_info['id']!r}")
    if doc["trigger"] is not None and await svc.store.get_trigger(doc["trigger"]) is None:
        raise ApiError(409, f"trigger {doc['trigger']!r} no longer exists; nothing to replay into")
    await svc.inbox.put_replays([_replayable(doc)])
    return reply({"id": doc["_id"], "status": "queued"}, 202)


def _replayable(doc: dict[str, Any]) -> dict[str, Any]:
    if doc.get("qualifier") not in (None, LATEST):  # a direct invoke of a version or alias runs it again
        return {**doc, "function": f"{doc['function']}:{doc['qualifier']}"}
    return doc


REPLAY_PAGE = 500


async def replay_dead_letters(request: web.Request) -> web.Response:
    """Queue every dead letter of a trigger or function (all of them, in pages, not a listing's
    first 1000); those of triggers that no longer exist are skipped and counted."""
    svc = request.app[SERVICES]
    query = query_filters(request, DEAD_LETTER_FILTERS)
    if not query:
        raise ApiError(400, "say which: ?trigger=NAME or ?function=NAME")
    queued = skipped = 0
    after: str | None = None
    exists: dict[str, bool] = {}
    while True:
        page = await svc.store.dead_letters_after(query, after, REPLAY_PAGE)
        if not page:
            break
        after = page[-1]["_id"]
        wanted = []
        for doc in page:
            trigger = doc.get("trigger")
            if trigger is not None and trigger not in exists:
                exists[trigger] = await svc.store.get_trigger(trigger) is not None
            if trigger is not None and not exists[trigger]:
                skipped += 1
            else:
                wanted.append(_replayable(doc))
        await svc.inbox.put_replays(wanted)
        queued += len(wanted)
    return reply({"queued": queued, "skipped": skipped}, 202)


async def delete_dead_letter(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    if not await svc.store.delete_dead_letter(request.match_info["id"]):
        raise ApiError(404, f"no dead letter {request.match_info['id']!r}")
    return reply({"deleted": request.match_info["id"]})


async def purge_dead_letters(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    query = query_filters(request, DEAD_LETTER_FILTERS)
    try:
        purge_all = parse_bool(query_filters(request, ("all",)).get("all", "false"), "all")
    except LogQueryError as exc:
        raise ApiError(400, str(exc)) from None
    if purge_all and query:
        raise ApiError(400, "give either ?all=true or ?trigger=NAME / ?function=NAME, not both")
    if not query and not purge_all:
        raise ApiError(400, "say which: ?trigger=NAME, ?function=NAME or ?all=true")
    count = await svc.store.purge_dead_letters(query)
    return reply({"deleted": count})


# -- usage (hub.delivery.usage) ----------------------------------------------------------------------
async def get_usage(request: web.Request) -> web.Response:
    """Usage over [from, to) (default: the last 24 hours): a function's buckets and totals, or
    every function's totals; aggregated at write time, so this reads buckets, not records."""
    svc = request.app[SERVICES]
    given = query_filters(request, ("function", "version", "from", "to", "granularity"))
    function = given.get("function")
    if function is not None and not re.fullmatch(NAME_RE, function):
        raise ApiError(400, "function must be a function name (letters, digits, '_', '-', '.'; max 63)")
    version = given.get("version")
    if version is not None:
        check_version(version)
    try:
        start = parse_time(given["from"], "from") if "from" in given else None
        end = parse_time(given["to"], "to") if "to" in given else None
        body = await svc.usage.query(function=function, version=version, start=start, end=end,
                                     granularity=given.get("granularity", "hour"), now=dt.datetime.now(dt.timezone.utc))
    except (LogQueryError, UsageError) as exc:
        raise ApiError(400, str(exc)) from None
    except PyMongoError as exc:
        if exc.timeout:
            raise ApiError(503, "the usage query took too long; ask for a shorter period") from None
        raise
    return reply(body)
