"""``POST /v1/sources/s3/events``: the receiver for S3 bucket notifications (MinIO, Ceph RGW,
AWS through SNS).

A notification is written to the durable inbox before the 2xx, so an answered notification is
never lost; the S3 reconciler drops what the bucket scan or an earlier copy already queued. The
webhook token travels in ``Authorization`` or in the URL (RGW cannot send headers). An SNS
subscription confirmation is followed only to AWS SNS itself: the webhook must not become a way
to make the hub fetch arbitrary URLs.
"""

from __future__ import annotations

from typing import Any

import structlog
from aiohttp import ClientSession, ClientTimeout, web

from connectors.s3_records import (
    NotificationError,
    SubscriptionConfirmation,
    is_aws_sns_url,
    parse_notification,
)
from hub.events import Event
from hub.web.services import SERVICES, Services
from hub.web.wire import ApiError, MAX_PAYLOAD_DEPTH, MAX_STORED_EVENT_DEPTH, MAX_WEBHOOK_BODY, bearer, json_depth_exceeds, parse_json, read_body, reply, token_ok

log = structlog.get_logger("hub.web.s3_webhook")


# -- S3 webhook -----------------------------------------------------------------------------
async def s3_webhook(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    token = bearer(request) or request.query.get("token")
    if not token_ok(token, svc.settings.webhook_token):
        raise ApiError(401, "missing or wrong webhook token (Authorization: Bearer or ?token=)")
    raw = await read_body(request, MAX_WEBHOOK_BODY, svc.public_body_budget)
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
    svc.metrics.events.labels("s3").inc(len(events))
    wanted = [e for e in events if svc.router.match_s3(e)]
    if len(wanted) < len(events):
        # The trigger may be new and made through another instance: look again before dropping.
        await svc.trigger_sync.reload()
        wanted = [e for e in events if svc.router.match_s3(e)]
    if svc.tracing.enabled:  # before the inbox: the stored event carries its trace to every attempt
        wanted = [_traced(svc, e) for e in wanted]
    # S3 reconcile (hub/intake/s3_reconcile.py): claim ObjectCreated changes, queue, confirm; drop those
    # the bucket scan (or an earlier copy of this notification) already queued.
    queued, duplicates = await svc.s3_reconciler.admit(wanted, svc.inbox.put_events)
    return reply({"received": len(events), "queued": queued, "duplicates": duplicates})


def _traced(svc: Services, event: Event) -> Event:
    """The receive span of a notification: the child of the uploader's ``x-amz-meta-traceparent``
    when a matching trigger asks for it (``trace_metadata``), else a new trace."""
    triggers = svc.router.match_s3(event)
    asking = next((t for t in triggers if t.source.get("trace_metadata")), None)
    source = asking.source if asking is not None else None
    return svc.tracing.received_from_source(event, ",".join(t.name for t in triggers) or None, source)


async def _confirm_sns(confirm: SubscriptionConfirmation) -> dict[str, Any]:
    """Confirm an AWS SNS subscription by fetching its SubscribeURL, but only an AWS SNS one: the
    webhook must not become a way to make the hub GET arbitrary URLs."""
    if not is_aws_sns_url(confirm.subscribe_url):
        log.warning("SNS subscription confirmation with a SubscribeURL that is not AWS SNS; ignored",
                    subscribe_url=confirm.subscribe_url)
        return {"status": "ignored: SubscribeURL is not an AWS SNS endpoint"}
    try:
        async with ClientSession(timeout=ClientTimeout(total=15)) as session:
            # no redirect: an AWS SNS URL must not bounce the hub to another host
            async with session.get(confirm.subscribe_url, allow_redirects=False) as resp:
                ok = resp.status == 200
    except Exception as exc:
        log.warning("SNS subscription confirmation failed", topic=confirm.topic_arn, error=str(exc))
        raise ApiError(502, f"could not confirm the SNS subscription: {exc}") from None
    if not ok:
        raise ApiError(502, f"SNS answered {resp.status} to the subscription confirmation")
    log.info("SNS subscription confirmed", topic=confirm.topic_arn)
    return {"status": "subscription confirmed"}
