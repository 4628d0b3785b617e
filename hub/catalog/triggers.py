"""Trigger lifecycle: validate, prepare the source, save; the hub then (re)starts subscriptions.

Preparing the source is what makes "takes effect without a restart" exact: the start position is
fixed at the moment the trigger is written (MongoDB cluster time, Kafka end offsets), so events
written right after the API call runs even if the subscription needs a moment to start.

A write that makes, changes or deletes an s3 trigger answers once every live instance has loaded
it (acknowledged in ``trigger_acks`` by its config watch, ``hub.catalog.watch``) or after
``TRIGGER_SEEN_WAIT_S``, naming the instances that did not answer in a warning: an S3
notification admitted after the answer is queued for exactly the s3 triggers that exist then,
on whichever instance it reaches, without that instance asking MongoDB per batch (an instance
that did not acknowledge in time still asks, as its watch no longer vouches for its set).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from pymongo.errors import OperationFailure, PyMongoError

from connectors import kafka as kafka_source
from connectors.s3 import S3Server, S3SetupError, ensure_bucket_notifications
from hub.spec import filters
from hub.spec.models import TriggerSpec
from hub.catalog.registry import qualifier_problem
from hub.catalog.watch import TRIGGERS_FRESH_S
from hub.settings import Settings
from hub.store import Store, now

log = structlog.get_logger("hub.catalog.triggers")

# How long an s3 trigger write waits for every live instance to load it. Past it, an instance
# that has not trusts its set only while its stream vouches for it (hub.catalog.watch), which
# needs this to stay well above TRIGGERS_FRESH_S.
TRIGGER_SEEN_WAIT_S = 5.0
ACK_POLL_S = 0.02
assert TRIGGER_SEEN_WAIT_S >= TRIGGERS_FRESH_S + 2.0


class TriggerError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:12]


def source_identity(source: dict[str, Any]) -> str:
    """What the trigger reads, as opposed to how: progress (resume token, consumer group) belongs
    to this, so changing operations, full_document or a filter keeps the position and backlog."""
    if source["type"] == "mongodb":
        return _hash(["mongodb", source["database"], source["collection"]])
    if source["type"] == "kafka":
        return _hash(["kafka", source["topic"]])
    if source["type"] == "http":
        return _hash(["http", route_shape(source["path"])])
    if source["type"] == "schedule":
        return _hash(["schedule", source.get("cron"), source.get("rate"), source["timezone"]])
    return _hash(["s3", source["bucket"]])


def route_shape(path: str) -> str:
    """A path template with its parameter names left out: /a/{x} and /a/{y} are the same route."""
    return "/".join("{+}" if p.endswith("+}") else "{}" if p.startswith("{") else p for p in path.split("/"))


def hash_token(token: str) -> str:
    # surrogateescape: a header's undecodable bytes hash too (and never match)
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def new_token() -> str:
    """A function-URL token: shown once, stored only as its hash."""
    return "fn_" + secrets.token_urlsafe(32)


def source_state_key(trigger: str, identity: str) -> str:
    return f"{trigger}:{identity}"


def kafka_group_id(trigger: str, identity: str, epoch: str = "") -> str:
    """A consumer group per trigger *stream*: a trigger deleted and made again, or switched to
    another topic and back, starts a new group, because a group that had members cannot be
    given fresh start offsets (Kafka refuses commits from outside an active group)."""
    return f"trigger-hub.{trigger}.{identity}" + (f".{epoch}" if epoch else "")


def public_trigger(doc: dict[str, Any]) -> dict[str, Any]:
    hidden = {"_id", "token_hash"}
    return {"name": doc["_id"], **{k: v for k, v in doc.items() if k not in hidden}}


class TriggerService:
    def __init__(self, store: Store, settings: Settings, on_change: Callable[[], Awaitable[None]],
                 instance_id: str = "") -> None:
        self.store = store
        self.instance_id = instance_id
        self.settings = settings
        self.on_change = on_change

    async def put(self, name: str, spec: TriggerSpec) -> tuple[dict[str, Any], bool]:
        # NAME, NAME:ALIAS or NAME:VERSION: the function and the qualifier must exist now (each
        # event then runs what the qualifier points at when it runs)
        problem = await qualifier_problem(self.store, spec.function)
        if problem:
            raise TriggerError(400, problem)
        try:
            filters.validate_pattern(spec.filter)
        except filters.PatternError as exc:
            raise TriggerError(400, f"filter: {exc}") from None
        source = spec.source.model_dump()
        identity = source_identity(source)
        old = await self.store.get_trigger(name)
        new_stream = old is None or old.get("source_identity") != identity
        epoch = uuid.uuid4().hex[:8] if new_stream else str((old or {}).get("source_epoch", ""))
        extra: dict[str, Any] = {}
        if source["type"] == "s3":
            extra["notifications"] = await self._prepare_s3(source)
        elif source["type"] == "mongodb":
            await self._check_mongodb(source)
            if new_stream:
                await self.store.set_source_state(
                    source_state_key(name, identity), name,
                    {"start_at_operation_time": await self.store.cluster_time(), "resume_token": None,
                     "start_after": None},
                )
        elif source["type"] == "kafka" and new_stream:
            await self._kafka_start(source["topic"], kafka_group_id(name, identity, epoch), source["start"])
        elif source["type"] == "http":
            await self._check_route(name, source, spec.enabled)
        token: str | None = None
        if source["type"] == "http" and source["auth"] == "token":
            if old is not None and old.get("token_hash") and not new_stream:
                extra["token_hash"], extra["token_hint"] = old["token_hash"], old.get("token_hint")
            else:
                token = new_token()
                extra["token_hash"], extra["token_hint"] = hash_token(token), token[:7] + "..."
        t = now()
        if source["type"] == "schedule":
            # ticks are counted from here (a rate) and nothing before it is caught up
            extra["schedule_anchor"] = old.get("schedule_anchor", t) if old and not new_stream else t
        doc = {
            "_id": name,
            **spec.model_dump(),
            "source": source,
            "source_hash": _hash(source),
            "source_identity": identity,
            "source_epoch": epoch,
            "revision": _hash(spec.model_dump()),
            **extra,
            "created_at": old["created_at"] if old else t,
            "updated_at": t,
        }
        at = await self.store.put_trigger(doc)
        loaded = await self._changed()
        if source["type"] == "s3" or (old or {}).get("source", {}).get("type") == "s3":
            await self._loaded_everywhere(name, at, loaded)
        if token is not None:
            doc = {**doc, "token": token}  # the only time it is shown
        return doc, old is None

    async def rotate_token(self, name: str) -> dict[str, Any]:
        """A new token for an http trigger with auth "token"; the old one stops working at once."""
        doc = await self.store.get_trigger(name)
        if doc is None:
            raise TriggerError(404, f"no trigger {name!r}")
        if doc["source"]["type"] != "http" or doc["source"].get("auth") != "token":
            raise TriggerError(409, f"trigger {name!r} is not an http trigger with auth 'token'")
        token = new_token()
        fields = {"token_hash": hash_token(token), "token_hint": token[:7] + "...", "updated_at": now()}
        # only these fields, and only while it is still a token-auth http trigger: a PUT that
        # lands meanwhile is not undone
        if not await self.store.set_trigger_fields(name, fields, expect={"source.type": "http", "source.auth": "token"}):
            raise TriggerError(409, f"trigger {name!r} changed meanwhile and is no longer an http trigger "
                                    "with auth 'token'")
        await self._changed()
        return {**doc, **fields, "token": token}

    async def _check_route(self, name: str, source: dict[str, Any], enabled: bool) -> None:
        """Two enabled http triggers may not answer the same method on the same route."""
        if not enabled:
            return
        shape = route_shape(source["path"])
        mine = set(source["methods"])
        for other in await self.store.list_triggers():
            src = other.get("source") or {}
            if other["_id"] == name or src.get("type") != "http" or not other.get("enabled", True):
                continue
            theirs = set(src.get("methods") or [])
            if route_shape(src.get("path", "")) == shape and ("ANY" in mine or "ANY" in theirs or mine & theirs):
                raise TriggerError(409, f"trigger {other['_id']!r} already answers {sorted(theirs)} on "
                                        f"/fn{src['path']}")

    async def delete(self, name: str) -> bool:
        old = await self.store.get_trigger(name)
        deleted, at = await self.store.delete_trigger(name)
        if deleted:
            loaded = await self._changed()
            if (old or {}).get("source", {}).get("type") == "s3":
                await self._loaded_everywhere(name, at, loaded)
        return deleted

    async def _changed(self) -> bool:
        """Apply a saved change here; False when that failed (the sync timer retries)."""
        try:
            await self.on_change()
        except Exception as exc:
            log.warning("applying trigger change failed; will retry", error=str(exc))
            return False
        return True

    async def _loaded_everywhere(self, name: str, at: Any, here: bool) -> None:
        """Wait until every live instance has acknowledged loading the trigger change made at
        cluster time ``at`` (this one's own only when applying it here failed, ``here``), or
        ``TRIGGER_SEEN_WAIT_S``: the ones that did not are named in a warning. The full wait also
        on errors: an instance trusts its set after a silent peer's wait only (hub.catalog.watch)."""
        if at is None:
            return
        deadline = time.monotonic() + TRIGGER_SEEN_WAIT_S
        missing: list[str] = []
        while True:
            try:
                live = {str(i["_id"]) for i in await self.store.live_instances()}
                if here:
                    live.discard(self.instance_id)
                acked = await self.store.trigger_acks(sorted(live), at)
                missing = sorted(live - acked)
                if not missing:
                    return
            except Exception as exc:
                missing = [f"unknown ({type(exc).__name__}: {exc})"]
            if time.monotonic() >= deadline:
                log.warning("instances have not acknowledged a trigger change: they check the s3 triggers "
                            "against MongoDB until their config watch catches up", trigger=name,
                            instances=missing, waited_s=TRIGGER_SEEN_WAIT_S)
                return
            await asyncio.sleep(ACK_POLL_S)

    async def _check_mongodb(self, source: dict[str, Any]) -> None:
        """``full_document: required`` fails on every update of a collection without post-images;
        refuse it now rather than let the stream crash-loop later."""
        if source["full_document"] != "required":
            return
        try:
            options = await self.store.collection_options(source["database"], source["collection"])
        except OperationFailure as exc:  # MongoDB refused the names: say so without its internals
            raise TriggerError(400, f"source: MongoDB cannot watch {source['database']}.{source['collection']}: "
                               f"{exc.details.get('errmsg') if exc.details else 'invalid namespace'}") from None
        except PyMongoError as exc:
            raise TriggerError(503, f"MongoDB is unavailable: {type(exc).__name__}") from None
        if not options.get("changeStreamPreAndPostImages", {}).get("enabled"):
            raise TriggerError(400, f"full_document 'required' needs changeStreamPreAndPostImages enabled on "
                               f"{source['database']}.{source['collection']}; enable it or use 'updateLookup'")

    async def _prepare_s3(self, source: dict[str, Any]) -> dict[str, Any]:
        if source["transport"] != "webhook":
            raise TriggerError(400, "source.transport 'listen' is not supported yet; use 'webhook'")
        s = self.settings
        if not s.public_url:
            others = [i for i in await self.store.live_instances() if i["_id"] != self.instance_id]
            if others:
                # the bucket would notify this instance only, and stop when it does
                raise TriggerError(409, f"{len(others) + 1} hub instances were seen in the last 30 s, but "
                                        "HUB_PUBLIC_URL is not set: S3 notifications must go to one shared address in front of "
                                        "them (a proxy or load balancer), never to one instance's own URL")
            log.warning("s3 trigger notifies this instance's own address; with more than one instance set "
                        "HUB_PUBLIC_URL to a shared address", url=s.base_url())
        if not s.s3_endpoint:
            return {"configured": False, "reason": "HUB_S3_ENDPOINT is not set: point the bucket's "
                    f"notifications at {s.base_url()}/v1/sources/s3/events?token=<HUB_WEBHOOK_TOKEN> yourself"}
        return await self._point_bucket(source["bucket"])

    async def _point_bucket(self, bucket: str) -> dict[str, Any]:
        s = self.settings
        server = S3Server(
            endpoint=s.s3_endpoint, access_key=s.s3_access_key, secret_key=s.s3_secret_key,
            region=s.s3_region, flavor=s.s3_flavor, minio_webhook_arn=s.s3_minio_webhook_arn,
            persistent=s.s3_rgw_persistent,
        )
        try:
            done = await ensure_bucket_notifications(server, bucket, self.webhook_url())
            return {"configured": True, **done, "push_url": s.base_url(), "push_hash": self.webhook_hash()}
        except S3SetupError as exc:
            raise TriggerError(400, str(exc)) from None
        except Exception as exc:  # the S3 server answered something unexpected, or not at all
            log.warning("setting up bucket notifications failed", bucket=bucket, error=repr(exc))
            raise TriggerError(503, f"could not set up notifications for bucket {bucket!r}: "
                               f"{type(exc).__name__}") from None

    async def repoint_buckets(self) -> int:
        """Point every s3 trigger's bucket at the current webhook when it was set up for another
        (HUB_PUBLIC_URL or HUB_WEBHOOK_TOKEN changed, or it was an instance's own URL); returns
        how many were moved. Raises when one could not be (the caller tries again later)."""
        s = self.settings
        if not s.s3_endpoint or not s.public_url:
            return 0  # only to a configured shared address: an instance's own one may be unknown yet
        others = {str(i.get("public_url") or "").rstrip("/") for i in await self.store.live_instances()
                  if i["_id"] != self.instance_id} - {"", s.base_url()}
        if others:
            # two live addresses: re-pointing would flip the buckets at every start; a person decides
            log.warning("live hub instances have another HUB_PUBLIC_URL; bucket notifications are left as "
                        "they are", mine=s.base_url(), theirs=sorted(others))
            return 0
        moved, failed = 0, []
        for doc in await self.store.list_triggers():
            notes = doc.get("notifications") or {}
            if doc.get("source", {}).get("type") != "s3" or not notes.get("configured"):
                continue
            if notes.get("push_hash") == self.webhook_hash():
                continue
            try:
                new = await self._point_bucket(doc["source"]["bucket"])
            except TriggerError as exc:
                failed.append(f"{doc['_id']}: {exc.message}")
                continue
            # only if the trigger is as it was read (a PUT meanwhile did its own setting up)
            if await self.store.set_trigger_fields(doc["_id"], {"notifications": new},
                                                   expect={"notifications": notes}):
                log.info("bucket notifications re-pointed", trigger=doc["_id"], bucket=doc["source"]["bucket"],
                         url=s.base_url())
                moved += 1
        if failed:
            raise RuntimeError(f"could not re-point {len(failed)} bucket(s): {'; '.join(failed)}")
        return moved

    def webhook_hash(self) -> str:
        """Which webhook (address and token) a bucket was pointed at, without storing the token."""
        return hashlib.sha256(self.webhook_url().encode()).hexdigest()[:16]

    def webhook_url(self) -> str:
        return f"{self.settings.base_url()}/v1/sources/s3/events?token={self.settings.webhook_token}"

    async def _kafka_start(self, topic: str, group_id: str, start: str) -> None:
        """Commit the group's start offsets now, so messages produced right after this call run
        even before the consumer group has joined."""
        try:
            await kafka_source.commit_start_offsets(self.settings.kafka_bootstrap, topic, group_id, start)
        except Exception as exc:
            raise TriggerError(503, f"cannot set up the consumer group on Kafka at "
                               f"{self.settings.kafka_bootstrap}: {type(exc).__name__}: {exc}") from None
