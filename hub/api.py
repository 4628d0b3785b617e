"""HTTP API (aiohttp): functions, triggers, invocations, dead letters, the S3 webhook, health.

Handlers are thin: parse and validate, call the registry / trigger service / dispatcher / inbox,
answer JSON. Every error is JSON ``{"error": "...", "details": [...]}`` with a 4xx/5xx that fits.
"""

from __future__ import annotations

import datetime as dt
import hmac
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import ClientSession, ClientTimeout, web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from bson.errors import InvalidDocument, InvalidStringData
from pydantic import BaseModel, ValidationError
from pymongo.errors import DocumentTooLarge

from connectors.s3_records import (
    NotificationError,
    SubscriptionConfirmation,
    is_aws_sns_url,
    parse_notification,
)
from hub.dispatch import Target
from hub.events import Event
from hub.models import NAME_RE, FunctionSpec, RetryPolicy, TriggerSpec
from hub.openapi import openapi_spec
from hub.registry import CodeError, public_function
from hub.store import unstorable_reason
from hub.triggers import TriggerError, public_trigger

if TYPE_CHECKING:
    from hub.app import Hub

log = structlog.get_logger("hub.api")
HUB_KEY: web.AppKey[Hub] = web.AppKey("hub")
MAX_BODY = 16 * 1024 * 1024
MAX_ASYNC_PAYLOAD = 1024 * 1024  # queued in a MongoDB document (Lambda's async limit is 256 KB)
PUBLIC_PATHS = {"/healthz", "/readyz", "/metrics", "/v1/openapi.json", "/v1/sources/s3/events"}
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
    return web.Response(
        text=json.dumps(data, default=_default), status=status, content_type="application/json"
    )


async def read_json(request: web.Request) -> Any:
    raw = await request.read()
    if not raw:
        raise ApiError(400, "request body is empty; expected JSON")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None


def validate(model: type[BaseModel], body: Any) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        details = [
            {"field": ".".join(str(p) for p in e["loc"]) or "(body)", "message": e["msg"]}
            for e in exc.errors(include_url=False)
        ]
        summary = "; ".join(f"{d['field']}: {d['message']}" for d in details)
        raise ApiError(400, f"invalid {model.__name__}: {summary}", details) from None


def path_name(request: web.Request) -> str:
    import re

    name = request.match_info["name"]
    if not re.fullmatch(NAME_RE, name):
        raise ApiError(400, f"bad name {name!r}: use letters, digits, '_', '-', '.' (max 63)")
    return name


def query_limit(request: web.Request) -> int:
    try:
        limit = int(request.query.get("limit", "100"))
    except ValueError:
        raise ApiError(400, "limit must be an integer") from None
    if not 1 <= limit <= 1000:
        raise ApiError(400, "limit must be between 1 and 1000")
    return limit


def _token_ok(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def _bearer(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    return auth[7:].strip() if auth.lower().startswith("bearer ") else None


@web.middleware
async def errors_and_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    hub = request.app[HUB_KEY]
    try:
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
    except CodeError as exc:
        return reply({"error": f"invalid code: {exc}"}, 400)
    except DocumentTooLarge as exc:
        return reply({"error": f"too large to store: {exc}"}, 413)
    except (InvalidDocument, InvalidStringData, OverflowError) as exc:
        return reply({"error": f"a value cannot be stored (e.g. an integer beyond 64 bits or invalid "
                               f"unicode): {exc}"}, 400)
    except web.HTTPException as exc:
        if exc.status >= 400:
            return reply({"error": exc.reason}, exc.status)
        raise
    except Exception as exc:
        log.exception("request failed", path=request.path, method=request.method)
        return reply({"error": f"internal error: {type(exc).__name__}: {exc}"}, 503 if _is_outage(exc) else 500)


def _is_outage(exc: Exception) -> bool:
    from pymongo.errors import ConnectionFailure, ServerSelectionTimeoutError

    return isinstance(exc, (ConnectionFailure, ServerSelectionTimeoutError))


# -- functions ------------------------------------------------------------------------------
async def put_function(request: web.Request) -> web.Response:
    hub = request.app[HUB_KEY]
    name = path_name(request)
    spec = validate(FunctionSpec, await read_json(request))
    head, created = await hub.registry.put(name, spec)
    return reply({**public_function(head), "new_version": created}, 201 if created else 200)


async def list_functions(request: web.Request) -> web.Response:
    hub = request.app[HUB_KEY]
    return reply({"functions": [public_function(f) for f in await hub.store.list_functions()]})


async def get_function(request: web.Request) -> web.Response:
    hub = request.app[HUB_KEY]
    name = path_name(request)
    head = await hub.store.get_function(name)
    if head is None:
        raise ApiError(404, f"no function {name!r}")
    versions = await hub.store.list_versions(name)
    triggers = [t["_id"] for t in await hub.store.list_triggers(function=name)]
    return reply({
        **public_function(head),
        "versions": [{"version": v["version"], "created_at": v["created_at"]} for v in versions],
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
    if await hub.store.get_function(name) is None:
        raise ApiError(404, f"no function {name!r}")
    raw = await request.read()
    try:
        payload = json.loads(raw) if raw else None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None
    event = Event(id=f"invoke:{uuid.uuid4().hex}", source=f"invoke://{name}", type="hub.invoke", data=payload)
    if mode == "async":
        if len(raw) > MAX_ASYNC_PAYLOAD:
            raise ApiError(413, f"async payload is {len(raw)} bytes; the limit is {MAX_ASYNC_PAYLOAD}")
        problem = unstorable_reason({"data": payload})
        if problem:
            raise ApiError(400, f"payload cannot be queued: {problem}")
        request_id = await hub.inbox.put_invoke(name, event)
        return reply({"invocation_id": request_id, "status": "queued"}, 202)
    invocation_id = uuid.uuid4().hex
    record = await hub.dispatcher.run_once(
        Target(name, None, RetryPolicy(max_attempts=1)), event, invocation_id, invocation_id, 1
    )
    return reply(_invocation_view(record, full=True))


# -- triggers -------------------------------------------------------------------------------
async def put_trigger(request: web.Request) -> web.Response:
    hub = request.app[HUB_KEY]
    name = path_name(request)
    spec = validate(TriggerSpec, await read_json(request))
    doc, created = await hub.triggers.put(name, spec)
    return reply(public_trigger(doc), 201 if created else 200)


async def list_triggers(request: web.Request) -> web.Response:
    hub = request.app[HUB_KEY]
    docs = await hub.store.list_triggers(function=request.query.get("function"))
    states = hub.sources.states()
    return reply({"triggers": [{**public_trigger(d), "state": states.get(d["_id"], "n/a")} for d in docs]})


async def get_trigger(request: web.Request) -> web.Response:
    hub = request.app[HUB_KEY]
    name = path_name(request)
    doc = await hub.store.get_trigger(name)
    if doc is None:
        raise ApiError(404, f"no trigger {name!r}")
    return reply({**public_trigger(doc), "state": hub.sources.states().get(name, "n/a")})


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


async def list_invocations(request: web.Request) -> web.Response:
    hub = request.app[HUB_KEY]
    query: dict[str, Any] = {}
    for key in ("function", "trigger", "status", "event_id", "request_id"):
        if key in request.query:
            query[key] = request.query[key]
    docs = await hub.store.list_invocations(query, query_limit(request))
    return reply({"invocations": [_invocation_view(d) for d in docs]})


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
    query = {k: request.query[k] for k in ("trigger", "function") if k in request.query}
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
    await hub.inbox.put_replay(doc)
    return reply({"id": doc["_id"], "status": "queued"}, 202)


async def delete_dead_letter(request: web.Request) -> web.Response:
    hub = request.app[HUB_KEY]
    if not await hub.store.delete_dead_letter(request.match_info["id"]):
        raise ApiError(404, f"no dead letter {request.match_info['id']!r}")
    return reply({"deleted": request.match_info["id"]})


async def purge_dead_letters(request: web.Request) -> web.Response:
    hub = request.app[HUB_KEY]
    query = {k: request.query[k] for k in ("trigger", "function") if k in request.query}
    if not query and request.query.get("all") != "true":
        raise ApiError(400, "say which: ?trigger=NAME, ?function=NAME or ?all=true")
    count = await hub.store.purge_dead_letters(query)
    return reply({"deleted": count})


# -- S3 webhook -----------------------------------------------------------------------------
async def s3_webhook(request: web.Request) -> web.Response:
    hub = request.app[HUB_KEY]
    token = _bearer(request) or request.query.get("token")
    if not _token_ok(token, hub.settings.webhook_token):
        raise ApiError(401, "missing or wrong webhook token (Authorization: Bearer or ?token=)")
    raw = await request.read()
    try:
        events = parse_notification(raw)
    except SubscriptionConfirmation as confirm:
        return reply(await _confirm_sns(confirm))
    except NotificationError as exc:
        raise ApiError(400, f"not an S3 notification: {exc}") from None
    hub.metrics.events.labels("s3").inc(len(events))
    wanted = [e for e in events if hub.router.match_s3(e)]
    if len(wanted) < len(events):
        # The trigger may be new and made through another instance: look again before dropping.
        await hub.reload_triggers()
        wanted = [e for e in events if hub.router.match_s3(e)]
    await hub.inbox.put_events(wanted)
    return reply({"received": len(events), "queued": len(wanted)})


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
    return reply(openapi_spec())


def make_app(hub: Hub) -> web.Application:
    app = web.Application(middlewares=[errors_and_auth], client_max_size=MAX_BODY)
    app[HUB_KEY] = hub
    r = app.router
    r.add_put("/v1/functions/{name}", put_function)
    r.add_get("/v1/functions", list_functions)
    r.add_get("/v1/functions/{name}", get_function)
    r.add_delete("/v1/functions/{name}", delete_function)
    r.add_post("/v1/functions/{name}/invoke", invoke_function)
    r.add_put("/v1/triggers/{name}", put_trigger)
    r.add_get("/v1/triggers", list_triggers)
    r.add_get("/v1/triggers/{name}", get_trigger)
    r.add_delete("/v1/triggers/{name}", delete_trigger)
    r.add_get("/v1/invocations", list_invocations)
    r.add_get("/v1/invocations/{id}", get_invocation)
    r.add_get("/v1/dead-letters", list_dead_letters)
    r.add_delete("/v1/dead-letters", purge_dead_letters)
    r.add_get("/v1/dead-letters/{id}", get_dead_letter)
    r.add_post("/v1/dead-letters/{id}/replay", replay_dead_letter)
    r.add_delete("/v1/dead-letters/{id}", delete_dead_letter)
    r.add_post("/v1/sources/s3/events", s3_webhook)
    r.add_get("/healthz", healthz)
    r.add_get("/readyz", readyz)
    r.add_get("/metrics", metrics)
    r.add_get("/v1/openapi.json", openapi)
    return app
