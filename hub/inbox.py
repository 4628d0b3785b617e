"""The durable inbox: webhook events, async invokes and replays, processed from MongoDB.

An item is written before the HTTP caller gets its 2xx, claimed with a lease (so several hub
instances can share the work and a crashed one's items come back), renewed while it runs, and
deleted only when every trigger it went to has finished with it.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import structlog
from bson import ObjectId

from hub.dispatch import Dispatcher, Target, dead_letter_id
from hub.events import Event
from hub.metrics import Metrics
from hub.models import RetryPolicy
from hub.router import Router
from hub.store import Store, now

log = structlog.get_logger("hub.inbox")

# Lambda's async invocation default: the first try plus two retries.
ASYNC_INVOKE_RETRY = RetryPolicy(max_attempts=3, backoff_s=1.0, max_backoff_s=60.0)
# Deliveries of one inbox item (hub-side failures such as a MongoDB outage) before it is
# dead-lettered; with the growing delay between them this is about an hour.
MAX_DELIVERIES = 20


class Inbox:
    def __init__(
        self,
        store: Store,
        router: Router,
        dispatcher: Dispatcher,
        metrics: Metrics,
        *,
        owner: str,
        concurrency: int = 16,
        lease_s: float = 300.0,
        poll_interval_s: float = 0.5,
    ) -> None:
        self.store = store
        self.router = router
        self.dispatcher = dispatcher
        self.metrics = metrics
        self.owner = owner
        self.concurrency = concurrency
        self.lease_s = lease_s
        self.poll_interval_s = poll_interval_s
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # -- writers ----------------------------------------------------------------------------
    async def put_events(self, events: list[Event]) -> None:
        await self._put([self._item("s3", e) for e in events])

    async def put_invoke(self, function: str, event: Event) -> str:
        request_id = uuid.uuid4().hex
        await self._put([self._item("invoke", event, function=function, request_id=request_id)])
        return request_id

    async def put_replay(self, dead_letter: dict[str, Any]) -> None:
        event = Event.from_cloudevent(dead_letter["event"])
        await self._put([self._item(
            "replay", event, function=dead_letter["function"], trigger=dead_letter["trigger"],
            dead_letter_id=dead_letter["_id"],
        )])

    @staticmethod
    def _item(kind: str, event: Event, **fields: Any) -> dict[str, Any]:
        t = now()
        return {"_id": ObjectId(), "kind": kind, "event": event.to_cloudevent(), "state": "pending",
                "created_at": t, "not_before": t, "deliveries": 0, **fields}

    async def _put(self, items: list[dict[str, Any]]) -> None:
        await self.store.inbox_put(items)
        self._wake.set()

    async def idle(self) -> None:
        """Wait until nothing is queued or running (used by tests and graceful shutdown)."""
        while await self.store.inbox_depth():
            await asyncio.sleep(0.05)

    # -- processing -------------------------------------------------------------------------
    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._worker(i), name=f"inbox-{i}") for i in range(self.concurrency)]
        self._tasks.append(asyncio.create_task(self._poll(), name="inbox-poll"))

    async def _poll(self) -> None:
        """Wake the workers for items they were not told about (written by other instances,
        retries coming due, expired leases): one cheap query per interval, so an idle hub with
        many workers does not hammer MongoDB."""
        while True:
            await asyncio.sleep(self.poll_interval_s)
            try:
                if await self.store.inbox_ready():
                    self._wake.set()
            except Exception:
                pass  # the workers report outages when they next claim

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _worker(self, index: int) -> None:
        failures = 0
        while True:
            try:
                item = await self.store.inbox_claim(self.owner, self.lease_s)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                if failures == 1 and index == 0:
                    log.warning("inbox unavailable; retrying", error=str(exc))
                await asyncio.sleep(min(0.5 * 2**failures, 10.0))
                continue
            if item is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            # others may be waiting too: there may be more
            self._wake.set()
            await self._process(item)

    async def _process(self, item: dict[str, Any]) -> None:
        renew = asyncio.create_task(self._renew(item["_id"]))
        try:
            if item["deliveries"] > MAX_DELIVERIES:
                await self._give_up(item)
            else:
                await self._run(item)
            await self.store.inbox_done(item["_id"])
        except asyncio.CancelledError:
            # shutting down: hand the item back at once rather than after the lease
            await asyncio.shield(self._release_quietly(item["_id"]))
            raise
        except Exception as exc:
            delay = min(2.0 ** item["deliveries"], 300.0)
            log.warning("inbox item failed; it will be retried", item=str(item["_id"]), error=str(exc),
                        deliveries=item["deliveries"], retry_in_s=delay, exc_info=True)
            await self._release_quietly(item["_id"], delay, f"{type(exc).__name__}: {exc}")
        finally:
            renew.cancel()

    async def _give_up(self, item: dict[str, Any]) -> None:
        """An item that failed every delivery (not the function: the hub could not process it)."""
        event = Event.from_cloudevent(item["event"])
        target_key = item.get("trigger") or f"inbox:{item['kind']}"
        await self.store.put_dead_letter({
            "_id": dead_letter_id(target_key, event.id),
            "trigger": item.get("trigger"),
            "function": item.get("function"),
            "event": item["event"],
            "attempts": [],
            "last_status": "undeliverable",
            "last_error": {"type": "InboxDeliveryFailed",
                           "message": f"gave up after {item['deliveries'] - 1} deliveries: {item.get('last_error')}"},
            "created_at": now(),
        })
        log.error("inbox item dead-lettered after repeated failures", item=str(item["_id"]),
                  last_error=item.get("last_error"))

    async def _release_quietly(self, item_id: Any, delay_s: float = 0.0, error: str | None = None) -> None:
        try:
            await self.store.inbox_release(item_id, self.owner, delay_s, error)
        except Exception:
            pass  # the lease runs out and the item is claimed again

    async def _renew(self, item_id: Any) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                if not await self.store.inbox_renew(item_id, self.owner, self.lease_s):
                    log.warning("inbox lease lost; another instance may run this item too", item=str(item_id))
                    return
            except Exception as exc:
                log.warning("inbox lease renewal failed; retrying", item=str(item_id), error=str(exc))

    async def _run(self, item: dict[str, Any]) -> None:
        event = Event.from_cloudevent(item["event"])
        kind = item["kind"]
        if kind == "s3":
            async with asyncio.TaskGroup() as group:  # one failing delivery cancels the rest
                for t in self.router.match_s3(event):
                    group.create_task(self.dispatcher.deliver(Target(t.function, t.name, t.retry), event))
        elif kind == "invoke":
            target = Target(item["function"], None, ASYNC_INVOKE_RETRY)
            await self.dispatcher.deliver(target, event, request_id=item["request_id"])
        elif kind == "replay":
            await self._replay(item, event)
        else:
            log.error("unknown inbox item kind; dropped", kind=kind, item=str(item["_id"]))

    async def _replay(self, item: dict[str, Any], event: Event) -> None:
        name = item.get("trigger")
        if name is None:
            target = Target(item["function"], None, ASYNC_INVOKE_RETRY)
        else:
            trigger = self.router.triggers.get(name)
            if trigger is None:
                log.warning("replay dropped: trigger no longer exists", trigger=name)
                return
            target = Target(trigger.function, trigger.name, trigger.retry)
        await self.store.forget_dead_lettered(target.key, event.id, item["dead_letter_id"])
        outcome = await self.dispatcher.deliver(target, event)
        if outcome == "succeeded":
            await self.store.delete_dead_letter(item["dead_letter_id"])
