"""HTTP API (aiohttp): functions, triggers, invocations, dead letters, the S3 webhook, health.

Handlers are thin: parse and validate, call the registry / trigger service / dispatcher / inbox,
answer JSON. Every error is JSON ``{"error": "...", "details": [...]}`` with a 4xx/5xx that fits,
and never shows internals (host paths, server addresses): those go to the log.

Every body is bounded in size (413) and JSON nesting (400) before it is parsed into objects:
deeply nested JSON would otherwise end in a RecursionError, or in a MongoDB write that fails
(MongoDB stores at most 100 levels) after the client was told it was accepted.
"""

from __future__ import annotations

import datetime as dt
import hmac
import json
import math
import re
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import ClientSession, ClientTimeout, web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from bson.errors import InvalidDocument, InvalidStringData
from pydantic import BaseModel, ValidationError
from pymongo.errors import DocumentTooLarge, PyMongoError

from connectors.s3_records import (
    NotificationError,
    SubscriptionConfirmation,
    is_aws_sns_url,
    parse_notification,
)
from hub.catalog.code import CodeTooLarge, CodeUnavailable
from hub.delivery.dispatch import Target
from hub.events import Event
from hub.web.function_urls import PREFIX as FN_PREFIX, FunctionUrls
from hub.web.logstream import (
    LogQueryError,
    LogStreams,
    StreamRefused,
    decode_cursor,
    encode_cursor,
    parse_bool,
    parse_include,
    parse_statuses,
    parse_time,
)
from hub.spec.models import LATEST, NAME_RE, AliasSpec, FunctionSpec, RetryPolicy, TriggerSpec, alias_name_problem
from hub.web.openapi import openapi_json
from hub.catalog.registry import CodeError, Conflict, NotFound, is_version, public_function
from hub.sandbox.pool import SandboxPool
from hub.store import unstorable_reason
from hub.catalog.triggers import TriggerError, public_trigger
from hub.delivery.usage import UsageError

if TYPE_CHECKING:
    from hub.app import Hub

log = structlog.get_logger("hub.web.api")
HUB_KEY: web.AppKey[Hub] = web.AppKey("hub")
LOG_STREAMS: web.AppKey[LogStreams] = web.AppKey("log_streams", LogStreams)
MAX_BODY = 16 * 1024 * 1024  # aiohttp's own cap; each endpoint has a smaller one below
MAX_FUNCTION_BODY = MAX_BODY  # inline code or a zip (hub.code bounds the unpacked code)
MAX_TRIGGER_BODY = 256 * 1024
MAX_SYNC_PAYLOAD = 6 * 1024 * 1024  # Lambda's synchronous invoke limit
MAX_ASYNC_PAYLOAD = 1024 * 1024  # queued in a MongoDB document (Lambda's async limit is 1 MB)
MAX_WEBHOOK_BODY = 1024 * 1024  # S3 servers send a record or a few per request
MAX_SPEC_DEPTH = 32  # function and trigger definitions (a filter nests at most 16 inside)
# Invoke payloads and webhook notifications are stored inside an inbox item or a dead letter
# (item.event.data.<payload>), and MongoDB stores at most 100 levels.
MAX_PAYLOAD_DEPTH = 64
MAX_STORED_EVENT_DEPTH = 96
MAX_URL_BYTES = 8192  # longer URLs get a JSON 414
MAX_REQUEST_LINE = 64 * 1024  # aiohttp's request-line limit (default 8190): URLs up to it get our 414
MAX_QUERY_VALUE = 1024
PUBLIC_PATHS = {"/healthz", "/readyz", "/metrics", "/v1/openapi.json", "/v1/sources/s3/events"}
# Only /v1 needs the token. Also public, outside /v1: the web console's static files, "/" and
# "/console/{file}" (the page holds no data: its data comes from /v1 with the token the user
# enters), and /fn/ (http triggers, each with its own token).
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    def __init__(self, status: int, message: str, details: list[Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details


def _default(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    return str(value)


def reply(data: Any, status: int = 200) -> web.Response:
    try:
        text = json.dumps(data, default=_default, allow_nan=False)
    except ValueError:  # NaN or Infinity in a stored result: not JSON, so sent as text
        text = json.dumps(_finite(data), default=_default, allow_nan=False)
    return web.Response(text=text, status=status, content_type="application/json")


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def json_depth_exceeds(value: Any, limit: int) -> bool:
    """True if ``value`` has more than ``limit`` levels of lists/objects (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        items = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if items is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in items if isinstance(child, (dict, list)))
    return False


def _not_json_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (numbers must be finite)")


def parse_json(raw: bytes, max_depth: int, prefix: str = "") -> Any:
    """Parse a request body, refusing NaN/Infinity and nesting deeper than ``max_depth``."""
    too_deep = ApiError(400, f"{prefix}request body is nested too deeply: at most {max_depth} levels "
                             f"of arrays/objects are allowed")
    try:
        value = json.loads(raw, parse_constant=_not_json_constant)
    except RecursionError:
        raise too_deep from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"{prefix}request body is not valid JSON: {exc}") from None
    if raw.count(b"[") + raw.count(b"{") > max_depth and json_depth_exceeds(value, max_depth):
        raise too_deep
    return value


async def read_body(request: web.Request, max_bytes: int) -> bytes:
    """The body, or 413 when it is larger than ``max_bytes`` (refused from Content-Length before
    reading when the client says how large it is)."""
    too_large = ApiError(413, f"request body is larger than {max_bytes} bytes, the limit for this endpoint")
    if request.content_length is not None and request.content_length > max_bytes:
        raise too_large
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise too_large from None
    if len(raw) > max_bytes:
        raise too_large
    return raw


async def read_json(request: web.Request, max_bytes: int = MAX_TRIGGER_BODY, max_depth: int = MAX_SPEC_DEPTH) -> Any:
    raw = await read_body(request, max_bytes)
    if not raw.strip():
        raise ApiError(400, "request body is empty; expected JSON")
    return parse_json(raw, max_depth)


MAX_ERROR_DETAILS = 20


def validate(model: type[BaseModel], body: Any) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        details = [
            {"field": ".".join(str(p) for p in e["loc"]) or "(body)", "message": e["msg"]}
            for e in exc.errors(include_url=False, include_input=False)[:MAX_ERROR_DETAILS]
        ]
        summary = "; ".join(f"{d['field']}: {d['message']}" for d in details)
        more = exc.error_count() - len(details)
        if more > 0:
            summary += f"; and {more} more"
        raise ApiError(400, f"invalid {model.__name__}: {summary}", details) from None


def path_name(request: web.Request) -> str:
    name = request.match_info["name"]
    if not re.fullmatch(NAME_RE, name):
        shown = name if len(name) <= 80 else name[:80] + "..."
        raise ApiError(400, f"bad name {shown!r}: use letters, digits, '_', '-', '.' (max 63)")
    return name


def query_limit(request: web.Request) -> int:
    text = request.query.get("limit", "100")
    if not re.fullmatch(r"[0-9]{1,4}", text):
        raise ApiError(400, "limit must be an integer between 1 and 1000")
    limit = int(text)
    if not 1 <= limit <= 1000:
        raise ApiError(400, "limit must be an integer between 1 and 1000")
    return limit


def query_filters(request: web.Request, keys: tuple[str, ...]) -> dict[str, str]:
    """Equality filters from the query string, bounded like every other input."""
    out: dict[str, str] = {}
    for key in keys:
        if key in request.query:
            value = request.query[key]
            if len(value) > MAX_QUERY_VALUE:
                raise ApiError(400, f"query parameter {key} is longer than {MAX_QUERY_VALUE} characters")
            out[key] = value
    return out


def _token_ok(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def _bearer(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    return auth[7:].strip() if auth.lower().startswith("bearer ") else None


@web.middleware
async def errors_and_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    hub = request.app[HUB_KEY]
    try:
        if len(request.raw_path) > MAX_URL_BYTES:
            raise ApiError(414, f"the URL is longer than {MAX_URL_BYTES} bytes")
        # /fn/ (http triggers) is public by design: each trigger checks its own token there, and
        # the admin token is never accepted (hub.http_trigger).
        if request.path.startswith("/v1/") and request.path not in PUBLIC_PATHS:
            if not _token_ok(_bearer(request), hub.settings.api_token):
                raise ApiError(401, "missing or wrong API token: send 'Authorization: Bearer <HUB_API_TOKEN>'")
        return await handler(request)
    except ApiError as exc:
        body: dict[str, Any] = {"error": exc.message}
        if exc.details:
            body["details"] = exc.details
        return reply(body, exc.status)
    except TriggerError as exc:
        return reply({"error": exc.message}, exc.status)
    except NotFound as exc:  # versions and aliases (hub.registry)
        return reply({"error": exc.message}, 404)
    except Conflict as exc:
        return reply({"error": exc.message, **({"details": exc.users} if exc.users else {})}, 409)
    except CodeTooLarge as exc:
        return reply({"error": f"code too large: {exc}"}, 413)
    except CodeError as exc:
        return reply({"error": f"invalid code: {exc}"}, 400)
    except CodeUnavailable as exc:
        log.error("function code unavailable", path=request.path, error=str(exc))
        return reply({"error": str(exc)}, 503)
    except DocumentTooLarge:
        return reply({"error": "too large to store: MongoDB documents are at most 16 MB"}, 413)
    except (InvalidDocument, InvalidStringData, OverflowError) as exc:
        return reply({"error": f"a value cannot be stored (e.g. an integer beyond 64 bits, invalid "
                               f"unicode or nesting deeper than 100 levels): {type(exc).__name__}: "
                               f"{str(exc)[:200]}"}, 400)
    except web.HTTPException as exc:
        if exc.status >= 400:
            # Keep what aiohttp says in headers (Allow on a 405); the body becomes our JSON.
            response = reply({"error": exc.reason}, exc.status)
            for key, value in exc.headers.items():
                if key.lower() not in ("content-type", "content-length"):
                    response.headers[key] = value
            return response
        raise
    except Exception as exc:
        error_id = uuid.uuid4().hex[:12]
        log.exception("request failed", path=request.path, method=request.method, error_id=error_id)
        # The exception's text can name host paths or server addresses: only the log gets it.
        if _is_outage(exc):
            return reply({"error": f"MongoDB is unavailable; try again (error id {error_id})"}, 503)
        return reply({"error": f"internal error {type(exc).__name__} (error id {error_id}; "
                               f"details are in the hub's log)"}, 500)


def _is_outage(exc: Exception) -> bool:
    from pymongo.errors import ConnectionFailure, ServerSelectionTimeoutError

    return isinstance(exc, (ConnectionFailure, ServerSelectionTimeoutError))


# -- functions ------------------------------------------------------------------------------
async def put_function(request: web.Request) -> web.Response:
    hub = request.app[HUB_KEY]
    name = path_name(request)
    spec = validate(FunctionSpec, await read_json(request, MAX_FUNCTION_BODY))
    head, created = await hub.registry.put(name, spec)
    return reply({**public_function(head), "new_version": created}, 201 if created else 200)


async def list_functions(request: web.Request) -> web.Response:
    hub = request.app[HUB_KEY]
    return reply({"functions": [public_function(f) for f in await hub.store.list_functions()]})


async def get_function(request: web.Request) -> web.Response:
    hub = request.app[HUB_KEY]
    name = path_name(request)
    head = await hub.registry.head(name)
    versions = await hub.registry.versions(name)  # with created_at, code_size, deps, aliases
    triggers = [t["_id"] for t in await hub.store.list_triggers(function=name)]  # any qualifier
    return reply({
        **public_function(head),
        "versions": versions,
        "triggers": triggers,
    })


async def delete_function(request: web.Request) -> web.Response:
    hub = request.app[HUB_KEY]
    name = path_name(request)
    users = [t["_id"] for t in await hub.store.list_triggers(function=name)]
    if users:
        raise ApiError(409, f"function {name!r} is used by triggers {users}; delete them first")
    if not await hub.store.delete_function(name):
        raise ApiError(404, f"no function {name!r}")
    await hub.pool.retire(name)
    hub.registry.forget(name)
    return reply({"deleted": name})


async def invoke_function(request: web.Request) -> web.Response:
    hub = request.app[HUB_KEY]
    name = path_name(request)
    mode = request.query.get("mode", "sync")
    if mode not in ("sync", "async"):
        raise ApiError(400, "mode must be 'sync' or 'async'")
    ref = await _invoke_ref(request, name)  # ?version= / ?alias= (versions and aliases)
    limit = MAX_ASYNC_PAYLOAD if mode == "async" else MAX_SYNC_PAYLOAD
    raw = await read_body(request, limit)
    payload = parse_json(raw, MAX_PAYLOAD_DEPTH) if raw.strip() else None
    event = Event(id=f"invoke:{uuid.uuid4().hex}", source=f"invoke://{name}", type="hub.invoke", data=payload)
    if mode == "async":
        problem = unstorable_reason({"data": payload})
        if problem:
            raise ApiError(400, f"payload cannot be queued: {problem}")
        request_id = await hub.inbox.put_invoke(ref, event)
        return reply({"invocation_id": request_id, "status": "queued"}, 202)
    invocation_id = uuid.uuid4().hex
    record = await hub.dispatcher.run_once(
        Target(ref, None, RetryPolicy(max_attempts=1)), event, invocation_id, invocation_id, 1
    )
    return reply(_invocation_view(record, full=True))


# -- versions and aliases (hub.registry) ----------------------------------------------------
async def _invoke_ref(request: web.Request, name: str) -> str:
    """What an invoke runs: NAME (latest), or NAME:QUALIFIER from ?version= or ?alias=; 404 when
    the function, version or alias does not exist (checked through the registry's cache)."""
    hub = request.app[HUB_KEY]
    version, alias = request.query.get("version"), request.query.get("alias")
    if version is not None and alias is not None:
        raise ApiError(400, "give ?version= or ?alias=, not both")
    qualifier = LATEST
    if version is not None and version != LATEST:
        qualifier = _check_version(version)
    elif alias is not None and alias != LATEST:
        qualifier = _check_alias(alias)
    ref = name if qualifier == LATEST else f"{name}:{qualifier}"
    if await hub.registry.runtime(ref) is None:
        if qualifier == LATEST or await hub.store.get_function(name) is None:
            raise ApiError(404, f"no function {name!r}")
        raise ApiError(404, f"function {name!r} has no {'version' if version is not None else 'alias'} "
                            f"{qualifier!r}")
    return ref


def _check_version(version: str) -> str:
    if not is_version(version):
        shown = version if len(version) <= 80 else version[:80] + "..."
        raise ApiError(400, f"bad version {shown!r}: a version is 16 hex digits (GET /v1/functions/NAME lists them)")
    return version


def _check_alias(alias: str) -> str:
    problem = alias_name_problem(alias)
    if problem:
        raise ApiError(400, problem)
    return alias


async def list_versions(request: web.Request) -> web.Response:
    hub = request.app[HUB_KEY]
    name = path_name(request)
    return reply({"function": name, "versions": await hub.registry.versions(name)})


async def delete_version(request: web.Request) -> web.Response:
    hub = request.app[HUB_KEY]
    name = path_name(request)
    version = _check_version(request.match_info["version"])
    await hub.registry.delete_version(name, version)  # 409 naming what still uses it
    if isinstance(hub.pool, SandboxPool):
        await hub.pool.retire_version(name, version)
    return reply({"deleted": version})


async def version_code(request: web.Request) -> web.Response:
    """The version's code as stored (what runs), as a zip."""
    hub = request.app[HUB_KEY]
    name = path_name(request)
    version = _check_version(request.match_info["version"])
    data = await hub.registry.version_code(name, version)
    return web.Response(body=data, content_type="application/zip", headers={
        "Content-Disposition": f'attachment; filename="{name}-{version}.zip"'})


async def list_aliases(request: web.Request) -> web.Response:
    hub = request.app[HUB_KEY]
    name = path_name(request)
    head = await hub.registry.head(name)
    return reply({"function": name, "latest": head["version"], "aliases": head.get("aliases") or []})


async def get_alias(request: web.Request) -> web.Response:
    hub = request.app[HUB_KEY]
    name = path_name(request)
    alias = request.match_info["alias"]
    if alias == LATEST:  # not stored: it always means the current version
        head = await hub.registry.head(name)
        return reply({"function": name, "name": LATEST, "version": head["version"],
                      "description": "the current version", "updated_at": head.get("updated_at")})
    return reply({"function": name, **await hub.registry.alias(name, _check_alias(alias))})


async def put_alias(request: web.Request) -> web.Response:
    hub = request.app[HUB_KEY]
    name = path_name(request)
    alias = _check_alias(request.match_info["alias"])
    spec = validate(AliasSpec, await read_json(request))
    entry, old = await hub.registry.set_alias(name, alias, spec.version, spec.description)
    return reply({"function": name, **entry, "previous_version": old["version"] if old else None},
                 200 if old else 201)


async def delete_alias(request: web.Request) -> web.Response:
    hub = request.app[HUB_KEY]
    name = path_name(request)
    alias = _check_alias(request.match_info["alias"])
    old = await hub.registry.delete_alias(name, alias)  # 409 naming the triggers that use it
    return reply({"deleted": alias, "version": old["version"]})


# -- triggers -------------------------------------------------------------------------------
async def put_trigger(request: web.Request) -> web.Response:
    hub = request.app[HUB_KEY]
    name = path_name(request)
    spec = validate(TriggerSpec, await read_json(request))
    doc, created = await hub.triggers.put(name, spec)
    return reply(public_trigger(doc), 201 if created else 200)


async def list_triggers(request: web.Request) -> web.Response:
    hub = request.app[HUB_KEY]
    docs = await hub.store.list_triggers(function=query_filters(request, ("function",)).get("function"))
    states = hub.sources.states()
    cursors = await hub.cursors.describe(docs)  # hub.cursors: never waits on Kafka
    return reply({"triggers": [{**public_trigger(d), "state": states.get(d["_id"], "n/a"),
                                **_schedule_view(hub, d), "cursor": cursors.get(d["_id"], {})} for d in docs]})


async def get_trigger(request: web.Request) -> web.Response:
    hub = request.app[HUB_KEY]
    name = path_name(request)
    doc = await hub.store.get_trigger(name)
    if doc is None:
        raise ApiError(404, f"no trigger {name!r}")
    cursor = (await hub.cursors.describe([doc])).get(name, {})  # hub.cursors: never waits on Kafka
    return reply({**public_trigger(doc), "state": hub.sources.states().get(name, "n/a"), **_schedule_view(hub, doc),
                  "cursor": cursor})


def _schedule_view(hub: Hub, doc: dict[str, Any]) -> dict[str, Any]:
    """Schedule triggers: when they fire next (and last fired), from this instance's scheduler."""
    if (doc.get("source") or {}).get("type") != "schedule":
        return {}
    return hub.scheduler.describe(doc["_id"])


async def rotate_trigger_token(request: web.Request) -> web.Response:
    """A new token for an http trigger with auth "token", shown this once; the old one stops working."""
    hub = request.app[HUB_KEY]
    response = reply(public_trigger(await hub.triggers.rotate_token(path_name(request))))
    response.headers["Cache-Control"] = "no-store"
    return response


async def delete_trigger(request: web.Request) -> web.Response:
    hub = request.app[HUB_KEY]
    name = path_name(request)
    if not await hub.triggers.delete(name):
        raise ApiError(404, f"no trigger {name!r}")
    return reply({"deleted": name})


# -- invocations ----------------------------------------------------------------------------
def _invocation_view(doc: dict[str, Any], full: bool = False) -> dict[str, Any]:
    view = {"invocation_id": doc["_id"], **{k: v for k, v in doc.items() if k != "_id"}}
    if not full:
        view.pop("stdout", None)
        view.pop("stderr", None)
    return view


INVOCATION_FILTERS = ("function", "trigger", "status", "event_id", "request_id")
DEAD_LETTER_FILTERS = ("trigger", "function")


async def list_invocations(request: web.Request) -> web.Response:
    """Newest first, paged by an opaque cursor; started in [from, to); include=output adds stdout/stderr."""
    hub = request.app[HUB_KEY]
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
    docs = await hub.store.list_invocations(query, limit + 1, start=start, end=end, after=after, output=output)
    page = docs[:limit]
    return reply({"invocations": [_invocation_view(d, full=output) for d in page],
                  "next_cursor": encode_cursor(page[-1]) if len(docs) > limit else None})


def _json_line(doc: dict[str, Any]) -> bytes:
    """One record as one line of JSON (control characters are escaped: never a newline inside)."""
    view = _invocation_view(doc, full=True)
    try:
        text = json.dumps(view, default=_default, allow_nan=False)
    except ValueError:
        text = json.dumps(_finite(view), default=_default, allow_nan=False)
    return text.encode() + b"\n"


async def function_logs(request: web.Request) -> web.StreamResponse:
    """A function's records as JSON lines, oldest first; follow=true keeps sending new ones (hub.logstream)."""
    hub = request.app[HUB_KEY]
    name = path_name(request)
    given = query_filters(request, ("follow", "since", "status"))
    try:
        follow = parse_bool(given.get("follow", "false"), "follow")
        since = parse_time(given["since"], "since") if "since" in given else None
    except LogQueryError as exc:
        raise ApiError(400, str(exc)) from None
    statuses = parse_statuses(given["status"]) if "status" in given else None
    limit = query_limit(request)
    await hub.registry.head(name)
    try:
        return await request.app[LOG_STREAMS].serve(request, hub.store, name, render=_json_line, since=since,
                                                     statuses=statuses, limit=limit, follow=follow)
    except StreamRefused as exc:
        raise ApiError(exc.status, exc.message) from None


async def _stop_log_streams(app: web.Application) -> None:
    """on_shutdown: before aiohttp waits for (and then cancels) handlers, streams end on their own."""
    await app[LOG_STREAMS].stop()


async def get_invocation(request: web.Request) -> web.Response:
    hub = request.app[HUB_KEY]
    inv_id = request.match_info["id"]
    doc = await hub.store.get_invocation(inv_id)
    if doc is None:
        if await hub.store.inbox_find_request(inv_id) is not None:
            return reply({"invocation_id": inv_id, "status": "queued"})
        raise ApiError(404, f"no invocation {inv_id!r}")
    return reply(_invocation_view(doc, full=True))


# -- dead letters ---------------------------------------------------------------------------
def _dead_letter_view(doc: dict[str, Any]) -> dict[str, Any]:
    return {"id": doc["_id"], **{k: v for k, v in doc.items() if k != "_id"}}


async def list_dead_letters(request: web.Request) -> web.Response:
    hub = request.app[HUB_KEY]
    query = query_filters(request, DEAD_LETTER_FILTERS)
    docs = await hub.store.list_dead_letters(query, query_limit(request))
    return reply({"dead_letters": [_dead_letter_view(d) for d in docs]})


async def get_dead_letter(request: web.Request) -> web.Response:
    hub = request.app[HUB_KEY]
    doc = await hub.store.get_dead_letter(request.match_info["id"])
    if doc is None:
        raise ApiError(404, f"no dead letter {request.match_info['id']!r}")
    return reply(_dead_letter_view(doc))


async def replay_dead_letter(request: web.Request) -> web.Response:
    hub = request.app[HUB_KEY]
    doc = await hub.store.get_dead_letter(request.match_info["id"])
    if doc is None:
        raise ApiError(404, f"no dead letter {request.match_info['id']!r}")
    if doc["trigger"] is not None and await hub.store.get_trigger(doc["trigger"]) is None:
        raise ApiError(409, f"trigger {doc['trigger']!r} no longer exists; nothing to replay into")
    await hub.inbox.put_replays([_replayable(doc)])
    return reply({"id": doc["_id"], "status": "queued"}, 202)


def _replayable(doc: dict[str, Any]) -> dict[str, Any]:
    if doc.get("qualifier") not in (None, LATEST):  # a direct invoke of a version or alias runs it again
        return {**doc, "function": f"{doc['function']}:{doc['qualifier']}"}
    return doc


REPLAY_PAGE = 500


async def replay_dead_letters(request: web.Request) -> web.Response:
    """Queue every dead letter of a trigger or function (all of them, in pages, not a listing's
    first 1000); those of triggers that no longer exist are skipped and counted."""
    hub = request.app[HUB_KEY]
    query = query_filters(request, DEAD_LETTER_FILTERS)
    if not query:
        raise ApiError(400, "say which: ?trigger=NAME or ?function=NAME")
    queued = skipped = 0
    after: str | None = None
    exists: dict[str, bool] = {}
    while True:
        page = await hub.store.dead_letters_after(query, after, REPLAY_PAGE)
        if not page:
            break
        after = page[-1]["_id"]
        wanted = []
        for doc in page:
            trigger = doc.get("trigger")
            if trigger is not None and trigger not in exists:
                exists[trigger] = await hub.store.get_trigger(trigger) is not None
            if trigger is not None and not exists[trigger]:
                skipped += 1
            else:
                wanted.append(_replayable(doc))
        await hub.inbox.put_replays(wanted)
        queued += len(wanted)
    return reply({"queued": queued, "skipped": skipped}, 202)


async def delete_dead_letter(request: web.Request) -> web.Response:
    hub = request.app[HUB_KEY]
    if not await hub.store.delete_dead_letter(request.match_info["id"]):
        raise ApiError(404, f"no dead letter {request.match_info['id']!r}")
    return reply({"deleted": request.match_info["id"]})


async def purge_dead_letters(request: web.Request) -> web.Response:
    hub = request.app[HUB_KEY]
    query = query_filters(request, DEAD_LETTER_FILTERS)
    if not query and request.query.get("all") != "true":
        raise ApiError(400, "say which: ?trigger=NAME, ?function=NAME or ?all=true")
    count = await hub.store.purge_dead_letters(query)
    return reply({"deleted": count})


# -- usage (hub.usage) ----------------------------------------------------------------------
async def get_usage(request: web.Request) -> web.Response:
    """Usage over [from, to) (default: the last 24 hours): a function's buckets and totals, or
    every function's totals; aggregated at write time, so this reads buckets, not records."""
    hub = request.app[HUB_KEY]
    given = query_filters(request, ("function", "version", "from", "to", "granularity"))
    function = given.get("function")
    if function is not None and not re.fullmatch(NAME_RE, function):
        raise ApiError(400, "function must be a function name (letters, digits, '_', '-', '.'; max 63)")
    version = given.get("version")
    if version is not None:
        _check_version(version)
    try:
        start = parse_time(given["from"], "from") if "from" in given else None
        end = parse_time(given["to"], "to") if "to" in given else None
        body = await hub.usage.query(function=function, version=version, start=start, end=end,
                                     granularity=given.get("granularity", "hour"), now=dt.datetime.now(dt.timezone.utc))
    except (LogQueryError, UsageError) as exc:
        raise ApiError(400, str(exc)) from None
    except PyMongoError as exc:
        if exc.timeout:
            raise ApiError(503, "the usage query took too long; ask for a shorter period") from None
        raise
    return reply(body)


# -- S3 webhook -----------------------------------------------------------------------------
async def s3_webhook(request: web.Request) -> web.Response:
    hub = request.app[HUB_KEY]
    token = _bearer(request) or request.query.get("token")
    if not _token_ok(token, hub.settings.webhook_token):
        raise ApiError(401, "missing or wrong webhook token (Authorization: Bearer or ?token=)")
    raw = await read_body(request, MAX_WEBHOOK_BODY)
    prefix = "not an S3 notification: "
    try:
        # Parsed here, bounded in depth; an empty body is left to parse_notification to explain.
        events = parse_notification(parse_json(raw, MAX_PAYLOAD_DEPTH, prefix) if raw.strip() else raw)
    except SubscriptionConfirmation as confirm:
        return reply(await _confirm_sns(confirm))
    except NotificationError as exc:
        raise ApiError(400, f"{prefix}{exc}") from None
    except RecursionError:  # an SNS envelope's Message is JSON in a string, parsed in there
        raise ApiError(400, f"{prefix}the SNS Message is nested too deeply") from None
    if any(json_depth_exceeds(e.to_cloudevent(), MAX_STORED_EVENT_DEPTH) for e in events):
        raise ApiError(400, f"{prefix}an event is nested more than {MAX_STORED_EVENT_DEPTH} levels deep, "
                            f"more than MongoDB can store")
    hub.metrics.events.labels("s3").inc(len(events))
    wanted = [e for e in events if hub.router.match_s3(e)]
    if len(wanted) < len(events):
        # The trigger may be new and made through another instance: look again before dropping.
        await hub.reload_triggers()
        wanted = [e for e in events if hub.router.match_s3(e)]
    # S3 reconcile (hub/s3_reconcile.py): claim ObjectCreated changes, queue, confirm; drop those
    # the bucket scan (or an earlier copy of this notification) already queued.
    queued, duplicates = await hub.s3_reconciler.admit(wanted, hub.inbox.put_events)
    return reply({"received": len(events), "queued": queued, "duplicates": duplicates})


async def _confirm_sns(confirm: SubscriptionConfirmation) -> dict[str, Any]:
    """Confirm an AWS SNS subscription by fetching its SubscribeURL, but only an AWS SNS one: the
    webhook must not become a way to make the hub GET arbitrary URLs."""
    if not is_aws_sns_url(confirm.subscribe_url):
        log.warning("SNS subscription confirmation with a SubscribeURL that is not AWS SNS; ignored",
                    subscribe_url=confirm.subscribe_url)
        return {"status": "ignored: SubscribeURL is not an AWS SNS endpoint"}
    try:
        async with ClientSession(timeout=ClientTimeout(total=15)) as session:
            async with session.get(confirm.subscribe_url) as resp:
                ok = resp.status == 200
    except Exception as exc:
        log.warning("SNS subscription confirmation failed", topic=confirm.topic_arn, error=str(exc))
        raise ApiError(502, f"could not confirm the SNS subscription: {exc}") from None
    if not ok:
        raise ApiError(502, f"SNS answered {resp.status} to the subscription confirmation")
    log.info("SNS subscription confirmed", topic=confirm.topic_arn)
    return {"status": "subscription confirmed"}


# -- health ---------------------------------------------------------------------------------
async def healthz(request: web.Request) -> web.Response:
    return reply({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    hub = request.app[HUB_KEY]
    report = await hub.readiness()
    return reply(report, 200 if report["ready"] else 503)


async def metrics(request: web.Request) -> web.Response:
    hub = request.app[HUB_KEY]
    await hub.refresh_gauges()
    return web.Response(body=generate_latest(hub.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(request: web.Request) -> web.Response:
    return web.Response(text=openapi_json(), content_type="application/json")


# -- the web console (hub/console: static files, no token; their data comes from /v1) -------
CONSOLE_DIR = Path(__file__).parent / "console"
CONSOLE_FILE_RE = re.compile(r"[a-z0-9_-]{1,64}\.(js|css)")
CONSOLE_TYPES = {"js": "text/javascript", "css": "text/css"}
CONSOLE_HEADERS = {
    # nothing but its own files and the hub's API; no inline script, no framing, and a form can
    # never navigate (the token field must not end up in a URL if the script did not load)
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidated (ETag/Last-Modified): a new hub's console applies at once
}


async def console_index(request: web.Request) -> web.StreamResponse:
    return _console_file("index.html", "text/html")


async def console_file(request: web.Request) -> web.StreamResponse:
    """Only names like app.js / app.css directly in hub/console: no paths, nothing else there."""
    match = CONSOLE_FILE_RE.fullmatch(request.match_info["file"])
    if match is None or not (CONSOLE_DIR / match.group(0)).is_file():
        raise ApiError(404, "no such console file")
    return _console_file(match.group(0), CONSOLE_TYPES[match.group(1)])


def _console_file(name: str, content_type: str) -> web.StreamResponse:
    headers = {**CONSOLE_HEADERS, "Content-Type": f"{content_type}; charset=utf-8"}
    return web.FileResponse(CONSOLE_DIR / name, headers=headers)


def make_app(hub: Hub) -> web.Application:
    # aiohttp answers a request line over max_line_size with a plain-text 400 from its protocol
    # layer, which has no hook for the body; raising the limit lets URLs up to 64 KB reach the
    # middleware, which answers a JSON 414 for anything over MAX_URL_BYTES.
    app = web.Application(middlewares=[errors_and_auth], client_max_size=MAX_BODY,
                          handler_args={"max_line_size": MAX_REQUEST_LINE})
    app[HUB_KEY] = hub
    app[LOG_STREAMS] = LogStreams()
    app.on_shutdown.append(_stop_log_streams)
    r = app.router
    r.add_put("/v1/functions/{name}", put_function)
    r.add_get("/v1/functions", list_functions)
    r.add_get("/v1/functions/{name}", get_function)
    r.add_delete("/v1/functions/{name}", delete_function)
    r.add_post("/v1/functions/{name}/invoke", invoke_function)
    r.add_get("/v1/functions/{name}/versions", list_versions)
    r.add_delete("/v1/functions/{name}/versions/{version}", delete_version)
    r.add_get("/v1/functions/{name}/versions/{version}/code", version_code)
    r.add_get("/v1/functions/{name}/aliases", list_aliases)
    r.add_get("/v1/functions/{name}/aliases/{alias}", get_alias)
    r.add_put("/v1/functions/{name}/aliases/{alias}", put_alias)
    r.add_delete("/v1/functions/{name}/aliases/{alias}", delete_alias)
    r.add_put("/v1/triggers/{name}", put_trigger)
    r.add_get("/v1/triggers", list_triggers)
    r.add_get("/v1/triggers/{name}", get_trigger)
    r.add_delete("/v1/triggers/{name}", delete_trigger)
    r.add_post("/v1/triggers/{name}/token", rotate_trigger_token)
    function_urls = FunctionUrls(hub)  # http triggers: public, never the admin API
    r.add_route("*", FN_PREFIX, function_urls.handle)
    r.add_route("*", FN_PREFIX + "/{tail:.*}", function_urls.handle)
    r.add_get("/v1/invocations", list_invocations)
    r.add_get("/v1/invocations/{id}", get_invocation)
    r.add_get("/v1/functions/{name}/logs", function_logs)
    r.add_get("/v1/dead-letters", list_dead_letters)
    r.add_get("/v1/usage", get_usage)
    r.add_delete("/v1/dead-letters", purge_dead_letters)
    r.add_get("/v1/dead-letters/{id}", get_dead_letter)
    r.add_post("/v1/dead-letters/{id}/replay", replay_dead_letter)
    r.add_post("/v1/dead-letters/replay", replay_dead_letters)
    r.add_delete("/v1/dead-letters/{id}", delete_dead_letter)
    r.add_post("/v1/sources/s3/events", s3_webhook)
    r.add_get("/healthz", healthz)
    r.add_get("/readyz", readyz)
    r.add_get("/metrics", metrics)
    r.add_get("/v1/openapi.json", openapi)
    r.add_get("/", console_index)  # the web console (no token: the page holds no data)
    r.add_get("/console/{file}", console_file)
    return app
