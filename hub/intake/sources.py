"""Keeps one running subscription per enabled kafka/mongodb trigger, matching the trigger set, and
the sink their events go into (:class:`DispatchSink`: filter, run, settle).

``reconcile`` is called after every trigger change and on the sync timer: it starts what is
missing, stops what was deleted or disabled, and restarts a subscription whose source changed.
(s3 triggers need no subscription: their events arrive through the webhook and the inbox.)

Kafka shares partitions between hub instances through the consumer group. A change stream has
no such engine, so each one is read by a single instance holding a MongoDB lease, renewed on
every reconcile; when its holder dies, another instance takes over after the lease runs out.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from connectors.base import LeaseLost, Subscription, Unfinished
from connectors.kafka import KafkaSubscription
from connectors.mongodb import ChangeStreamSubscription
from hub.delivery.dispatch import Chunk, Dispatcher, Target
from hub.events import Event
from hub.metrics import Metrics
from hub.tracing import Tracing
from hub.driver import shielded
from hub.intake.router import Router, Trigger
from hub.settings import Settings
from hub.store import Store
from hub.catalog.triggers import kafka_group_id, source_state_key

log = structlog.get_logger("hub.intake.sources")

OnEvents = Callable[[str, list[Event]], Awaitable[Awaitable[None] | None]]


class DispatchSink:
    """Where every kafka/mongodb subscription delivers: the trigger's content filter, then the
    dispatcher; the connector gets back the wait for the outcomes to be durable (its ack), as
    ``connectors.base`` describes. Source-agnostic: the trigger and its filter say everything."""

    def __init__(self, router: Router, dispatcher: Dispatcher, metrics: Metrics,
                 tracing: Tracing | None = None) -> None:
        self.router = router
        self.dispatcher = dispatcher
        self.metrics = metrics
        self.tracing = tracing or Tracing()

    async def __call__(self, trigger_name: str, events: list[Event]) -> Awaitable[None] | None:
        if not events:
            return None
        source_type = events[0].source.split(":", 1)[0]
        self.metrics.events.labels(source_type).inc(len(events))
        trigger = self.router.get(trigger_name)
        if trigger is None:
            return None
        wanted = self.router.passing(trigger, events)
        if not wanted:
            return None
        target = Target(trigger.function, trigger.name, trigger.retry, trigger.batch_size, True, events[0].source)
        run = [events[i] for i in wanted]
        if self.tracing.enabled:  # a receive span per event, the child of its producer's context
            if trigger.batch_size > 1:  # one span per batch, linking every record's producer
                run = [self.tracing.with_producer_context(e, trigger.source) for e in run]
            else:
                run = [self.tracing.received_from_source(e, trigger.name, trigger.source) for e in run]
        chunk = await self.dispatcher.run(target, run)
        return self._settled(chunk, wanted)

    async def _settled(self, chunk: Chunk, wanted: list[int]) -> None:
        try:
            await self.dispatcher.settle(chunk)
        except Unfinished as exc:
            # in terms of the chunk the connector gave: filtered-out events before the first
            # unfinished one are finished too
            raise Unfinished(wanted[exc.finished], exc.cause) from None


class Sources:
    def __init__(
        self, settings: Settings, store: Store, router: Router, on_events: OnEvents, owner: str
    ) -> None:
        self.settings = settings
        self.store = store
        self.router = router
        self.on_events = on_events
        self.owner = owner
        self.running: dict[str, tuple[str, Subscription]] = {}
        self.held_elsewhere: set[str] = set()  # change streams another instance reads
        self.closed = False
        self._renewer: asyncio.Task[None] | None = None
        self._tokens: dict[str, int] = {}  # the fencing token each running stream was started under
        self._lease_until: dict[str, float] = {}  # monotonic: our lease surely valid until then

    def start(self) -> None:
        self._renewer = asyncio.create_task(self._renew_leases(), name="stream-leases")

    async def _renew_leases(self) -> None:
        """Renew the leases of the change streams this instance reads, on a timer of their own:
        a reconcile busy stopping other subscriptions must not let them lapse."""
        while True:
            await asyncio.sleep(self.settings.lease_ttl_s / 3)
            for name, (_, sub) in list(self.running.items()):
                trigger = self.router.triggers.get(name)
                if not isinstance(sub, ChangeStreamSubscription) or trigger is None:
                    continue
                try:
                    token = await shielded(self._hold_lease(trigger))
                except Exception as exc:
                    log.warning("stream lease renewal failed; retrying", trigger=name, error=str(exc))
                    continue
                if self.running.get(name, (None, None))[1] is not sub:
                    continue
                if token is None or token != self._tokens.get(name) or sub.state == "error: lease lost":
                    # taken by another instance, or lapsed and taken back (someone may have read
                    # in between): stop; reconcile starts it again under the new token if ours
                    log.warning("stream lease lost; stopping here", trigger=name, token=token,
                                started_under=self._tokens.get(name))
                    await self._stop(name, release=False)

    async def reconcile(self) -> None:
        if self.closed:
            return
        wanted: dict[str, tuple[str, Trigger]] = {}
        held_elsewhere: set[str] = set()
        tokens: dict[str, int] = {}
        for t in self.router.triggers.values():
            if t.enabled and t.source_type in ("kafka", "mongodb"):
                if t.source_type == "mongodb":
                    token = await shielded(self._hold_lease(t))
                    if token is None:
                        held_elsewhere.add(t.name)
                        continue
                    tokens[t.name] = token
                wanted[t.name] = (self._key(t) + f":{tokens.get(t.name, '')}", t)
        self.held_elsewhere = held_elsewhere
        # a changed source restarts under the lease just renewed; only a drop releases it.
        # Together: each stop may take seconds while its in-flight events finish.
        await asyncio.gather(*(self._stop(name, release=name not in wanted) for name, (key, _) in
                               list(self.running.items()) if name not in wanted or wanted[name][0] != key))
        for name, (key, trigger) in wanted.items():
            if self.closed:
                return
            if name not in self.running:
                if name in tokens:
                    self._tokens[name] = tokens[name]
                sub = await self._subscription(trigger)
                await sub.start()
                self.running[name] = (key, sub)
                log.info("subscription started", trigger=name, source=trigger.source)

    async def _hold_lease(self, t: Trigger) -> int | None:
        ttl = self.settings.lease_ttl_s
        started = time.monotonic()
        token = await self.store.acquire_lease(self._lease_key(t.name), self.owner, ttl)
        if token is not None:
            # valid until started + ttl by MongoDB's clock; keep a margin for clock drift
            self._lease_until[t.name] = started + ttl * 0.8
        return token

    def _lease_ok(self, name: str) -> bool:
        return self._lease_until.get(name, 0.0) > time.monotonic()

    @staticmethod
    def _lease_key(name: str) -> str:
        return f"stream:{name}"

    async def _stop(self, name: str, release: bool = True) -> None:
        if name not in self.running:
            return
        _, sub = self.running.pop(name)
        await sub.stop()
        if release:
            try:
                await shielded(self.store.release_lease(self._lease_key(name), self.owner))
            except Exception:
                pass  # it runs out by itself
        log.info("subscription stopped", trigger=name)

    async def stop(self) -> None:
        self.closed = True
        if self._renewer is not None:
            self._renewer.cancel()  # its driver calls are shielded
            await asyncio.wait([self._renewer])
        # together: each may take a few seconds to let its in-flight events finish
        await asyncio.gather(*(self._stop(name) for name in list(self.running)))

    def states(self) -> dict[str, str]:
        return {name: sub.state for name, (_, sub) in self.running.items()}

    def progress(self) -> dict[str, dict[str, object]]:
        return {name: sub.progress() for name, (_, sub) in self.running.items()}

    @staticmethod
    def _key(t: Trigger) -> str:
        # a new batch size or ordering restarts the subscription (its lanes are built with them)
        return f"{t.source_type}:{t.source_hash}:{t.source_epoch}:{t.batch_size}:{t.batch_window_s}:{t.ordering}"

    async def _subscription(self, t: Trigger) -> Subscription:
        src = t.source
        state_key = source_state_key(t.name, t.source_identity)

        async def sink(events: list[Event], name: str = t.name) -> Awaitable[None] | None:
            return await self.on_events(name, events)

        s = self.settings
        if t.source_type == "kafka":
            return KafkaSubscription(
                name=t.name,
                bootstrap=s.kafka_bootstrap,
                topic=src["topic"],
                group_id=kafka_group_id(t.name, t.source_identity, t.source_epoch),
                sink=sink,
                session_timeout_ms=s.kafka_session_timeout_ms,
                heartbeat_interval_ms=s.kafka_heartbeat_interval_ms,
                fetch_max_wait_ms=s.kafka_fetch_max_wait_ms,
                idle_fetch_max_wait_ms=s.kafka_idle_fetch_max_wait_ms,
                idle_after_s=s.kafka_idle_after_s,
                batch_size=t.batch_size,
                batch_window_s=t.batch_window_s,
                ordering=t.ordering,
                parallelism=await self._parallelism(t),
                shutdown_grace_s=s.shutdown_grace_s,
            )

        async def load() -> dict[str, Any] | None:
            return await self.store.get_source_state(state_key)

        token = self._tokens.get(t.name, 0)

        async def save(fields: dict[str, Any]) -> None:
            if not await self.store.save_position_fenced(state_key, t.name, fields, token):
                raise LeaseLost(f"the cursor of {t.name} was moved by a newer lease holder")

        return ChangeStreamSubscription(
            name=t.name,
            client=self.store.users_client,
            database=src["database"],
            collection=src["collection"],
            operations=list(src.get("operations") or []),
            full_document=src.get("full_document", "default"),
            sink=sink,
            load_position=load,
            save_position=save,
            batch_size=t.batch_size,
            batch_window_s=t.batch_window_s,
            shutdown_grace_s=s.shutdown_grace_s,
            lease_ok=functools.partial(self._lease_ok, t.name),
        )

    async def _parallelism(self, t: Trigger) -> int:
        """How many chunks of one partition may run at once (ordering "key"): the function's
        max_concurrency when the subscription starts (the pool enforces the live value)."""
        try:
            head = await shielded(self.store.get_function(t.function.split(":", 1)[0]))
        except Exception:
            head = None
        return int((head or {}).get("max_concurrency") or 4)
