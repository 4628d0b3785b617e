"""``POST /v1/sources/s3/events``: the receiver for S3 bucket notifications (MinIO, Ceph RGW,
AWS through SNS).

A notification is written to the durable inbox before the 2xx, so an answered notification is
never lost; the S3 reconciler drops what the bucket scan or an earlier copy already queued. The
webhook token travels in ``Authorization`` or in the URL (RGW cannot send headers). An SNS
subscription confirmation is followed only to AWS SNS itself: the webhook must not become a way
to make the hub fetch arbitrary URLs.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlparse

import orjson
import structlog
from aiohttp import ClientSession, ClientTimeout, web

from connectors.s3_records import (
    NotificationError,
    SubscriptionConfirmation,
    is_aws_sns_url,
    parse_notification,
)
from hub.events import Event, json_value
from hub.tracing import s3_record_carries_metadata, valid_traceparent
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
        # orjson when it reads the body as the stdlib would (json_value: ~10 instead of ~23 us a
        # notification); else the stdlib's parser, which also words the error. owned: the parsed
        # body is handed over (nothing here reads it again), so its records are not copied
        fast = json_value(raw)
        body = fast[0] if fast is not None else parse_json(raw, MAX_PAYLOAD_DEPTH, prefix) if raw.strip() else raw
        events = parse_notification(body, owned=True, json_ready=fast is not None)
    except SubscriptionConfirmation as confirm:
        return reply(await _confirm_sns(confirm))
    except NotificationError as exc:
        raise ApiError(400, f"{prefix}{exc}") from None
    except RecursionError:  # an SNS envelope's Message is JSON in a string, parsed in there
        raise ApiError(400, f"{prefix}the SNS Message is nested too deeply") from None
    # A stored event holds its record three levels down; a body with fewer brackets than the
    # rest of the limit cannot nest that deep (unless an SNS Message hides brackets as \u escapes),
    # which spares the walk for every usual notification.
    if ((raw.count(b"{") + raw.count(b"[") + 3 > MAX_STORED_EVENT_DEPTH or b"\\u" in raw)
            and any(json_depth_exceeds(e.to_cloudevent(), MAX_STORED_EVENT_DEPTH) for e in events)):
        raise ApiError(400, f"{prefix}an event is nested more than {MAX_STORED_EVENT_DEPTH} levels deep, "
                            f"more than MongoDB can store")
    svc.metrics.events.labels("s3").inc(len(events))
    wanted = [e for e in events if svc.router.match_s3(e)]
    if len(wanted) < len(events):
        # The trigger may be new and made through another instance: look again before dropping.
        await svc.trigger_sync.reload()
        wanted = [e for e in events if svc.router.match_s3(e)]
    if svc.tracing.enabled:  # before the inbox: the stored event carries its trace to every attempt
        wanted = await _traced(svc, wanted)
    # S3 reconcile (hub/intake/s3_reconcile.py): claim ObjectCreated changes, queue, confirm; drop those
    # the bucket scan (or an earlier copy of this notification) already queued.
    queued, duplicates = await svc.s3_reconciler.admit(wanted, svc.inbox.put_events)
    # three ints, written by orjson (compact JSON, the same values) rather than json.dumps with an
    # encoder built per call: 4.0 -> 1.2 us a POST
    return web.Response(body=orjson.dumps({"received": len(events), "queued": queued, "duplicates": duplicates}),
                        content_type="application/json", charset="utf-8")


# -- tracing: the uploader's context ----------------------------------------------------------
TRACE_HEAD_TIMEOUT_S = 1.0  # the longest the HEADs of one notification hold its answer
_head_pool: ThreadPoolExecutor | None = None  # a small pool of its own: the default one is shared
_head_clients: dict[tuple[str, str, str, str], Any] = {}


async def _traced(svc: Services, events: list[Event]) -> list[Event]:
    """The receive span of each notification record: the child of the uploader's
    ``x-amz-meta-traceparent`` when a matching trigger asks for it (``trace_metadata``), else a
    new trace. RGW and MinIO put the user metadata in the record; a record without the field (AWS
    S3 through SNS) is followed by a HEAD of the object, all of a notification's at once and
    bounded by TRACE_HEAD_TIMEOUT_S: one not answered by then, or failed, means "no parent" (the
    event itself is queued either way)."""
    plans: list[tuple[Event, str | None, dict[str, Any] | None]] = []
    heads: dict[int, asyncio.Future[dict[str, str]]] = {}
    for e in events:
        triggers = svc.router.match_s3(e)
        asking = next((t for t in triggers if t.source.get("trace_metadata")), None)
        source = asking.source if asking is not None else None
        data = e.data if isinstance(e.data, dict) else {}
        if (source is not None and svc.settings.s3_endpoint and e.type.startswith("s3:ObjectCreated")
                and not e.traceparent and not s3_record_carries_metadata(data.get("raw"))):
            heads[len(plans)] = asyncio.ensure_future(_head_metadata(svc, data))
        plans.append((e, ",".join(t.name for t in triggers) or None, source))
    if heads:
        done, pending = await asyncio.wait(heads.values(), timeout=TRACE_HEAD_TIMEOUT_S)
        for f in pending:
            f.cancel()  # the thread's own timeouts end its request
        if pending:
            log.info("object HEADs for the uploader's traceparent not answered in time; new traces",
                     pending=len(pending), timeout_s=TRACE_HEAD_TIMEOUT_S)
    out = []
    for i, (e, trigger, source) in enumerate(plans):
        head = heads.get(i)
        if head is not None:
            meta = head.result() if head.done() and not head.cancelled() and head.exception() is None else {}
            parent = valid_traceparent(meta.get("traceparent"))
            state = meta.get("tracestate") if parent else None
            out.append(svc.tracing.received(e, trigger=trigger, parent=parent,
                                            tracestate=state if state and len(state) <= 512 else None))
        else:
            out.append(svc.tracing.received_from_source(e, trigger, source))
    return out


async def _head_metadata(svc: Services, data: dict[str, Any]) -> dict[str, str]:
    """``x-amz-meta-*`` of the object (lower-cased, prefix removed), from a HEAD; {} on failure."""
    global _head_pool
    bucket, key = data.get("bucket"), data.get("key")
    if not isinstance(bucket, str) or not isinstance(key, str):
        return {}
    if _head_pool is None:
        _head_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="s3-trace-head")
    version = data.get("version_id") if isinstance(data.get("version_id"), str) else None
    try:
        return await asyncio.get_running_loop().run_in_executor(
            _head_pool, _head_blocking, svc.settings, bucket, key, version)
    except Exception as exc:  # no parent, never a lost event
        log.info("object HEAD for the uploader's traceparent failed; new trace", bucket=bucket, key=key,
                 error=str(exc)[:200])
        return {}


def _head_blocking(settings: Any, bucket: str, key: str, version: str | None) -> dict[str, str]:
    ident = (settings.s3_endpoint, settings.s3_access_key, settings.s3_secret_key, settings.s3_region)
    client = _head_clients.get(ident)
    if client is None:
        import urllib3
        from minio import Minio

        url = urlparse(settings.s3_endpoint if "://" in settings.s3_endpoint else f"http://{settings.s3_endpoint}")
        # short timeouts, no retries: a thread is given up after TRACE_HEAD_TIMEOUT_S anyway
        http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=TRACE_HEAD_TIMEOUT_S, read=TRACE_HEAD_TIMEOUT_S),
                                   retries=False, maxsize=4)
        client = Minio(url.netloc, access_key=settings.s3_access_key, secret_key=settings.s3_secret_key,
                       secure=url.scheme == "https", region=settings.s3_region or None, http_client=http)
        _head_clients[ident] = client
    stat = client.stat_object(bucket, key, version_id=version)
    out: dict[str, str] = {}
    for name, value in (stat.metadata or {}).items():
        if isinstance(name, str) and isinstance(value, str) and name.lower().startswith("x-amz-meta-"):
            out[name.lower().removeprefix("x-amz-meta-")] = value
    return out


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
