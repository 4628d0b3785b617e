"""Admin handlers for triggers: create or change, list with their state and cursors, delete,
rotate an http trigger's token. The trigger service (``hub.catalog.triggers``) does the work.
"""

from __future__ import annotations

from typing import Any

import structlog
from aiohttp import web

from hub.spec.models import TriggerSpec
from hub.catalog.triggers import public_trigger
from hub.web.function_urls import PREFIX as FN_PREFIX
from hub.web.services import SERVICES, Services
from hub.web.wire import ApiError, path_name, query_filters, read_json, reply, validate

log = structlog.get_logger("hub.web.admin_triggers")


# -- triggers -------------------------------------------------------------------------------
async def put_trigger(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    name = path_name(request)
    spec = validate(TriggerSpec, await read_json(request))
    doc, created = await svc.triggers.put(name, spec)
    return reply(_public(svc, doc), 201 if created else 200)


async def list_triggers(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    docs = await svc.store.list_triggers(function=query_filters(request, ("function",)).get("function"))
    states = svc.sources.states()
    cursors = await svc.cursors.describe(docs)  # hub.intake.cursors: never waits on Kafka
    return reply({"triggers": [{**_public(svc, d), "state": states.get(d["_id"], "n/a"),
                                **_schedule_view(svc, d), "cursor": cursors.get(d["_id"], {})} for d in docs]})


async def get_trigger(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    name = path_name(request)
    doc = await svc.store.get_trigger(name)
    if doc is None:
        raise ApiError(404, f"no trigger {name!r}")
    cursor = (await svc.cursors.describe([doc])).get(name, {})  # hub.intake.cursors: never waits on Kafka
    return reply({**_public(svc, doc), "state": svc.sources.states().get(name, "n/a"), **_schedule_view(svc, doc),
                  "cursor": cursor})


def _public(svc: Services, doc: dict[str, Any]) -> dict[str, Any]:
    """A trigger as the API shows it; an http trigger with its full function URL (as Lambda's
    FunctionUrl), on the function listener or HUB_PUBLIC_FN_URL."""
    view = public_trigger(doc)
    source = doc.get("source") or {}
    if source.get("type") == "http":
        view["url"] = f"{svc.settings.fn_base_url()}{FN_PREFIX}{source.get('path', '')}"
    return view


def _schedule_view(svc: Services, doc: dict[str, Any]) -> dict[str, Any]:
    """Schedule triggers: when they fire next (and last fired), from this instance's scheduler."""
    if (doc.get("source") or {}).get("type") != "schedule":
        return {}
    return svc.scheduler.describe(doc["_id"])


async def rotate_trigger_token(request: web.Request) -> web.Response:
    """A new token for an http trigger with auth "token", shown this once; the old one stops working."""
    svc = request.app[SERVICES]
    response = reply(_public(svc, await svc.triggers.rotate_token(path_name(request))))
    response.headers["Cache-Control"] = "no-store"
    return response


async def delete_trigger(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    name = path_name(request)
    if not await svc.triggers.delete(name):
        raise ApiError(404, f"no trigger {name!r}")
    return reply({"deleted": name})
