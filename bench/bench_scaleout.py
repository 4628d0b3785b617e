"""Scale-out benchmark: 1, 2 and 3 hub instances on one machine behind one HAProxy, events/s per
source and the share each instance ran, then takeover times when an instance is stopped (SIGTERM)
or killed (kill -9) while events flow.

    .venv/bin/python bench/bench_scaleout.py                       # everything, ~4.5 min
    .venv/bin/python bench/bench_scaleout.py --instances 1,3 --no-takeover
    .venv/bin/python bench/bench_scaleout.py --only kafka-b1,mongo-b1 --scale 0.5
    .venv/bin/python bench/bench_scaleout.py --no-throughput --takeover-instances 2

One run starts its own real servers in a temporary directory (mongod as a replica set, the Tansu
Kafka broker, Ceph RGW) and an HAProxy over three fixed hub ports (health-checked on /healthz):
that proxy's URL is every hub's ``HUB_PUBLIC_URL``, so RGW pushes bucket notifications to it and
the benchmark's API calls and webhook POSTs go through it too. Each hub instance is a separate
``python -m hub.cli serve`` process (sandbox bwrap) with its own ``HUB_DATA_DIR`` and
``HUB_INSTANCE_ID``; all share one MongoDB database, the broker and RGW.

Throughput, for each N in --instances (a fresh database and fresh hubs per N): a backlog or burst
per scenario, counted from the invocation records (``instance`` says which hub ran each one):

- ``kafka-b1`` / ``kafka-b100``: a backlog on a 6-partition topic (so 3 instances can split it),
  no-op handler, batch 1 / batch 100, trigger created with ``start: earliest`` once the backlog is
  there (the instances join the group together);
- ``kafka-sleep``: the same with a handler that sleeps 5 ms and ``max_concurrency`` 2 (an
  I/O-bound function: each instance adds worker slots, not CPU);
- ``mongo-b1`` / ``mongo-b100``: ``insert_many`` into a watched collection (a change stream is read
  by one instance under a lease: this does not scale out, by design);
- ``s3-hook`` / ``s3-hook-sleep``: RGW-format notifications POSTed through HAProxy (16 in flight, ``--hook-connections``)
  into the shared inbox, batch 100 no-op / batch 1 with the 5 ms handler and ``max_concurrency`` 2;
- ``s3-upload``: real uploads to RGW (8 in flight); RGW pushes each notification to HAProxy.

"steady" = first record started -> last record finished; "total" = the scenario's start (trigger
creation, ``insert_many``, first POST or upload) -> last record finished.

Takeover (--takeover-instances hubs, fresh database): Kafka, MongoDB, webhook and upload events
flow at a steady rate; an instance is stopped -- SIGTERM, kill -9, SIGTERM again (--takeover-modes),
restarting the victim with its instance id and letting the group settle between stops. (The first
SIGTERM comes in the Kafka group's first generation, which Tansu numbers 0; aiokafka sends no
LeaveGroup from generation 0, so there it is detected like a kill. The second comes after
rebalances.) The victim is the instance that reads the change stream, so all three sources have
something to hand over; just before the stop a burst of webhook notifications for a slow function
makes every instance hold inbox claims. Measured from
the stop: until the victim's Kafka partitions run on another instance (first record of each),
until the change stream runs on another instance, until the inbox items the victim had claimed
run elsewhere; and how long the other partitions stalled in the rebalance. Test-like timings by
default (Kafka session 3 s, stream lease 5 s, inbox lease 5 s; flags change them); the report
also prints what the defaults give.

Every phase is checked: every event written ran to success exactly once (per trigger and event
id, and per written sequence id), no failed records, no dead letters; after the takeovers, the
change stream's reader must still be able to move its cursor (its lease token not older than the
cursor's fence). There are no throughput targets (on 2 shared cores events/s cannot scale with N);
the exit code is 1 when an event was lost or ran twice, a phase timed out, or the cursor is stuck.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
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
from aiokafka import AIOKafkaProducer  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # noqa: E402
from pymongo import AsyncMongoClient  # noqa: E402

from devstack import CephRGW, MongoServer, TansuServer, free_port  # noqa: E402
from devstack.haproxy import HAProxy  # noqa: E402
from tests.chaos import HubProcess, hub_env, outcome  # noqa: E402
from tests.hubfixtures import API_TOKEN, WEBHOOK_TOKEN  # noqa: E402
from bench_throughput import Api, descendants, proc_cpu_s  # noqa: E402  (the same helpers)

PARTITIONS = 6
# Like tests.chaos.SEQ_FUNCTION (returns the sequence ids it was given, so the records say which
# writes ran), and it also says which S3 events came from the reconciling scan, not a notification.
BENCH_FUNCTION = '''\
import time

SLEEP_S = {sleep}


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
    return {{"seqs": [s for s, _ in got], "scan": [s for s, scan in got if scan]}}
'''


def bench_function(sleep_s: float = 0.0) -> str:
    return BENCH_FUNCTION.format(sleep=sleep_s)


MAX_INSTANCES = 3
SCENARIOS = ("kafka-b1", "kafka-b100", "kafka-sleep", "mongo-b1", "mongo-b100", "s3-hook", "s3-hook-sleep",
             "s3-upload")
# the defaults of hub/settings.py, for the "what the defaults give" column
DEFAULTS = {"session_ms": 10000, "lease_ttl_s": 15.0, "inbox_lease_s": 15.0, "sync_s": 2.0, "inbox_poll_s": 2.0}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def ts(value: Any) -> float:
    """A MongoDB datetime (naive UTC) as epoch seconds."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return value.timestamp()
    return float("nan")


# -- CPU accounting -----------------------------------------------------------------------------
def tree_cpu(pids: list[int]) -> dict[int, float]:
    """CPU seconds of each process in the trees under ``pids`` (the hubs and their workers)."""
    out: dict[int, float] = {}
    for pid in pids:
        for p in [pid, *descendants(pid)]:
            out[p] = proc_cpu_s(p) or 0.0
    return out


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    return sum(parts) - idle, sum(parts)


class Meter:
    """CPU of the hubs (+ their workers) and of mongod, and the machine's busy share, between
    start() and stop()."""

    def __init__(self, pids: list[int], mongod: int | None) -> None:
        self.pids = pids
        self.mongod = mongod

    def start(self) -> Meter:
        self.cpu0 = tree_cpu(self.pids)
        self.mongo0 = (proc_cpu_s(self.mongod) or 0.0) if self.mongod else 0.0
        self.m0 = machine_jiffies()
        self.t0 = self.t1 = time.time()
        return self

    def stop(self) -> tuple[float, float, float]:
        """(hubs + workers CPU s, mongod CPU s, machine busy share)"""
        cpu1 = tree_cpu(self.pids)
        mongo = ((proc_cpu_s(self.mongod) or 0.0) if self.mongod else 0.0) - self.mongo0
        m1 = machine_jiffies()
        self.t1 = time.time()
        hub_cpu = sum(c - self.cpu0.get(p, 0.0) for p, c in cpu1.items())
        busy = (m1[0] - self.m0[0]) / max(1, m1[1] - self.m0[1])
        return hub_cpu, mongo, busy


# -- writing events -----------------------------------------------------------------------------
async def create_topic(bootstrap: str, topic: str, partitions: int = PARTITIONS) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()


async def produce_backlog(bootstrap: str, topic: str, seqs: list[str]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, linger_ms=5,
                                max_batch_size=256 * 1024)
    await producer.start()
    try:
        futs = [await producer.send(topic, json.dumps({"seq": s, "pad": "x" * 50}).encode(),
                                    partition=i % PARTITIONS) for i, s in enumerate(seqs)]
        await producer.flush()
        await asyncio.gather(*futs)
    finally:
        await producer.stop()


NOTE_TEMPLATE = json.loads((ROOT / "tests/data/s3/rgw_put.json").read_text())["Records"][0]


def notification(bucket: str, seq: str, i: int) -> bytes:
    """An RGW-format notification for ``in/SEQ`` (the function reports the key's last part)."""
    rec = json.loads(json.dumps(NOTE_TEMPLATE))
    t = dt.datetime.now(dt.timezone.utc)
    rec["eventTime"] = t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    rec["s3"]["bucket"]["name"] = bucket
    rec["s3"]["bucket"]["arn"] = f"arn:aws:s3:default::{bucket}"
    rec["s3"]["object"]["key"] = f"in/{seq}"
    rec["s3"]["object"]["sequencer"] = f"{0x2B5D4366F8C1A917 + i:016X}"
    rec["s3"]["object"]["eTag"] = uuid.uuid4().hex
    rec["eventId"] = f"{t.timestamp():.6f}.{seq}"
    return json.dumps({"Records": [rec]}).encode()


# -- what the hubs recorded ---------------------------------------------------------------------
async def succeeded_events(db: Any, trigger: str) -> int:
    cursor = await db.invocations.aggregate([
        {"$match": {"trigger": trigger, "status": "succeeded"}},
        {"$group": {"_id": None, "n": {"$sum": {"$size": "$event_ids"}}}}])
    rows = [r async for r in cursor]
    return int(rows[0]["n"]) if rows else 0


async def wait_succeeded(db: Any, trigger: str, n: int, timeout: float) -> int:
    deadline = time.time() + timeout
    while True:
        got = await succeeded_events(db, trigger)
        if got >= n or time.time() > deadline:
            return got
        await asyncio.sleep(0.25)


async def per_instance(db: Any, trigger: str) -> dict[str, dict[str, Any]]:
    """Events, first start and last finish per instance (every status)."""
    cursor = await db.invocations.aggregate([
        {"$match": {"trigger": trigger}},
        {"$group": {"_id": "$instance", "events": {"$sum": {"$size": "$event_ids"}}, "records": {"$sum": 1},
                    "first": {"$min": "$started_at"}, "last": {"$max": "$finished_at"}}}])
    return {str(r["_id"]): {"events": r["events"], "records": r["records"], "first": ts(r["first"]),
                            "last": ts(r["last"])} async for r in cursor}


@dataclass
class Check:
    ok: bool
    text: str


async def verify(db: Any, expected: dict[str, set[str]]) -> dict[str, Check]:
    """Per trigger: every expected sequence id succeeded exactly once, no (trigger, event id)
    succeeded twice, and nothing failed or was dead-lettered."""
    out = await outcome(db)
    by_trigger_events: dict[str, Counter[str]] = defaultdict(Counter)
    for (trig, ev), n in out.succeeded_events.items():
        by_trigger_events[trig][ev] = n
    other: dict[str, dict[str, int]] = {}
    cursor = await db.invocations.aggregate([
        {"$match": {"status": {"$nin": ["succeeded"]}}}, {"$group": {"_id": {"t": "$trigger", "s": "$status"},
                                                                     "n": {"$sum": 1}}}])
    async for r in cursor:
        other.setdefault(r["_id"].get("t"), {})[r["_id"]["s"]] = r["n"]
    dead: Counter[str] = Counter()
    async for d in db.dead_letters.find({}, {"trigger": 1}):
        dead[d.get("trigger")] += 1
    checks = {}
    for trig, seqs in expected.items():
        ran = {s: out.succeeded_seqs.get(s, 0) for s in seqs}
        lost = sorted(s for s, n in ran.items() if n == 0)
        twice = sorted(s for s, n in ran.items() if n > 1)
        events = by_trigger_events.get(trig, Counter())
        dup_ev = sum(1 for n in events.values() if n > 1)
        problems = []
        if lost:
            problems.append(f"LOST {len(lost)} (e.g. {lost[:4]})")
        if twice:
            problems.append(f"RAN TWICE {len(twice)} (e.g. {twice[:4]})")
        if dup_ev:
            problems.append(f"{dup_ev} event ids succeeded more than once")
        if other.get(trig):
            problems.append(f"other records {other[trig]}")
        if dead.get(trig):
            problems.append(f"{dead[trig]} dead letters")
        text = f"{len(seqs) - len(lost)}/{len(seqs)} ran, {len(events)} event ids"
        checks[trig] = Check(not problems, text + ("; " + "; ".join(problems) if problems else ", once each"))
    return checks


# -- the hubs -----------------------------------------------------------------------------------
class Cluster:
    """Up to MAX_INSTANCES hubs on fixed ports behind one HAProxy."""

    def __init__(self, root: Path, servers: dict[str, Any], args: argparse.Namespace) -> None:
        self.root = root
        self.servers = servers
        self.args = args
        self.ports = [free_port() for _ in range(MAX_INSTANCES)]
        self.proxy = HAProxy(self.ports, data_dir=root / "haproxy")
        self.hubs: list[HubProcess] = []
        self.ids: list[str] = []
        self.db_name = ""
        self.log_paths: list[Path] = []
        self.upload_bucket = f"so-uploads-{uuid.uuid4().hex[:6]}"
        self.upload_bucket_made = False

    def env(self, i: int, db: str, instance_id: str, data_dir: Path) -> dict[str, str]:
        a = self.args
        return hub_env(
            self.servers, mongo_url=self.servers["mongo"].url, db=db, data_dir=data_dir, port=self.ports[i],
            instance_id=instance_id,
            HUB_PUBLIC_URL=self.proxy.url, HUB_SANDBOX="bwrap", HUB_LOG_LEVEL=a.log_level,
            HUB_KAFKA_SESSION_TIMEOUT_MS=str(a.session_timeout_ms),
            HUB_KAFKA_HEARTBEAT_INTERVAL_MS=str(max(100, a.session_timeout_ms // 6)),
            HUB_LEASE_TTL_S=str(a.lease_ttl_s), HUB_INBOX_LEASE_S=str(a.inbox_lease_s),
            HUB_TRIGGER_SYNC_INTERVAL_S=str(a.sync_interval_s), HUB_INBOX_POLL_INTERVAL_S=str(a.inbox_poll_s),
            HUB_SHUTDOWN_GRACE_S="10",
            HUB_S3_RECONCILE_INTERVAL_S=str(a.s3_reconcile_interval_s),
        )

    async def start(self, n: int, tag: str, http: aiohttp.ClientSession) -> None:
        self.db_name = f"scaleout_{tag}_{uuid.uuid4().hex[:6]}"
        self.hubs, self.ids = [], []
        for i in range(n):
            iid = f"{tag}-i{i + 1}"
            data_dir = self.root / f"hub-{iid}"
            log_path = self.root / f"hub-{iid}.log"
            hub = HubProcess(self.env(i, self.db_name, iid, data_dir), log_path, self.ports[i])
            hub.start()
            self.hubs.append(hub)
            self.ids.append(iid)
            self.log_paths.append(log_path)
        await asyncio.gather(*(h.wait_healthy(http, timeout=90) for h in self.hubs))
        await asyncio.sleep(1.5)  # HAProxy's health checks (every 0.5 s) see them up

    def pids(self) -> list[int]:
        return [h.pid for h in self.hubs if h.alive() and h.pid]

    async def stop(self) -> None:
        async def one(h: HubProcess) -> None:
            if h.alive():
                if await h.sigterm(30) is None:
                    log(f"a hub did not stop within 30 s of SIGTERM: {h.log_path}")
            h.cleanup()
        await asyncio.gather(*(one(h) for h in self.hubs))
        self.hubs = []


def hub_problems(path: Path) -> Counter[str]:
    out: Counter[str] = Counter()
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            if "Traceback" in line or "Error" in line:
                out[f"(raw) {line[:110]}"] += 1
            continue
        if isinstance(rec, dict) and str(rec.get("level", "")).lower() in ("warning", "error", "critical"):
            out[f"{rec.get('level')}: {str(rec.get('event', ''))[:110]}"] += 1
    return out


# -- throughput ---------------------------------------------------------------------------------
@dataclass
class Result:
    scenario: str
    instances: int
    n: int
    t0: float
    first: float
    last: float
    shares: dict[str, int]
    starts: dict[str, float]
    cpu: float
    mongo_cpu: float
    busy: float
    check: Check
    done: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def steady(self) -> float:
        return self.done / max(1e-9, self.last - self.first)

    @property
    def total(self) -> float:
        return self.done / max(1e-9, self.last - self.t0)


class Throughput:
    def __init__(self, cluster: Cluster, servers: dict[str, Any], args: argparse.Namespace,
                 http: aiohttp.ClientSession, n_instances: int) -> None:
        self.cluster = cluster
        self.servers = servers
        self.args = args
        self.http = http
        self.n_instances = n_instances
        self.api = Api(http, cluster.proxy.url, API_TOKEN)
        self.mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(servers["mongo"].url)
        self.db = self.mongo[cluster.db_name]
        self.tag = uuid.uuid4().hex[:6]

    def meter(self) -> Meter:
        proc = getattr(self.servers["mongo"], "proc", None)
        return Meter(self.cluster.pids(), proc.pid if proc is not None else None).start()

    def count(self, base: int) -> int:
        return max(10, int(base * self.args.scale))

    async def finish(self, name: str, n: int, t0: float, meter: Meter, extra: dict[str, Any] | None = None
                     ) -> Result:
        got = await wait_succeeded(self.db, name, n, self.args.timeout)
        cpu, mongo_cpu, busy = meter.stop()
        await asyncio.sleep(0.5)  # let a duplicate run in flight (if any) reach its record
        inst = await per_instance(self.db, name)
        first = min((v["first"] for v in inst.values()), default=float("nan"))
        last = max((v["last"] for v in inst.values()), default=float("nan"))
        seqs = {f"{name}-{i:06d}" for i in range(n)}
        check = (await verify(self.db, {name: seqs}))[name]
        if got < n:
            check = Check(False, f"TIMEOUT after {self.args.timeout:.0f} s: {got}/{n}; {check.text}")
        r = Result(name, self.n_instances, n, t0, first, last, {k: v["events"] for k, v in inst.items()},
                   {k: v["first"] - first for k, v in inst.items()}, cpu, mongo_cpu, busy, check, min(got, n),
                   extra or {})
        records = sum(v["records"] for v in inst.values())
        if records:  # how many events each handler call carried (batching, the inbox's gathering)
            r.extra["per_invocation"] = sum(v["events"] for v in inst.values()) / records
        log(f"N={self.n_instances} {name}: {r.steady:,.0f}/s steady, {r.total:,.0f}/s total; shares "
            f"{share_text(r)}; {check.text}")
        return r

    async def kafka(self, name: str, n: int, batch: int, sleep_s: float, max_conc: int) -> Result:
        topic = f"so-{name}-{self.tag}"
        await create_topic(self.servers["kafka"].bootstrap, topic)
        t = time.monotonic()
        await produce_backlog(self.servers["kafka"].bootstrap, topic, [f"{name}-{i:06d}" for i in range(n)])
        log(f"N={self.n_instances} {name}: produced {n:,} to {topic} in {time.monotonic() - t:.1f}s")
        await self.api.put_function(f"fn-{name}", bench_function(sleep_s), max_concurrency=max_conc)
        batch_cfg = {"size": batch, "window_ms": 0} if batch > 1 else {"size": 1}
        meter = self.meter()
        t0 = time.time()
        await self.api.put_trigger(name, f"fn-{name}", {"type": "kafka", "topic": topic, "start": "earliest"},
                                   batch=batch_cfg)
        return await self.finish(name, n, t0, meter)

    async def mongodb(self, name: str, n: int, batch: int) -> Result:
        app_db = f"soapp_{self.tag}"
        await self.api.put_function(f"fn-{name}", bench_function(0.0), max_concurrency=4)
        batch_cfg = {"size": batch, "window_ms": 0} if batch > 1 else {"size": 1}
        await self.api.put_trigger(name, f"fn-{name}", {"type": "mongodb", "database": app_db, "collection": name,
                                                        "operations": ["insert"]}, batch=batch_cfg)
        # the stream starts where the trigger was made, so waiting is not needed for correctness;
        # it keeps the lease race (who reads) out of the measured time
        deadline = time.time() + 30
        while not await self.db.leases.find_one({"_id": f"stream:{name}"}) and time.time() < deadline:
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        docs = [{"_id": f"{name}-{i:06d}", "seq": f"{name}-{i:06d}", "pad": "x" * 50} for i in range(n)]
        meter = self.meter()
        t0 = time.time()
        await self.mongo[app_db][name].insert_many(docs, ordered=False)
        lease = await self.db.leases.find_one({"_id": f"stream:{name}"})
        return await self.finish(name, n, t0, meter, {"reader": (lease or {}).get("owner")})

    async def s3_hook(self, name: str, n: int, batch: int, sleep_s: float, max_conc: int) -> Result:
        bucket = f"so-{name}-{self.tag}"
        await asyncio.to_thread(self.servers["rgw"].s3_client().create_bucket, Bucket=bucket)
        await self.api.put_function(f"fn-{name}", bench_function(sleep_s), max_concurrency=max_conc)
        batch_cfg = {"size": batch, "window_ms": 0} if batch > 1 else {"size": 1}
        await self.api.put_trigger(name, f"fn-{name}", {"type": "s3", "bucket": bucket}, batch=batch_cfg)
        await asyncio.sleep(1.0)  # every instance knows the trigger (config watch)
        bodies = [notification(bucket, f"{name}-{i:06d}", i) for i in range(n)]
        url = f"{self.cluster.proxy.url}/v1/sources/s3/events?token={WEBHOOK_TOKEN}"
        statuses: Counter[int] = Counter()
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        for b in bodies:
            queue.put_nowait(b)

        async def poster(s: aiohttp.ClientSession) -> None:
            while not queue.empty():
                data = queue.get_nowait()
                async with s.post(url, data=data, headers={"Content-Type": "application/json"}) as r:
                    await r.read()
                    statuses[r.status] += 1

        # what the instances cost doing nothing (polls, heartbeats, syncs, the scan), to tell the
        # per-notification cost from the per-instance one
        idle_s = 3.0
        idle = self.meter()
        await asyncio.sleep(idle_s)
        idle_cpu, idle_mongo, _ = idle.stop()
        meter = self.meter()
        t0 = time.time()
        conns = self.args.hook_connections
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conns)) as s:
            await asyncio.gather(*(poster(s) for _ in range(conns)))
        accept_s = time.time() - t0
        r = await self.finish(name, n, t0, meter, {"accept": n / accept_s, "statuses": dict(statuses),
                                                   "idle_cpu_per_s": idle_cpu / idle_s,
                                                   "idle_mongo_per_s": idle_mongo / idle_s})
        r.extra["metered_s"] = meter.t1 - meter.t0
        if set(statuses) != {200}:
            r.check = Check(False, f"webhook statuses {dict(statuses)}; {r.check.text}")
        return r

    async def s3_upload(self, name: str, n: int) -> Result:
        """Real uploads. One bucket for every N (its RGW topic stays warm: a new persistent topic
        delivers its first notifications many seconds late); a few warm-up uploads under another
        prefix and trigger first, until one runs from its notification."""
        bucket = self.cluster.upload_bucket
        s3 = self.servers["rgw"].s3_client()
        if not self.cluster.upload_bucket_made:
            await asyncio.to_thread(s3.create_bucket, Bucket=bucket)
            self.cluster.upload_bucket_made = True
        prefix = f"n{self.n_instances}-{self.tag}/"
        await self.api.put_function(f"fn-{name}", bench_function(0.0), max_concurrency=4)
        for trig, sub in ((f"{name}-warm", "warm/"), (name, "in/")):
            doc = await self.api.put_trigger(trig, f"fn-{name}", {"type": "s3", "bucket": bucket,
                                                                 "prefix": sub + prefix})
            if not (doc.get("notifications") or {}).get("configured"):
                raise RuntimeError(f"bucket notifications not configured: {doc.get('notifications')}")
        await asyncio.sleep(1.0)
        t_warm = time.time()
        for i in range(3):
            await asyncio.to_thread(s3.put_object, Bucket=bucket, Key=f"warm/{prefix}{name}-warm-{i}",
                                    Body=io.BytesIO(b"warm"))
        got = await wait_succeeded(self.db, f"{name}-warm", 3, 60)
        log(f"N={self.n_instances} {name}: warm-up uploads ran {time.time() - t_warm:.1f}s after the PUT ({got}/3)")
        put_at: dict[str, float] = {}

        def put(i: int) -> None:
            seq = f"{name}-{i:06d}"
            put_at[seq] = time.time()
            s3.put_object(Bucket=bucket, Key=f"in/{prefix}{seq}", Body=io.BytesIO(f"upload {i}".encode()))

        meter = self.meter()
        t0 = time.time()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            await asyncio.get_running_loop().run_in_executor(None, lambda: list(pool.map(put, range(n))))
        upload_s = time.time() - t0
        r = await self.finish(name, n, t0, meter, {"accept": n / upload_s})
        lat: list[float] = []
        scan = 0
        async for rec in self.db.invocations.find({"trigger": name, "status": "succeeded"},
                                                  {"result": 1, "started_at": 1}):
            result = rec.get("result") or {}
            scan += len(result.get("scan") or [])
            lat += [ts(rec["started_at"]) - put_at[q] for q in result.get("seqs") or [] if q in put_at]
        lat.sort()
        r.extra.update(scan=scan, lat_p50=lat[len(lat) // 2] if lat else float("nan"),
                       lat_max=lat[-1] if lat else float("nan"))
        return r

    async def run(self, only: list[str]) -> list[Result]:
        a = self.args
        sleep_s = a.sleep_ms / 1000
        plan = {
            "kafka-b1": lambda: self.kafka("kafka-b1", self.count(10_000), 1, 0.0, 4),
            "kafka-b100": lambda: self.kafka("kafka-b100", self.count(40_000), 100, 0.0, 4),
            "kafka-sleep": lambda: self.kafka("kafka-sleep", self.count(2_000), 1, sleep_s, 2),
            "mongo-b1": lambda: self.mongodb("mongo-b1", self.count(5_000), 1),
            "mongo-b100": lambda: self.mongodb("mongo-b100", self.count(20_000), 100),
            "s3-hook": lambda: self.s3_hook("s3-hook", self.count(2_000), 100, 0.0, 4),
            "s3-hook-sleep": lambda: self.s3_hook("s3-hook-sleep", self.count(1_000), 1, sleep_s, 2),
            "s3-upload": lambda: self.s3_upload("s3-upload", self.count(200)),
        }
        out = []
        try:
            for name in only:
                out.append(await plan[name]())
        finally:
            await self.mongo.close()
        return out


def share_text(r: Result) -> str:
    total = max(1, sum(r.shares.values()))
    return " / ".join(f"{k.rsplit('-', 1)[-1]} {100 * v / total:.0f}%" for k, v in sorted(r.shares.items()))


# -- takeover -----------------------------------------------------------------------------------
@dataclass
class Flow:
    """Steady writes to every source, each with a sequence id and the wall time it was written."""

    written: dict[str, dict[str, float]] = field(default_factory=lambda: defaultdict(dict))
    statuses: Counter[int] = field(default_factory=Counter)
    hook_latency: list[tuple[float, float]] = field(default_factory=list)  # (sent at, seconds)
    errors: Counter[str] = field(default_factory=Counter)


class Takeover:
    """Kafka, MongoDB and webhook events flowing into N instances; stop one, see who takes over."""

    def __init__(self, cluster: Cluster, servers: dict[str, Any], args: argparse.Namespace,
                 http: aiohttp.ClientSession) -> None:
        self.cluster = cluster
        self.servers = servers
        self.args = args
        self.http = http
        self.api = Api(http, cluster.proxy.url, API_TOKEN)
        self.mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(servers["mongo"].url)
        self.db = self.mongo[cluster.db_name]
        self.tag = uuid.uuid4().hex[:6]
        self.topic = f"so-takeover-{self.tag}"
        self.app_db = f"soapp_takeover_{self.tag}"
        self.hook_bucket = f"so-hook-{self.tag}"
        # the throughput phases' upload bucket when they ran: its RGW topic is warm already
        self.up_bucket = cluster.upload_bucket
        self.up_prefix = f"in/takeover-{self.tag}/"
        self.flow = Flow()
        self.stop_writing = asyncio.Event()
        self.burst_i = 0

    async def setup(self) -> None:
        await create_topic(self.servers["kafka"].bootstrap, self.topic)
        s3 = self.servers["rgw"].s3_client()
        await asyncio.to_thread(s3.create_bucket, Bucket=self.hook_bucket)
        if not self.cluster.upload_bucket_made:
            await asyncio.to_thread(s3.create_bucket, Bucket=self.up_bucket)
            self.cluster.upload_bucket_made = True
        await self.api.put_function("rec", bench_function(0.0), max_concurrency=4)
        await self.api.put_function("slow", bench_function(self.args.slow_ms / 1000), max_concurrency=2)
        await self.api.put_trigger("t-kafka", "rec", {"type": "kafka", "topic": self.topic, "start": "latest"})
        await self.api.put_trigger("t-mongo", "rec", {"type": "mongodb", "database": self.app_db,
                                                      "collection": "items", "operations": ["insert"]})
        await self.api.put_trigger("t-hook", "slow", {"type": "s3", "bucket": self.hook_bucket})
        doc = await self.api.put_trigger("t-upload", "rec", {"type": "s3", "bucket": self.up_bucket,
                                                             "prefix": self.up_prefix})
        if not (doc.get("notifications") or {}).get("configured"):
            raise RuntimeError(f"bucket notifications not configured: {doc.get('notifications')}")

    # writers
    async def paced(self, rate: float, write: Any) -> None:
        t0 = time.monotonic()
        i = 0
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

    async def writers(self) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.servers["kafka"].bootstrap, enable_idempotence=False,
                                    acks="all")
        await producer.start()
        coll = self.mongo[self.app_db]["items"]
        s3 = self.servers["rgw"].s3_client()
        hook_url = f"{self.cluster.proxy.url}/v1/sources/s3/events?token={WEBHOOK_TOKEN}"
        a = self.args

        async def kafka(i: int) -> None:
            seq = f"k-{i:06d}"
            try:
                await producer.send_and_wait(self.topic, json.dumps({"seq": seq}).encode(), partition=i % PARTITIONS)
                self.flow.written["t-kafka"][seq] = time.time()
            except Exception as exc:  # noqa: BLE001
                self.flow.errors[f"kafka: {type(exc).__name__}"] += 1

        async def mongo(i: int) -> None:
            seq = f"m-{i:06d}"
            await coll.insert_one({"_id": seq, "seq": seq})
            self.flow.written["t-mongo"][seq] = time.time()

        async def hook(i: int, seq: str | None = None) -> None:
            seq = seq or f"h-{i:06d}"
            t = time.time()
            try:
                async with self.http.post(hook_url, data=notification(self.hook_bucket, seq, 10_000_000 + i),
                                          headers={"Content-Type": "application/json"}) as r:
                    await r.read()
                    self.flow.statuses[r.status] += 1
                    if r.status == 200:
                        self.flow.written["t-hook"][seq] = t
            except Exception as exc:  # noqa: BLE001
                self.flow.errors[f"webhook: {type(exc).__name__}"] += 1
            self.flow.hook_latency.append((t, time.time() - t))

        self._hook = hook

        async def upload(i: int) -> None:
            seq = f"u-{i:06d}"
            t = time.time()
            body = f"upload {i}".encode()
            try:
                await asyncio.to_thread(s3.put_object, Bucket=self.up_bucket, Key=self.up_prefix + seq,
                                        Body=io.BytesIO(body))
                self.flow.written["t-upload"][seq] = t
            except Exception as exc:  # noqa: BLE001
                self.flow.errors[f"upload: {type(exc).__name__}"] += 1

        try:
            await asyncio.gather(self.paced(a.kafka_rate, kafka), self.paced(a.mongo_rate, mongo),
                                 self.paced(a.hook_rate, hook), self.paced(a.upload_rate, upload))
        finally:
            await producer.stop()

    async def burst(self, n: int) -> None:
        """Many webhook notifications at once: every instance claims its share of them."""
        sem = asyncio.Semaphore(16)

        async def one(i: int) -> None:
            async with sem:
                await self._hook(20_000_000 + i, f"b-{i:06d}")

        start = self.burst_i
        self.burst_i += n
        await asyncio.gather(*(one(i) for i in range(start, start + n)))

    async def records(self, trigger: str, since: float) -> list[dict[str, Any]]:
        t = dt.datetime.fromtimestamp(since, dt.timezone.utc).replace(tzinfo=None)
        return await self.db.invocations.find(
            {"trigger": trigger, "finished_at": {"$gte": t}},
            {"instance": 1, "event_id": 1, "event_ids": 1, "started_at": 1, "finished_at": 1, "status": 1},
        ).to_list(None)

    async def settled(self, live: list[str], timeout: float = 60.0) -> bool:
        """Every live instance runs Kafka records (the group has its members back)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            recent = await self.records("t-kafka", time.time() - 1.5)
            if {r["instance"] for r in recent} >= set(live):
                return True
            await asyncio.sleep(0.5)
        return False

    async def experiment(self, mode: str) -> dict[str, Any]:
        a = self.args
        lease = await self.db.leases.find_one({"_id": "stream:t-mongo"})
        victim_id = (lease or {}).get("owner") or self.cluster.ids[0]
        victim = self.cluster.hubs[self.cluster.ids.index(victim_id)]
        survivors = [i for i in self.cluster.ids if i != victim_id]
        # the partitions the victim works on now
        recent = await self.records("t-kafka", time.time() - 1.5)
        part_owner: dict[int, tuple[float, str]] = {}
        for r in recent:
            p = int(str(r["event_id"]).split(":")[2])
            t = ts(r["finished_at"])
            if p not in part_owner or t > part_owner[p][0]:
                part_owner[p] = (t, r["instance"])
        victim_parts = sorted(p for p, (_, i) in part_owner.items() if i == victim_id)
        await self.burst(a.burst)  # every instance holds claims on these now (up to its room)
        held = await self.db.inbox.find({"owner": victim_id, "state": "leased"}, {"event.id": 1}).to_list(None)
        held_ids = {h["event"]["id"] for h in held}
        t_stop = time.time()
        exit_s: float | None = None
        if mode == "kill9":
            victim.kill9()
        else:
            term = asyncio.create_task(victim.sigterm(30))
        log(f"takeover {mode}: stopped {victim_id} (change-stream reader; Kafka partitions {victim_parts}; "
            f"{len(held_ids)} inbox claims held)")
        # wait until every part has moved (or the window ends)
        deadline = t_stop + a.takeover_window
        res: dict[str, Any] = {}
        while True:
            res = await self.measure(t_stop, victim_id, victim_parts, held_ids)
            if res["complete"] or time.time() > deadline:
                break
            await asyncio.sleep(0.5)
        if mode != "kill9":
            exit_s = await term
        res.update(mode=mode, t_stop=t_stop, victim=victim_id, survivors=survivors, victim_parts=victim_parts,
                   held=len(held_ids), exit_s=exit_s)
        lat = [s for t, s in self.flow.hook_latency if t_stop - 1 <= t <= t_stop + 10]
        res["hook_max_latency"] = max(lat) if lat else float("nan")
        log(f"takeover {mode}: " + json.dumps({k: v for k, v in res.items() if k != "complete"}, default=str))
        return res

    async def measure(self, t_stop: float, victim: str, victim_parts: list[int], held: set[str]) -> dict[str, Any]:
        recs = await self.records("t-kafka", t_stop - 5)
        # Kafka: per partition, the first record started after the stop by another instance
        first_other: dict[int, float] = {}
        starts: dict[int, list[float]] = defaultdict(list)
        victim_after = 0
        for r in recs:
            p = int(str(r["event_id"]).split(":")[2])
            s = ts(r["started_at"])
            starts[p].append(s)
            if s >= t_stop and r["instance"] == victim:
                victim_after += 1
            if s >= t_stop and r["instance"] != victim:
                first_other[p] = min(first_other.get(p, float("inf")), s)
        moved = {p: first_other[p] - t_stop for p in victim_parts if p in first_other}
        # the other partitions: the longest pause between records across the stop (the rebalance)
        stall = 0.0
        for p, ss in starts.items():
            if p in victim_parts:
                continue
            ss.sort()
            before = [x for x in ss if x < t_stop]
            after = [x for x in ss if x >= t_stop]
            if after:
                prev = before[-1] if before else t_stop
                gaps = [after[0] - max(prev, t_stop)] + [b - a for a, b in zip(after, after[1:])]
                stall = max(stall, max(gaps))
        # MongoDB: the first record started after the stop by another instance
        m = await self.records("t-mongo", t_stop - 1)
        mongo_other = [ts(r["started_at"]) for r in m if r["instance"] != victim and ts(r["started_at"]) >= t_stop]
        mongo_s = min(mongo_other) - t_stop if mongo_other else None
        # inbox: the items the victim had claimed
        by_event: dict[str, tuple[str, float]] = {}
        if held:
            async for r in self.db.invocations.find({"event_id": {"$in": list(held)},
                                                     "status": "succeeded"}, {"instance": 1, "started_at": 1,
                                                                              "event_id": 1}):
                by_event[r["event_id"]] = (r["instance"], ts(r["started_at"]))
        by_victim = sum(1 for i, _ in by_event.values() if i == victim)
        victim_before = sum(1 for i, s in by_event.values() if i == victim and s < t_stop)
        elsewhere = sorted(s - t_stop for i, s in by_event.values() if i != victim)
        complete = (len(moved) == len(victim_parts) and mongo_s is not None and len(by_event) == len(held))
        return {"complete": complete, "kafka_first": min(moved.values()) if moved else None,
                "kafka_all": max(moved.values()) if len(moved) == len(victim_parts) and moved else None,
                "kafka_moved": len(moved), "kafka_victim_after": victim_after, "kafka_stall": stall,
                "mongo": mongo_s, "inbox_by_victim": by_victim, "inbox_victim_before": victim_before, "inbox_elsewhere": len(elsewhere),
                "inbox_first": elsewhere[0] if elsewhere else None, "inbox_last": elsewhere[-1] if elsewhere else None,
                "inbox_done": len(by_event)}

    async def run(self) -> dict[str, Any]:
        a = self.args
        out: dict[str, Any] = {"experiments": []}
        await self.setup()
        writer = asyncio.create_task(self.writers())
        try:
            if not await self.settled(self.cluster.ids):
                log("takeover: not every instance got Kafka partitions within 60 s")
            t = time.time()
            flowing = await self.uploads_flowing()
            log(f"takeover: upload notifications {'flow' if flowing else 'still LATE'} "
                f"({time.time() - t:.1f}s after the group settled)")
            await asyncio.sleep(2)
            modes = [m for m in a.takeover_modes.split(",") if m]
            for k, mode in enumerate(modes):
                res = await self.experiment(mode)
                res["label"] = f"{'SIGTERM' if mode == 'sigterm' else 'kill -9'} #{k + 1}"
                out["experiments"].append(res)
                if k == len(modes) - 1:
                    break
                # restart the victim (same instance id) and let the group settle again
                await asyncio.sleep(2)
                victim = self.cluster.hubs[self.cluster.ids.index(res["victim"])]
                victim.cleanup()
                t = time.time()
                victim.start()
                await victim.wait_healthy(self.http, timeout=90)
                ok = await self.settled(self.cluster.ids)
                log(f"takeover: {res['victim']} restarted; group settled {'in' if ok else 'NOT within'} "
                    f"{time.time() - t:.1f}s")
                await asyncio.sleep(2)
        finally:
            self.stop_writing.set()
            await asyncio.gather(writer, return_exceptions=True)
        expected = {trig: set(seqs) for trig, seqs in self.flow.written.items()}
        # the last uploads wait for RGW's push (and, for one stalled behind a dead push, the scan)
        for trig, seqs in expected.items():
            got = await wait_succeeded(self.db, trig, len(seqs), a.timeout)
            if got < len(seqs):
                log(f"takeover: {trig} {got}/{len(seqs)} after {a.timeout:.0f} s")
        await asyncio.sleep(2)
        out["checks"] = await verify(self.db, expected)
        out["stream"] = await self.stream_check()
        out["written"] = {k: len(v) for k, v in expected.items()}
        out["statuses"] = dict(self.flow.statuses)
        out["errors"] = dict(self.flow.errors)
        shares: dict[str, dict[str, int]] = {}
        for trig in expected:
            shares[trig] = {k: v["events"] for k, v in (await per_instance(self.db, trig)).items()}
        out["shares"] = shares
        # uploads: how long each took from the PUT to its run, and which came from the scan
        uploads = await self.upload_runs()
        written = self.flow.written["t-upload"]
        out["upload_scan"] = sum(1 for _, scan in uploads.values() if scan)
        for res in out["experiments"]:
            lo, hi = res["t_stop"] - 1.0, res["t_stop"] + 10.0
            lat = sorted(uploads[s][0] - t for s, t in written.items() if lo <= t <= hi and s in uploads)
            res["upload_n"] = len(lat)
            res["upload_max"] = lat[-1] if lat else None
            res["upload_p50"] = lat[len(lat) // 2] if lat else None
            res["upload_scan"] = sum(1 for s, t in written.items() if lo <= t <= hi and uploads.get(s, (0, False))[1])
        await self.mongo.close()
        return out

    async def stream_check(self) -> Check:
        """The change stream's cursor must still move: its reader's lease token must not be older
        than the fence the cursor carries (else every save is refused and the reader restarts from
        a stale position for ever), and its last save must be recent."""
        lease = await self.db.leases.find_one({"_id": "stream:t-mongo"}) or {}
        state = await self.db.source_state.find_one({"trigger": "t-mongo"}) or {}
        token, fence = lease.get("token"), state.get("fence")
        age = time.time() - ts(state.get("updated_at"))
        lost = sum(sum(n for k, n in hub_problems(p).items() if "stream lease lost" in k)
                   for p in self.cluster.log_paths if "takeover" in p.name)
        text = (f"reader {lease.get('owner')} holds lease token {token}, cursor fence {fence}, cursor saved "
                f"{age:.1f} s ago; 'stream lease lost' logged {lost}x")
        ok = isinstance(token, int) and isinstance(fence, int) and token >= fence
        return Check(ok, text if ok else "STUCK: " + text + " (the reader's saves are refused: it restarts "
                     "from a stale cursor again and again)")

    async def uploads_flowing(self, timeout: float = 60.0) -> bool:
        """Until uploads run from their notifications within 3 s (a new RGW persistent topic
        delivers its first notifications many seconds late)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            runs = await self.upload_runs()
            written = self.flow.written["t-upload"]
            recent = sorted((t, s) for s, t in written.items() if t < time.time() - 3)[-3:]
            if len(recent) == 3 and all(s in runs and not runs[s][1] and runs[s][0] - t < 3 for t, s in recent):
                return True
            await asyncio.sleep(1.0)
        return False

    async def upload_runs(self) -> dict[str, tuple[float, bool]]:
        """Upload sequence id -> (when its successful run started, whether the scan found it)."""
        out: dict[str, tuple[float, bool]] = {}
        async for r in self.db.invocations.find({"trigger": "t-upload", "status": "succeeded"},
                                                {"result": 1, "started_at": 1}):
            result = r.get("result") or {}
            scan = set(result.get("scan") or [])
            for seq in result.get("seqs") or []:
                out[seq] = (ts(r["started_at"]), seq in scan)
        return out


# -- report -------------------------------------------------------------------------------------
def fmt_s(x: float | None) -> str:
    return "-" if x is None or x != x else f"{x:.2f} s"


LABELS = {
    "kafka-b1": "Kafka backlog, batch 1, no-op",
    "kafka-b100": "Kafka backlog, batch 100, no-op",
    "kafka-sleep": "Kafka backlog, batch 1, {sleep} ms sleep, max_concurrency 2",
    "mongo-b1": "MongoDB insert_many, batch 1",
    "mongo-b100": "MongoDB insert_many, batch 100",
    "s3-hook": "S3 webhook POSTs via HAProxy, batch 100",
    "s3-hook-sleep": "S3 webhook POSTs via HAProxy, batch 1, {sleep} ms sleep, max_concurrency 2",
    "s3-upload": "S3 uploads to RGW (push via HAProxy)",
}


def report(results: list[Result], takeover: dict[str, Any] | None, args: argparse.Namespace
           ) -> tuple[bool, bool]:
    """Prints the tables; (nothing lost or run twice and no timeout, the change-stream cursor moves)."""
    ok = stream_ok = True
    if results:
        print("\n## Throughput (steady = first record started -> last finished; total from the scenario's start)\n")
        print("| scenario | N | events | events/s steady | events/s total | share per instance | instance start "
              "offsets | CPU s / 1,000 events: hubs+workers / mongod | machine busy | check |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in sorted(results, key=lambda r: (SCENARIOS.index(r.scenario), r.instances)):
            label = LABELS[r.scenario].format(sleep=args.sleep_ms)
            offs = " / ".join(f"+{v:.1f}" for _, v in sorted(r.starts.items()))
            extra = ""
            if "accept" in r.extra:
                extra = f" (accepted {r.extra['accept']:,.0f}/s)"
            if "idle_cpu_per_s" in r.extra:  # the CPU per event less what the instances cost idle
                span, done = r.extra["metered_s"], max(1, r.done)
                extra += (f" (idle: hubs {1000 * r.extra['idle_cpu_per_s']:.0f} / mongod "
                          f"{1000 * r.extra['idle_mongo_per_s']:.0f} ms CPU per s; CPU per 1,000 less idle "
                          f"{1000 * (r.cpu - r.extra['idle_cpu_per_s'] * span) / done:.2f} / "
                          f"{1000 * (r.mongo_cpu - r.extra['idle_mongo_per_s'] * span) / done:.2f})")
            if "scan" in r.extra:
                extra = (f" (uploaded {r.extra['accept']:,.0f}/s; PUT -> run p50 {r.extra['lat_p50']:.1f} s, max "
                         f"{r.extra['lat_max']:.1f} s; {r.extra['scan']} found by the scan)")
            if r.extra.get("reader"):
                extra = f" (reader {r.extra['reader'].rsplit('-', 1)[-1]})"
            if r.scenario.startswith("s3-hook") and "per_invocation" in r.extra:
                extra += f" ({r.extra['per_invocation']:.1f} events per invocation)"
            print(f"| {label}{extra} | {r.instances} | {r.n:,} | {r.steady:,.0f} | {r.total:,.0f} | {share_text(r)} "
                  f"| {offs} s | {1000 * r.cpu / max(1, r.done):.2f} / {1000 * r.mongo_cpu / max(1, r.done):.2f} | "
                  f"{100 * r.busy:.0f}% | {r.check.text} |")
            ok &= r.check.ok
    if takeover:
        exps = takeover["experiments"]
        a = args
        print(f"\n## Takeover ({a.takeover_instances} instances; Kafka {a.kafka_rate:.0f}/s on {PARTITIONS} partitions, "
              f"MongoDB {a.mongo_rate:.0f}/s, webhook {a.hook_rate:.0f}/s + a burst of {a.burst} for a "
              f"{a.slow_ms} ms function, uploads {a.upload_rate:.0f}/s)\n")
        print(f"Settings: Kafka session {a.session_timeout_ms} ms, stream lease {a.lease_ttl_s:g} s, inbox lease "
              f"{a.inbox_lease_s:g} s, trigger sync {a.sync_interval_s:g} s, inbox poll {a.inbox_poll_s:g} s. "
              f"Times are from the signal to the first record started on another instance.\n")
        print("| measure | " + " | ".join(e["label"] for e in exps) + " | expected (these settings) | expected (defaults) |")
        print("|---|" + "---|" * len(exps) + "---|---|")
        sess, d_sess = a.session_timeout_ms / 1000, DEFAULTS["session_ms"] / 1000
        rows = [
            ("victim's Kafka partitions: first / all on another instance",
             lambda e: f"{fmt_s(e['kafka_first'])} / {fmt_s(e['kafka_all'])} ({e['kafka_moved']}/{len(e['victim_parts'])})",
             f"SIGTERM: LeaveGroup, then Tansu's join wait (~2 s here), but as kill -9 in a group's first "
             f"generation (see README); kill -9: session {sess:g} s + join ~2 s",
             f"SIGTERM ~2-5 s; kill -9 ~{d_sess + 2:.0f}-{d_sess * 1.5:.0f} s"),
            ("other partitions: longest pause across the stop", lambda e: fmt_s(e["kafka_stall"]),
             "about the same (eager rebalance: every partition is revoked)", ""),
            ("victim's records after the signal (finishing in-flight chunks)", lambda e: str(e["kafka_victim_after"]),
             "", ""),
            ("MongoDB change stream on another instance", lambda e: fmt_s(e["mongo"]),
             f"SIGTERM <= {a.sync_interval_s:g} s after the stream stops (lease released); kill -9 "
             f"{a.lease_ttl_s * 2 / 3:.1f}-{a.lease_ttl_s + a.sync_interval_s:g} s (the lease's rest + a sync)",
             f"SIGTERM <= {DEFAULTS['sync_s']:g} s; kill -9 {DEFAULTS['lease_ttl_s'] * 2 / 3:.0f}-"
             f"{DEFAULTS['lease_ttl_s'] + DEFAULTS['sync_s']:g} s"),
            ("inbox items leased to the victim at the stop: run by it (started before the stop) / elsewhere",
             lambda e: f"{e['held']}: {e['inbox_by_victim']} ({e['inbox_victim_before']}) / {e['inbox_elsewhere']}",
             "", ""),
            ("... first / last of them started elsewhere",
             lambda e: f"{fmt_s(e['inbox_first'])} / {fmt_s(e['inbox_last'])}",
             f"SIGTERM: run by the victim within its grace, or released at once; kill -9 ~{a.inbox_lease_s:g} s "
             f"(+ poll {a.inbox_poll_s:g} s)", f"kill -9 ~{DEFAULTS['inbox_lease_s']:g}-{DEFAULTS['inbox_lease_s'] + DEFAULTS['inbox_poll_s']:g} s"),
            ("webhook POST via HAProxy: slowest answer around the stop", lambda e: fmt_s(e["hook_max_latency"]),
             "HAProxy retries a refused connection on another instance", ""),
            ("uploads made -1..+10 s around the stop: n, p50 / max PUT -> run, found by the scan",
             lambda e: f"{e['upload_n']}: {fmt_s(e['upload_p50'])} / {fmt_s(e['upload_max'])}, {e['upload_scan']}",
             "RGW pushes through HAProxy; the scan takes what is still unnotified after 15 s", ""),
            ("SIGTERM: hub exited after", lambda e: fmt_s(e["exit_s"]), "", ""),
        ]
        for label, f, exp, dexp in rows:
            print(f"| {label} | " + " | ".join(f(e) for e in exps) + f" | {exp} | {dexp} |")
        print("\nVictims: " + "; ".join(f"{e['label']}: {e['victim']} (partitions {e['victim_parts']})" for e in exps))
        print(f"\nUploads found by the reconciling scan (their notification had not come within the grace): "
              f"{takeover['upload_scan']} of {takeover['written'].get('t-upload', 0)}")
        print(f"\nWritten: {takeover['written']}; webhook statuses {takeover['statuses']}; writer errors "
              f"{takeover['errors'] or 'none'}")
        c = takeover["stream"]
        print(f"- change-stream cursor: {c.text}")
        stream_ok = c.ok
        for trig, c in takeover["checks"].items():
            shares = takeover["shares"].get(trig, {})
            tot = max(1, sum(shares.values()))
            sh = " / ".join(f"{k.rsplit('-', 1)[-1]} {100 * v / tot:.0f}%" for k, v in sorted(shares.items()))
            print(f"- {trig}: {c.text}; share {sh}")
            ok &= c.ok
    return ok, stream_ok


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--instances", default="1,2,3", help="instance counts for the throughput phases")
    ap.add_argument("--only", default="", help=f"comma-separated subset of {','.join(SCENARIOS)}")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every scenario's event count")
    ap.add_argument("--hook-connections", type=int, default=16,
                    help="s3-hook scenarios: POSTs in flight (issue 21 compares 16 per instance with 16 in all)")
    ap.add_argument("--sleep-ms", type=float, default=5.0, help="the sleeping handler's sleep")
    ap.add_argument("--throughput", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--takeover", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--takeover-instances", type=int, default=3, choices=(2, 3))
    ap.add_argument("--takeover-modes", default="sigterm,kill9,sigterm",
                    help="the stops, in order (the victim is restarted after each but the last)")
    ap.add_argument("--takeover-window", type=float, default=30.0, help="max seconds to wait for a takeover")
    ap.add_argument("--kafka-rate", type=float, default=150.0, help="takeover: Kafka messages/s")
    ap.add_argument("--mongo-rate", type=float, default=40.0, help="takeover: MongoDB inserts/s")
    ap.add_argument("--hook-rate", type=float, default=20.0, help="takeover: webhook notifications/s")
    ap.add_argument("--upload-rate", type=float, default=4.0, help="takeover: real uploads/s")
    ap.add_argument("--burst", type=int, default=150, help="takeover: notifications sent just before the stop")
    ap.add_argument("--slow-ms", type=int, default=100, help="takeover: the webhook trigger's function sleeps this")
    ap.add_argument("--session-timeout-ms", type=int, default=3000, help="HUB_KAFKA_SESSION_TIMEOUT_MS")
    ap.add_argument("--lease-ttl-s", type=float, default=5.0, help="HUB_LEASE_TTL_S (change-stream lease)")
    ap.add_argument("--inbox-lease-s", type=float, default=5.0, help="HUB_INBOX_LEASE_S")
    ap.add_argument("--sync-interval-s", type=float, default=0.5, help="HUB_TRIGGER_SYNC_INTERVAL_S")
    ap.add_argument("--inbox-poll-s", type=float, default=0.2, help="HUB_INBOX_POLL_INTERVAL_S")
    ap.add_argument("--s3-reconcile-interval-s", type=float, default=2.0,
                    help="HUB_S3_RECONCILE_INTERVAL_S (0: no bucket scan, and no webhook dedup against it)")
    ap.add_argument("--log-level", default="warning", help="the hubs' HUB_LOG_LEVEL")
    ap.add_argument("--timeout", type=float, default=120.0, help="per scenario, seconds")
    ap.add_argument("--keep", action="store_true", help="keep the servers' data in the scratch dir")
    args = ap.parse_args()
    only = [s for s in args.only.split(",") if s] or list(SCENARIOS)
    unknown = set(only) - set(SCENARIOS)
    if unknown:
        ap.error(f"unknown scenario(s) {sorted(unknown)}; choose from {SCENARIOS}")
    counts = [int(x) for x in args.instances.split(",") if x]
    if any(not 1 <= n <= MAX_INSTANCES for n in counts):
        ap.error(f"--instances: 1..{MAX_INSTANCES}")

    root = Path(tempfile.mkdtemp(prefix="bench-scaleout-"))
    os.chmod(root, 0o755)  # the sandboxed workers (their own uid) read code under the hubs' data dirs
    log(f"scratch dir {root}")
    started = time.monotonic()
    servers: dict[str, Any] = {}
    cluster: Cluster | None = None
    results: list[Result] = []
    takeover: dict[str, Any] | None = None
    try:
        mongo_t = asyncio.to_thread(MongoServer(root / "mongo").start)
        kafka_t = asyncio.to_thread(TansuServer(data_dir=root / "tansu").start)
        rgw_t = asyncio.to_thread(CephRGW(root / "rgw", access_key="bench", secret_key=uuid.uuid4().hex).start)
        servers["mongo"], servers["kafka"], servers["rgw"] = await asyncio.gather(mongo_t, kafka_t, rgw_t)
        log(f"servers up in {time.monotonic() - started:.1f}s")
        cluster = Cluster(root, servers, args)
        cluster.proxy.start()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            if args.throughput:
                for n in counts:
                    t = time.monotonic()
                    await cluster.start(n, f"n{n}", http)
                    log(f"N={n}: {n} hub(s) healthy in {time.monotonic() - t:.1f}s")
                    try:
                        results += await Throughput(cluster, servers, args, http, n).run(only)
                    finally:
                        await cluster.stop()
            if args.takeover:
                n = args.takeover_instances
                await cluster.start(n, "takeover", http)
                try:
                    takeover = await Takeover(cluster, servers, args, http).run()
                finally:
                    await cluster.stop()
    finally:
        if cluster is not None:
            await cluster.stop()
            cluster.proxy.stop()
        for key in ("rgw", "kafka", "mongo"):
            if key in servers:
                await asyncio.to_thread(servers[key].stop)
        if not args.keep:
            for d in ("mongo", "tansu", "rgw"):
                shutil.rmtree(root / d, ignore_errors=True)
    print(f"\n# Scale-out benchmark: python {sys.version.split()[0]}, {os.cpu_count()} CPUs, hub log level "
          f"{args.log_level}, sandbox bwrap, {time.monotonic() - started:.0f} s\n")
    ok, stream_ok = report(results, takeover, args)
    print("\n## Hub logs (warning and error lines)\n")
    for path in (cluster.log_paths if cluster else []):
        problems = hub_problems(path)
        total = sum(problems.values())
        print(f"- {path.name}: {total}" + ("" if not total else ": " + "; ".join(
            f"{k} x{v}" for k, v in problems.most_common(4))))
    print(f"\nhub logs: {root}")
    print(f"nothing lost, nothing ran twice: {'yes' if ok else 'NO'}")
    if takeover:
        print(f"change-stream cursor still moving after the takeovers: {'yes' if stream_ok else 'NO'}")
    return 0 if ok and stream_ok else 1


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
