"""Health and introspection: ``/healthz`` (the process answers), ``/readyz`` (what this
instance can do now, ``hub.web.readiness``), ``/metrics`` (Prometheus) and the OpenAPI document.
"""

from __future__ import annotations


import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from hub.web.auth import principal_of
from hub.web.openapi import openapi_json
from hub.web.services import SERVICES, Services
from hub.web.wire import reply

log = structlog.get_logger("hub.web.health")


# -- health ---------------------------------------------------------------------------------
async def healthz(request: web.Request) -> web.Response:
    return reply({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Public for probes, but only "ready or not" without a token that may read: the detail
    names servers, subscriptions and the sandbox, which is an attacker's map."""
    svc = request.app[SERVICES]
    report = await svc.readiness.report()
    status = 200 if report["ready"] else 503
    principal = await principal_of(request)
    if principal is None:  # (every token's scope includes read)
        return reply({"ready": report["ready"]}, status)
    return reply(report, status)


async def metrics(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    await refresh_gauges(svc)
    return web.Response(body=generate_latest(svc.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def refresh_gauges(svc: Services) -> None:
    # trigger lag, cursor age, inbox depth, dead letters: bounded reads (hub.intake.cursors)
    await svc.cursors.refresh_gauges(svc.metrics)
    totals = svc.pool.stats().get("totals", {})
    for state in ("warm", "busy", "queued"):
        if state in totals:
            svc.metrics.workers.labels(state).set(totals[state])


async def openapi(request: web.Request) -> web.Response:
    return web.Response(text=openapi_json(), content_type="application/json")
