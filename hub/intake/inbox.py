"""The durable inbox: webhook events, async invokes and replays, processed from MongoDB.

An item is written before the HTTP caller gets its 2xx, claimed with a lease (so several hub
instances share the work and a crashed one's items come back), renewed while it runs, and
deleted only when every trigger it went to has finished with it.

Claims, renewals and deletes are bulk operations: the claimer takes up to ``claim_batch`` items
that can run now (never more than ``capacity`` held at once), hands each to a queue per target
(an S3 trigger, a function's async invokes, replays), and a few workers per queue run them in
chunks through the dispatcher (a trigger's batch size and window apply; the inbox is an
unordered source, so a failed record in a batch does not hold up the others). Finished items
are deleted together; one lease renewal covers every item held. A hub that restarts with the
same instance id takes its own claims back at once instead of waiting for their leases.

The instance that writes items claims those it has room for in the same insert and runs them at
once (``_put``): a MongoDB round trip costs this hub a few hundred microseconds of CPU, and a
claim took three, on every instance its change stream woke (issue 21). Only what it has no room
for is written pending, which is what wakes the other instances' claimers.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from bson import ObjectId

from connectors.base import Unfinished
from hub.delivery.dispatch import Dispatcher, Target
from hub.events import Event
from hub.metrics import Metrics
from hub.spec.models import RetryPolicy
from hub.delivery.records import dead_letter_id
from hub.driver import shielded
from hub.intake.router import Router
from hub.store import Store, now, storable_bson

log = structlog.get_logger("hub.intake.inbox")

# Lambda's async invocation default: the first try plus two retries.
ASYNC_INVOKE_RETRY = RetryPolicy(max_attempts=3, backoff_s=1.0, max_backoff_s=60.0)
# Deliveries of one inbox item (hub-side failures such as a MongoDB outage) before it is
# dead-lettered; with the growing delay between them this is about an hour.
MAX_DELIVERIES = 20
MAX_CHUNK = 100  # events of one trigger run back to back with one duplicate check
# The longest an item of a batching trigger waits for a chunk of that trigger already running
# here (see ``_spawn``): bounded, so a slow function's batches still run side by side.
LINGER_S = 0.05


def redelivery_delay(deliveries: int) -> float:
    """Pause before an item that failed on the hub side is offered again: 2, 4, ... 300 s."""
    return float(min(2.0 ** deliveries, 300.0))


@dataclass(eq=False)
class _Held:
    """A claimed item and the targets it still waits for."""

    item: dict[str, Any]
    pending: int = 0
    error: str | None = None

    @property
    def fence(self) -> tuple[Any, Any]:
        """(item id, claim): every write about the item carries its claim, so it is refused
        once another instance has claimed the item (this one's lease ran out)."""
        return self.item["_id"], self.item.get("claim")


@dataclass(eq=False)
class _Entry:
    held: _Held
    target: Target
    event: Event
    request_id: str | None = None
    replay_of: str | None = None
    arrived: float = field(default_factory=time.monotonic)


class _Queue:
    def __init__(self, batch_size: int = 1) -> None:
        self.entries: asyncio.Queue[_Entry] = asyncio.Queue()
        self.workers: set[asyncio.Task[None]] = set()
        self.batch_size = batch_size
        self.busy = 0  # workers running a chunk now
        self.arrived = -LINGER_S  # when the last entry was routed here (monotonic)
        self.flowing = False  # the entry before it came less than LINGER_S earlier
        self.linger: asyncio.TimerHandle | None = None


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
        lease_s: float = 15.0,
        poll_interval_s: float = 2.0,
        capacity: int = 1000,
        claim_batch: int = 200,
        shutdown_grace_s: float = 10.0,
        retry_delay: Callable[[int], float] = redelivery_delay,
        reload_triggers: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.store = store
        self.router = router
        self.dispatcher = dispatcher
        self.metrics = metrics
        self.owner = owner
        self.concurrency = concurrency
        self.lease_s = lease_s
        self.poll_interval_s = poll_interval_s
        self.capacity = capacity
        self.claim_batch = claim_batch
        self.shutdown_grace_s = shutdown_grace_s
        self.retry_delay = retry_delay  # a seam: tests make hub-side redelivery immediate
        self.reload_triggers = reload_triggers
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._stopping = asyncio.Event()
        self._reload: asyncio.Future[None] | None = None
        self._held: dict[Any, _Held] = {}
        self._queues: dict[str, _Queue] = {}
        self._finished: list[tuple[Any, Any]] = []  # (item id, claim) of items to delete
        self._closed = False  # stopping, past the grace: nothing more is routed or started
        self._unloadable: set[str] = set()  # s3 triggers stored but still unknown after a reload
        self._reserved = 0  # items being inserted already claimed by this instance (``_put``)
        self._flush = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._side: set[asyncio.Task[None]] = set()
        # Set by the composition root: True while this instance's trigger set holds every trigger
        # write answered so far (hub.catalog.watch), which spares the check below its query
        self.triggers_current: Callable[[], bool] | None = None

    # -- writers ----------------------------------------------------------------------------
    async def put_events(self, events: list[Event]) -> None:
        """Queue S3 events for the triggers that match them *now*: the item names them, so an
        instance whose trigger set lags behind still runs exactly those (see ``_entries``)."""
        if events and self.reload_triggers is not None:
            await self._current_s3_triggers(events)
        await self._put([self._item("s3", e, triggers=[t.name for t in self.router.match_s3(e)])
                         for e in events])

    async def _current_s3_triggers(self, events: list[Event]) -> None:
        """A trigger made through another instance a moment ago may not be known here yet (the
        config watch reloads within milliseconds, the timer within a sync interval): an event
        that matches one known trigger would then be queued without the new one. One small
        query says which s3 triggers exist on these buckets; a name not known here reloads.
        No query while the config watch vouches for the set: s3 trigger writes answer only once
        every live instance has loaded them (hub.catalog.triggers), a round trip per batch less."""
        if self.triggers_current is not None and self.triggers_current():
            return
        buckets = sorted({str((e.data or {}).get("bucket") or "") for e in events} - {""})
        if not buckets:
            return
        try:
            stored = await shielded(self.store.inbox_s3_triggers(buckets))
        except Exception as exc:
            log.debug("could not check the s3 triggers against MongoDB's", error=str(exc))
            return
        unknown = stored - set(self.router.triggers)
        if unknown - self._unloadable:
            await self._reload_triggers()
            # a stored trigger the router refuses (written under older, looser rules) stays
            # unknown: it must not cost a reload on every notification
            self._unloadable = stored - set(self.router.triggers)

    async def put_invoke(self, function: str, event: Event) -> str:
        request_id = uuid.uuid4().hex
        await self._put([self._item("invoke", event, function=function, request_id=request_id)])
        return request_id

    async def put_replays(self, dead_letters: list[dict[str, Any]]) -> None:
        if dead_letters:
            await self._put([self._item("replay", Event.from_cloudevent(d["event"]), function=d["function"],
                                        trigger=d["trigger"], dead_letter_id=d["_id"]) for d in dead_letters])

    @staticmethod
    def _item(kind: str, event: Event, **fields: Any) -> dict[str, Any]:
        t = now()
        item = {"_id": ObjectId(), "kind": kind, "event": event.to_cloudevent(), "state": "pending",
                "created_at": t, "not_before": t, "deliveries": 0, **fields}
        if event.json_ready:  # kept with the item: BSON gives each of those types back as it was
            item["json_ready"] = True
        return item

    async def _put(self, items: list[dict[str, Any]]) -> None:
        """Insert the items, those this instance has room for already claimed by it: they are
        routed here at once, without a claim's round trips, and wake no other instance's claimer
        (the change stream passes on pending inserts only). The rest are left pending for
        whichever claimer has room. A self-claimed item is an ordinary claim: renewed while it
        runs, taken over by another instance when its lease runs out."""
        own: list[dict[str, Any]] = []
        if self._tasks and not self._stopping.is_set():
            room = self._can_hold() - len(self._held) - self._reserved
            own = items[:max(0, room)]
            until = self.store.now() + dt.timedelta(seconds=self.lease_s)
            for item in own:
                item.update(state="leased", owner=self.owner, claim=ObjectId(), lease_until=until,
                            deliveries=item["deliveries"] + 1)
        self._reserved += len(own)
        try:
            # the events encoded once for the insert (the items keep theirs as dicts, to run here)
            await self.store.inbox_put([{**i, "event": storable_bson(i["event"])} for i in items])
        except BaseException:
            if own:
                self._room.set()  # a failed insert gives its room back to the claimer
            raise
        finally:
            self._reserved -= len(own)
        if len(own) < len(items):
            self._wake.set()
        if own and self._stopping.is_set():  # stopping meanwhile: hand them back, not start them
            await self._quietly(self.store.inbox_release(self.owner, [(i["_id"], i["claim"]) for i in own]))
            return
        for item in own:
            self._route(item)

    def wake(self) -> None:
        """Something was queued directly (the scheduler): claim now rather than at the next poll."""
        self._wake.set()

    async def idle(self) -> None:
        """Wait until nothing is queued or running (used by tests and graceful shutdown)."""
        while await self.store.inbox_depth():
            await asyncio.sleep(0.05)

    def stats(self) -> dict[str, Any]:
        return {"held": len(self._held), "queues": {k: q.entries.qsize() for k, q in self._queues.items()
                                                    if q.entries.qsize() or q.workers}}

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        reclaimed = await self.store.inbox_reclaim(self.owner)
        if reclaimed:
            log.info("inbox: took back the items this instance held before it stopped", items=reclaimed)
        self._stopping.clear()
        self._closed = False
        self._tasks = [asyncio.create_task(coro, name=name) for name, coro in (
            ("inbox-claim", self._claim_loop()), ("inbox-watch", self._watch()), ("inbox-poll", self._poll()),
            ("inbox-renew", self._renew_loop()), ("inbox-delete", self._delete_loop()))]

    async def stop(self) -> None:
        claimer, watcher, *others = self._tasks
        # by flag, not cancel: both may be inside a driver call (a claim must be routed or
        # released, never dropped; a change stream must be closed by its own task)
        self._stopping.set()
        self._wake.set()
        self._room.set()
        for queue in list(self._queues.values()):  # what lingers starts now, within the grace
            if queue.linger is not None:
                queue.linger.cancel()
                queue.linger = None
                self._spawn(queue, lingered=True)
        # each of their driver calls is bounded (server selection, the stream's await time), so
        # they end on their own; a cancel is the last resort, after far longer than that
        await asyncio.wait([claimer, watcher], timeout=max(60.0, self.shutdown_grace_s))
        for task in (claimer, watcher):
            if not task.done():
                log.warning("inbox task still busy at shutdown; cancelling it", task=task.get_name())
                task.cancel()
        await asyncio.wait([claimer, watcher])
        # What runs may finish within the grace. Workers are looked for again and again: an
        # item whose triggers were being reloaded (a side task) is routed and started meanwhile.
        deadline = time.monotonic() + self.shutdown_grace_s
        while (busy := self._workers() | self._side) and (left := deadline - time.monotonic()) > 0:
            await asyncio.wait(busy, timeout=left)
        # Past the grace nothing more starts: an item routed from now on stays held and is
        # handed back below (before this, a reload finishing after the release could start an
        # item already handed back: two instances ran it at once).
        self._closed = True
        for queue in self._queues.values():
            if queue.linger is not None:
                queue.linger.cancel()
                queue.linger = None
        workers = self._workers()
        for w in workers:
            w.cancel()
        if workers:
            await asyncio.wait(workers)
        if self._side:  # releases and dead letters (driver calls: waited for, never cancelled)
            await asyncio.wait(self._side, timeout=self.shutdown_grace_s)
        # A cancelled chunk's records may still be on their way to MongoDB (the dispatcher keeps
        # its claim on those events until the writes ended): an item handed back before that
        # could run elsewhere before its success is durable, and succeed twice.
        await self._writes_ended(max(10.0, self.shutdown_grace_s))
        # Hand back what did not finish, at once rather than after the lease.
        unfinished = [h.fence for h in self._held.values()]
        await self._quietly(self.store.inbox_release(self.owner, unfinished))
        await self._quietly(self._delete_finished())
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        self._tasks, self._held, self._queues = [], {}, {}

    def _workers(self) -> set[asyncio.Task[None]]:
        return {w for q in self._queues.values() for w in q.workers}

    async def _writes_ended(self, timeout: float) -> None:
        """Until the dispatcher holds no claim on an event any more (each is dropped once the
        outcomes of its events are durable or failed). The dispatcher's own bookkeeping, read
        only; every source's deliveries are in it, and each write is bounded."""
        inflight: dict[str, asyncio.Future[None]] = getattr(self.dispatcher, "_inflight", {})
        pending = {f for f in list(inflight.values()) if not f.done()}
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    async def _quietly(self, aw: Any) -> None:
        try:
            await asyncio.wait_for(shielded(aw), 10.0)
        except Exception:
            pass  # leases run out by themselves

    # -- claiming ---------------------------------------------------------------------------
    def _can_hold(self) -> int:
        """Claim only what can start soon -- two events per worker, or two whole batches (one
        running, one filling) -- so that other instances get their share of a burst rather than
        one instance taking it; never more than ``capacity``."""
        biggest = max((t.batch_size for t in self.router.triggers.values() if t.source_type == "s3"), default=1)
        return min(self.capacity, max(2 * self.concurrency, 2 * biggest))

    async def _claim_loop(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            room = self._can_hold() - len(self._held) - self._reserved
            if room <= 0:
                self._room.clear()
                await self._room.wait()
                continue
            self._wake.clear()  # before the query: a wake-up during it is not lost
            try:
                items = await shielded(self.store.inbox_claim(self.owner, self.lease_s, min(room, self.claim_batch)))
                failures = 0
            except Exception as exc:
                failures += 1
                if failures == 1:
                    log.warning("inbox unavailable; retrying", error=str(exc))
                await self._pause(min(0.5 * 2**failures, 10.0))
                continue
            if not items:
                await self._wake.wait()
                continue
            for item in items:
                self._route(item)

    async def _pause(self, seconds: float) -> None:
        """Sleep, but end at once when the inbox stops."""
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            pass

    async def _watch(self) -> None:
        """New items and items handed back, by any instance, wake the claimer at once (a change
        stream); the poll below is only for retries coming due and expired leases."""
        delay, failures = 0.5, 0
        pipeline: list[dict[str, Any]] = [
            # an item inserted already claimed by its writer (``_put``) wakes nobody
            {"$match": {"$or": [{"operationType": "insert", "fullDocument.state": "pending"},
                                {"operationType": "update", "updateDescription.updatedFields.state": "pending"}]}},
            {"$project": {"fullDocument": 0, "updateDescription": 0}},  # only the wake-up travels
        ]
        while not self._stopping.is_set():
            try:
                stream = await shielded(self.store.watch_inbox(pipeline, max_await_ms=1000))
                async with stream:
                    delay, failures = 0.5, 0
                    while stream.alive and not self._stopping.is_set():
                        if await shielded(stream.try_next()) is not None:
                            self._wake.set()
            except Exception as exc:
                failures += 1
                if failures == 3:  # once per outage: the poll keeps the inbox going meanwhile
                    log.warning("inbox change stream unavailable; new items are found by polling",
                                error=str(exc), poll_interval_s=self.poll_interval_s)
                await self._pause(delay)
                delay = min(delay * 2, 10.0)

    async def _poll(self) -> None:
        """Wake the claimer for items it was not told about (written by other instances,
        retries coming due, expired leases): one cheap query per interval."""
        while True:
            await asyncio.sleep(self.poll_interval_s)
            try:
                if await shielded(self.store.inbox_ready()):
                    self._wake.set()
            except Exception:
                pass  # the claimer reports outages

    def _route(self, item: dict[str, Any], reloaded: bool = False) -> None:
        held = self._held[item["_id"]] = _Held(item)
        try:
            if item["deliveries"] > MAX_DELIVERIES:
                self._side_task(self._give_up(held))
                return
            event = Event.from_cloudevent(item["event"], json_ready=item.get("json_ready") is True)
            named = item.get("triggers") or ([item["trigger"]] if item.get("kind") == "schedule" else [])
            unknown = [n for n in named if n not in self.router.triggers]
            if unknown and not reloaded and self.reload_triggers is not None:
                # made through another instance a moment ago: look again before deciding
                self._side_task(self._route_after_reload(item))
                return
            entries = self._entries(held, event)
        except Exception as exc:
            log.warning("inbox item cannot be processed", item=str(item["_id"]), error=repr(exc))
            held.error = f"{type(exc).__name__}: {exc}"
            self._settle(held)
            return
        if not entries:
            self._settle(held)  # no trigger wants it (any more): nothing to run
            return
        held.pending = len(entries)
        for entry in entries:
            key, batch = f"{entry.target.key}:{entry.target.function}", entry.target.batch_size
            if entry.replay_of is not None:
                # a queue of their own: a replay runs alone (its dead letter is the chunk's), so
                # it must neither be gathered into its trigger's batch nor linger for one
                key, batch = f"{key}:replays", 1
            queue = self._queues.get(key)
            if queue is None:
                queue = self._queues[key] = _Queue(batch)
            queue.entries.put_nowait(entry)
            arrived = time.monotonic()
            queue.flowing, queue.arrived = arrived - queue.arrived < LINGER_S, arrived
            self._spawn(queue)

    async def _route_after_reload(self, item: dict[str, Any]) -> None:
        # one reload serves every item of a claim that names a trigger not known here yet
        if self._reload is None or self._reload.done():
            self._reload = asyncio.ensure_future(self._reload_triggers())
        await asyncio.shield(self._reload)
        if self._closed:
            return  # stopping: it stays held and is handed back, not started now
        self._route(item, reloaded=True)

    async def _reload_triggers(self) -> None:
        try:
            assert self.reload_triggers is not None
            await self.reload_triggers()
        except Exception as exc:
            log.warning("reloading triggers failed; routing with what is known", error=str(exc))

    def _entries(self, held: _Held, event: Event) -> list[_Entry]:
        item, kind = held.item, held.item["kind"]
        if kind == "s3":
            # the triggers named when it was queued that still exist and still match it (a
            # trigger deleted or changed since then no longer wants it); older items name none
            named = item.get("triggers")
            return [_Entry(held, Target(t.function, t.name, t.retry, t.batch_size, False, event.source), event)
                    for t in self.router.match_s3(event) if named is None or t.name in named]
        if kind == "invoke":
            return [_Entry(held, Target(item["function"], None, ASYNC_INVOKE_RETRY, 1, False), event,
                           request_id=item["request_id"])]
        if kind == "schedule":
            trigger = self.router.triggers.get(item.get("trigger") or "")
            if trigger is None or not trigger.enabled:
                log.info("schedule tick dropped: trigger no longer exists or is disabled", trigger=item.get("trigger"))
                return []
            return [_Entry(held, Target(trigger.function, trigger.name, trigger.retry, 1, False, event.source),
                           event)]
        if kind == "replay":
            name = item.get("trigger")
            if name is None:
                target = Target(item["function"], None, ASYNC_INVOKE_RETRY, 1, False)
            else:
                trigger = self.router.triggers.get(name)
                if trigger is None:
                    log.warning("replay dropped: trigger no longer exists", trigger=name)
                    return []
                target = Target(trigger.function, trigger.name, trigger.retry, trigger.batch_size, False,
                                event.source)
            return [_Entry(held, target, event, replay_of=item["dead_letter_id"])]
        raise ValueError(f"unknown inbox item kind {kind!r}")

    # -- running ----------------------------------------------------------------------------
    def _spawn(self, queue: _Queue, lingered: bool = False) -> None:
        waiting = queue.entries.qsize()
        if queue.batch_size <= 1:
            wanted = waiting
        elif (waiting < queue.batch_size and not lingered and not self._stopping.is_set()
              and (queue.busy or queue.flowing)):
            # A chunk of this trigger is running, or its items keep arriving (the last came
            # less than LINGER_S before): these wait for more (up to a full batch, at most
            # LINGER_S) and go as one chunk. Under load an invocation then carries many events,
            # not one webhook group commit's few (~8 at 16 POSTs in flight), and every per-chunk
            # cost (duplicate check, worker call, record, inbox delete) is paid that much less
            # often; an item with nothing running or arriving before it starts at once.
            if queue.linger is None and not self._closed:
                queue.linger = asyncio.get_running_loop().call_later(LINGER_S, self._lingered, queue)
            return
        else:
            wanted = queue.busy + max(1, waiting // queue.batch_size)  # full batches side by side
        while not self._closed and len(queue.workers) < min(self.concurrency, wanted):
            task = asyncio.create_task(self._work(queue), name="inbox-worker")
            queue.workers.add(task)
            task.add_done_callback(queue.workers.discard)

    def _lingered(self, queue: _Queue) -> None:
        queue.linger = None
        if not queue.entries.empty() and any(q is queue for q in self._queues.values()):
            self._spawn(queue, lingered=True)

    async def _work(self, queue: _Queue) -> None:
        # what lingers (less than a batch, its timer pending) is left to the timer's worker
        while not queue.entries.empty() and (queue.linger is None or queue.entries.qsize() >= queue.batch_size):
            chunk = await self._take_chunk(queue)
            queue.busy += 1
            try:
                await self._run_chunk(chunk)
            finally:
                queue.busy -= 1
        # leave the count now, not in a done-callback a loop iteration later: an entry routed
        # meanwhile must see that no worker is left and start one
        task = asyncio.current_task()
        if task is not None:
            queue.workers.discard(task)

    async def _take_chunk(self, queue: _Queue) -> list[_Entry]:
        first = queue.entries.get_nowait()
        target = first.target
        if first.request_id is not None or first.replay_of is not None:
            return [first]  # each has its own request id / dead letter
        if target.batch_size > 1:
            limit = target.batch_size
        else:
            # one event per call: a chunk's events run one after another, so share what is
            # queued between the workers rather than let the first take it all
            workers = max(1, len(queue.workers))
            limit = max(1, min(MAX_CHUNK, -(-(queue.entries.qsize() + 1) // workers)))
        window = self._window_s(target)
        chunk = [first]
        while len(chunk) < limit:
            try:
                chunk.append(queue.entries.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            left = first.arrived + window - time.monotonic()
            if target.batch_size <= 1 or left <= 0:
                break
            try:
                chunk.append(await asyncio.wait_for(queue.entries.get(), left))
            except TimeoutError:
                break
        return chunk

    def _window_s(self, target: Target) -> float:
        trigger = self.router.triggers.get(target.trigger or "")
        return trigger.batch_window_s if trigger is not None else 0.0

    async def _run_chunk(self, chunk: list[_Entry]) -> None:
        first = chunk[0]
        finished, error = len(chunk), None
        try:
            outcomes = await self.dispatcher.deliver(first.target, [e.event for e in chunk],
                                                     request_id=first.request_id, replay_of=first.replay_of)
            if first.replay_of is not None and outcomes.get(first.event.id) in ("succeeded", "duplicate"):
                await shielded(self.store.delete_dead_letter(first.replay_of))
        except Unfinished as exc:
            finished, error = exc.finished, exc.cause
        except Exception as exc:
            log.warning("inbox delivery failed", error=repr(exc), exc_info=True)
            finished, error = 0, exc
        for i, entry in enumerate(chunk):
            if i >= finished and entry.held.error is None:
                entry.held.error = f"{type(error).__name__}: {error}"
            entry.held.pending -= 1
            if entry.held.pending == 0:
                self._settle(entry.held)

    def _settle(self, held: _Held) -> None:
        """Every target is through with the item: delete it, or hand it back for later."""
        item_id = held.item["_id"]
        self._held.pop(item_id, None)
        self._room.set()
        if held.error is None:
            self._finished.append(held.fence)
            self._flush.set()
            return
        delay = self.retry_delay(held.item["deliveries"])
        log.warning("inbox item failed; it will be retried", item=str(item_id), error=held.error,
                    deliveries=held.item["deliveries"], retry_in_s=delay)
        self._side_task(self._quietly(self.store.inbox_release(self.owner, [held.fence], delay, held.error)))

    def _side_task(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._side.add(task)
        task.add_done_callback(self._side.discard)

    async def _give_up(self, held: _Held) -> None:
        """An item that failed every delivery (not the function: the hub could not process it)."""
        item = held.item
        target_key = item.get("trigger") or f"inbox:{item['kind']}"
        event_id = str((item.get("event") or {}).get("id", item["_id"]))
        try:
            await shielded(self.store.put_dead_letter({
                "_id": dead_letter_id(target_key, event_id),
                "trigger": item.get("trigger"),
                "function": item.get("function"),
                "event": item.get("event"),
                "attempts": [],
                "last_status": "undeliverable",
                "last_error": {"type": "InboxDeliveryFailed",
                               "message": f"gave up after {item['deliveries'] - 1} deliveries: {item.get('last_error')}"},
                "created_at": now(),
            }))
        except Exception as exc:
            held.error = f"{type(exc).__name__}: {exc}"
        else:
            log.error("inbox item dead-lettered after repeated failures", item=str(item["_id"]),
                      last_error=item.get("last_error"))
        self._settle(held)

    # -- bookkeeping ------------------------------------------------------------------------
    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            held = [h.fence for h in self._held.values()]
            # finished items keep their claim until deleted; their delete may land first, so
            # only the running ones count when checking that every lease was renewed
            finished = list(self._finished)
            if not held and not finished:
                continue
            try:
                renewed = await shielded(self.store.inbox_renew(self.owner, held, self.lease_s)) if held else 0
                if finished:
                    await shielded(self.store.inbox_renew(self.owner, finished, self.lease_s))
                # items that settled meanwhile may have been handed back or deleted first
                still = sum(1 for i, _ in held if i in self._held)
                if renewed < still:
                    log.warning("inbox leases lost; another instance may run these items too",
                                held=still, renewed=renewed)
            except Exception as exc:
                log.warning("inbox lease renewal failed; retrying", error=str(exc))

    async def _delete_loop(self) -> None:
        while True:
            await self._flush.wait()
            self._flush.clear()
            await asyncio.sleep(0.02)  # let a few more finish: one delete for them all
            try:
                await shielded(self._delete_finished())
            except Exception as exc:
                log.warning("inbox delete failed; retrying", error=str(exc))
                self._flush.set()
                await asyncio.sleep(1.0)

    async def _delete_finished(self) -> None:
        done, self._finished = self._finished, []
        try:
            deleted = await self.store.inbox_done(self.owner, done)
        except BaseException:
            self._finished = done + self._finished
            raise
        if deleted < len(done):
            # their claims were taken (this instance's leases ran out, or it was taken for
            # dead): the new holder finds them finished (the duplicate check) and deletes them
            log.warning("inbox completions refused: another instance holds these items now",
                        items=len(done) - deleted)
