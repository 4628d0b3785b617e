"""What the HTTP handlers may use: the hub's parts, named one by one.

The web layer never sees the ``Hub`` (``hub.app``): the composition root builds a
:class:`Services` from the parts it made and hands it to :func:`hub.web.routes.make_app`, and each
handler reads it from the application (``request.app[SERVICES]``). So the import graph runs one
way, from the web layer down to the parts, and a handler's needs are visible in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from hub.catalog.access_keys import AccessKeys
from hub.catalog.registry import Registry
from hub.catalog.secrets import Secrets
from hub.catalog.tokens import Tokens
from hub.catalog.triggers import TriggerService
from hub.delivery.dispatch import Dispatcher
from hub.delivery.usage import Usage
from hub.intake.cursors import Cursors
from hub.intake.inbox import Inbox
from hub.intake.router import Router
from hub.intake.s3_reconcile import S3Reconciler
from hub.intake.scheduler import Scheduler
from hub.intake.sources import Sources
from hub.intake.trigger_sync import TriggerSync
from hub.metrics import Metrics
from hub.sandbox.base import WorkerPool
from hub.settings import Settings
from hub.store import Store
from hub.tracing import Tracing
from hub.web.limits import BodyBudget
from hub.web.readiness import Readiness


@dataclass(frozen=True)
class Services:
    settings: Settings
    instance_id: str
    metrics: Metrics
    store: Store
    registry: Registry
    pool: WorkerPool
    router: Router
    dispatcher: Dispatcher
    inbox: Inbox
    triggers: TriggerService
    trigger_sync: TriggerSync
    sources: Sources
    cursors: Cursors
    scheduler: Scheduler
    usage: Usage
    s3_reconciler: S3Reconciler
    readiness: Readiness
    public_body_budget: BodyBudget  # shared by the public routes' bodies (webhook, function URLs)
    secrets: Secrets
    tokens: Tokens
    access_keys: AccessKeys  # the Lambda API's key pairs (hub.web.lambda_api)
    tracing: Tracing = field(default_factory=Tracing)  # OpenTelemetry; disabled unless configured


SERVICES: web.AppKey[Services] = web.AppKey("services", Services)
