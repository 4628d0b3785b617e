"""App composition: the one place that wires connectors, router, dispatcher, pool, store and API.

Nothing imports this module's ``Hub``: the web layer gets a :class:`~hub.web.services.Services`
naming the parts it uses, the connectors get a sink (:class:`~hub.intake.sources.DispatchSink`),
and every part gets its collaborators in its constructor. Only ``hub.cli`` (``serve``) and tests
build a ``Hub``.

``Hub(settings)`` is a whole instance: ``await hub.start()`` serves HTTP and runs every enabled
trigger; ``await hub.stop()`` stops taking events, lets nothing half-acked through and closes
everything. Tests start and stop several in one process to simulate restarts.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid

import structlog
from aiohttp import web

from hub.catalog.access_keys import AccessKeys
from hub.catalog.registry import Registry
from hub.catalog.secrets import Secrets, load_key
from hub.catalog.tokens import Tokens
from hub.catalog.triggers import TriggerService
from hub.catalog.watch import ConfigWatcher
from hub.delivery.dispatch import Dispatcher
from hub.spec.aws_events import AwsEnvironment
from hub.delivery.records import Completions, RecordWriter
from hub.delivery.usage import Usage
from hub.driver import shielded
from hub.intake.cursors import Cursors
from hub.intake.inbox import Inbox
from hub.intake.router import Router
from hub.intake.s3_reconcile import S3Reconciler
from hub.intake.scheduler import Scheduler
from hub.intake.sources import DispatchSink, Sources
from hub.intake.trigger_sync import TriggerSync
from hub.metrics import Metrics, track_slots
from hub.sandbox.base import WorkerPool
from hub.settings import Settings
from hub.store import InstanceTaken, Store
from hub.tracing import Tracing
from hub.web.fn_server import FnRunner
from hub.web.function_urls import RECORD_BATCH, RECORD_LINGER_S, FunctionUrls
from hub.web.readiness import Readiness
from hub.web.limits import BodyBudget
from hub.web.protocol import HubRunner
from hub.web.routes import make_app
from hub.web.services import Services

log = structlog.get_logger("hub.app")
HEARTBEAT_S = 2.0  # the default of HUB_HEARTBEAT_INTERVAL_S; beats also carry this instance's
# Kafka partitions to the others' cursor views
CLOCK_SYNC_S = 60.0  # how often the offset to MongoDB's clock is measured again (hub.store)
# A heartbeat this young may be a live process's: one starting under the same id watches it this
# long for a beat before it takes the id over (Store.claim_instance). Beats are 2 s apart, on a
# task of their own (a slow trigger sync no longer holds one up); the margin is for stalls.
INSTANCE_LIVE_S = 10.0


def make_pool(settings: Settings) -> WorkerPool:
    from hub.sandbox.pool import SandboxPool

    return SandboxPool(
        isolation=settings.sandbox,
        data_dir=settings.data_dir,
        idle_ttl_s=settings.worker_idle_ttl_s,
        spares=settings.worker_spares,
        max_queue=settings.max_queue_per_function,
        # a function with network must not reach the hub's own servers, even on public addresses
        deny_addresses=(settings.mongo_url, settings.kafka_bootstrap, settings.s3_endpoint),
    )


def pool_slots(pool: WorkerPool) -> tuple[int, int]:
    """(invocations running, concurrency slots) of this instance's pool, for autoscalers.

    Running is the pool's own count; the slots are the ``max_concurrency`` of every function
    version it holds, which ``stats()`` rows carry where the pool reports them, else read from
    the sandbox pool's version states (read only; a pool without them reports 0)."""
    stats = pool.stats()
    running = int(stats.get("totals", {}).get("busy", 0))
    total = 0
    for row in stats.get("functions", {}).values():
        for version in row.get("versions", {}).values():
            total += int(version.get("max_concurrency", 0))
    if not total:
        for fn in list(getattr(pool, "_fns", {}).values()):
            for st in list(getattr(fn, "versions", {}).values()):
                if not getattr(st, "stale", False):
                    total += int(getattr(st, "max_concurrency", 0))
    return running, total


def stable_instance_id(settings: Settings) -> str:
    """The configured id, else one kept in the data dir: a restarted hub is the same instance,
    so it takes back its own leases and inbox claims at once instead of waiting them out."""
    if settings.instance_id:
        return settings.instance_id
    path = settings.data_dir / "instance-id"
    try:
        known = path.read_text().strip()
        if known:
            return known
    except FileNotFoundError:
        pass
    new = f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(new + "\n")
    tmp.replace(path)
    return new


class Hub:
    def __init__(self, settings: Settings, pool: WorkerPool | None = None) -> None:
        self.settings = settings
        # no built-in tokens: unset ones are generated into the data dir, short ones refused here
        for path in settings.ensure_tokens():
            log.warning("no token was set: generated one (keep it; it is read back on every start)", file=str(path))
        self.instance_id = stable_instance_id(settings)
        self.metrics = Metrics()
        # OpenTelemetry from the standard OTEL_* variables; off (and free) without an endpoint
        self.tracing = Tracing.from_environment(instance_id=self.instance_id)
        # A process's own mark on its heartbeat: another process under the same id is noticed
        # (it refuses to start) instead of sharing this one's leases and claims unseen.
        self._nonce = uuid.uuid4().hex
        self.instance_live_s = INSTANCE_LIVE_S
        self._id_lost = False  # logged once: another process took this id over
        self.store = Store(settings.mongo_url, settings.mongo_db, settings.invocation_retention_s)
        # secrets (decrypted into workers' env) and scoped API tokens: hub.catalog.secrets, .tokens
        self.secrets = Secrets(self.store.db, lambda: load_key(settings.secrets_key, settings.data_dir))
        self.tokens = Tokens(self.store.db)
        self.access_keys = AccessKeys(self.store.db, self.secrets)  # the Lambda API's SigV4 key pairs
        for credentials in (self.tokens, self.access_keys):  # a revocation waits for every live instance
            credentials.instance, credentials.peers = self.instance_id, self._live_peers
        # event_format "aws" (hub.spec.aws_events): where Lambda's events and ARNs say they run
        aws = AwsEnvironment(settings.aws_region, settings.aws_account, settings.kafka_bootstrap)
        self.registry = Registry(self.store, settings.data_dir, self.secrets, aws=aws)
        self.pool = pool or make_pool(settings)
        track_slots(self.metrics, lambda: pool_slots(self.pool))  # read at scrape time
        self.secrets.on_change(self.pool.retire)  # a rotated secret: the next worker gets the new value
        self.router = Router()
        # usage metering rides the record writer's group commit (hub.delivery.usage)
        self.usage = Usage(self.store.db, self.metrics, settings.usage_retention_s, self.instance_id)
        self.writer = RecordWriter(self.store.db, on_written=self.usage.add)
        self.dispatcher = Dispatcher(self.store, self.registry, self.pool, self.metrics, self.writer,
                                     Completions(self.store.db), crash_point=settings.test_crash_point,
                                     instance=self.instance_id, tracing=self.tracing,
                                     log_successes=settings.log_invocations == "all")
        # Function URLs' records are never awaited (the answer goes first): a writer of their own
        # lets them wait longer for company (hub.web.function_urls.RECORD_LINGER_S) without
        # slowing the records that Kafka lanes and sync invokes wait for; a dispatcher of its own
        # uses it (run_once holds no state that the two would need to share).
        self.fn_writer = RecordWriter(self.store.db, on_written=self.usage.add, linger_s=RECORD_LINGER_S,
                                      linger_under=RECORD_BATCH)
        fn_dispatcher = Dispatcher(self.store, self.registry, self.pool, self.metrics, self.fn_writer,
                                   Completions(self.store.db), crash_point=settings.test_crash_point,
                                   instance=self.instance_id, tracing=self.tracing,
                                   log_successes=settings.log_invocations == "all")
        self.inbox = Inbox(
            self.store, self.router, self.dispatcher, self.metrics,
            owner=self.instance_id, concurrency=settings.inbox_concurrency,
            lease_s=settings.inbox_lease_s, poll_interval_s=settings.inbox_poll_interval_s,
            capacity=settings.inbox_capacity, shutdown_grace_s=settings.shutdown_grace_s,
            reload_triggers=lambda: self.trigger_sync.reload(),
        )
        # S3 catch-up scan + webhook dedup (hub/intake/s3_reconcile.py)
        self.s3_reconciler = S3Reconciler(
            settings, self.store, self.store.db, self.router, self.inbox, self.metrics, owner=self.instance_id)
        sink = DispatchSink(self.router, self.dispatcher, self.metrics, self.tracing)
        self.sources = Sources(settings, self.store, self.router, sink, self.instance_id)
        self.cursors = Cursors(self.store, self.sources)  # trigger cursors and their gauges
        self.scheduler = Scheduler(self.store, self.router, self.inbox, self.tracing)
        self.trigger_sync = TriggerSync(self.store, self.router, self.scheduler, self.sources)
        self.readiness = Readiness(settings, self.instance_id, self.store, self.router, self.sources,
                                   self.inbox, self.scheduler, self.s3_reconciler, self.pool)
        self.watcher = ConfigWatcher(self.store.db, self.registry, self.trigger_sync.sync,
                                     listeners=(self.secrets, self.tokens, self.access_keys))
        # it acknowledges the trigger changes it loaded; the inbox trusts its set while it vouches
        self.watcher.instance = self.instance_id
        self.inbox.triggers_current = self.watcher.triggers_current
        self.triggers = TriggerService(self.store, settings, self.trigger_sync.sync, self.instance_id)
        budget = BodyBudget(settings.public_body_budget)
        services = Services(
            settings=settings, instance_id=self.instance_id, metrics=self.metrics, store=self.store,
            registry=self.registry, pool=self.pool, router=self.router, dispatcher=self.dispatcher,
            inbox=self.inbox, triggers=self.triggers, trigger_sync=self.trigger_sync, sources=self.sources,
            cursors=self.cursors, scheduler=self.scheduler, usage=self.usage, s3_reconciler=self.s3_reconciler,
            readiness=self.readiness, public_body_budget=budget,
            secrets=self.secrets, tokens=self.tokens, access_keys=self.access_keys, tracing=self.tracing)
        function_urls = FunctionUrls(self.router, fn_dispatcher, self.store, self.metrics,
                                     body_timeout_s=settings.http_body_timeout_s,
                                     body_budget=budget, tracing=self.tracing)
        self.web = make_app(services)
        self.function_urls = function_urls  # on a listener of its own: never the console's origin
        self._runner: web.AppRunner | None = None
        self._fn_runner: FnRunner | None = None
        self._sync_task: asyncio.Task[None] | None = None
        self._beat_task: asyncio.Task[None] | None = None
        self._beat_stop = asyncio.Event()  # set last in stop(): beats go on while work drains
        self._still: dict[str, tuple[tuple[object, object], float]] = {}  # others' heartbeats, as watched
        self._taken: set[tuple[str, object]] = set()  # (instance, heartbeat) already taken for dead
        self._resync: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.port: int | None = None
        self.fn_port: int | None = None
        self._beat = -HEARTBEAT_S  # when this instance's heartbeat was last written (monotonic)
        self._beat_failed = False  # the last heartbeat went unanswered (MongoDB away, most likely)
        self._warned_for: list[str] = []  # the other instances last warned about (no HUB_PUBLIC_URL)

    @property
    def url(self) -> str:
        return f"http://{self.settings.http_host}:{self.port}"

    @property
    def fn_url(self) -> str:
        """This instance's function-URL listener (not HUB_PUBLIC_FN_URL: tests and the CLI's serve)."""
        return f"http://{self.settings.fn_host or self.settings.http_host}:{self.fn_port}"

    async def start(self) -> None:
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        await self.store.init()
        try:  # before anything starts: a second process with this id must not touch its work
            await self.store.claim_instance(self.instance_id, self._nonce, self.instance_live_s,
                                            {"host": socket.gethostname(), "pid": os.getpid()})
        except InstanceTaken as exc:
            log.error("refusing to start: this instance id is in use", instance=self.instance_id, error=str(exc))
            await self.store.close()
            raise
        # beats from here on, on a task of their own: a starting instance (which may take its
        # leases and claims before it listens) is not taken for dead (HUB_TAKEOVER_AFTER_S)
        self._beat = time.monotonic()
        self._beat_stop.clear()
        self._beat_task = asyncio.create_task(self._beat_loop(), name="heartbeat")
        try:
            await self._start_parts()
        except BaseException:
            self._beat_stop.set()
            await asyncio.gather(self._beat_task, return_exceptions=True)
            raise

    async def _start_parts(self) -> None:
        await self.secrets.init()
        await self.tokens.init()
        await self.access_keys.init()
        await self.usage.init()
        self.usage.start()
        self.writer.start()
        self.fn_writer.start()
        self.watcher.start()
        await self.pool.start()  # SandboxUnavailable (bwrap cannot run, not HUB_SANDBOX=process) stops here
        if self.pool.isolation != "bwrap":
            log.warning("functions are NOT isolated (HUB_SANDBOX=process): only rlimits contain them",
                        isolation=self.pool.isolation)
        await self.trigger_sync.sync()
        self.sources.start()
        await self.inbox.start()
        self.scheduler.start()
        await self.s3_reconciler.start()
        # A request head must arrive within the keep-alive timeout (aiohttp closes a connection
        # whose next message is not complete by then), which also bounds idle connections.
        self._runner = HubRunner(self.web, access_log=None, keepalive_timeout=self.settings.http_head_timeout_s)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.http_host, self.settings.http_port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        self._fn_runner = FnRunner(self.function_urls, access_log=None,
                                   keepalive_timeout=self.settings.http_head_timeout_s)
        await self._fn_runner.setup()
        fn_site = web.TCPSite(self._fn_runner, self.settings.fn_host or self.settings.http_host, self.settings.fn_port)
        await fn_site.start()
        self.fn_port = int(self._fn_runner.addresses[0][1])
        self.settings.fn_port = self.fn_port  # the bound port (0 asks for any): triggers show their url
        # after the port is known; before start() returns, so other instances see this one at once
        try:
            await self._heartbeat()
            self._beat = time.monotonic()
            self._beat_failed = False
        except Exception as exc:
            self._beat_failed = True
            log.warning("heartbeat failed", error=str(exc))
        self._sync_task = asyncio.create_task(self._sync_loop(), name="trigger-sync")
        log.info("hub started", url=self.url, fn_url=self.fn_url, instance=self.instance_id, isolation=self.pool.isolation)

    async def stop(self) -> None:
        # Stop taking requests first, then events; whatever is unfinished is not acked and returns.
        if self._runner:
            await self._runner.cleanup()
        if self._fn_runner:
            await self._fn_runner.cleanup()
        self._stopping.set()
        if self._sync_task:
            # not cancelled: it may be stopping a subscription, which must run to its end
            await asyncio.gather(self._sync_task, return_exceptions=True)
        if self._resync:  # a takeover's sync: before the sources stop (none starts after _stopping)
            await asyncio.gather(self._resync, return_exceptions=True)
        await self.watcher.stop()
        await self.trigger_sync.stop_sources()  # no reconcile may start subscriptions behind it
        await self.s3_reconciler.stop()
        await self.scheduler.stop()
        await self.inbox.stop()
        await self.writer.close()
        await self.fn_writer.close()
        await self.usage.close()
        await self.pool.close()
        await self.tokens.close()
        await self.access_keys.close()
        self._beat_stop.set()  # not cancelled: a beat is a driver call; after this, none is written
        if self._beat_task:
            await asyncio.gather(self._beat_task, return_exceptions=True)
        # Gone at once rather than after its heartbeat ages out (it counts as a live instance) --
        # unless MongoDB left the last beat unanswered: then the delete and the driver's own
        # goodbye (endSessions) would each wait out server selection, 10 s more to stop for nothing.
        if self._beat_failed:
            log.info("MongoDB did not answer the last heartbeat: this instance's is left to age out")
        else:
            try:
                await asyncio.wait_for(shielded(self.store.forget_instance(self.instance_id, self._nonce)), 5)
            except Exception as exc:
                log.debug("could not remove this instance's heartbeat", error=str(exc))
        await self.store.close(1.0 if self._beat_failed else 5.0)
        await asyncio.to_thread(self.tracing.shutdown)  # flushes queued spans (the exporter bounds it)
        log.info("hub stopped", instance=self.instance_id)

    async def _sync_loop(self) -> None:
        repointed = False
        clock_synced = time.monotonic()  # by store.init()
        while True:
            if time.monotonic() - clock_synced >= CLOCK_SYNC_S:
                try:
                    await shielded(self.store.sync_clock())
                    clock_synced = time.monotonic()
                except Exception as exc:
                    log.debug("measuring the clock offset to MongoDB failed", error=str(exc))
            if not repointed:  # until it worked once: S3 or MongoDB may be away at start
                try:
                    await shielded(self.triggers.repoint_buckets())
                    repointed = True
                except Exception as exc:
                    log.warning("re-pointing bucket notifications failed; trying again", error=str(exc))
            try:
                await asyncio.wait_for(self._stopping.wait(), self.settings.trigger_sync_interval_s)
                return
            except TimeoutError:
                pass
            try:
                await self.trigger_sync.sync()
            except Exception as exc:
                log.warning("trigger sync failed", error=str(exc))

    async def _beat_loop(self) -> None:
        """This instance's heartbeat, every HUB_HEARTBEAT_INTERVAL_S on a task of its own, so a
        slow trigger sync cannot hold it up; with HUB_TAKEOVER_AFTER_S, also the watch on the
        others' heartbeats (:meth:`_take_over_dead`)."""
        every = self.settings.heartbeat_interval_s
        # The flag is read here, not only through the wait: a wait_for whose timeout has already
        # run out (a beat slower than the interval, e.g. MongoDB down: 5 s to give up a server)
        # raises TimeoutError without looking at the event, and stop() waited for ever.
        while not self._beat_stop.is_set():
            try:
                await asyncio.wait_for(self._beat_stop.wait(), max(0.0, self._beat + every - time.monotonic()))
                return
            except TimeoutError:
                pass
            self._beat = time.monotonic()  # the attempt: a failing one is retried a beat later
            try:
                await self._heartbeat()
                self._beat_failed = False
            except Exception as exc:
                self._beat_failed = True
                log.warning("heartbeat failed", error=str(exc))
                self._still.clear()  # only what is watched while this instance's own beats go through counts
                continue
            if self.settings.takeover_after_s > 0:
                try:
                    await self._take_over_dead()
                except Exception as exc:
                    self._still.clear()
                    log.warning("watching the other instances' heartbeats failed", error=str(exc))

    async def _take_over_dead(self) -> None:
        """Another instance whose heartbeat (its ``last_seen`` and process mark) this one has
        watched stand still for HUB_TAKEOVER_AFTER_S is taken for dead: its leases expire and
        its inbox claims are handed back now, not when they run out (Store.take_over). An
        instance that was only stalled finds its leases and claims fenced off and goes on with
        what it gets next; one stopping gracefully beats until it has handed its work back."""
        t = time.monotonic()
        still: dict[str, tuple[tuple[object, object], float]] = {}
        for doc in await shielded(self.store.live_instances(within_s=3600.0)):
            other = str(doc["_id"])
            if other == self.instance_id:
                continue
            mark = (doc.get("nonce"), doc.get("last_seen"))
            before = self._still.get(other)
            still[other] = before if before is not None and before[0] == mark else (mark, t)
        self._still = still
        dead = {i: mark for i, (mark, since) in still.items()
                if t - since >= self.settings.takeover_after_s and (i, mark) not in self._taken}
        if not dead:
            return
        leases, items = await shielded(self.store.take_over(sorted(dead)))
        self._taken |= set(dead.items())
        log.warning("took over from instances whose heartbeat stood still", instances=sorted(dead),
                    still_s=self.settings.takeover_after_s, leases=leases, inbox_items=items)
        if leases and not self._stopping.is_set() and (self._resync is None or self._resync.done()):
            # their change streams start here now, not at the next timed sync
            self._resync = asyncio.create_task(self._sync_quietly(), name="takeover-sync")

    async def _sync_quietly(self) -> None:
        try:
            await self.trigger_sync.sync()
        except Exception as exc:
            log.warning("trigger sync after a takeover failed", error=str(exc))

    async def _live_peers(self) -> list[str]:
        """The instances whose heartbeat is recent (this one included)."""
        within = 3 * self.settings.heartbeat_interval_s
        return [str(doc["_id"]) for doc in await self.store.live_instances(within_s=within)]

    async def _heartbeat(self) -> None:
        """Other instances see this one (an s3 trigger then needs the shared HUB_PUBLIC_URL)."""
        if self.port is None:  # starting: alive, not yet listening
            await shielded(self.store.heartbeat(self.instance_id, {}, self._nonce))
            return
        mine = await shielded(self.store.heartbeat(self.instance_id, {"url": self.url, "public_url": self.settings.public_url,
                                                                      "kafka": self.cursors.kafka_shares()}, self._nonce))
        if not mine and not self._id_lost:  # this process stalled past INSTANCE_LIVE_S and another took the id
            log.error("another process now runs under this instance id; stop this one",
                      instance=self.instance_id)
        self._id_lost = not mine
        if self.settings.public_url or not any(t.source_type == "s3" for t in self.router.triggers.values()):
            return
        others = sorted(i["_id"] for i in await shielded(self.store.live_instances()) if i["_id"] != self.instance_id)
        if others and others != self._warned_for:  # once per change, not every beat
            log.warning("several hub instances run s3 triggers without HUB_PUBLIC_URL: buckets notify one "
                        "instance's own address, and stop reaching any hub when it stops", others=others)
        self._warned_for = others
