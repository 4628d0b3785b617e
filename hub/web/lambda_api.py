"""The Lambda API's Invoke, GetFunction and ListFunctions, as AWS defines them, on the admin
listener: so ``boto3.client("lambda", endpoint_url=HUB_URL).invoke(...)`` and ``aws lambda invoke
--endpoint-url HUB_URL`` work unmodified against the hub.

Why here and in AWS's words rather than the hub's: AWS's clients parse only AWS's answers
(``x-amzn-ErrorType`` and ``{"Type", "message"}`` for errors, the result itself as the body,
``X-Amz-Function-Error`` for a failed run). Everything else is the hub's own machinery: a
``RequestResponse`` invoke runs once through the dispatcher like ``POST /v1/functions/NAME/invoke``,
an ``Event`` invoke is queued in the durable inbox like ``mode=async``, and the function's
``event_format`` decides what its handler gets (in ``aws`` mode: the payload itself).

Authentication is Signature Version 4 with a key pair the hub issued (``hub.web.sigv4``,
``hub.catalog.access_keys``): these routes are public to the bearer-token middleware
(``hub.web.scopes``) and every handler here verifies the signature first. A key pair acts with
scope ``invoke``: it may invoke and read functions; it can do nothing else anywhere.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import platform
import re
import sys
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web
from opentelemetry.trace import SpanKind
from pymongo.errors import ConnectionFailure

from hub.catalog.registry import is_version, resolve
from hub.catalog.secrets import SecretUnavailable, refs
from hub.delivery.dispatch import Target
from hub.events import Event
from hub.spec.aws_events import lambda_error
from hub.spec.models import LATEST, NAME_RE, RetryPolicy, alias_name_problem
from hub.store import unstorable_reason
from hub.tracing import http_context
from hub.web.services import SERVICES, Services
from hub.web.sigv4 import SignatureRefused, Verifier
from hub.web.wire import MAX_ASYNC_PAYLOAD, MAX_PAYLOAD_DEPTH, MAX_SYNC_PAYLOAD, ApiError, finite, json_default
from hub.web.wire import parse_json, read_body

log = structlog.get_logger("hub.web.lambda_api")

PREFIX = "/2015-03-31/functions"
RUNTIME = f"python{sys.version_info.major}.{sys.version_info.minor}"
LOG_TAIL_BYTES = 4096  # Lambda's X-Amz-Log-Result: the last 4 KB
LIST_PAGE_MAX = 50  # ListFunctions answers at most 50 per page, as Lambda does
INVOCATION_TYPES = ("RequestResponse", "Event", "DryRun")
LOG_TYPES = ("None", "Tail")
_QUALIFIER_RE = re.compile(r"[a-zA-Z0-9$_.-]{1,128}")
_ARN_RE = re.compile(r"arn:aws:lambda:(?P<region>[a-z0-9-]+):(?P<account>[0-9]{12}):function:(?P<rest>.+)")
_PARTIAL_RE = re.compile(r"(?P<account>[0-9]{12}):function:(?P<rest>.+)")
_STATUS_CODES = {400: "InvalidRequestContentException", 404: "ResourceNotFoundException",
                 408: "InvalidRequestContentException", 413: "RequestTooLargeException",
                 429: "TooManyRequestsException", 503: "ServiceException"}


class LambdaError(Exception):
    """An answer in AWS's error form: ``x-amzn-ErrorType: code`` and ``{"Type", "message"}``."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def _error_response(status: int, code: str, message: str, request_id: str,
                    headers: dict[str, str] | None = None) -> web.Response:
    body = {"Type": "Service" if status >= 500 else "User", "message": message}
    return web.Response(text=json.dumps(body), status=status, content_type="application/json",
                        headers={"x-amzn-ErrorType": code, "x-amzn-RequestId": request_id, **(headers or {})})


Handler = Callable[[web.Request, Services, str, bytes], Awaitable[web.StreamResponse]]


def signed(max_body: int) -> Callable[[Handler], Callable[[web.Request], Awaitable[web.StreamResponse]]]:
    """A handler behind a verified signature: it gets the services, its request id and the body."""

    def wrap(handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def route(request: web.Request) -> web.StreamResponse:
            svc = request.app[SERVICES]
            request_id = str(uuid.uuid4())
            try:
                verifier = Verifier(svc.access_keys, svc.settings.aws_region)
                auth, amz_date, key = await verifier.key_of(request)
                # not yet authenticated: bodies count against the public routes' budget
                body = await read_body(request, max_body, svc.public_body_budget)
                verifier.verify(request, auth, amz_date, key, body)
                response = await handler(request, svc, request_id, body)
            except SignatureRefused as exc:
                return _error_response(403, exc.code, exc.message, request_id)
            except LambdaError as exc:
                return _error_response(exc.status, exc.code, exc.message, request_id, exc.headers)
            except ApiError as exc:  # the body reader's 413/408/503, a payload that is not JSON
                code = _STATUS_CODES.get(exc.status, "InvalidParameterValueException")
                return _error_response(exc.status, code, exc.message, request_id, exc.headers)
            except ConnectionFailure:
                log.warning("MongoDB is unavailable for a Lambda API request", path=request.path)
                return _error_response(503, "ServiceException", "MongoDB is unavailable; try again", request_id,
                                       {"Retry-After": "1"})
            response.headers["x-amzn-RequestId"] = request_id
            return response

        return route

    return wrap


# -- names, qualifiers, ARNs ---------------------------------------------------------------
def _split_name(svc: Services, raw: str, qualifier: str | None) -> tuple[str, str]:
    """FunctionName (a name, NAME:QUALIFIER, a full or partial ARN) and ?Qualifier= as
    (name, hub qualifier); an ARN of another region or account names nothing here."""
    aws = svc.registry.aws
    found = _ARN_RE.fullmatch(raw) or _PARTIAL_RE.fullmatch(raw)
    rest = raw
    if found is not None:
        if found.groupdict().get("region", aws.region) != aws.region or found["account"] != aws.account:
            raise LambdaError(404, "ResourceNotFoundException", f"Function not found: {raw}")
        rest = found["rest"]
    name, _, from_name = rest.partition(":")
    if not re.fullmatch(NAME_RE, name):
        raise LambdaError(400, "InvalidParameterValueException", "FunctionName: use letters, digits, '_', '-', "
                                                                 "'.' (at most 63), or an ARN of this hub")
    if from_name and qualifier is not None and from_name != qualifier:
        raise LambdaError(400, "InvalidParameterValueException", "The derived qualifier from the function name "
                                                                 "does not match the specified qualifier.")
    wanted = qualifier if qualifier is not None else from_name or None
    if wanted is None or wanted in ("$LATEST", LATEST):
        return name, LATEST
    if not _QUALIFIER_RE.fullmatch(wanted) or (not is_version(wanted) and alias_name_problem(wanted)):
        raise LambdaError(400, "InvalidParameterValueException",
                          "Qualifier: a version (16 hex digits), an alias or $LATEST")
    return name, wanted


def _not_found(svc: Services, name: str, qualifier: str) -> LambdaError:
    arn = svc.registry.aws.function_arn(name, qualifier)
    return LambdaError(404, "ResourceNotFoundException", f"Function not found: {arn}")


def _ref(name: str, qualifier: str) -> str:
    return name if qualifier == LATEST else f"{name}:{qualifier}"


async def _existing(svc: Services, name: str, qualifier: str) -> str:
    """The ref to run after checking it exists (through the registry's cache)."""
    ref = _ref(name, qualifier)
    try:
        found = await svc.registry.runtime(ref)
    except SecretUnavailable:
        return ref  # it exists; the invocation records why it cannot run (hub.delivery.dispatch)
    if found is None:
        raise _not_found(svc, name, qualifier)
    return ref


# -- Invoke --------------------------------------------------------------------------------
def _one_header(request: web.Request, name: str, allowed: tuple[str, ...], default: str) -> str:
    values = request.headers.getall(name, [])
    if len(values) > 1:
        raise LambdaError(400, "InvalidParameterValueException", f"{name} may be sent once")
    value = values[0] if values else default
    if value not in allowed:  # never echoed: the message names what is allowed
        raise LambdaError(400, "InvalidParameterValueException", f"{name} must be one of {', '.join(allowed)}")
    return value


@signed(MAX_SYNC_PAYLOAD)
async def invoke(request: web.Request, svc: Services, request_id: str, body: bytes) -> web.StreamResponse:
    kind = _one_header(request, "X-Amz-Invocation-Type", INVOCATION_TYPES, "RequestResponse")
    log_type = _one_header(request, "X-Amz-Log-Type", LOG_TYPES, "None")
    name, qualifier = _split_name(svc, request.match_info["name"], request.query.get("Qualifier"))
    ref = await _existing(svc, name, qualifier)
    if kind == "DryRun":
        return web.Response(status=204)
    if kind == "Event" and len(body) > MAX_ASYNC_PAYLOAD:
        raise LambdaError(413, "RequestTooLargeException", f"an Event invoke's payload is at most "
                                                           f"{MAX_ASYNC_PAYLOAD} bytes")
    try:  # Lambda hands {} for an empty payload
        payload = parse_json(body, MAX_PAYLOAD_DEPTH) if body.strip() else {}
    except ApiError as exc:
        raise LambdaError(400, "InvalidRequestContentException", f"Could not parse request body into json: "
                                                                 f"{exc.message}") from None
    event = Event(id=f"invoke:{uuid.uuid4().hex}", source=f"invoke://{name}", type="hub.invoke", data=payload)
    if svc.tracing.enabled:
        parent, state = http_context(request.headers, payload)
        event = svc.tracing.received(event, trigger=None, parent=parent, tracestate=state, kind=SpanKind.SERVER)
    if kind == "Event":
        problem = unstorable_reason({"data": payload})
        if problem:
            raise LambdaError(400, "InvalidRequestContentException", f"payload cannot be queued: {problem}")
        queued = await svc.inbox.put_invoke(ref, event)  # GET /v1/invocations?request_id= finds its runs
        return web.Response(status=202, headers={"x-hub-request-id": queued})
    invocation_id = uuid.uuid4().hex
    record = await svc.dispatcher.run_once(Target(ref, None, RetryPolicy(max_attempts=1)), event,
                                           invocation_id, invocation_id, 1)
    if record["status"] == "throttled":
        raise LambdaError(429, "TooManyRequestsException", "Rate Exceeded.: the function is at max_concurrency "
                                                           "and its queue is full", {"Retry-After": "1"})
    headers = {"X-Amz-Executed-Version": str(record.get("version") or ""), "x-hub-invocation-id": invocation_id}
    if log_type == "Tail":
        output = (str(record.get("stdout") or "") + str(record.get("stderr") or "")).encode("utf-8", "replace")
        headers["X-Amz-Log-Result"] = base64.b64encode(output[-LOG_TAIL_BYTES:]).decode()
    if record["status"] == "succeeded":
        result = record.get("result")
    else:
        headers["X-Amz-Function-Error"] = "Unhandled"
        result = lambda_error(record.get("error"))
    return web.Response(body=_json_bytes(result), status=200, content_type="application/json", headers=headers)


def _json_bytes(value: Any) -> bytes:
    try:
        return json.dumps(value, default=json_default, allow_nan=False).encode()
    except ValueError:  # NaN or Infinity in a result: not JSON, so sent as text
        return json.dumps(finite(value), default=json_default, allow_nan=False).encode()


# -- GetFunction, ListFunctions -------------------------------------------------------------
def _last_modified(value: Any) -> str | None:
    if not isinstance(value, dt.datetime):
        return None
    value = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}+0000"


def _architecture() -> str:
    return "arm64" if platform.machine().lower() in ("aarch64", "arm64") else "x86_64"


def configuration(svc: Services, name: str, qualifier: str, config: dict[str, Any]) -> dict[str, Any]:
    """Lambda's FunctionConfiguration from a head or version document: the fields the hub has.
    ``Environment`` holds only plain variables: one that refers to a secret is left out (a key
    pair may invoke and read, never see a secret's value)."""
    secret_vars = refs(config.get("env"))
    variables = {k: v for k, v in (config.get("env") or {}).items() if k not in secret_vars and isinstance(v, str)}
    out: dict[str, Any] = {
        "FunctionName": name,
        "FunctionArn": svc.registry.aws.function_arn(name, None if qualifier == LATEST else qualifier),
        "Runtime": RUNTIME,
        "Handler": config.get("handler"),
        "CodeSize": config.get("code_size", 0),
        "Description": config.get("description") or "",
        "Timeout": config.get("timeout_s"),
        "MemorySize": config.get("memory_mb"),
        "Version": config.get("version"),
        "Environment": {"Variables": variables},
        "State": "Active",
        "LastUpdateStatus": "Successful",
        "PackageType": "Zip",
        "Architectures": [_architecture()],
    }
    modified = _last_modified(config.get("updated_at") or config.get("created_at"))
    if modified:
        out["LastModified"] = modified
    return out


async def _config_of(svc: Services, name: str, qualifier: str) -> dict[str, Any]:
    head = await svc.store.get_function(name)
    version = resolve(head, qualifier) if head is not None else None
    if head is None or version is None:
        raise _not_found(svc, name, qualifier)
    if version == head["version"]:
        return head
    doc = await svc.store.get_version(name, version, code=False)
    if doc is None:
        raise _not_found(svc, name, qualifier)
    return doc


@signed(0)
async def get_function(request: web.Request, svc: Services, request_id: str, body: bytes) -> web.StreamResponse:
    name, qualifier = _split_name(svc, request.match_info["name"], request.query.get("Qualifier"))
    config = await _config_of(svc, name, qualifier)
    base = svc.settings.public_url.rstrip("/") or f"{request.scheme}://{request.host}"
    code_url = f"{base}/v1/functions/{name}/versions/{config['version']}/code"
    return web.json_response({
        "Configuration": configuration(svc, name, qualifier, config),
        # the hub's own URL for the version's zip: it needs a read token (Authorization: Bearer)
        "Code": {"RepositoryType": "TriggerHub", "Location": code_url},
    }, dumps=lambda v: json.dumps(v, default=json_default))


@signed(0)
async def list_functions(request: web.Request, svc: Services, request_id: str, body: bytes) -> web.StreamResponse:
    marker = request.query.get("Marker")
    if marker is not None and not re.fullmatch(NAME_RE, marker):
        raise LambdaError(400, "InvalidParameterValueException", "Marker: the NextMarker of the previous page")
    text = request.query.get("MaxItems", str(LIST_PAGE_MAX))
    if not re.fullmatch(r"[0-9]{1,5}", text) or not 1 <= int(text) <= 10000:
        raise LambdaError(400, "InvalidParameterValueException", "MaxItems: an integer from 1 to 10000")
    limit = min(int(text), LIST_PAGE_MAX)
    heads = [h for h in await svc.store.list_functions() if marker is None or str(h["_id"]) > marker]
    page = heads[:limit]
    out: dict[str, Any] = {"Functions": [configuration(svc, str(h["_id"]), LATEST, h) for h in page]}
    if len(heads) > limit:
        out["NextMarker"] = str(page[-1]["_id"])
    return web.json_response(out, dumps=lambda v: json.dumps(v, default=json_default))
