"""The HTTP API's wire: JSON bodies in and out, validation into readable 4xx, query parameters,
and the middleware that checks the admin token and turns every error into the same JSON shape.

Every error is JSON ``{"error": "...", "details": [...]}`` with a 4xx/5xx that fits, and never shows
internals (host paths, server addresses): those go to the log.

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
from typing import Any

import structlog
from aiohttp import web
from bson.errors import InvalidDocument, InvalidStringData
from pydantic import BaseModel, ValidationError
from pymongo.errors import DocumentTooLarge

from hub.catalog.code import CodeError, CodeTooLarge, CodeUnavailable
from hub.catalog.registry import Conflict, NotFound, is_version
from hub.catalog.triggers import TriggerError
from hub.events import MAX_PAYLOAD_DEPTH, json_depth_exceeds
from hub.spec.models import NAME_RE, error_field, error_message
from hub.web import limits
from hub.web.limits import BodyBudget
from hub.web.services import SERVICES

log = structlog.get_logger("hub.web.api")
MAX_BODY = 16 * 1024 * 1024  # aiohttp's own cap; each endpoint has a smaller one below
MAX_FUNCTION_BODY = MAX_BODY  # inline code or a zip (hub.catalog.code bounds the unpacked code)
MAX_TRIGGER_BODY = 256 * 1024
MAX_SYNC_PAYLOAD = 6 * 1024 * 1024  # Lambda's synchronous invoke limit
MAX_ASYNC_PAYLOAD = 1024 * 1024  # queued in a MongoDB document (Lambda's async limit is 1 MB)
MAX_WEBHOOK_BODY = 1024 * 1024  # S3 servers send a record or a few per request
MAX_SPEC_DEPTH = 32  # function and trigger definitions (a filter nests at most 16 inside)
# Invoke payloads and webhook notifications are stored inside an inbox item or a dead letter:
# hub.events.MAX_PAYLOAD_DEPTH.
MAX_STORED_EVENT_DEPTH = 96
MAX_URL_BYTES = 8192  # longer URLs get a JSON 414
MAX_REQUEST_LINE = 64 * 1024  # aiohttp's request-line limit (default 8190): URLs up to it get our 414
MAX_QUERY_VALUE = 1024
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    def __init__(self, status: int, message: str, details: list[Any] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details
        self.headers = headers


def json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    return str(value)


def reply(data: Any, status: int = 200) -> web.Response:
    try:
        text = json.dumps(data, default=json_default, allow_nan=False)
    except ValueError:  # NaN or Infinity in a stored result: not JSON, so sent as text
        text = json.dumps(finite(data), default=json_default, allow_nan=False)
    return web.Response(text=text, status=status, content_type="application/json")


def finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


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


async def read_body(request: web.Request, max_bytes: int, budget: BodyBudget | None = None) -> bytes:
    """The body, or 413 when it is larger than ``max_bytes`` (refused from Content-Length before
    reading when the client says how large it is); 408 when it is sent too slowly, 503 when a
    public route's bodies in flight already hold ``budget`` (hub.web.limits)."""
    too_large = ApiError(413, f"request body is larger than {max_bytes} bytes, the limit for this endpoint")
    try:
        raw = await limits.read_body(request, max_bytes, request.app[SERVICES].settings.http_body_timeout_s, budget)
    except web.HTTPRequestEntityTooLarge:
        raise too_large from None
    except limits.BodyTimeout as exc:
        raise ApiError(408, str(exc)) from None
    except limits.OverBudget:
        raise ApiError(503, "the hub is receiving too many request bodies at once; try again shortly",
                       headers={"Retry-After": "1"}) from None
    if raw is None or len(raw) > max_bytes:
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
        # in words, never a regular expression or pydantic's wording (hub.spec.models.error_message)
        details = [
            {"field": error_field(e["loc"]), "message": error_message(e)}
            for e in exc.errors(include_url=False)[:MAX_ERROR_DETAILS]
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


def check_version(version: str) -> str:
    if not is_version(version):
        shown = version if len(version) <= 80 else version[:80] + "..."
        raise ApiError(400, f"bad version {shown!r}: a version is 16 hex digits (GET /v1/functions/NAME lists them)")
    return version


def invocation_view(doc: dict[str, Any], full: bool = False) -> dict[str, Any]:
    view = {"invocation_id": doc["_id"], **{k: v for k, v in doc.items() if k != "_id"}}
    if not full:
        view.pop("stdout", None)
        view.pop("stderr", None)
    return view


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


def token_ok(given: str | None, expected: str | None) -> bool:
    # an unset expected token never matches (Settings.ensure_tokens fills them before serving)
    return bool(given) and bool(expected) and hmac.compare_digest(str(given).encode(), str(expected).encode())


def bearer(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    return auth[7:].strip() if auth.lower().startswith("bearer ") else None


@web.middleware
async def errors_and_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        if len(request.raw_path) > MAX_URL_BYTES:
            raise ApiError(414, f"the URL is longer than {MAX_URL_BYTES} bytes")
        # tokens and scopes: hub.web.auth.require_scope, the next middleware (every route's
        # scope is in hub.web.scopes; a request matching no route needs a token too)
        return await handler(request)
    except ApiError as exc:
        body: dict[str, Any] = {"error": exc.message}
        if exc.details:
            body["details"] = exc.details
        response = reply(body, exc.status)
        response.headers.update(exc.headers or {})
        return response
    except TriggerError as exc:
        return reply({"error": exc.message}, exc.status)
    except NotFound as exc:  # versions and aliases (hub.catalog.registry)
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


@web.middleware
async def fn_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The function-URL listener: what its handler does not answer itself (a path outside /fn,
    a URL too long) gets the same JSON shape as everything else."""
    try:
        if len(request.raw_path) > MAX_URL_BYTES:
            raise ApiError(414, f"the URL is longer than {MAX_URL_BYTES} bytes")
        return await handler(request)
    except ApiError as exc:
        return reply({"error": exc.message}, exc.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return reply({"error": exc.reason}, exc.status)


def _is_outage(exc: Exception) -> bool:
    from pymongo.errors import ConnectionFailure, ServerSelectionTimeoutError

    return isinstance(exc, (ConnectionFailure, ServerSelectionTimeoutError))
