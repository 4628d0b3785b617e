"""OpenAPI 3.1 description of the HTTP API.

Request schemas come straight from the pydantic models (so every bound and pattern the hub
enforces is in the document); response schemas from the small models below. Each operation
lists every status code it answers with, so a client (or a fuzzer) can rely on the document.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from hub.web import openapi_auth, openapi_lambda
from hub.spec.models import NAME_MAX, NAME_RE, VERSION_RE, AliasSpec, FunctionSpec, TriggerSpec

ID_MAX = 256
QUERY_MAX = 1024  # hub.web.MAX_QUERY_VALUE
LIMIT_MAX = 1000


class _Open(BaseModel):
    """Responses may gain fields; clients ignore the ones they do not know."""

    model_config = ConfigDict(extra="allow")


class Error(BaseModel):
    error: str = Field(description="what is wrong, for people")
    details: list[dict[str, Any]] | None = Field(default=None, description="per-field problems: field, message")


class FunctionVersionRef(_Open):
    version: str
    created_at: dt.datetime
    code_size: int | None = None
    handler: str | None = None
    deps: dict[str, Any] | None = Field(default=None, description="its dependencies, when it has some")
    latest: bool | None = Field(default=None, description="whether it is the current version")
    aliases: list[str] | None = Field(default=None, description="the aliases that point at it")


class Alias(_Open):
    name: str = Field(description="the alias (\"latest\" only in GET .../aliases/latest: the current version)")
    version: str
    description: str = ""
    function: str | None = None
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None
    previous_version: str | None = Field(default=None, description="PUT only: where it pointed before "
                                                                   "(null: created)")


class AliasList(_Open):
    function: str
    latest: str = Field(description="the current version (what NAME and NAME:latest run)")
    aliases: list[Alias]


class VersionList(_Open):
    function: str
    versions: list[FunctionVersionRef]


class Function(_Open):
    name: str
    version: str
    handler: str
    timeout_s: float
    memory_mb: int
    max_concurrency: int
    env: dict[str, Any] = Field(default={}, description="values are strings, or {\"secret\": NAME} references "
                                                        "(a secret's value is never shown)")
    network: bool = False
    description: str = ""
    code_size: int
    created_at: dt.datetime
    updated_at: dt.datetime
    new_version: bool | None = Field(default=None, description="PUT only: whether this made a new version")
    versions: list[FunctionVersionRef] | None = Field(default=None, description="GET of one function only")
    aliases: list[Alias] = []
    triggers: list[str] | None = Field(default=None, description="GET of one function only")


class FunctionList(_Open):
    functions: list[Function]


class KafkaCursor(_Open):
    group: str = Field(description="the trigger's consumer group")
    partitions: list[dict[str, Any]] = Field(description="the partitions this instance holds: {partition, committed, "
                                             "end, lag} (end: the highest of the last fetch's high watermark and what "
                                             "was read; null when not known yet)")
    lag: int | None = Field(description="sum of the partitions' lag (null: nothing known here)")
    held_elsewhere: bool = Field(description="the subscription runs here but other instances hold every partition")


class StreamCursor(_Open):
    resume_token_at: dt.datetime | None = Field(description="the cluster time of the saved change-stream position")
    age_s: float | None = Field(description="how far that is behind now")
    oplog_window_s: float | None = Field(description="how much history the oplog holds (now minus its first entry)")
    at_risk: bool | None = Field(description="age_s is at least 80% of oplog_window_s: the position may fall off the oplog")
    held_elsewhere: bool = Field(description="another instance reads this stream (the position is the stored one)")


class QueueCursor(_Open):
    inbox_depth: int | None = Field(description="s3 and schedule: inbox items queued for (or running on) the trigger")


class Trigger(_Open):
    name: str
    function: str
    source: dict[str, Any]
    filter: dict[str, Any] = {}
    retry: dict[str, Any] = {}
    batch: dict[str, Any] = {}
    ordering: str = "partition"
    enabled: bool = True
    description: str = ""
    state: str | None = Field(default=None, description="the subscription's state (GET only)")
    cursor: KafkaCursor | StreamCursor | QueueCursor | dict[str, Any] | None = Field(
        default=None, description="GET only: where the source stands, as this instance knows it (kafka: offsets and "
                                  "lag; mongodb: resume position and its age against the oplog window; s3, schedule: "
                                  "inbox depth; http: {})")
    token: str | None = Field(default=None, description="http triggers with auth 'token': the token, shown only in "
                              "the PUT that made it and in POST /v1/triggers/{name}/token")
    token_hint: str | None = Field(default=None, description="http triggers with auth 'token': its first characters")
    created_at: dt.datetime
    updated_at: dt.datetime


class FnError(_Open):
    """What /fn/ answers when the hub, not the function, decides the answer (Lambda's shape)."""

    message: str = Field(description="e.g. Not Found, Forbidden, Internal Server Error; never a traceback")
    requestId: str = Field(description="the invocation id (GET /v1/invocations/{id}), also in x-hub-request-id")


class TriggerList(_Open):
    triggers: list[Trigger]


class Invocation(_Open):
    invocation_id: str
    status: str = Field(description="succeeded, failed, timeout, out_of_memory, crashed, throttled; "
                                    "partial for a batch whose handler reported failed records; "
                                    "queued for an async invoke not started yet")
    request_id: str | None = None
    function: str | None = None
    version: str | None = Field(default=None, description="the version that ran")
    qualifier: str | None = Field(default=None, description="what was asked for: latest, an alias or a version")
    trigger: str | None = None
    event_id: str | None = Field(default=None, description="the (first) event this call handled")
    event_ids: list[str] | None = Field(default=None, description="every event this call handled")
    batch_size: int | None = Field(default=None, description="batches only: how many records")
    items: list[dict[str, Any]] | None = Field(
        default=None, description="batches only: {event_id, status: succeeded|failed|not_processed} per record")
    attempt: int | None = None
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    result: Any = None
    error: dict[str, Any] | None = None
    duration_ms: float | None = None
    billed_ms: int | None = None
    memory_mb: int | None = Field(default=None, description="the version's memory limit (for GB-seconds)")
    max_memory_mb: float | None = None
    cold_start: bool | None = None
    init_duration_ms: float | None = None
    stdout: str | None = None
    stderr: str | None = None
    output_truncated: bool | None = None
    exit_code: int | None = None
    signal: int | None = None
    trace_id: str | None = Field(default=None, description="the OpenTelemetry trace of this attempt (when the hub traces)")
    trace_url: str | None = Field(default=None, description="GET /v1/invocations/ID only: the trace in the UI "
                                                            "HUB_TRACE_URL_TEMPLATE names")


class InvocationList(_Open):
    invocations: list[Invocation] = Field(description="newest first (started_at, then invocation_id, "
                                          "descending); stdout/stderr only with include=output")
    next_cursor: str | None = Field(default=None, description="pass as ?cursor= (with the same filters) for "
                                    "the next page; null on the last page")


class UsageFigures(_Open):
    invocations: int = Field(description="handler calls (every record but throttled ones)")
    failures: int = Field(description="status failed, timeout, out_of_memory or crashed")
    partial: int = Field(description="batches whose handler reported failed records (not in failures)")
    throttles: int = Field(description="requests turned away by a full queue (status throttled)")
    billed_ms: int
    gb_seconds: float = Field(description="sum of billed_ms / 1000 x memory_mb / 1024")
    cold_starts: int
    avg_ms: float | None = Field(description="mean duration (null: no invocations)")
    p50_ms: float | None = Field(description="median duration, from a log-spaced histogram (within ~26%)")
    p99_ms: float | None = Field(description="99th percentile duration, likewise")
    max_memory_mb: float | None = Field(description="the most memory one invocation used")


class UsageBucket(UsageFigures):
    start: dt.datetime = Field(description="the hour or UTC day the bucket covers")


class FunctionUsage(UsageFigures):
    function: str


class UsageReport(_Open):
    function: str | None = Field(description="the function asked for; null: every function (see functions)")
    version: str | None = Field(default=None, description="the version asked for, if any")
    granularity: str = Field(description="hour or day")
    from_: dt.datetime = Field(alias="from", description="the period's start (floored to the granularity)")
    to: dt.datetime = Field(description="the period's end (exclusive)")
    buckets: list[UsageBucket] | None = Field(default=None, description="with function: every bucket of the period, "
                                              "oldest first, zero-filled")
    functions: list[FunctionUsage] | None = Field(default=None, description="without function: each function's "
                                                  "totals over the period, by name")
    totals: UsageFigures


class Queued(_Open):
    invocation_id: str
    status: str


class DeadLetter(_Open):
    id: str
    trigger: str | None
    function: str
    event: dict[str, Any] = Field(description="the CloudEvent")
    attempts: list[dict[str, Any]] = []
    last_error: dict[str, Any] | None = None
    last_status: str | None = None
    created_at: dt.datetime


class DeadLetterList(_Open):
    dead_letters: list[DeadLetter]


class Replayed(_Open):
    id: str
    status: str


class ReplayedAll(_Open):
    queued: int = Field(description="dead letters queued to run again")
    skipped: int = Field(description="dead letters of triggers that no longer exist")


class Deleted(_Open):
    deleted: str


class Purged(_Open):
    deleted: int = Field(description="how many dead letters were deleted")


class WebhookReceipt(_Open):
    received: int | None = None
    queued: int | None = None
    duplicates: int | None = Field(default=None, description="already queued (by the bucket scan, or an "
                                   "earlier delivery of the same notification)")
    status: str | None = Field(default=None, description="SNS subscription confirmations only")


class Health(_Open):
    status: str


class Readiness(_Open):
    ready: bool
    checks: dict[str, Any] = {}
    subscriptions: dict[str, Any] = {}
    sandbox: dict[str, Any] = {}


RESPONSE_MODELS: tuple[type[BaseModel], ...] = (
    Error, Function, FunctionList, Alias, AliasList, VersionList, Trigger, TriggerList, Invocation,
    InvocationList, Queued, UsageReport,
    DeadLetter, DeadLetterList, Replayed, ReplayedAll, Deleted, Purged, WebhookReceipt, Health, Readiness, FnError,
)

_REASONS = {
    "400": "bad input: the message says which field and why",
    "401": "missing or wrong token",
    "404": "no such resource",
    "409": "conflict with the current state",
    "413": "request body or code too large",
    "414": "URL longer than 8192 bytes",
    "502": "an upstream server (AWS SNS) failed",
    "503": "a server the hub needs (MongoDB, Kafka) is unavailable, or ready is false",
}
_ALWAYS = ("414",)  # any request can have too long a URL


def _json(model: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{model}"}}}


def _op(summary: str, ok: dict[str, str], errors: str, body: dict[str, Any] | None = None,
        public: bool = False, **extra: Any) -> dict[str, Any]:
    """``ok`` maps 2xx codes to response model names; ``errors`` lists the 4xx/5xx codes."""
    responses: dict[str, Any] = {
        code: {"description": {"201": "created", "202": "accepted"}.get(code, "ok"), "content": _json(model)}
        for code, model in ok.items()
    }
    codes = [*errors.split(), *_ALWAYS]
    if not public:
        codes.append("401")
    for code in sorted(set(codes)):
        responses[code] = {"$ref": f"#/components/responses/E{code}"}
    op: dict[str, Any] = {"summary": summary, "responses": responses}
    if body:
        op["requestBody"] = body
    if public:
        op["security"] = []
    op.update(extra)
    return op


def _with_responses(op: dict[str, Any], responses: dict[str, Any]) -> dict[str, Any]:
    """``op`` answering ``responses`` too (e.g. a 200 that is not JSON) besides its error codes."""
    op["responses"] = {**responses, **op["responses"]}
    return op


def _spec_body(model: str) -> dict[str, Any]:
    return {"required": True, "content": _json(model)}


def _param(name: str, where: str, schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    param: dict[str, Any] = {"name": name, "in": where, "required": where == "path", "schema": schema}
    if description:
        param["description"] = description
    return param


def _text(name: str, description: str = "") -> dict[str, Any]:
    return _param(name, "query", {"type": "string", "maxLength": QUERY_MAX}, description)


_NAME = _param("name", "path", {"type": "string", "pattern": NAME_RE, "maxLength": NAME_MAX})
_VERSION = _param("version", "path", {"type": "string", "pattern": VERSION_RE, "maxLength": 16},
                  "a version: 16 hex digits")
_ALIAS = _param("alias", "path", {"type": "string", "pattern": NAME_RE, "maxLength": NAME_MAX},
                "an alias: the function name pattern, not 16 hex digits; \"latest\" is reserved (GET only)")
_ID = _param("id", "path", {"type": "string", "minLength": 1, "maxLength": ID_MAX})
_LIMIT = _param("limit", "query", {"type": "integer", "minimum": 1, "maximum": LIMIT_MAX, "default": 100},
                "at most this many, newest first")
# Invocation logs (hub.web.logstream): times are ISO 8601 (a naive one is UTC) or seconds since the epoch.
_TIME = {"anyOf": [{"type": "string", "format": "date-time", "maxLength": 64},
                   {"type": "number", "minimum": 0, "maximum": 253402300799}]}
_STATUS = _text("status", "only these statuses: one, or several separated by commas (failed,timeout,crashed)")
_INVOCATION_PAGING = [
    _param("from", "query", _TIME, "only invocations that started at or after this time"),
    _param("to", "query", _TIME, "only invocations that started before this time"),
    _param("cursor", "query", {"type": "string", "maxLength": 512, "pattern": "^[A-Za-z0-9_-]+$"},
           "the next_cursor of the previous page (keep the other parameters the same); an invalid one is a 400"),
    _param("include", "query", {"type": "string", "enum": ["output"]},
           "output: add each invocation's stdout and stderr (left out by default)"),
]
_LOGS_PARAMS = [
    _NAME,
    _param("follow", "query", {"type": "boolean", "default": False},
           "true: after what exists, keep sending each new invocation as it is recorded, until the client "
           "disconnects or the hub stops"),
    _param("since", "query", _TIME, "only invocations that started at or after this time"),
    _STATUS,
    _param("limit", "query", {"type": "integer", "minimum": 1, "maximum": LIMIT_MAX, "default": 100},
           "at most this many of the existing invocations (the newest), sent oldest first"),
    _param("max_s", "query", {"type": "number", "exclusiveMinimum": 0, "maximum": 86400},
           "with follow=true: end the stream cleanly after this many seconds (within about a second); "
           "without it a following stream runs until the client disconnects or the hub stops"),
]
# The follow stream never ends by itself: marked for clients and fuzzers that read answers to
# their end (hub.web.logstream), with the query parameter that bounds it.
_LOGS_STREAM = {"x-hub-stream": {"endless_when": {"follow": True}, "bounded_by": "max_s",
                                 "heartbeat_s": 15, "media_type": "application/x-ndjson"}}
_LOGS_RESPONSES = {
    "200": {"description": "JSON lines (chunked): one Invocation (#/components/schemas/Invocation, stdout and "
                           "stderr included) per line, oldest first; a blank line every 15 s while following "
                           "(a heartbeat: skip it); a last {\"error\": ...} line if the stream fails after it began",
            "content": {"application/x-ndjson": {"schema": {"type": "string"}}}},
}


_FN_ERRORS = {
    "401": "auth 'token': no Authorization: Bearer token",
    "403": "auth 'token': not the trigger's token (the admin token never works here)",
    "404": "no enabled http trigger has this path",
    "405": "the path is routed, the method is not (see Allow)",
    "408": "the body was sent more slowly than HUB_HTTP_BODY_TIMEOUT_S allows",
    "413": "request body over 6 MB (refused from Content-Length before any is read)",
    "417": "an Expect header other than 100-continue (100 Continue itself is sent once the route, "
           "the token and the Content-Length have passed: a refused request never sends its body)",
    "429": "the function is at max_concurrency and its queue is full (Retry-After)",
    "502": "the function failed, crashed, ran out of memory or answered something that is not a response",
    "504": "the function timed out",
    "500": "the hub failed unexpectedly (a JSON error with the request id; details only in the hub's log)",
    "503": "MongoDB is unreachable, so the route or the trigger's token cannot be read (Retry-After)",
}


def _function_urls() -> dict[str, Any]:
    """/fn/{path}: the http triggers' public routes (made at run time, so described once)."""
    error = {"application/json": {"schema": {"anyOf": [{"$ref": "#/components/schemas/FnError"},
                                                       {"$ref": "#/components/schemas/Error"}]}}}
    responses: dict[str, Any] = {
        "default": {"description": "what the function answered: its statusCode, headers, cookies and body, "
                                   "or 200 application/json with any other result; x-hub-request-id always"},
        **{code: {"description": reason, "content": error} for code, reason in _FN_ERRORS.items()},
        "414": {"$ref": "#/components/responses/E414"},
    }
    body = {"required": False, "description": "anything, at most 6 MB (text or base64 in the event)",
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                        "application/json": {"schema": {}}}}
    summary = ("An http trigger's route (source.path under /fn, e.g. /fn/orders/42): runs the function "
               "synchronously with a Lambda function-URL event; auth per trigger (Bearer token or none)")
    ops = {m: {"summary": summary, "security": [], "responses": responses}
           for m in ("get", "head", "options", "delete")}
    ops.update({m: {"summary": summary, "security": [], "responses": responses, "requestBody": body}
                for m in ("post", "put", "patch")})
    return {"/fn/{path}": {"parameters": [_param("path", "path", {"type": "string"},
                                                 "the rest of the path, matched against the triggers' paths")],
                           **ops}}


def _code_zip_op() -> dict[str, Any]:
    """GET .../versions/{version}/code: a zip, not JSON."""
    op = _op("The version's code as stored (what runs), as a zip", {}, "400 404 503")
    op["responses"]["200"] = {"description": "application/zip: the stored files byte for byte",
                              "content": {"application/zip": {"schema": {"type": "string",
                                                                         "contentMediaType": "application/zip"}}}}
    return op


def openapi_spec() -> dict[str, Any]:
    """The document as a new dict (callers may change it)."""
    return dict(json.loads(openapi_json()))


@functools.cache
def openapi_json() -> str:
    """The document as JSON text, built once: it only changes with the code."""
    doc = _build()
    openapi_auth.annotate(doc)
    return json.dumps(doc)


def _build() -> dict[str, Any]:
    ref = "#/components/schemas/{model}"
    schemas: dict[str, Any] = {}
    models: tuple[type[BaseModel], ...] = (FunctionSpec, TriggerSpec, AliasSpec, *RESPONSE_MODELS,
                                           *openapi_auth.MODELS, *openapi_lambda.MODELS)
    for model in models:
        schema = model.model_json_schema(ref_template=ref)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    schemas["Metrics"] = {"type": "string"}
    responses = {
        f"E{code}": {"description": reason, "content": _json("Error")} for code, reason in _REASONS.items()
    }
    responses["E503"]["content"] = {"application/json": {"schema": {"anyOf": [
        {"$ref": "#/components/schemas/Error"}, {"$ref": "#/components/schemas/Readiness"}]}}}
    invoke_body = {
        "required": False,
        "description": "the event: any JSON value (at most 6 MB sync, 1 MB async; nested at most 64 levels)",
        "content": {"application/json": {"schema": {}}},
    }
    webhook_body = {
        "required": True,
        "description": "an S3 event notification (MinIO, Ceph RGW, AWS) or an SNS envelope; at most 1 MB",
        "content": {"application/json": {"schema": {"type": "object"}}},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Trigger Hub", "version": "1"},
        "components": {
            "schemas": schemas,
            "responses": responses,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"},
                                "sigv4": openapi_lambda.SECURITY_SCHEME},
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/functions": {"get": _op("List functions", {"200": "FunctionList"}, "503")},
            "/v1/functions/{name}": {
                "parameters": [_NAME],
                "put": _op("Create or update a function (a new immutable version when anything changed)",
                           {"200": "Function", "201": "Function"}, "400 409 413 503", _spec_body("FunctionSpec")),
                "get": _op("A function with its versions and triggers", {"200": "Function"}, "400 404 503"),
                "delete": _op("Delete a function (409 while triggers use it)", {"200": "Deleted"},
                              "400 404 409 503"),
            },
            "/v1/functions/{name}/invoke": {
                "parameters": [_NAME, _param("mode", "query", {"type": "string", "enum": ["sync", "async"],
                                                               "default": "sync"}),
                               _param("version", "query", {"type": "string", "anyOf": [
                                          {"pattern": VERSION_RE, "maxLength": 16}, {"enum": ["latest"]}]},
                                      "run this version (16 hex digits, or latest); not with alias"),
                               _param("alias", "query", {"type": "string", "pattern": NAME_RE,
                                                         "maxLength": NAME_MAX},
                                      "run the version this alias points at (or latest); not with version")],
                "post": _op("Invoke: sync answers 200 with the invocation; mode=async answers 202 with its id. "
                            "404 names an unknown version or alias",
                            {"200": "Invocation", "202": "Queued"}, "400 404 413 503", invoke_body),
            },
            "/v1/functions/{name}/versions": {
                "parameters": [_NAME],
                "get": _op("A function's versions, newest first (each stays invocable)", {"200": "VersionList"},
                           "400 404 503"),
            },
            "/v1/functions/{name}/versions/{version}": {
                "parameters": [_NAME, _VERSION],
                "delete": _op("Delete a version; 409 (details: kind latest|alias|trigger, name) while the "
                              "function's head, an alias or a trigger on NAME:VERSION uses it",
                              {"200": "Deleted"}, "400 404 409 503"),
            },
            "/v1/functions/{name}/versions/{version}/code": {
                "parameters": [_NAME, _VERSION],
                "get": _code_zip_op(),
            },
            "/v1/functions/{name}/aliases": {
                "parameters": [_NAME],
                "get": _op("A function's aliases and its current version", {"200": "AliasList"}, "400 404 503"),
            },
            "/v1/functions/{name}/aliases/{alias}": {
                "parameters": [_NAME, _ALIAS],
                "get": _op("One alias (latest: the current version)", {"200": "Alias"}, "400 404 503"),
                "put": _op("Create (201) or move (200) an alias to an existing version: moving it is a rollback, "
                           "and triggers on NAME:ALIAS run the new version from their next event",
                           {"200": "Alias", "201": "Alias"}, "400 404 409 413 503", _spec_body("AliasSpec")),
                "delete": _op("Delete an alias (409 naming the triggers that use it)", {"200": "Deleted"},
                              "400 404 409 503"),
            },
            "/v1/triggers": {
                "parameters": [_text("function", "only the triggers of this function (NAME: on any qualifier; "
                                                 "NAME:QUALIFIER: on exactly that)")],
                "get": _op("List triggers", {"200": "TriggerList"}, "400 503"),
            },
            "/v1/triggers/{name}": {
                "parameters": [_NAME],
                "put": _op("Create or update a trigger; takes effect at once (an s3 trigger answers once "
                           "every live instance has loaded it, or after 5 s)",
                           {"200": "Trigger", "201": "Trigger"}, "400 409 413 503", _spec_body("TriggerSpec")),
                "get": _op("A trigger and its subscription state", {"200": "Trigger"}, "400 404 503"),
                "delete": _op("Delete a trigger; its events stop running (an s3 trigger answers once every "
                              "live instance has dropped it, or after 5 s)", {"200": "Deleted"}, "400 404 503"),
            },
            "/v1/triggers/{name}/token": {
                "parameters": [_NAME],
                "post": _op("A new token for an http trigger with auth 'token' (shown once; the old one stops "
                            "working)", {"200": "Trigger"}, "400 404 409 503"),
            },
            **_function_urls(),
            "/v1/invocations": {
                "parameters": [
                    *(_text(p) for p in ("function", "trigger")),
                    _STATUS,
                    _text("event_id", "the invocations of one event (all attempts)"),
                    _text("request_id", "the invocations of one request (an async invoke's invocation_id)"),
                    _text("trace_id", "the invocations of one OpenTelemetry trace (32 hex digits)"),
                    _LIMIT,
                    *_INVOCATION_PAGING,
                ],
                "get": _op("Recent invocations, newest first, a page at a time (next_cursor)",
                           {"200": "InvocationList"}, "400 503"),
            },
            "/v1/functions/{name}/logs": {
                "parameters": _LOGS_PARAMS,
                "get": {**_with_responses(_op("A function's invocations with their output as JSON lines; "
                                              "follow=true streams new ones until the client leaves (or "
                                              "max_s passes)", {}, "400 404 503"), _LOGS_RESPONSES),
                        **_LOGS_STREAM},
            },
            "/v1/invocations/{id}": {
                "parameters": [_ID],
                "get": _op("One invocation with its output (status queued while an async invoke waits)",
                           {"200": "Invocation"}, "404 503"),
            },
            "/v1/dead-letters": {
                "parameters": [_text("trigger"), _text("function"), _LIMIT,
                               _param("all", "query", {"type": "string", "enum": ["true", "false"]},
                                      "DELETE: true purges every dead letter")],
                "get": _op("Dead letters", {"200": "DeadLetterList"}, "400 503"),
                "delete": _op("Purge dead letters of a trigger or function (or all=true)", {"200": "Purged"},
                              "400 503"),
            },
            "/v1/dead-letters/{id}": {
                "parameters": [_ID],
                "get": _op("One dead letter with every attempt's error", {"200": "DeadLetter"}, "404 503"),
                "delete": _op("Delete a dead letter", {"200": "Deleted"}, "404 503"),
            },
            "/v1/dead-letters/replay": {
                "parameters": [_text("trigger"), _text("function")],
                "post": _op("Run every dead letter of a trigger or function again", {"202": "ReplayedAll"},
                            "400 503"),
            },
            "/v1/dead-letters/{id}/replay": {
                "parameters": [_ID],
                "post": _op("Run the event again", {"202": "Replayed"}, "404 409 503"),
            },
            "/v1/usage": {
                "parameters": [
                    _param("function", "query", {"type": "string", "pattern": NAME_RE, "maxLength": NAME_MAX},
                           "one function: its buckets over the period and their totals; without: every "
                           "function's totals"),
                    _param("version", "query", {"type": "string", "pattern": VERSION_RE, "maxLength": 16},
                           "only this version of the function (needs function)"),
                    _param("from", "query", _TIME, "the period's start (default: to minus 24 hours), floored to "
                                                   "the hour or UTC day"),
                    _param("to", "query", _TIME, "the period's end, exclusive (default: now); at most 400 days "
                                                 "after from"),
                    _param("granularity", "query", {"type": "string", "enum": ["hour", "day"], "default": "hour"}),
                ],
                "get": _op("Usage per function: invocations, failures, throttles, billed ms, GB-seconds, cold "
                           "starts, p50/p99 duration (aggregated when records are written; kept after the "
                           "records expire)", {"200": "UsageReport"}, "400 503"),
            },
            "/v1/sources/s3/events": {
                "parameters": [_param("token", "query", {"type": "string"},
                                      "the webhook token, for servers that cannot send headers (RGW)")],
                "post": _op("Webhook for MinIO / Ceph RGW / AWS SNS S3 notifications (token in header or ?token=)",
                            {"200": "WebhookReceipt"}, "400 401 413 502 503", webhook_body, public=True),
            },
            "/healthz": {"get": _op("Liveness", {"200": "Health"}, "", public=True)},
            "/readyz": {"get": _op("Readiness: MongoDB, each subscription, sandbox isolation",
                                   {"200": "Readiness"}, "503", public=True)},
            "/metrics": {"get": _op("Prometheus metrics", {}, "", public=True, responses={
                "200": {"description": "Prometheus text format", "content": {"text/plain": {"schema": {
                    "$ref": "#/components/schemas/Metrics"}}}},
                "414": {"$ref": "#/components/responses/E414"},
            })},
            "/v1/openapi.json": {"get": _op("This document", {}, "", public=True, responses={
                "200": {"description": "OpenAPI 3.1", "content": {"application/json": {"schema": {"type": "object"}}}},
                "414": {"$ref": "#/components/responses/E414"},
            })},
            **_console_paths(),
            **openapi_auth.paths(_op, _param, _spec_body),
            **openapi_lambda.paths(_op, _param, _spec_body),
        },
    }


def _console_paths() -> dict[str, Any]:
    """The web console: static files, no token (its data comes from /v1 with the user's token)."""
    text = {"type": "string"}
    return {
        "/": {"get": _op("The web console (an HTML page; its scripts call /v1 with the token the user enters)",
                         {}, "", public=True, responses={
                             "200": {"description": "the console's page", "content": {"text/html": {"schema": text}}},
                             "414": {"$ref": "#/components/responses/E414"},
                         })},
        "/console/{file}": {
            "parameters": [_param("file", "path", {"type": "string", "pattern": r"^[a-z0-9_-]{1,64}\.(js|css)$"},
                                  "a script or style sheet of the console, e.g. app.js")],
            "get": _with_responses(_op("A static file of the web console", {}, "404", public=True), {
                "200": {"description": "the file", "content": {"text/javascript": {"schema": text},
                                                               "text/css": {"schema": text}}},
            }),
        },
    }
