"""Admin handlers for functions: register, read, delete, invoke, and their versions and aliases.

Thin: parse and validate (``hub.web.wire``), call the registry, the dispatcher or the inbox, answer
JSON. A version can be invoked by number or alias; a version in use cannot be deleted.
"""

from __future__ import annotations

import uuid

import structlog
from opentelemetry.trace import SpanKind
from aiohttp import web

from hub.delivery.dispatch import Target
from hub.events import Event
from hub.tracing import http_context
from hub.spec.models import LATEST, AliasSpec, FunctionSpec, RetryPolicy, alias_name_problem
from hub.catalog.registry import public_function
from hub.catalog.secrets import SecretUnavailable, refs
from hub.store import unstorable_reason
from hub.web.services import SERVICES
from hub.web.wire import (
    MAX_ASYNC_PAYLOAD,
    MAX_FUNCTION_BODY,
    MAX_PAYLOAD_DEPTH,
    MAX_SYNC_PAYLOAD,
    ApiError,
    check_version,
    invocation_view,
    parse_json,
    path_name,
    read_body,
    read_json,
    reply,
    validate,
)

log = structlog.get_logger("hub.web.admin_functions")


# -- functions ------------------------------------------------------------------------------
async def put_function(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    name = path_name(request)
    spec = validate(FunctionSpec, await read_json(request, MAX_FUNCTION_BODY))
    wanted = refs(spec.model_dump(include={"env"})["env"])
    missing = await svc.secrets.missing(wanted.values())
    if missing:
        uses = [f"env {var} refers to secret {secret!r}" for var, secret in wanted.items() if secret in missing]
        raise ApiError(400, f"invalid FunctionSpec: {'; '.join(uses)}, which does not exist: create it first "
                            f"with PUT /v1/secrets/{missing[0]} {{\"value\": \"...\"}}",
                       [{"field": f"env.{var}", "message": f"no secret {secret!r}"}
                        for var, secret in wanted.items() if secret in missing])
    head, created = await svc.registry.put(name, spec)
    return reply({**public_function(head), "new_version": created}, 201 if created else 200)


async def list_functions(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    return reply({"functions": [public_function(f) for f in await svc.store.list_functions()]})


async def get_function(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    name = path_name(request)
    head = await svc.registry.head(name)
    versions = await svc.registry.versions(name)  # with created_at, code_size, deps, aliases
    triggers = [t["_id"] for t in await svc.store.list_triggers(function=name)]  # any qualifier
    return reply({
        **public_function(head),
        "versions": versions,
        "triggers": triggers,
    })


async def delete_function(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    name = path_name(request)
    users = [t["_id"] for t in await svc.store.list_triggers(function=name)]
    if users:
        raise ApiError(409, f"function {name!r} is used by triggers {users}; delete them first")
    if not await svc.store.delete_function(name):
        raise ApiError(404, f"no function {name!r}")
    await svc.pool.retire(name)
    svc.registry.forget(name)
    return reply({"deleted": name})


async def invoke_function(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    name = path_name(request)
    mode = request.query.get("mode", "sync")
    if mode not in ("sync", "async"):
        raise ApiError(400, "mode must be 'sync' or 'async'")
    ref = await _invoke_ref(request, name)  # ?version= / ?alias= (versions and aliases)
    limit = MAX_ASYNC_PAYLOAD if mode == "async" else MAX_SYNC_PAYLOAD
    raw = await read_body(request, limit)
    payload = parse_json(raw, MAX_PAYLOAD_DEPTH) if raw.strip() else None
    event = Event(id=f"invoke:{uuid.uuid4().hex}", source=f"invoke://{name}", type="hub.invoke", data=payload)
    if svc.tracing.enabled:  # the caller's traceparent (header, or a CloudEvent body's extension)
        parent, state = http_context(request.headers, payload)
        event = svc.tracing.received(event, trigger=None, parent=parent, tracestate=state, kind=SpanKind.SERVER)
    if mode == "async":
        problem = unstorable_reason({"data": payload})
        if problem:
            raise ApiError(400, f"payload cannot be queued: {problem}")
        request_id = await svc.inbox.put_invoke(ref, event)
        return reply({"invocation_id": request_id, "status": "queued"}, 202)
    invocation_id = uuid.uuid4().hex
    record = await svc.dispatcher.run_once(
        Target(ref, None, RetryPolicy(max_attempts=1)), event, invocation_id, invocation_id, 1
    )
    return reply(invocation_view(record, full=True))


# -- versions and aliases (hub.catalog.registry) ----------------------------------------------------
async def _invoke_ref(request: web.Request, name: str) -> str:
    """What an invoke runs: NAME (latest), or NAME:QUALIFIER from ?version= or ?alias=; 404 when
    the function, version or alias does not exist (checked through the registry's cache)."""
    svc = request.app[SERVICES]
    version, alias = request.query.get("version"), request.query.get("alias")
    if version is not None and alias is not None:
        raise ApiError(400, "give ?version= or ?alias=, not both")
    qualifier = LATEST
    if version is not None and version != LATEST:
        qualifier = check_version(version)
    elif alias is not None and alias != LATEST:
        qualifier = _check_alias(alias)
    ref = name if qualifier == LATEST else f"{name}:{qualifier}"
    try:
        found = await svc.registry.runtime(ref)
    except SecretUnavailable:
        return ref  # it exists; the invocation records why it cannot run (hub.delivery.dispatch)
    if found is None:
        if qualifier == LATEST or await svc.store.get_function(name) is None:
            raise ApiError(404, f"no function {name!r}")
        raise ApiError(404, f"function {name!r} has no {'version' if version is not None else 'alias'} "
                            f"{qualifier!r}")
    return ref


def _check_alias(alias: str) -> str:
    problem = alias_name_problem(alias)
    if problem:
        raise ApiError(400, problem)
    return alias


async def list_versions(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    name = path_name(request)
    return reply({"function": name, "versions": await svc.registry.versions(name)})


async def delete_version(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    name = path_name(request)
    version = check_version(request.match_info["version"])
    await svc.registry.delete_version(name, version)  # 409 naming what still uses it
    await svc.pool.retire_version(name, version)
    return reply({"deleted": version})


async def version_code(request: web.Request) -> web.Response:
    """The version's code as stored (what runs), as a zip."""
    svc = request.app[SERVICES]
    name = path_name(request)
    version = check_version(request.match_info["version"])
    data = await svc.registry.version_code(name, version)
    return web.Response(body=data, content_type="application/zip", headers={
        "Content-Disposition": f'attachment; filename="{name}-{version}.zip"'})


async def list_aliases(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    name = path_name(request)
    head = await svc.registry.head(name)
    return reply({"function": name, "latest": head["version"], "aliases": head.get("aliases") or []})


async def get_alias(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    name = path_name(request)
    alias = request.match_info["alias"]
    if alias == LATEST:  # not stored: it always means the current version
        head = await svc.registry.head(name)
        return reply({"function": name, "name": LATEST, "version": head["version"],
                      "description": "the current version", "updated_at": head.get("updated_at")})
    return reply({"function": name, **await svc.registry.alias(name, _check_alias(alias))})


async def put_alias(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    name = path_name(request)
    alias = _check_alias(request.match_info["alias"])
    spec = validate(AliasSpec, await read_json(request))
    entry, old = await svc.registry.set_alias(name, alias, spec.version, spec.description)
    return reply({"function": name, **entry, "previous_version": old["version"] if old else None},
                 200 if old else 201)


async def delete_alias(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    name = path_name(request)
    alias = _check_alias(request.match_info["alias"])
    old = await svc.registry.delete_alias(name, alias)  # 409 naming the triggers that use it
    return reply({"deleted": alias, "version": old["version"]})
