"""Rollout and scale-in benchmark: N hub instances behind HAProxy under a steady load from every
source, then a rolling update, a scale 3 -> 4 -> 1 -> 3 and a kill -9 of the change stream's
reader; checks that nothing was lost or succeeded twice and measures each source's pauses.

    .venv/bin/python bench/bench_rollout.py                    # the hub's defaults, ~4 min
    .venv/bin/python bench/bench_rollout.py --profile fast     # heartbeat takeover (HUB_TAKEOVER_AFTER_S)

One run starts its own mongod (replica set), Tansu and Ceph RGW in a temporary directory and an
HAProxy over five fixed hub ports (health-checked on /healthz; its URL is every hub's
HUB_PUBLIC_URL, so RGW pushes bucket notifications to it). Each hub is a ``python -m hub.cli
serve`` process (sandbox bwrap) with its own data dir and an instance id of its own: a replaced
instance is a NEW process with a NEW id, as a Kubernetes rollout makes a new pod.

Load, all the time (flags change the rates): Kafka messages over 6 partitions, MongoDB inserts
into a watched collection, RGW-format notifications POSTed to the webhook through the proxy, and
real uploads to RGW (whose notifications RGW pushes to the proxy). Every function run records
itself as its own side effect: the function POSTs the sequence ids it was given to an HTTP
endpoint of this benchmark on 127.0.0.1 (``network: {"allow": ["127.0.0.1:PORT"]}``, the only
address it can reach; the hub's own MongoDB is denied to functions, and the stdlib's urllib
needs no requirements build). So executions are counted outside the hub, beside the hub's own
invocation records (which say what succeeded, and where).

Steps (each measured from its start to the next one's):
  rolling update: for each of the 3 instances in turn, start a new one (a new id), wait until it
    is healthy and in the proxy, then SIGTERM the old one and wait for it to exit (maxSurge 1,
    maxUnavailable 0: a Deployment's default for 3 replicas);
  scale 3 -> 4 (one new instance); scale 4 -> 1 (SIGTERM to three at once, the newest, as a
    scale-in does); scale 1 -> 3 (two new instances);
  kill -9 of the instance holding the change stream's lease, just after a burst of webhook
    notifications (so it holds inbox claims too).

Reported per source: events written, events lost (no success; must be 0), successes run twice
(must be 0; from the records), executions more than once (the side effect: at least once allows
a run cut off before its record to run again), the longest pause (no side effect arriving) in
each step against the longest one while all ran, and, for the kill -9, the takeover: until the
victim's Kafka partitions, the change stream and the inbox items it held ran elsewhere.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import io
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
from aiohttp import web  # noqa: E402
from aiokafka import AIOKafkaProducer  # noqa: E402
from pymongo import AsyncMongoClient  # noqa: E402

from devstack import CephRGW, MongoServer, TansuServer, free_port  # noqa: E402
from devstack.haproxy import HAProxy  # noqa: E402
from tests.chaos import HubProcess, hub_env, outcome  # noqa: E402
from tests.hubfixtures import API_TOKEN, WEBHOOK_TOKEN  # noqa: E402
from bench_throughput import Api  # noqa: E402
from bench_scaleout import PARTITIONS, create_topic, hub_problems, log, notification, ts, verify  # noqa: E402

SLOTS = 5  # proxy backends: 4 instances at most, plus one for a rollout's surge
SOURCES = {"t-kafka": "Kafka", "t-mongo": "MongoDB change stream", "t-hook": "S3 webhook POSTs",
           "t-upload": "S3 uploads (RGW -> webhook)"}
PREFIX = {"k": "t-kafka", "m": "t-mongo", "h": "t-hook", "b": "t-hook", "u": "t-upload"}

# Returns the sequence ids it ran (like bench_scaleout's function, so its checks apply) and
# POSTs them to the benchmark first: the side effect, counted outside the hub.
FUNCTION = '''\
import json
import time
import urllib.request

SLEEP_S = {sleep}
URL = "http://127.0.0.1:{port}/ran"
_open = urllib.request.build_opener(urllib.request.ProxyHandler({{}})).open


def _one(event):
    source = event.get("source") or ""
    data = event.get("data") or {{}}
    if source.startswith("kafka://"):
        return data["value"]["seq"], False
    if source.startswith("mongodb://"):
        return data["fullDocument"]["seq"], False
    if source.startswith("s3://"):
        return data["key"].rsplit("/", 1)[-1], bool(data.get("reconciled"))
    return data.get("seq"), False


def handler(event, context):
    if SLEEP_S:
        time.sleep(SLEEP_S)
    records = event["records"] if event.get("type") == "hub.batch" else [event]
    got = [_one(r) for r in records]
    seqs = [s for s, _ in got]
    body = json.dumps({{"seqs": seqs, "request": getattr(context, "aws_request_id", None)}}).encode()
    _open(urllib.request.Request(URL, data=body, method="POST",
                                 headers={{"Content-Type": "application/json"}}), timeout=10).read()
    return {{"seqs": seqs, "scan": [s for s, scan in got if scan]}}
'''

PROFILES: dict[str, dict[str, float]] = {
    # hub/settings.py's defaults: a killed instance's work moves when its leases run out
    "defaults": {"session_timeout_ms": 10000, "kafka_heartbeat_ms": 1000, "lease_ttl_s": 15.0,
                 "inbox_lease_s": 15.0, "sync_interval_s": 2.0, "inbox_poll_s": 2.0,
                 "heartbeat_s": 2.0, "takeover_after_s": 0.0},
    # the others take a dead instance's leases and claims when its heartbeat stood still 3 s
    # (1 s beats); Kafka's session 2.5 s (the broker must allow it: Apache Kafka's
    # group.min.session.timeout.ms is 6 s by default)
    "fast": {"session_timeout_ms": 2500, "kafka_heartbeat_ms": 400, "lease_ttl_s": 15.0,
             "inbox_lease_s": 15.0, "sync_interval_s": 2.0, "inbox_poll_s": 2.0,
             "heartbeat_s": 1.0, "takeover_after_s": 3.0},
}


@dataclass
class Step:
    name: str
    start: float
    end: float = 0.0
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class SideEffects:
    """The benchmark's endpoint the functions POST to: one row per execution."""

    def __init__(self) -> None:
        self.rows: list[tuple[float, list[str]]] = []
        self.port = free_port()
        self.runner: web.AppRunner | None = None

    async def ran(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.rows.append((time.time(), [str(s) for s in body.get("seqs") or []]))
        return web.Response(text="ok")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/ran", self.ran)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner:
            await self.runner.cleanup()

    def times(self, trigger: str) -> list[float]:
        return sorted(t for t, seqs in self.rows for s in seqs if PREFIX.get(s[:1]) == trigger)

    def executions(self) -> Counter[str]:
        return Counter(s for _, seqs in self.rows for s in seqs)


class Fleet:
    """Hub instances on SLOTS fixed ports behind one HAProxy; every start is a new instance id."""

    def __init__(self, root: Path, servers: dict[str, Any], args: argparse.Namespace) -> None:
        self.root, self.servers, self.args = root, servers, args
        self.ports = [free_port() for _ in range(SLOTS)]
        self.proxy = HAProxy(self.ports, data_dir=root / "haproxy")
        self.slots: list[tuple[str, HubProcess] | None] = [None] * SLOTS
        self.db_name = f"rollout_{uuid.uuid4().hex[:6]}"
        self.made = 0
        self.log_paths: list[Path] = []

    def env(self, slot: int, iid: str) -> dict[str, str]:
        p = self.args.settings
        return hub_env(
            self.servers, mongo_url=self.servers["mongo"].url, db=self.db_name, data_dir=self.root / f"hub-{iid}",
            port=self.ports[slot], instance_id=iid, HUB_PUBLIC_URL=self.proxy.url, HUB_SANDBOX="bwrap",
            HUB_LOG_LEVEL=self.args.log_level,
            HUB_KAFKA_SESSION_TIMEOUT_MS=str(int(p["session_timeout_ms"])),
            HUB_KAFKA_HEARTBEAT_INTERVAL_MS=str(int(p["kafka_heartbeat_ms"])),
            HUB_LEASE_TTL_S=str(p["lease_ttl_s"]), HUB_INBOX_LEASE_S=str(p["inbox_lease_s"]),
            HUB_TRIGGER_SYNC_INTERVAL_S=str(p["sync_interval_s"]), HUB_INBOX_POLL_INTERVAL_S=str(p["inbox_poll_s"]),
            HUB_HEARTBEAT_INTERVAL_S=str(p["heartbeat_s"]), HUB_TAKEOVER_AFTER_S=str(p["takeover_after_s"]),
            HUB_SHUTDOWN_GRACE_S="10", HUB_S3_RECONCILE_INTERVAL_S="2",
        )

    def live(self) -> list[tuple[str, HubProcess]]:
        return [s for s in self.slots if s is not None and s[1].alive()]

    def ids(self) -> list[str]:
        return [i for i, _ in self.live()]

    async def add(self, http: aiohttp.ClientSession, n: int = 1) -> list[str]:
        """Start ``n`` new instances (new ids), wait until healthy and seen by the proxy."""
        new: list[tuple[str, HubProcess]] = []
        for _ in range(n):
            slot = next(i for i, s in enumerate(self.slots) if s is None or not s[1].alive())
            self.made += 1
            iid = f"hub-{self.made}"
            path = self.root / f"{iid}.log"
            hub = HubProcess(self.env(slot, iid), path, self.ports[slot])
            hub.start()
            self.slots[slot] = (iid, hub)
            self.log_paths.append(path)
            new.append((iid, hub))
        await asyncio.gather(*(h.wait_healthy(http, timeout=120) for _, h in new))
        await asyncio.sleep(1.5)  # HAProxy's health checks (every 0.5 s, rise 1) see them up
        return [i for i, _ in new]

    def hub(self, iid: str) -> HubProcess:
        return next(h for i, h in self.live() if i == iid)

    async def terminate(self, iids: list[str]) -> dict[str, float | None]:
        """SIGTERM these at once; the seconds each took to exit."""
        hubs = [self.hub(i) for i in iids]
        took = await asyncio.gather(*(h.sigterm(60) for h in hubs))
        for h in hubs:
            h.cleanup()
        return dict(zip(iids, took))

    async def stop_all(self) -> None:
        await asyncio.gather(*(h.sigterm(60) for _, h in self.live()), return_exceptions=True)
        for s in self.slots:
            if s is not None:
                s[1].cleanup()


class Rollout:
    def __init__(self, fleet: Fleet, servers: dict[str, Any], args: argparse.Namespace,
                 http: aiohttp.ClientSession, effects: SideEffects) -> None:
        self.fleet, self.servers, self.args, self.http, self.effects = fleet, servers, args, http, effects
        self.api = Api(http, fleet.proxy.url, API_TOKEN)
        self.mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(servers["mongo"].url)
        self.db = self.mongo[fleet.db_name]
        tag = uuid.uuid4().hex[:6]
        self.topic, self.app_db = f"ro-{tag}", f"roapp_{tag}"
        self.hook_bucket, self.up_bucket = f"ro-hook-{tag}", f"ro-up-{tag}"
        self.written: dict[str, dict[str, float]] = defaultdict(dict)
        self.statuses: Counter[int] = Counter()
        self.errors: Counter[str] = Counter()
        self.stop_writing = asyncio.Event()
        self.steps: list[Step] = []
        self.burst_i = 0

    async def put_function(self, name: str, sleep_s: float, max_concurrency: int) -> None:
        await self.api.ok("PUT", f"/v1/functions/{name}", {
            "handler": "main.handler", "max_concurrency": max_concurrency, "timeout_s": 30, "memory_mb": 128,
            "code": {"files": {"main.py": FUNCTION.format(sleep=sleep_s, port=self.effects.port)}},
            "network": {"allow": [f"127.0.0.1:{self.effects.port}"]}})

    async def setup(self) -> None:
        await create_topic(self.servers["kafka"].bootstrap, self.topic)
        s3 = self.servers["rgw"].s3_client()
        for b in (self.hook_bucket, self.up_bucket):
            await asyncio.to_thread(s3.create_bucket, Bucket=b)
        await self.put_function("rec", 0.0, 4)
        await self.put_function("slow", self.args.slow_ms / 1000, 2)
        await self.api.put_trigger("t-kafka", "rec", {"type": "kafka", "topic": self.topic, "start": "earliest"})
        await self.api.put_trigger("t-mongo", "rec", {"type": "mongodb", "database": self.app_db,
                                                      "collection": "items", "operations": ["insert"]})
        await self.api.put_trigger("t-hook", "slow", {"type": "s3", "bucket": self.hook_bucket})
        doc = await self.api.put_trigger("t-upload", "rec", {"type": "s3", "bucket": self.up_bucket})
        if not (doc.get("notifications") or {}).get("configured"):
            raise RuntimeError(f"bucket notifications not configured: {doc.get('notifications')}")
        deadline = time.time() + 60
        while not await self.db.leases.find_one({"_id": "stream:t-mongo", "owner": {"$ne": None}}):
            if time.time() > deadline:
                raise RuntimeError("nobody took the change stream within 60 s")
            await asyncio.sleep(0.2)

    async def paced(self, rate: float, write: Any) -> None:
        t0, i = time.monotonic(), 0
        while not self.stop_writing.is_set():
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                try:
                    await asyncio.wait_for(self.stop_writing.wait(), delay)
                    return
                except TimeoutError:
                    pass
            await write(i)
            i += 1

    async def hook(self, seq: str, i: int) -> None:
        url = f"{self.fleet.proxy.url}/v1/sources/s3/events?token={WEBHOOK_TOKEN}"
        t = time.time()
        for attempt in range(5):  # a POST cut off by a kill fails back to its sender, who retries (RGW does)
            try:
                async with self.http.post(url, data=notification(self.hook_bucket, seq, i),
                                          headers={"Content-Type": "application/json"}) as r:
                    await r.read()
                    self.statuses[r.status] += 1
                    if r.status == 200:
                        self.written["t-hook"][seq] = t
                        return
            except Exception as exc:  # noqa: BLE001
                self.errors[f"webhook: {type(exc).__name__}"] += 1
            await asyncio.sleep(0.5 * (attempt + 1))

    async def writers(self) -> None:
        a = self.args
        producer = AIOKafkaProducer(bootstrap_servers=self.servers["kafka"].bootstrap, acks="all",
                                    enable_idempotence=False)
        await producer.start()
        coll = self.mongo[self.app_db]["items"]
        s3 = self.servers["rgw"].s3_client()

        async def kafka(i: int) -> None:
            seq = f"k-{i:06d}"
            try:
                await producer.send_and_wait(self.topic, json.dumps({"seq": seq}).encode(), partition=i % PARTITIONS)
                self.written["t-kafka"][seq] = time.time()
            except Exception as exc:  # noqa: BLE001
                self.errors[f"kafka: {type(exc).__name__}"] += 1

        async def mongo(i: int) -> None:
            seq = f"m-{i:06d}"
            await coll.insert_one({"_id": seq, "seq": seq})
            self.written["t-mongo"][seq] = time.time()

        async def hook(i: int) -> None:
            await self.hook(f"h-{i:06d}", i)

        async def upload(i: int) -> None:
            seq = f"u-{i:06d}"
            t = time.time()
            try:
                await asyncio.to_thread(s3.put_object, Bucket=self.up_bucket, Key=f"in/{seq}",
                                        Body=io.BytesIO(f"upload {i}".encode()))
                self.written["t-upload"][seq] = t
            except Exception as exc:  # noqa: BLE001
                self.errors[f"upload: {type(exc).__name__}"] += 1

        try:
            await asyncio.gather(self.paced(a.kafka_rate, kafka), self.paced(a.mongo_rate, mongo),
                                 self.paced(a.hook_rate, hook), self.paced(a.upload_rate, upload))
        finally:
            await producer.stop()

    async def burst(self, n: int) -> None:
        sem = asyncio.Semaphore(16)

        async def one(i: int) -> None:
            async with sem:
                await self.hook(f"b-{i:06d}", 20_000_000 + i)

        start, self.burst_i = self.burst_i, self.burst_i + n
        await asyncio.gather(*(one(i) for i in range(start, start + n)))

    async def kafka_members(self, since: float) -> set[str]:
        recs = await self.db.invocations.find({"trigger": "t-kafka", "started_at": {"$gte": _naive(since)}},
                                              {"instance": 1}).to_list(None)
        return {r["instance"] for r in recs}

    async def settle(self, timeout: float = 60.0) -> float:
        """Until every live instance runs Kafka records again (the group has its members)."""
        t0 = time.time()
        while time.time() - t0 < timeout:
            if await self.kafka_members(time.time() - 1.5) >= set(self.fleet.ids()):
                return time.time() - t0
            await asyncio.sleep(0.5)
        return float("nan")

    async def uploads_flowing(self, timeout: float) -> bool:
        """Until the last few uploads ran from their notifications within 3 s (a new RGW
        persistent topic delivers its first notifications many seconds late)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            ran = {s: t for t, seqs in self.effects.rows for s in seqs if s.startswith("u-")}
            recent = sorted((t, s) for s, t in self.written["t-upload"].items() if t < time.time() - 3)[-3:]
            if len(recent) == 3 and all(s in ran and ran[s] - t < 3 for t, s in recent):
                return True
            await asyncio.sleep(1.0)
        return False

    async def step(self, name: str, coro: Any) -> Step:
        st = Step(name, time.time())
        log(f"step {name}: instances {self.fleet.ids()}")
        st.note = await coro
        settled = await self.settle()
        st.extra["settled_s"] = settled
        await asyncio.sleep(self.args.dwell)
        st.end = time.time()
        log(f"step {name}: {st.note}; group settled {settled:.1f} s after; now {self.fleet.ids()}")
        self.steps.append(st)
        return st

    async def replace(self, old: str) -> str:
        (new,) = await self.fleet.add(self.http)
        took = (await self.fleet.terminate([old]))[old]
        return f"{new} started, {old} SIGTERM'd (exited in {_s(took)})"

    async def rolling_update(self) -> str:
        notes = []
        for old in list(self.fleet.ids()):
            notes.append(await self.replace(old))
        return "; ".join(notes)

    async def scale_to(self, n: int) -> str:
        live = self.fleet.ids()
        if n > len(live):
            return f"started {', '.join(await self.fleet.add(self.http, n - len(live)))}"
        going = live[n - len(live):]  # the newest go first
        took = await self.fleet.terminate(going)
        return "SIGTERM'd " + ", ".join(f"{i} (exited in {_s(s)})" for i, s in took.items())

    async def kill(self) -> tuple[str, dict[str, Any]]:
        lease = await self.db.leases.find_one({"_id": "stream:t-mongo"}) or {}
        victim = str(lease.get("owner") or self.fleet.ids()[0])
        recent = await self.db.invocations.find(
            {"trigger": "t-kafka", "started_at": {"$gte": _naive(time.time() - 1.5)}},
            {"instance": 1, "event_id": 1, "started_at": 1}).to_list(None)
        owner: dict[int, tuple[float, str]] = {}
        for r in recent:
            p, t = int(str(r["event_id"]).split(":")[2]), ts(r["started_at"])
            if p not in owner or t > owner[p][0]:
                owner[p] = (t, r["instance"])
        parts = sorted(p for p, (_, i) in owner.items() if i == victim)
        await self.burst(self.args.burst)
        held = await self.db.inbox.find({"owner": victim, "state": "leased"}, {"event.id": 1}).to_list(None)
        held_ids = {h["event"]["id"] for h in held}
        t_kill = time.time()
        self.fleet.hub(victim).kill9()
        log(f"kill -9 {victim} (change-stream reader, Kafka partitions {parts}, {len(held_ids)} inbox claims)")
        res: dict[str, Any] = {}
        while time.time() < t_kill + self.args.takeover_window:
            res = await self.takeover(t_kill, victim, parts, held_ids)
            if res["complete"]:
                break
            await asyncio.sleep(0.5)
        res.update(victim=victim, parts=parts, held=len(held_ids), t_kill=t_kill)
        return f"kill -9 {victim}", res

    async def takeover(self, t0: float, victim: str, parts: list[int], held: set[str]) -> dict[str, Any]:
        recs = await self.db.invocations.find(
            {"trigger": {"$in": ["t-kafka", "t-mongo"]}, "started_at": {"$gte": _naive(t0)}},
            {"trigger": 1, "instance": 1, "event_id": 1, "started_at": 1}).to_list(None)
        moved: dict[int, float] = {}
        mongo: float | None = None
        for r in recs:
            if r["instance"] == victim:
                continue
            s = ts(r["started_at"]) - t0
            if r["trigger"] == "t-kafka":
                p = int(str(r["event_id"]).split(":")[2])
                if p in parts:
                    moved[p] = min(moved.get(p, s), s)
            else:
                mongo = s if mongo is None else min(mongo, s)
        elsewhere: list[float] = []
        if held:
            async for r in self.db.invocations.find({"event_id": {"$in": list(held)}, "status": "succeeded"},
                                                    {"instance": 1, "started_at": 1}):
                if r["instance"] != victim:
                    elsewhere.append(ts(r["started_at"]) - t0)
        elsewhere.sort()
        done = await self.db.invocations.count_documents({"event_id": {"$in": list(held)}, "status": "succeeded"})
        return {"complete": len(moved) == len(parts) and mongo is not None and done >= len(held),
                "kafka_first": min(moved.values()) if moved else None,
                "kafka_all": max(moved.values()) if len(moved) == len(parts) and moved else None,
                "mongo": mongo, "inbox_first": elsewhere[0] if elsewhere else None,
                "inbox_last": elsewhere[-1] if elsewhere else None, "inbox_elsewhere": len(elsewhere),
                "inbox_done": done}

    async def run(self) -> dict[str, Any]:
        a = self.args
        await self.fleet.add(self.http, 3)
        await self.setup()
        writer = asyncio.create_task(self.writers())
        out: dict[str, Any] = {}
        try:
            log(f"group settled in {await self.settle():.1f} s")
            flowing = await self.uploads_flowing(a.upload_warmup)
            log(f"uploads {'flow' if flowing else 'still LATE'}")
            calm = Step("all 3 running (reference)", time.time())
            await asyncio.sleep(a.dwell + 3)
            calm.end = time.time()
            self.steps.append(calm)
            await self.step("rolling update (3 replaced one by one)", self.rolling_update())
            await self.step("scale 3 -> 4", self.scale_to(4))
            await self.step("scale 4 -> 1 (3 SIGTERMs at once)", self.scale_to(1))
            await self.step("scale 1 -> 3", self.scale_to(3))
            await asyncio.sleep(2)
            kill = Step("kill -9 of the change stream's reader", time.time())
            kill.note, out["takeover"] = await self.kill()
            kill.extra["settled_s"] = await self.settle()
            await asyncio.sleep(a.dwell)
            kill.end = time.time()
            self.steps.append(kill)
            log(f"takeover: {json.dumps({k: v for k, v in out['takeover'].items() if k != 'complete'}, default=str)}")
        finally:
            self.stop_writing.set()
            await asyncio.gather(writer, return_exceptions=True)
        expected = {trig: set(seqs) for trig, seqs in self.written.items()}
        deadline = time.time() + a.timeout
        execs = self.effects.executions()
        while time.time() < deadline:
            execs = self.effects.executions()
            if all(s in execs for seqs in expected.values() for s in seqs):
                break
            await asyncio.sleep(1.0)
        await asyncio.sleep(3)  # a duplicate in flight (if any) reaches its record and its side effect
        out["checks"] = await verify(self.db, expected)
        succeeded = (await outcome(self.db)).succeeded_seqs
        execs = self.effects.executions()
        out["sources"] = {}
        for trig, seqs in expected.items():
            times = self.effects.times(trig)
            pauses = {st.name: _longest_gap(times, st.start, st.end) for st in self.steps}
            shares: Counter[str] = Counter()
            async for r in self.db.invocations.find({"trigger": trig, "status": "succeeded"}, {"instance": 1, "event_ids": 1}):
                shares[r["instance"]] += len(r.get("event_ids") or [1])
            out["sources"][trig] = {
                "written": len(seqs), "not_executed": sum(1 for s in seqs if s not in execs),
                "lost": sum(1 for s in seqs if succeeded.get(s, 0) == 0),
                "twice": sum(1 for s in seqs if succeeded.get(s, 0) > 1),
                "executed_more_than_once": sum(1 for s in seqs if execs.get(s, 0) > 1),
                "pauses": pauses, "shares": dict(shares)}
        out["steps"] = self.steps
        out["statuses"], out["errors"] = dict(self.statuses), dict(self.errors)
        stray = await self.db.dead_letters.count_documents({})
        out["dead_letters"] = stray
        await self.mongo.close()
        return out


def _naive(t: float) -> Any:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).replace(tzinfo=None)


def _s(x: float | None) -> str:
    return "-" if x is None or x != x else f"{x:.2f} s"


def _longest_gap(times: list[float], start: float, end: float) -> float:
    """The longest stretch in [start, end] with no side effect of this source arriving."""
    inside = [t for t in times if start <= t <= end]
    edges = [start, *inside, end]
    return max(b - a for a, b in zip(edges, edges[1:]))


def report(out: dict[str, Any], args: argparse.Namespace, elapsed: float, load: str) -> bool:
    p = args.settings
    print(f"\n# Rollout benchmark: profile {args.profile}, python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
          f"{elapsed:.0f} s; load average at the start / end {load}\n")
    print(f"Settings: Kafka session {p['session_timeout_ms']:.0f} ms, HUB_LEASE_TTL_S {p['lease_ttl_s']}, "
          f"HUB_INBOX_LEASE_S {p['inbox_lease_s']}, trigger sync {p['sync_interval_s']} s, inbox poll "
          f"{p['inbox_poll_s']} s, heartbeat {p['heartbeat_s']} s, HUB_TAKEOVER_AFTER_S {p['takeover_after_s']}. "
          f"Load: Kafka {args.kafka_rate}/s, MongoDB {args.mongo_rate}/s, webhook {args.hook_rate}/s "
          f"(function sleeps {args.slow_ms} ms), uploads {args.upload_rate}/s.\n")
    steps: list[Step] = out["steps"]
    print("| step | what happened | " + " | ".join(f"longest pause: {SOURCES[t].split(' (')[0]}" for t in SOURCES) + " |")
    print("|---|---|" + "---|" * len(SOURCES))
    for st in steps:
        cells = [_s(out["sources"].get(t, {}).get("pauses", {}).get(st.name)) for t in SOURCES]
        print(f"| {st.name} ({st.end - st.start:.0f} s) | {st.note} | " + " | ".join(cells) + " |")
    print("\n| source | written | lost (no success) | successes run twice | executed more than once (side effect) | succeeded per instance | check |")
    print("|---|---|---|---|---|---|---|")
    ok = True
    for t, name in SOURCES.items():
        src = out["sources"].get(t)
        if src is None:
            continue
        check = out["checks"][t]
        ok = ok and check.ok and src["not_executed"] == 0
        shares = ", ".join(f"{k} {v}" for k, v in sorted(src["shares"].items()))
        print(f"| {name} | {src['written']} | {src['lost']} | {src['twice']} | {src['executed_more_than_once']} | "
              f"{shares} | {check.text} |")
    tk = out.get("takeover") or {}
    print(f"\nkill -9 of {tk.get('victim')} (Kafka partitions {tk.get('parts')}, {tk.get('held')} inbox claims): "
          f"Kafka partitions on another instance first {_s(tk.get('kafka_first'))}, all {_s(tk.get('kafka_all'))}; "
          f"change stream {_s(tk.get('mongo'))}; the victim's inbox items elsewhere first {_s(tk.get('inbox_first'))}, "
          f"last {_s(tk.get('inbox_last'))} ({tk.get('inbox_elsewhere')} of {tk.get('held')})")
    print(f"\nwebhook POST statuses {out['statuses']}, writer errors {out['errors'] or 'none'}, "
          f"dead letters {out['dead_letters']}")
    return ok and out["dead_letters"] == 0


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", choices=sorted(PROFILES), default="defaults")
    ap.add_argument("--kafka-rate", type=float, default=100.0)
    ap.add_argument("--mongo-rate", type=float, default=30.0)
    ap.add_argument("--hook-rate", type=float, default=10.0)
    ap.add_argument("--upload-rate", type=float, default=3.0)
    ap.add_argument("--burst", type=int, default=60, help="webhook notifications just before the kill")
    ap.add_argument("--slow-ms", type=int, default=50, help="the webhook trigger's function sleeps this")
    ap.add_argument("--dwell", type=float, default=4.0, help="seconds of steady load after each step settled")
    ap.add_argument("--takeover-window", type=float, default=40.0)
    ap.add_argument("--upload-warmup", type=float, default=45.0, help="max seconds to wait for RGW's first pushes")
    ap.add_argument("--timeout", type=float, default=90.0, help="for the last events to run at the end")
    ap.add_argument("--log-level", default="warning")
    args = ap.parse_args()
    args.settings = PROFILES[args.profile]
    load0 = open("/proc/loadavg").read().split()[:3]
    root = Path(tempfile.mkdtemp(prefix="bench-rollout-"))
    os.chmod(root, 0o755)  # the sandboxed workers read code under the hubs' data dirs
    log(f"scratch dir {root}")
    started = time.monotonic()
    servers: dict[str, Any] = {}
    fleet: Fleet | None = None
    effects = SideEffects()
    out: dict[str, Any] = {}
    try:
        await effects.start()
        servers["mongo"], servers["kafka"], servers["rgw"] = await asyncio.gather(
            asyncio.to_thread(MongoServer(root / "mongo").start),
            asyncio.to_thread(TansuServer(data_dir=root / "tansu").start),
            asyncio.to_thread(CephRGW(root / "rgw", access_key="bench", secret_key=uuid.uuid4().hex).start))
        log(f"servers up in {time.monotonic() - started:.1f}s")
        fleet = Fleet(root, servers, args)
        fleet.proxy.start()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            out = await Rollout(fleet, servers, args, http, effects).run()
    finally:
        if fleet is not None:
            await fleet.stop_all()
            fleet.proxy.stop()
        await effects.stop()
        for key in ("rgw", "kafka", "mongo"):
            if key in servers:
                await asyncio.to_thread(servers[key].stop)
        for d in ("mongo", "tansu", "rgw"):
            shutil.rmtree(root / d, ignore_errors=True)
    load1 = open("/proc/loadavg").read().split()[:3]
    ok = report(out, args, time.monotonic() - started, f"{' '.join(load0)} / {' '.join(load1)}")
    print("\n## Hub logs (warning and error lines)\n")
    for path in (fleet.log_paths if fleet else []):
        problems = hub_problems(path)
        total = sum(problems.values())
        print(f"- {path.name}: {total}" + ("" if not total else ": " + "; ".join(
            f"{k} x{v}" for k, v in problems.most_common(4))))
    print(f"\nhub logs: {root}")
    print(f"nothing lost, no success ran twice: {'yes' if ok else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
