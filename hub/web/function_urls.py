"""HTTP triggers (function URLs): public routes under ``/fn/`` that run a function synchronously.

A request such as ``POST /fn/orders/42`` is matched against the enabled ``http`` triggers, turned
into a CloudEvent whose ``data`` is shaped like Lambda's function-URL payload (version 2.0), run
once through :meth:`hub.delivery.dispatch.Dispatcher.run_once` (no retries: the caller sees the error), and
the function's answer is mapped back the way Lambda maps it.

Why it is built this way:

- The hot path does no MongoDB round trip: routes come from the router's in-memory trigger set
  (rebuilt only when the router reloads), the function's runtime is cached by the registry, and
  the invocation record goes to a group-commit writer of its own (``RECORD_LINGER_S``) without
  being awaited. The one exception is a trigger with ``auth: "token"``: the token hashes are not
  part of the router's triggers, so they are read (one query for all of them) after each router
  reload, before the next token check; a rotation therefore takes effect on the next request.
- Routing is a trie over path segments, searched depth first with literal segments before
  parameters before a greedy ``{name+}`` tail, so the most specific template wins and the cost of a
  match does not grow with the number of routes. Among the routes that match the path, the first
  (most specific) one that accepts the method runs; when none does the answer is 405 with ``Allow``.
- Nothing about the hub's internals reaches the caller: a failed, crashed or misbehaving function
  is a 502 whose body names only the request id; the error and traceback are in the invocation
  record (``GET /v1/invocations/ID``) and in the log. The admin token is never accepted here.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import orjson
import structlog
from opentelemetry.trace import SpanKind
from aiohttp import web
from multidict import CIMultiDict
from pymongo.errors import ConnectionFailure

from hub.catalog.triggers import hash_token
from hub.delivery.dispatch import Dispatcher, Target, new_id
from hub.driver import shielded
from hub.events import Event, Prepared
from hub.intake.router import Router, Trigger
from hub.metrics import Metrics
from hub.spec.models import RetryPolicy
from hub.store import Store
from hub.tracing import Tracing, http_context
from hub.web.limits import BodyBudget, BodyTimeout, OverBudget, read_body

log = structlog.get_logger("hub.web.function_urls")

PREFIX = "/fn"
MAX_REQUEST_BODY = 6 * 1024 * 1024  # Lambda's function-URL request limit
MAX_RESPONSE_BODY = 6 * 1024 * 1024  # ... and its response limit
REQUEST_ID_HEADER = "x-hub-request-id"
ONE_ATTEMPT = RetryPolicy(max_attempts=1)
TOKEN_REFRESH_RETRY_S = 1.0
# How long the records of function-URL invocations wait for company before they are inserted
# (hub.app gives them a writer of their own). The answer never waits for its record, so a longer
# wait costs the caller nothing; fewer, larger inserts cost the hub and MongoDB less per request
# (measured under 16 connections: mongod -30 % CPU per request, the hub -10 %, next to the 2 ms of
# the shared writer, whose records Kafka lanes and sync invokes do wait for). Records reach
# ``/v1/invocations`` up to this much later; a graceful stop still writes them all. The wait ends
# once RECORD_BATCH records are waiting: per record, an insert of 50 cost mongod 33 us and the hub's
# driver 11 us, one of 100 26 / 7.5 us, one of 200 22 / 5.5 us (replica set, 10 indexes; measured
# alone). A kill -9 loses the records still waiting (their answers have gone), at most this long's.
RECORD_LINGER_S = 0.05
RECORD_BATCH = 128

# A request body is passed as text when it is UTF-8 and its type is textual; otherwise base64.
_TEXT_TYPES = ("text/", "application/json", "application/xml", "application/javascript",
               "application/x-www-form-urlencoded", "application/graphql", "application/yaml",
               "application/x-yaml", "application/ld+json", "application/x-ndjson")
_TEXT_SUFFIXES = ("+json", "+xml", "+yaml")
_TOKEN_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an RFC 9110 header name
_BAD_VALUE = re.compile(r"[\r\n\x00]")
# Set by the hub on every answer, or meaningless between the hub and the caller.
# Also never from a function: headers that act on the whole origin rather than one answer.
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "upgrade", "te",
                         "trailer", "proxy-authenticate", "proxy-authorization", REQUEST_ID_HEADER,
                         "service-worker-allowed", "clear-site-data"})
_STATUS_TEXT = {401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
                408: "Request Timeout", 413: "Request Entity Too Large", 429: "Too Many Requests", 500: "Internal Server Error",
                502: "Internal Server Error", 503: "Service Unavailable", 504: "Gateway Timeout"}
_FAILED = {"failed": 502, "crashed": 502, "out_of_memory": 502, "timeout": 504, "throttled": 429}


class BadResponse(ValueError):
    """The function answered something that cannot become an HTTP response (a 502)."""


# -- routes ---------------------------------------------------------------------------------
@dataclass(eq=False)
class Route:
    trigger: Trigger
    template: str  # "/orders/{id}", as stored (normalised by the model)
    methods: frozenset[str]  # may hold "ANY"
    params: tuple[tuple[int, str], ...]  # (segment index, name) of each {name}
    greedy: str | None  # the {name+} parameter, always last
    greedy_at: int  # its segment index
    auth: str
    cors: dict[str, Any] | None
    target: Target  # where its requests go (built once per route, not per request)
    source: str  # the events' "source": http://TRIGGER

    def accepts(self, method: str) -> bool:
        return "ANY" in self.methods or method in self.methods

    def route_key(self, method: str) -> str:
        return f"{method if method in self.methods else 'ANY'} {self.template}"


@dataclass(eq=False)
class _Node:
    literal: dict[str, _Node] = field(default_factory=dict)
    param: _Node | None = None
    greedy: list[Route] = field(default_factory=list)  # {name+}: one or more segments left
    routes: list[Route] = field(default_factory=list)  # the path ends here


def compile_route(trigger: Trigger) -> Route:
    src = trigger.source
    template = src["path"]
    segments = [p for p in template.split("/") if p]
    params = tuple((i, s[1:-1]) for i, s in enumerate(segments) if s.startswith("{") and not s.endswith("+}"))
    greedy = segments[-1][1:-2] if segments and segments[-1].endswith("+}") else None
    return Route(trigger=trigger, template="/" + "/".join(segments), methods=frozenset(src.get("methods") or ["ANY"]),
                 params=params, greedy=greedy, greedy_at=len(segments) - 1, auth=src.get("auth", "token"),
                 cors=src.get("cors"), target=Target(trigger.function, trigger.name, ONE_ATTEMPT),
                 source=f"http://{trigger.name}")


# Lookups remembered per RouteTable: most traffic hits a few paths again and again; a table
# is rebuilt (and its memo dropped) whenever the router reloads. Bounded in entries and in the
# path length kept, so paths made up by a client cannot grow it past a few MB.
MEMO_ENTRIES = 4096
MEMO_PATH_CHARS = 256


@dataclass(frozen=True, slots=True)
class Lookup:
    """What one request line resolves to: the path's segments, every route whose template
    matches them (most specific first), and the first of those that accepts the method."""

    segments: list[str]
    matched: list[Route]
    route: Route | None


class RouteTable:
    """Every enabled http trigger's route in a trie of path segments."""

    def __init__(self, triggers: Iterable[Trigger]) -> None:
        self.root = _Node()
        self.count = 0
        self._memo: dict[tuple[str, str], Lookup] = {}
        for trigger in sorted(triggers, key=lambda t: t.name):  # a stable order among equals
            if not trigger.enabled or trigger.source.get("type") != "http":
                continue
            try:
                self._add(compile_route(trigger))
            except (KeyError, TypeError, AttributeError) as exc:  # a stored trigger from older, looser rules
                log.error("http trigger has an invalid route; it does not answer", trigger=trigger.name,
                          error=str(exc))

    def _add(self, route: Route) -> None:
        node = self.root
        segments = [p for p in route.template.split("/") if p]
        for seg in segments:
            if seg.endswith("+}"):
                node.greedy.append(route)
                self.count += 1
                return
            if seg.startswith("{"):
                node.param = node.param or _Node()
                node = node.param
            else:
                node = node.literal.setdefault(seg, _Node())
        node.routes.append(route)
        self.count += 1

    def lookup(self, method: str, raw_path: str) -> Lookup:
        """The routes for ``method`` on ``raw_path`` (percent-encoded, relative to /fn)."""
        key = (method, raw_path)
        found = self._memo.get(key)
        if found is None:
            segments = split_path(raw_path)
            matched = list(self.candidates(segments))
            found = Lookup(segments, matched, next((r for r in matched if r.accepts(method)), None))
            if len(raw_path) <= MEMO_PATH_CHARS:
                if len(self._memo) >= MEMO_ENTRIES:
                    self._memo.clear()
                self._memo[key] = found
        return found

    def candidates(self, segments: list[str]) -> Iterator[Route]:
        """Routes whose template matches ``segments``, most specific first (literal before
        {param} before {greedy+}, from the left)."""
        # An explicit stack instead of recursion: paths may have many segments.
        stack: list[tuple[_Node, int, int]] = [(self.root, 0, 0)]  # (node, depth, stage)
        n = len(segments)
        while stack:
            node, depth, stage = stack.pop()
            if depth == n:
                yield from node.routes
                continue
            if stage == 0:
                stack.append((node, depth, 1))
                child = node.literal.get(segments[depth])
                if child is not None:
                    stack.append((child, depth + 1, 0))
            elif stage == 1:
                stack.append((node, depth, 2))
                if node.param is not None:
                    stack.append((node.param, depth + 1, 0))
            else:
                yield from node.greedy


def split_path(raw_path: str) -> list[str]:
    """The decoded, non-empty segments of a raw (percent-encoded) path: an encoded slash stays
    inside its segment; empty segments (a trailing slash, "//") are ignored."""
    return [unquote(s) if "%" in s else s for s in raw_path.split("/") if s]


def path_parameters(route: Route, segments: list[str]) -> dict[str, str]:
    out = {name: segments[i] for i, name in route.params}
    if route.greedy is not None:
        out[route.greedy] = "/".join(segments[route.greedy_at:])
    return out


# -- the event ------------------------------------------------------------------------------
def is_text(content_type: str) -> bool:
    ct = content_type.split(";", 1)[0].strip().lower()
    return not ct or ct.startswith(_TEXT_TYPES) or ct.endswith(_TEXT_SUFFIXES)


_encode_json = json.JSONEncoder(separators=(",", ":")).encode  # one encoder, not one per call
_clock: list[Any] = [None, "", ""]  # (second, CLF time, ISO prefix): formatted once a second


def timestamps(t: float) -> tuple[str, str]:
    """(Lambda's requestContext.time, the CloudEvent's RFC 3339 time) for ``t``."""
    second = int(t)
    if _clock[0] != second:
        tm = time.gmtime(second)
        _clock[:] = [second, time.strftime("%d/%b/%Y:%H:%M:%S +0000", tm), time.strftime("%Y-%m-%dT%H:%M:%S", tm)]
    return _clock[1], f"{_clock[2]}.{int((t - second) * 1_000_000):06d}Z"


class HttpEvent(Event):
    """A request's event, which the pool writes with orjson (:class:`hub.events.Prepared`) when
    orjson can write its ``data`` as the stdlib encoder would: it holds only ``str`` keys and
    values, a 64-bit ``int``, ``bool`` and lists, so the one thing orjson refuses is a lone
    surrogate (a header's bytes that are not UTF-8), and such an event keeps the stdlib encoder.
    The stdlib's encoding of this event was 4-8 % of the hub's busy time behind function URLs."""

    def prepared(self) -> Prepared | None:
        try:
            data = orjson.Fragment(orjson.dumps(self.data))
        except TypeError:  # orjson.JSONEncodeError
            return None
        doc = Prepared(self.to_cloudevent())
        doc["data"] = data
        return doc


def request_data(request: web.BaseRequest, route: Route, raw_path: str, segments: list[str], body: bytes,
                 request_id: str, t: float, clf_time: str, drop_authorization: bool = False) -> dict[str, Any]:
    """Lambda's function-URL / API Gateway v2 payload (version 2.0), paths relative to /fn.

    A token route's ``Authorization`` (the trigger's token) never reaches the function: the hub
    checked it, and the function's code or logs need not hold it."""
    headers: dict[str, str] = {}
    cookies: list[str] = []
    for key, value in request.headers.items():
        k = key.lower()
        if k == "authorization" and drop_authorization:
            continue
        if k == "cookie":  # in "cookies", as Lambda does, not in headers
            cookies.extend(c for c in (p.strip() for p in value.split(";")) if c)
        elif k in headers:
            headers[k] = f"{headers[k]},{value}"
        else:
            headers[k] = value
    query: dict[str, str] = {}
    for key, value in request.rel_url.query.items():
        query[key] = f"{query[key]},{value}" if key in query else value
    if not body:
        text, b64 = "", False
    elif is_text(request.headers.get("Content-Type", "")):
        try:
            text, b64 = body.decode("utf-8"), False
        except UnicodeDecodeError:
            text, b64 = base64.b64encode(body).decode("ascii"), True
    else:
        text, b64 = base64.b64encode(body).decode("ascii"), True
    method = request.method
    route_key = route.route_key(method)
    version = request.version
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return {
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": raw_path,
        "rawQueryString": request.rel_url.raw_query_string,
        "cookies": cookies,
        "headers": headers,
        "queryStringParameters": query,
        "pathParameters": path_parameters(route, segments),
        "requestContext": {
            "requestId": request_id,
            "routeKey": route_key,
            "stage": "$default",
            "time": clf_time,
            "timeEpoch": int(t * 1000),
            "domainName": request.host,
            "http": {
                "method": method,
                "path": raw_path,
                "protocol": f"HTTP/{version.major}.{version.minor}",
                "sourceIp": peer[0] if isinstance(peer, tuple) and peer else "",
                "userAgent": headers.get("user-agent", ""),
            },
        },
        "body": text,
        "isBase64Encoded": b64,
    }


# -- the answer -----------------------------------------------------------------------------
def _header_value(name: str, value: Any) -> str:
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (str, int, float)):
        text = str(value)
    else:
        raise BadResponse(f"header {name!r} has a {type(value).__name__} value; use a string")
    if _BAD_VALUE.search(text):
        raise BadResponse(f"header {name!r} contains CR, LF or NUL")
    return text


def _header_name(name: Any) -> str:
    if not isinstance(name, str) or not _TOKEN_RE.match(name):
        raise BadResponse(f"{name!r} is not a valid header name")
    return name


def to_response(result: Any) -> tuple[int, CIMultiDict[str], bytes]:
    """What the function returned -> (status, headers, body), the way Lambda function URLs map it:
    a dict with ``statusCode`` is a response; anything else is a 200 ``application/json`` with the
    JSON of it. Raises :class:`BadResponse` for what cannot be sent (a 502)."""
    headers: CIMultiDict[str] = CIMultiDict()
    if not isinstance(result, dict) or "statusCode" not in result:
        body = b"null" if result is None else _encode_json(result).encode()
        if len(body) > MAX_RESPONSE_BODY:
            raise BadResponse(f"the response is larger than {MAX_RESPONSE_BODY} bytes")
        headers["Content-Type"] = "application/json"
        return 200, headers, body
    status = result["statusCode"]
    if type(status) is not int or not 200 <= status <= 599:  # 1xx cannot be a final answer
        raise BadResponse(f"statusCode must be an integer 200-599, not {status!r}")
    given = result.get("headers")
    if given is not None and not isinstance(given, dict):
        raise BadResponse("headers must be an object of strings")
    multi = result.get("multiValueHeaders")
    if multi is not None and not isinstance(multi, dict):
        raise BadResponse("multiValueHeaders must be an object of lists of strings")
    for name, value in (given or {}).items():
        if _header_name(name).lower() not in _HOP_BY_HOP:
            headers[name] = _header_value(name, value)
    for name, values in (multi or {}).items():
        if _header_name(name).lower() in _HOP_BY_HOP:
            continue
        if not isinstance(values, list):
            raise BadResponse(f"multiValueHeaders[{name!r}] must be a list")
        if name in headers and values:
            del headers[name]  # as API Gateway: multiValueHeaders wins over headers
        for value in values:
            headers.add(name, _header_value(name, value))
    cookies = result.get("cookies")
    if cookies is not None:
        if not isinstance(cookies, list):
            raise BadResponse("cookies must be a list of strings")
        for cookie in cookies:
            if not isinstance(cookie, str):
                raise BadResponse("cookies must be a list of strings")
            headers.add("Set-Cookie", _header_value("Set-Cookie", cookie))
    raw = result.get("body")
    if raw is None:
        body = b""
    elif not isinstance(raw, str):
        raise BadResponse(f"body must be a string, not {type(raw).__name__} (json.dumps it)")
    elif result.get("isBase64Encoded") is True:
        try:
            body = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            raise BadResponse("isBase64Encoded is true but body is not valid base64") from None
    else:
        try:
            body = raw.encode("utf-8")
        except UnicodeEncodeError:
            raise BadResponse("body is not valid unicode (a lone surrogate)") from None
    if len(body) > MAX_RESPONSE_BODY:
        raise BadResponse(f"the response body is larger than {MAX_RESPONSE_BODY} bytes")
    if status in (204, 304):
        body = b""
    elif body and "Content-Type" not in headers:
        headers["Content-Type"] = "application/json"
    return status, headers, body


# -- CORS -----------------------------------------------------------------------------------
def _allowed_origin(cors: dict[str, Any], origin: str) -> str | None:
    """The Access-Control-Allow-Origin value for ``origin``, or None if it is not allowed."""
    origins = cors.get("allow_origins") or []
    if origin in origins or origin.lower() in origins:
        return origin
    if "*" in origins:
        return origin if cors.get("allow_credentials") else "*"
    return None


def cors_headers(cors: dict[str, Any], origin: str | None, headers: CIMultiDict[str]) -> None:
    """Headers of an actual (not preflight) answer; the function's own Access-Control-* are replaced."""
    for name in [k for k in headers if k.lower().startswith("access-control-")]:
        del headers[name]
    headers.add("Vary", "Origin")
    allow = _allowed_origin(cors, origin) if origin else None
    if allow is None:
        return
    headers["Access-Control-Allow-Origin"] = allow
    if cors.get("allow_credentials"):
        headers["Access-Control-Allow-Credentials"] = "true"
    if cors.get("expose_headers"):
        headers["Access-Control-Expose-Headers"] = ", ".join(cors["expose_headers"])


def preflight(route: Route, origin: str) -> web.Response:
    cors = route.cors or {}
    headers: CIMultiDict[str] = CIMultiDict({"Vary": "Origin"})
    allow = _allowed_origin(cors, origin)
    if allow is not None:
        headers["Access-Control-Allow-Origin"] = allow
        methods = cors.get("allow_methods") or sorted(route.methods)
        headers["Access-Control-Allow-Methods"] = ", ".join("*" if m == "ANY" else m for m in methods)
        if cors.get("allow_headers"):
            headers["Access-Control-Allow-Headers"] = ", ".join(cors["allow_headers"])
        if cors.get("allow_credentials"):
            headers["Access-Control-Allow-Credentials"] = "true"
        if cors.get("max_age"):
            headers["Access-Control-Max-Age"] = str(cors["max_age"])
    return web.Response(status=204, headers=headers)


# -- the handler ----------------------------------------------------------------------------
def error_response(status: int, request_id: str, message: str | None = None,
                   headers: dict[str, str] | None = None) -> web.Response:
    body = json.dumps({"message": message or _STATUS_TEXT.get(status, "Error"), "requestId": request_id})
    response = web.Response(status=status, text=body, content_type="application/json", headers=headers)
    response.headers[REQUEST_ID_HEADER] = request_id
    return response


class FunctionUrls:
    """The ``/fn/`` request handler of one hub instance."""

    def __init__(self, router: Router, dispatcher: Dispatcher, store: Store, metrics: Metrics, *,
                 body_timeout_s: float = 30.0, body_budget: BodyBudget | None = None,
                 tracing: Tracing | None = None) -> None:
        self.tracing = tracing or Tracing()
        self.body_timeout_s = body_timeout_s
        self.body_budget = body_budget
        self.router = router
        self.dispatcher = dispatcher
        self.store = store
        self._routes_of: dict[str, Trigger] | None = None
        self._table = RouteTable(())
        self._tokens: dict[str, str] = {}  # trigger name -> sha256 hex of its token
        self._tokens_of: dict[str, Trigger] | None = None  # the router's set they were read for
        self._tokens_failed_at = 0.0
        self._token_read: Any = None  # the read in flight (one at a time)
        self._requests = metrics.events.labels("http")

    def table(self) -> RouteTable:
        triggers = self.router.triggers
        if triggers is not self._routes_of:  # the router reloaded (a write, or its timer)
            self._table = RouteTable(triggers.values())
            self._routes_of = triggers
        return self._table

    async def token_hash(self, name: str) -> str | None:
        """The stored hash of trigger ``name``'s token, as of the router's current trigger set."""
        for _ in range(3):  # the router may reload again while a read is on its way
            triggers = self.router.triggers
            if self._tokens_of is triggers or time.monotonic() - self._tokens_failed_at < TOKEN_REFRESH_RETRY_S:
                break
            if self._token_read is None:
                self._token_read = asyncio.ensure_future(self._read_tokens(triggers))
            try:
                await shielded(self._token_read)
            except Exception as exc:
                self._tokens_failed_at = time.monotonic()
                log.warning("http trigger tokens could not be read; using the last known", error=str(exc))
        return self._tokens.get(name)

    async def _read_tokens(self, triggers: dict[str, Trigger]) -> None:
        try:
            self._tokens = await self.store.http_token_hashes()
            self._tokens_of = triggers
        finally:
            self._token_read = None

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        request_id = new_id()
        try:
            return await self._handle(request, request_id)
        except Exception as exc:
            # ours, not the function's: the log has it; the caller gets the request id only
            log.exception("http trigger request failed", request_id=request_id, path=request.path)
            return error_response(503 if isinstance(exc, ConnectionFailure) else 500, request_id)

    async def _handle(self, request: web.BaseRequest, request_id: str) -> web.StreamResponse:
        self._requests.inc()
        raw = request.rel_url.raw_path
        raw_path = raw[len(PREFIX):] or "/"
        method = request.method
        found = self.table().lookup(method, raw_path)
        segments, matched, route = found.segments, found.matched, found.route
        origin = request.headers.get("Origin")
        if method == "OPTIONS" and origin and "Access-Control-Request-Method" in request.headers:
            wanted = request.headers["Access-Control-Request-Method"].upper()
            target = next((r for r in matched if r.accepts(wanted)), matched[0] if matched else None)
            if target is not None and target.cors is not None:
                response = preflight(target, origin)
                response.headers[REQUEST_ID_HEADER] = request_id
                return response
        if route is None:
            if not matched:
                return error_response(404, request_id)
            allow = sorted({m for r in matched for m in r.methods} | {"OPTIONS" for r in matched if r.cors})
            return error_response(405, request_id, headers={"Allow": ", ".join(allow)})
        trigger = route.trigger
        extra: CIMultiDict[str] = CIMultiDict()
        if route.cors is not None:
            cors_headers(route.cors, origin, extra)
        if route.auth != "none":
            denied = await self._check_token(request, trigger.name)
            if denied is not None:
                more = ({"WWW-Authenticate": 'Bearer realm="fn"'} if denied == 401 else
                        {"Retry-After": "1"} if denied == 503 else None)
                return _with(error_response(denied, request_id, headers=more), extra)
        try:
            body = await read_body(request, MAX_REQUEST_BODY, self.body_timeout_s, self.body_budget)
        except BodyTimeout:
            return _with(error_response(408, request_id, "Request body timed out"), extra)
        except OverBudget:
            return _with(error_response(503, request_id, headers={"Retry-After": "1"}), extra)
        if body is None:
            return _with(error_response(413, request_id, f"Request body is larger than {MAX_REQUEST_BODY} bytes"),
                         extra)
        t = time.time()
        clf_time, iso_time = timestamps(t)
        data = request_data(request, route, raw_path, segments, body, request_id, t, clf_time,
                            drop_authorization=route.auth != "none")
        event: Event = HttpEvent(id=request_id, source=route.source, type="http.request", subject=raw_path,
                                 time=iso_time, data=data)
        if trigger.filter and not self.router.passes_filter(trigger, event):
            return _with(error_response(404, request_id), extra)
        if self.tracing.enabled:  # the caller's traceparent, or a new trace
            parent, state = http_context(request.headers)
            event = self.tracing.received(event, trigger=trigger.name, parent=parent, tracestate=state,
                                          kind=SpanKind.SERVER)
        record = await self.dispatcher.run_once(route.target, event, request_id, request_id, 1, durable=False)
        status = record["status"]
        if status != "succeeded":
            code = _FAILED.get(status, 502)
            return _with(error_response(code, request_id, headers={"Retry-After": "1"} if code == 429 else None),
                         extra)
        try:
            code, headers, payload = to_response(record["result"])
        except BadResponse as exc:
            log.warning("http trigger: the function's answer is not a valid response", trigger=trigger.name,
                        function=trigger.function, invocation_id=request_id, reason=str(exc))
            return _with(error_response(502, request_id), extra)
        if route.cors is not None:
            cors_headers(route.cors, origin, headers)
        headers[REQUEST_ID_HEADER] = request_id
        response = web.Response(status=code, body=payload, headers=headers)
        return response

    async def _check_token(self, request: web.BaseRequest, name: str) -> int | None:
        """None when the request carries the trigger's own token; else 401 (none), 403 (wrong),
        or 503 when its hash could not be read (MongoDB away since the trigger was made)."""
        auth = request.headers.get("Authorization", "")
        if auth[:7].lower() != "bearer " or not auth[7:].strip():
            return 401
        expected = await self.token_hash(name)
        if expected is None and self._tokens_of is not self.router.triggers:
            return 503
        given = hash_token(auth[7:].strip())
        if not expected or not hmac.compare_digest(given, expected):
            return 403
        return None


def _with(response: web.Response, extra: CIMultiDict[str]) -> web.Response:
    for key, value in extra.items():
        response.headers.add(key, value)
    return response
