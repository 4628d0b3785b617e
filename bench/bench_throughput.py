"""Throughput benchmark: Kafka backlog, concurrency, latency, the MongoDB source and the S3 inbox,
the hub next to baselines measured in the same run.

    .venv/bin/python bench/bench_throughput.py [--events 20000] [--only kafka,concurrency,latency,mongodb,s3]
                                               [--no-s3] [--log-level warning] [--info-run]
                                               [--profile /tmp/prof [--profile-format raw|flamegraph]]
                                               [--tracing [--tracing-events 5000] [--tracing-rounds 2]]

One run starts its own real servers in a temporary directory (mongod as a replica set, the Tansu
Kafka broker, and Ceph RGW for the S3 scenario) and, per hub scenario, a fresh hub SUBPROCESS
(``python -m hub.cli serve``, sandbox bwrap, a fresh MongoDB database, every event recorded).
Baselines run in this process against the same broker, interleaved with the hub runs so that a
noisy machine hurts both sides alike:

- ``raw``: an aiokafka consumer-group loop calling the handler in-process, ``getmany`` then commit
  (the limit);
- FastStream: a ``KafkaBroker`` subscriber, default ack policy and ``AckPolicy.ACK`` (per message);
- PPE: a consumer with one task per partition running each message through
  ``loop.run_in_executor(ProcessPoolExecutor(4), ...)`` in order, committing per fetched batch.

Every consumer (baselines and hub) uses ``session_timeout_ms`` 6000 and ``heartbeat_interval_ms``
500. Tansu answers a group join after half the session timeout, so every run includes a ~3 s
join. Two rates are printed: "total" (from the consumer start or the trigger's creation to the last
commit, join included: nothing subtracted) and "steady" (from the first event handled to the last
commit). The targets and ratios use the steady rate, because with 20,000 events the constant
join would otherwise dominate the comparison.

Targets (from issue 7): Kafka batch 100 >= 10,000 events/s and >= 2x FastStream default; batch 1
>= 1,500 events/s and >= 1x FastStream AckPolicy.ACK; a 10 ms-sleep function on 4 partitions with
max_concurrency 4 >= 300 events/s; Kafka source->handler p50 <= 10 ms and p99 <= 40 ms; MongoDB
source->handler p50 <= 10 ms. The MongoDB source and the S3 inbox (batch 100) are reported only.

``--tracing`` (issue 20) adds the cost of OpenTelemetry tracing: Kafka batch 1 and batch 100 hubs
with tracing off, on with ``parentbased_traceidratio`` 1.0 and on with 0.01, exporting over OTLP/HTTP
to a collector stand-in in this process (answers 200 to ``POST /v1/traces``, counts spans by walking
the protobuf wire format three levels deep, decodes nothing else). The modes are interleaved per
round, so the ratios to "off" compare runs made minutes apart on the same machine. Reported only.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import datetime as dt
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # noqa: E402
from pymongo import AsyncMongoClient  # noqa: E402

from devstack import CephRGW, MongoServer, TansuServer, free_port  # noqa: E402
from hub.catalog.triggers import kafka_group_id  # noqa: E402

SCENARIOS = ("kafka", "concurrency", "latency", "mongodb", "s3")
PARTITIONS = 4
SESSION_TIMEOUT_MS = 6000
HEARTBEAT_MS = 500
API_TOKEN = "bench-api-token-0123456789abcdef"
WEBHOOK_TOKEN = "bench-webhook-token-0123456789abcdef"
CLK_TCK = os.sysconf("SC_CLK_TCK")

NOOP_CODE = "def handler(event, context):\n    return None\n"
SLEEP_CODE = "import time\n\ndef handler(event, context):\n    time.sleep(0.01)\n"
KAFKA_LAT_CODE = ("import time\n\ndef handler(event, context):\n"
                  "    return {'t': time.time(), 'ts': event['data']['timestamp']}\n")
MONGO_LAT_CODE = ("import time\n\ndef handler(event, context):\n"
                  "    return {'t': time.time(), 'w': event['data'].get('wallTime')}\n")


# -- handlers of the in-process baselines (module level: the PPE pickles them) -----------------
def noop_handler(event: Any) -> None:
    return None


def ppe_noop(raw: bytes) -> None:
    noop_handler(json.loads(raw))


def ppe_sleep(raw: bytes) -> None:
    json.loads(raw)
    time.sleep(0.01)


def _warm(_: int) -> None:
    time.sleep(0.05)


# -- small helpers ------------------------------------------------------------------------------
def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    k = max(0, min(len(s) - 1, math.ceil(p / 100.0 * len(s)) - 1))
    return s[k]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def proc_cpu_s(pid: int) -> float | None:
    """utime + stime of one process (all its threads), in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def descendants(pid: int) -> list[int]:
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                with open(f"/proc/{p}/task/{t}/children") as f:
                    kids = [int(x) for x in f.read().split()]
            except OSError:
                continue
            out.extend(kids)
            todo.extend(kids)
    return out


def status_kb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class CpuMeter:
    """CPU seconds of the hub process, and of its descendants (the sandboxed workers: bwrap and the
    runtime), sampled every 0.2 s; a process first seen after the start counts from zero."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.base: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self._task: asyncio.Task[None] | None = None

    def _sample(self, first: bool = False) -> None:
        for p in descendants(self.pid):
            c = proc_cpu_s(p)
            if c is None:
                continue
            if p not in self.base:
                self.base[p] = c if first else 0.0
            self.last[p] = c

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(0.2)
            self._sample()

    def start(self) -> None:
        self.hub0 = proc_cpu_s(self.pid) or 0.0
        self._sample(first=True)
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> tuple[float, float]:
        """(hub CPU s, workers CPU s) since start."""
        hub = (proc_cpu_s(self.pid) or 0.0) - self.hub0
        self._sample()
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        workers = sum(self.last[p] - self.base[p] for p in self.last)
        return hub, workers


@dataclass
class Run:
    """One consumer's run over a backlog of ``n`` events; wall-clock times (time.time())."""

    label: str
    n: int
    t_start: float
    t_first: float
    t_end: float
    done: int = -1  # events finished (< n on a timeout)
    cpu_hub: float | None = None
    cpu_workers: float | None = None
    rss_peak_mb: float | None = None
    check: str = ""  # verification of the invocation records
    ok: bool = True  # all events, no loss, no duplicate success
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.done < 0:
            self.done = self.n

    @property
    def total_rate(self) -> float:
        return self.done / max(1e-9, self.t_end - self.t_start)

    @property
    def steady_rate(self) -> float:
        return self.done / max(1e-9, self.t_end - self.t_first)

    @property
    def join_s(self) -> float:
        return self.t_first - self.t_start


# -- Kafka --------------------------------------------------------------------------------------
async def create_topic(bootstrap: str, topic: str, partitions: int = PARTITIONS) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()


async def produce_backlog(bootstrap: str, topic: str, n: int) -> dict[int, int]:
    """``n`` small JSON messages spread evenly over the partitions; returns the end offsets."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, linger_ms=5,
                                max_batch_size=256 * 1024)
    await producer.start()
    try:
        futs = [await producer.send(topic, json.dumps({"n": i, "pad": "x" * 50}).encode(),
                                    partition=i % PARTITIONS) for i in range(n)]
        await producer.flush()
        metas = await asyncio.gather(*futs)
    finally:
        await producer.stop()
    ends: dict[int, int] = {}
    for m in metas:
        ends[m.partition] = max(ends.get(m.partition, 0), m.offset + 1)
    return ends


def consumer_for(bootstrap: str, topic: str, group: str, **kw: Any) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
                            auto_offset_reset="earliest", session_timeout_ms=SESSION_TIMEOUT_MS,
                            heartbeat_interval_ms=HEARTBEAT_MS, **kw)


async def raw_loop(bootstrap: str, topic: str, n: int) -> Run:
    consumer = consumer_for(bootstrap, topic, f"bench-raw-{uuid.uuid4().hex[:8]}")
    t0 = time.time()
    await consumer.start()
    first, seen = 0.0, 0
    try:
        while seen < n:
            batches = await consumer.getmany(timeout_ms=100, max_records=500)
            for msgs in batches.values():
                if not first:
                    first = time.time()
                for m in msgs:
                    noop_handler(json.loads(m.value))
                seen += len(msgs)
            if batches:
                await consumer.commit()
        t1 = time.time()
    finally:
        await consumer.stop()
    return Run("raw aiokafka loop, in-process", n, t0, first, t1)


async def faststream_run(bootstrap: str, topic: str, n: int, ack: bool) -> Run:
    from faststream import AckPolicy
    from faststream.kafka import KafkaBroker

    broker = KafkaBroker(bootstrap, logger=None)  # like the hub at warning: no per-message log
    count, first = 0, 0.0
    finished = asyncio.Event()
    kw: dict[str, Any] = dict(group_id=f"bench-fs-{uuid.uuid4().hex[:8]}", auto_offset_reset="earliest",
                              session_timeout_ms=SESSION_TIMEOUT_MS, heartbeat_interval_ms=HEARTBEAT_MS)
    if ack:
        kw["ack_policy"] = AckPolicy.ACK

    @broker.subscriber(topic, **kw)
    async def handle(body: dict[str, Any]) -> None:
        nonlocal count, first
        if not first:
            first = time.time()
        noop_handler(body)
        count += 1
        if count >= n:
            finished.set()

    t0 = time.time()
    await broker.start()
    try:
        await finished.wait()
        t1 = time.time()
    finally:
        await broker.stop()
    label = "FastStream, AckPolicy.ACK (commit per message)" if ack else "FastStream, default ack policy"
    return Run(label, n, t0, first, t1)


async def ppe_loop(bootstrap: str, topic: str, n: int, handler: Callable[[bytes], None], label: str) -> Run:
    """A consumer; per partition a task running each message in a ProcessPoolExecutor, in order;
    one commit per partition batch."""
    loop = asyncio.get_running_loop()
    with concurrent.futures.ProcessPoolExecutor(max_workers=PARTITIONS) as ppe:
        list(ppe.map(_warm, range(PARTITIONS * 2)))  # all workers started before the clock
        consumer = consumer_for(bootstrap, topic, f"bench-ppe-{uuid.uuid4().hex[:8]}")
        done, first = 0, 0.0
        finished = asyncio.Event()
        commit_lock = asyncio.Lock()
        queues: dict[TopicPartition, asyncio.Queue[list[Any]]] = {}
        tasks: list[asyncio.Task[None]] = []

        async def lane(tp: TopicPartition, q: asyncio.Queue[list[Any]]) -> None:
            nonlocal done
            while True:
                msgs = await q.get()
                for m in msgs:
                    await loop.run_in_executor(ppe, handler, m.value)
                async with commit_lock:
                    await consumer.commit({tp: msgs[-1].offset + 1})
                done += len(msgs)
                if done >= n:
                    finished.set()

        async def fetch() -> None:
            nonlocal first
            while True:
                batches = await consumer.getmany(timeout_ms=100, max_records=500)
                for tp, msgs in batches.items():
                    if not first:
                        first = time.time()
                    if tp not in queues:
                        queues[tp] = asyncio.Queue()
                        tasks.append(asyncio.create_task(lane(tp, queues[tp])))
                    queues[tp].put_nowait(msgs)

        t0 = time.time()
        await consumer.start()
        fetcher = asyncio.create_task(fetch())
        try:
            await finished.wait()
            t1 = time.time()
        finally:
            for t in [fetcher, *tasks]:
                t.cancel()
            await asyncio.gather(fetcher, *tasks, return_exceptions=True)
            await consumer.stop()
    return Run(label, n, t0, first, t1)


async def wait_committed(bootstrap: str, group: str, topic: str, ends: dict[int, int],
                         timeout: float) -> tuple[float, int]:
    """Poll the group's committed offsets until every partition reached its end offset.
    Returns (the time it did, events committed); on a timeout the time is the deadline's."""
    tps = [TopicPartition(topic, p) for p in sorted(ends)]
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    deadline = time.time() + timeout
    committed = 0
    try:
        while True:
            offsets = await admin.list_consumer_group_offsets(group, partitions=tps)
            committed = sum(max(0, offsets[tp].offset) if tp in offsets else 0 for tp in tps)
            if all(tp in offsets and offsets[tp].offset >= ends[tp.partition] for tp in tps):
                return time.time(), committed
            if time.time() > deadline:
                return time.time(), committed
            await asyncio.sleep(0.05)
    finally:
        await admin.close()


# -- the hub subprocess -------------------------------------------------------------------------
class HubProcess:
    """``python -m hub.cli serve`` on a free port with its own data dir and MongoDB database."""

    def __init__(self, root: Path, name: str, mongo_url: str, bootstrap: str, log_level: str,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.port = free_port()
        self.fn_port = free_port()  # function URLs have a listener of their own
        self.db = f"bench_{name.replace('-', '_')}_{uuid.uuid4().hex[:6]}"
        self.data_dir = root / f"hub-{name}"
        self.log_path = root / f"hub-{name}.log"
        self.url = f"http://127.0.0.1:{self.port}"
        self.fn_url = f"http://127.0.0.1:{self.fn_port}"
        self.env = {
            # OTEL_* too: tracing is on only where a run asks (--tracing)
            **{k: v for k, v in os.environ.items() if not k.startswith(("HUB_", "OTEL_"))},
            "HUB_MONGO_URL": mongo_url, "HUB_MONGO_DB": self.db, "HUB_KAFKA_BOOTSTRAP": bootstrap,
            "HUB_HTTP_HOST": "127.0.0.1", "HUB_HTTP_PORT": str(self.port), "HUB_FN_PORT": str(self.fn_port), "HUB_DATA_DIR": str(self.data_dir),
            "HUB_API_TOKEN": API_TOKEN, "HUB_WEBHOOK_TOKEN": WEBHOOK_TOKEN, "HUB_SANDBOX": "bwrap",
            "HUB_LOG_FORMAT": "json", "HUB_LOG_LEVEL": log_level,
            "HUB_KAFKA_SESSION_TIMEOUT_MS": str(SESSION_TIMEOUT_MS),
            "HUB_KAFKA_HEARTBEAT_INTERVAL_MS": str(HEARTBEAT_MS),
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self, timeout: float = 60.0) -> HubProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen([sys.executable, "-m", "hub.cli.commands", "serve"], cwd=ROOT, env=self.env,
                                         stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as s:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"hub {self.name} exited with {self.proc.returncode}:\n{self.tail()}")
                try:
                    async with s.get(self.url + "/healthz") as r:
                        if r.status == 200:
                            return self
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"hub {self.name} not healthy within {timeout}s:\n{self.tail()}")
                await asyncio.sleep(0.1)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        for _ in range(150):
            if proc.poll() is not None:
                break
            await asyncio.sleep(0.1)
        else:
            log(f"hub {self.name} did not stop within 15 s of SIGTERM; killing it")
        try:  # its process group: the hub, and any worker that outlived it
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()

    def problems(self) -> Counter[str]:
        """Warning/error lines of the hub's log, by (level, event)."""
        out: Counter[str] = Counter()
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return out
        for line in text.splitlines():
            try:
                rec = json.loads(line)
                level = str(rec.get("level", "")).lower()
                if level in ("warning", "error", "critical", "exception"):
                    out[f"{level}: {str(rec.get('event', ''))[:120]}"] += 1
            except (ValueError, AttributeError):
                low = line.lower()
                if "error" in low or "warning" in low or "traceback" in low:
                    out[f"(raw) {line[:120]}"] += 1
        return out


class Api:
    def __init__(self, session: aiohttp.ClientSession, base: str, token: str = API_TOKEN) -> None:
        self.session = session
        self.base = base
        self.headers = {"Authorization": f"Bearer {token}"}

    async def ok(self, method: str, path: str, body: Any = None) -> Any:
        async with self.session.request(method, self.base + path, json=body, headers=self.headers) as r:
            data = await r.json(content_type=None) if r.content_type == "application/json" else await r.text()
            if r.status >= 300:
                raise RuntimeError(f"{method} {path} -> {r.status}: {data}")
            return data

    async def put_function(self, name: str, code: str, max_concurrency: int = 4) -> Any:
        return await self.ok("PUT", f"/v1/functions/{name}", {
            "handler": "main.handler", "code": {"files": {"main.py": code}},
            "max_concurrency": max_concurrency, "timeout_s": 30, "memory_mb": 128})

    async def put_trigger(self, name: str, function: str, source: dict[str, Any], **cfg: Any) -> Any:
        return await self.ok("PUT", f"/v1/triggers/{name}", {"function": function, "source": source, **cfg})


def _ts(value: Any) -> float:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return value.timestamp()
    return float("nan")


async def record_stats(mongo_url: str, db: str, trigger: str) -> dict[str, Any]:
    """What the hub's ``invocations`` collection says about one trigger's runs."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url)
    try:
        coll = client[db].invocations
        by_status: dict[str, dict[str, Any]] = {}
        cursor = await coll.aggregate([
            {"$match": {"trigger": trigger}},
            {"$group": {"_id": "$status", "records": {"$sum": 1}, "events": {"$sum": {"$size": "$event_ids"}},
                        "done": {"$sum": {"$size": {"$ifNull": ["$done", []]}}},
                        "first": {"$min": "$started_at"}, "last": {"$max": "$finished_at"}}}])
        async for row in cursor:
            by_status[str(row["_id"])] = row
        cursor = await coll.aggregate([
            {"$match": {"trigger": trigger, "status": "succeeded"}}, {"$unwind": "$event_ids"},
            {"$group": {"_id": "$event_ids"}}, {"$count": "n"}])
        distinct = [row async for row in cursor]
        dead = await client[db].dead_letters.count_documents({"trigger": trigger})
    finally:
        await client.close()
    ok = by_status.get("succeeded", {})
    firsts = [_ts(r["first"]) for r in by_status.values() if r.get("first")]
    lasts = [_ts(r["last"]) for r in by_status.values() if r.get("last")]
    return {
        "records": sum(r["records"] for r in by_status.values()),
        "succeeded_records": ok.get("records", 0),
        "succeeded_events": ok.get("events", 0),
        "distinct_succeeded": distinct[0]["n"] if distinct else 0,
        "done_markers": sum(r["done"] for r in by_status.values()),
        "other": {k: v["records"] for k, v in by_status.items() if k != "succeeded"},
        "dead_letters": dead,
        "first": min(firsts) if firsts else float("nan"),
        "last": max(lasts) if lasts else float("nan"),
    }


def check_text(st: dict[str, Any], n: int) -> tuple[str, bool]:
    ok = st["succeeded_events"] == n and st["distinct_succeeded"] == n and not st["other"] and not st["dead_letters"]
    text = (f"{st['succeeded_events']} succeeded event ids in {st['succeeded_records']} records, "
            f"{st['distinct_succeeded']} distinct")
    if st["other"]:
        text += f"; other records {st['other']}"
    if st["dead_letters"]:
        text += f"; {st['dead_letters']} dead letters"
    return text + ("" if ok else f" (expected {n}: MISMATCH)"), ok


async def mongo_commands(mongo_url: str) -> Counter[str]:
    """mongod's count of each command it has run (serverStatus), for round trips per event. It
    counts every client's, the benchmark's own polling included (a few a second)."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url)
    try:
        status = await client.admin.command("serverStatus")
    finally:
        await client.close()
    out: Counter[str] = Counter()
    for name, row in (status.get("metrics", {}).get("commands") or {}).items():
        if isinstance(row, dict) and isinstance(row.get("total"), int):
            out[name] = row["total"]
    return out


async def wait_succeeded(mongo_url: str, db: str, trigger: str, n: int, timeout: float) -> int:
    """Poll until the succeeded records of ``trigger`` cover ``n`` event ids; returns how many do."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url)
    deadline = time.time() + timeout
    got = 0
    try:
        while True:
            cursor = await client[db].invocations.aggregate([
                {"$match": {"trigger": trigger, "status": "succeeded"}},
                {"$group": {"_id": None, "n": {"$sum": {"$size": "$event_ids"}}}}])
            rows = [r async for r in cursor]
            got = rows[0]["n"] if rows else 0
            if got >= n or time.time() > deadline:
                return got
            await asyncio.sleep(0.25)
    finally:
        await client.close()


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def _fields(buf: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    """(field number, start, end) of the length-delimited fields of one protobuf message; other
    wire types are skipped."""
    out, i = [], start
    while i < end:
        key, i = _varint(buf, i)
        wire = key & 7
        if wire == 2:
            n, i = _varint(buf, i)
            out.append((key >> 3, i, i + n))
            i += n
        elif wire == 0:
            _, i = _varint(buf, i)
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        else:
            raise ValueError(f"wire type {wire}")
    return out


def count_otlp_spans(body: bytes) -> int:
    """Spans in an OTLP ExportTraceServiceRequest: resource_spans (1) -> scope_spans (2) ->
    spans (2); nothing else is decoded."""
    return sum(1 for f, a, b in _fields(body, 0, len(body)) if f == 1
               for g, c, d in _fields(body, a, b) if g == 2
               for h, _, _ in _fields(body, c, d) if h == 2)


class Collector:
    """An OpenTelemetry collector stand-in: OTLP/HTTP ``POST /v1/traces`` -> 200, spans counted."""

    def __init__(self) -> None:
        self.spans = 0
        self.requests = 0
        self.bad = 0
        self.url = ""
        self._runner: aiohttp.web.AppRunner | None = None

    async def start(self) -> Collector:
        from aiohttp import web

        async def traces(request: web.Request) -> web.Response:
            body = await request.read()
            self.requests += 1
            try:
                self.spans += count_otlp_spans(body)
            except (ValueError, IndexError):
                self.bad += 1
            return web.Response(status=200, content_type="application/x-protobuf", body=b"")

        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/traces", traces)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


TRACING_MODES = (("off", None), ("on, sampling 1.0", "1.0"), ("on, sampling 0.01", "0.01"))


class Bench:
    def __init__(self, args: argparse.Namespace, root: Path, mongo: MongoServer, kafka: TansuServer,
                 rgw: CephRGW | None) -> None:
        self.args = args
        self.root = root
        self.mongo = mongo
        self.kafka = kafka
        self.rgw = rgw
        self.hub_logs: dict[str, Counter[str]] = {}
        self.hub_log_paths: dict[str, Path] = {}

    def hub(self, name: str, env: dict[str, str] | None = None, log_level: str | None = None) -> HubProcess:
        return HubProcess(self.root, name, self.mongo.url, self.kafka.bootstrap,
                          log_level or self.args.log_level, env)

    async def with_hub(self, hub: HubProcess, body: Callable[[HubProcess, Api], Awaitable[Any]]) -> Any:
        await hub.start()
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as s:
                return await body(hub, Api(s, hub.url))
        finally:
            await hub.stop()
            self.hub_logs[hub.name] = hub.problems()
            self.hub_log_paths[hub.name] = hub.log_path

    def _profiler(self, hub: HubProcess, name: str) -> tuple[subprocess.Popen[bytes], Path] | None:
        if not self.args.profile:
            return None
        fmt = self.args.profile_format
        ext = {"raw": "txt", "flamegraph": "svg", "speedscope": "json"}[fmt]
        out = Path(f"{self.args.profile}-{name}.{ext}")
        spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
        proc = subprocess.Popen([spy, "record", "--pid", str(hub.pid), "--duration", str(self.args.profile_duration),
                                 "--format", fmt, "-o", str(out), *(["--gil"] if self.args.profile_gil else []),
                                 *(["--nonblocking"] if self.args.profile_nonblocking else [])],
                                stdout=subprocess.DEVNULL, stderr=open(self.root / f"py-spy-{name}.log", "wb"))
        return proc, out

    # ---- 1. backlog --------------------------------------------------------------------------
    async def hub_backlog(self, name: str, topic: str, ends: dict[int, int], code: str,
                          batch: dict[str, int], log_level: str | None = None,
                          env: dict[str, str] | None = None, suffix: str = "") -> Run:
        n = sum(ends.values())
        hub = self.hub(name, env=env, log_level=log_level)

        async def body(hub: HubProcess, api: Api) -> Run:
            fn = f"fn-{name}"
            await api.put_function(fn, code, max_concurrency=4)
            spy = self._profiler(hub, name)
            meter = CpuMeter(hub.pid)
            meter.start()
            t0 = time.time()
            doc = await api.put_trigger(name, fn, {"type": "kafka", "topic": topic, "start": "earliest"},
                                        batch=batch)
            group = kafka_group_id(name, doc["source_identity"], doc.get("source_epoch", ""))
            t1, committed = await wait_committed(self.kafka.bootstrap, group, topic, ends,
                                                 timeout=self.args.timeout)
            cpu_hub, cpu_workers = await meter.stop()
            rss = status_kb(hub.pid, "VmHWM") / 1024
            if spy:  # py-spy stops after --profile-duration (idle samples are not counted)
                await asyncio.to_thread(spy[0].wait, self.args.profile_duration + 30)
            st = await record_stats(self.mongo.url, hub.db, name)
            text, ok = check_text(st, n)
            if committed < n:
                text = f"TIMEOUT after {self.args.timeout:.0f}s: {committed}/{n} committed; " + text
                ok = False
            label = f"hub, batch {batch['size']}" + (f" (log level {log_level})" if log_level else "") + suffix
            return Run(label, n, t0, st["first"], t1, done=min(committed, n), cpu_hub=cpu_hub,
                       cpu_workers=cpu_workers, rss_peak_mb=rss, check=text, ok=ok,
                       extra={"last_finished": st["last"] - t0})

        run: Run = await self.with_hub(hub, body)
        log(f"{run.label}: {run.steady_rate:,.0f} ev/s steady, {run.total_rate:,.0f} total; {run.check}")
        return run

    async def scenario_kafka(self) -> dict[str, Run]:
        n = self.args.events
        topic = f"bench-backlog-{uuid.uuid4().hex[:8]}"
        b = self.kafka.bootstrap
        await create_topic(b, topic)
        t = time.perf_counter()
        ends = await produce_backlog(b, topic, n)
        log(f"produced {n} messages to {topic} in {time.perf_counter() - t:.1f}s: end offsets {ends}")
        runs: dict[str, Run] = {}

        async def base(key: str, coro: Awaitable[Run]) -> None:
            runs[key] = await coro
            r = runs[key]
            log(f"{r.label}: {r.steady_rate:,.0f} ev/s steady, {r.total_rate:,.0f} total (join {r.join_s:.1f}s)")

        # interleaved: baseline, hub, baseline, hub, ...
        await base("raw", raw_loop(b, topic, n))
        await base("fs", faststream_run(b, topic, n, ack=False))
        runs["hub100"] = await self.hub_backlog("kafka-b100", topic, ends, NOOP_CODE, {"size": 100, "window_ms": 0})
        await base("fs_ack", faststream_run(b, topic, n, ack=True))
        # batch 1 as a user runs it (issue 21): HUB_LOG_LEVEL=info, JSON logs, unless --b1-log-level
        runs["hub1"] = await self.hub_backlog("kafka-b1", topic, ends, NOOP_CODE, {"size": 1},
                                              log_level=self.args.b1_log_level)
        await base("ppe", ppe_loop(b, topic, n, ppe_noop, "ProcessPoolExecutor per-partition loop, 4 workers"))
        return runs

    # ---- 1b. the cost of tracing (--tracing) --------------------------------------------------
    async def tracing_cost(self) -> dict[str, Any]:
        """Kafka batch 1 and batch 100, tracing off / on at 1.0 / on at 0.01, interleaved per round;
        spans go to a collector stand-in in this process. Batch 100 gets 4x the events (it is ~8x
        faster, and its steady phase must stay long enough to measure)."""
        b = self.kafka.bootstrap
        collector = await Collector().start()
        out: dict[str, Any] = {"collector": collector.url, "runs": {}}
        try:
            topics: dict[int, tuple[str, dict[int, int]]] = {}
            for size, n in ((1, self.args.tracing_events), (100, 4 * self.args.tracing_events)):
                topic = f"bench-trace-b{size}-{uuid.uuid4().hex[:8]}"
                await create_topic(b, topic)
                topics[size] = (topic, await produce_backlog(b, topic, n))
            for rnd in range(self.args.tracing_rounds):
                for size in (1, 100):
                    topic, ends = topics[size]
                    batch = {"size": 1} if size == 1 else {"size": 100, "window_ms": 0}
                    for mode, ratio in TRACING_MODES:
                        env: dict[str, str] = {}
                        if ratio is not None:
                            env = {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.url, "OTEL_SERVICE_NAME": "bench-hub",
                                   "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                                   "OTEL_TRACES_SAMPLER_ARG": ratio}
                        spans0 = collector.spans
                        name = f"trace-b{size}-{mode.split(',')[0]}{ratio or ''}-r{rnd}".replace(".", "")
                        run = await self.hub_backlog(name, topic, ends, NOOP_CODE, batch, env=env,
                                                     suffix=f", tracing {mode}")
                        run.extra["spans"] = collector.spans - spans0  # the hub flushes at its stop
                        run.extra["round"] = rnd
                        out["runs"].setdefault((size, mode), []).append(run)
                        log(f"  round {rnd}: {run.label}: {run.extra['spans']} spans exported")
        finally:
            out["requests"], out["bad"] = collector.requests, collector.bad
            await collector.stop()
        return out

    # ---- 2. concurrency ----------------------------------------------------------------------
    async def scenario_concurrency(self) -> dict[str, Run]:
        n = self.args.sleep_events
        topic = f"bench-sleep-{uuid.uuid4().hex[:8]}"
        b = self.kafka.bootstrap
        await create_topic(b, topic)
        ends = await produce_backlog(b, topic, n)
        runs: dict[str, Run] = {}
        runs["ppe"] = await ppe_loop(b, topic, n, ppe_sleep, "PPE per-partition loop, 4 workers, 10 ms sleep")
        log(f"{runs['ppe'].label}: {runs['ppe'].steady_rate:,.0f} ev/s steady")
        runs["hub"] = await self.hub_backlog("sleep-b1", topic, ends, SLEEP_CODE, {"size": 1})
        return runs

    # ---- 3. latency --------------------------------------------------------------------------
    async def kafka_latency(self, api: Api, hub: HubProcess, name: str, quiet_s: float = 0.0,
                            count: int | None = None) -> list[float]:
        """One message every 20 ms (or, with ``quiet_s``, each after that long a silence: the
        first message after a quiet spell, when the hub's fetch wait has grown)."""
        b = self.kafka.bootstrap
        topic = f"bench-lat-{uuid.uuid4().hex[:8]}"
        await create_topic(b, topic)
        await api.put_function(f"fn-{name}", KAFKA_LAT_CODE)
        await api.put_trigger(name, f"fn-{name}", {"type": "kafka", "topic": topic, "start": "latest"})
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(self.mongo.url)
        coll = client[hub.db].invocations
        producer = AIOKafkaProducer(bootstrap_servers=b, enable_idempotence=False, acks=1)
        await producer.start()
        try:
            # warm-up: the group joins and every partition's worker gets going before the clock
            for p in range(PARTITIONS):
                await producer.send_and_wait(topic, b'{"warm": true}', partition=p)
            deadline = time.time() + 60
            while await coll.count_documents({"trigger": name}) < PARTITIONS:
                if time.time() > deadline:
                    raise RuntimeError(f"{name}: warm-up messages did not run within 60 s:\n{hub.tail()}")
                await asyncio.sleep(0.1)
            start_ms = int(time.time() * 1000)
            count = count or self.args.latency_messages
            t0 = time.perf_counter()
            for i in range(count):
                if quiet_s:
                    await asyncio.sleep(quiet_s)
                await producer.send_and_wait(topic, json.dumps({"n": i}).encode(), partition=i % PARTITIONS)
                delay = t0 + (i + 1) * 0.02 - time.perf_counter()
                if delay > 0 and not quiet_s:
                    await asyncio.sleep(delay)
            query = {"trigger": name, "result.ts": {"$gte": start_ms}}
            deadline = time.time() + 30
            while await coll.count_documents(query) < count and time.time() < deadline:
                await asyncio.sleep(0.2)
            lat = [(d["result"]["t"] - d["result"]["ts"] / 1000) * 1000
                   async for d in coll.find({**query, "status": "succeeded"}, {"result": 1})]
        finally:
            await producer.stop()
            await client.close()
        if len(lat) < count:
            log(f"{name}: only {len(lat)}/{count} latency messages ran")
        return lat

    async def mongo_latency(self, api: Api, hub: HubProcess, name: str) -> list[float]:
        dbname, collname = f"benchlat_{uuid.uuid4().hex[:6]}", "docs"
        await api.put_function(f"fn-{name}", MONGO_LAT_CODE)
        await api.put_trigger(name, f"fn-{name}", {"type": "mongodb", "database": dbname,
                                                   "collection": collname, "operations": ["insert"]})
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(self.mongo.url)
        inv = client[hub.db].invocations
        target = client[dbname][collname]
        try:
            for i in range(3):
                await target.insert_one({"warm": i})
            deadline = time.time() + 60
            while await inv.count_documents({"trigger": name}) < 3:
                if time.time() > deadline:
                    raise RuntimeError(f"{name}: warm-up inserts did not run within 60 s:\n{hub.tail()}")
                await asyncio.sleep(0.1)
            start = time.time()
            count = self.args.latency_messages
            t0 = time.perf_counter()
            for i in range(count):
                await target.insert_one({"n": i})
                delay = t0 + (i + 1) * 0.02 - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            query = {"trigger": name, "result.t": {"$gte": start}}
            deadline = time.time() + 30
            while await inv.count_documents(query) < count and time.time() < deadline:
                await asyncio.sleep(0.2)
            lat = []
            async for d in inv.find({**query, "status": "succeeded"}, {"result": 1}):
                w = d["result"]["w"]
                wall = dt.datetime.fromisoformat(w["$date"].replace("Z", "+00:00")).timestamp() \
                    if isinstance(w, dict) and isinstance(w.get("$date"), str) else \
                    int(w["$date"]["$numberLong"]) / 1000 if isinstance(w, dict) else float("nan")
                lat.append((d["result"]["t"] - wall) * 1000)
        finally:
            await client.close()
        if len(lat) < count:
            log(f"{name}: only {len(lat)}/{count} latency inserts ran")
        return lat

    async def scenario_latency(self) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {}

        async def default_hub(hub: HubProcess, api: Api) -> None:
            out["kafka"] = await self.kafka_latency(api, hub, "lat-kafka-default")
            out["kafka_quiet"] = await self.kafka_latency(api, hub, "lat-kafka-quiet", quiet_s=7.0, count=4)
            out["mongo"] = await self.mongo_latency(api, hub, "lat-mongo")

        async def slow_hub(hub: HubProcess, api: Api) -> None:
            out["kafka100"] = await self.kafka_latency(api, hub, "lat-kafka-fetch100")

        # defaults: 10 ms fetch wait while records flow, 500 ms after 5 s of quiet
        await self.with_hub(self.hub("lat-default"), default_hub)
        await self.with_hub(self.hub("lat-fetch100", {"HUB_KAFKA_FETCH_MAX_WAIT_MS": "100"}), slow_hub)
        for k, v in out.items():
            if v:
                log(f"latency {k}: p50 {pct(v, 50):.1f} ms, p99 {pct(v, 99):.1f} ms over {len(v)}")
        return out

    # ---- 4. MongoDB source throughput --------------------------------------------------------
    async def mongo_throughput(self, batch: dict[str, int]) -> Run:
        n = self.args.events
        name = f"mongo-b{batch['size']}"

        async def body(hub: HubProcess, api: Api) -> Run:
            dbname, collname = f"benchsrc_{uuid.uuid4().hex[:6]}", "docs"
            await api.put_function(f"fn-{name}", NOOP_CODE, max_concurrency=4)
            await api.put_trigger(name, f"fn-{name}", {"type": "mongodb", "database": dbname,
                                                       "collection": collname, "operations": ["insert"]},
                                  batch=batch)
            client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(self.mongo.url)
            try:
                meter = CpuMeter(hub.pid)
                meter.start()
                t0 = time.time()
                await client[dbname][collname].insert_many(
                    [{"n": i, "pad": "x" * 50} for i in range(n)], ordered=False)
                t_ins = time.time() - t0
                got = await wait_succeeded(self.mongo.url, hub.db, name, n, self.args.timeout)
                t1 = time.time()
                cpu_hub, cpu_workers = await meter.stop()
            finally:
                await client.close()
            st = await record_stats(self.mongo.url, hub.db, name)
            text, ok = check_text(st, n)
            if got < n:
                text = f"TIMEOUT after {self.args.timeout:.0f}s: {got}/{n}; " + text
                ok = False
            # the end: the last record's finish (hub clock), not when the poll noticed it
            end = st["last"] if got >= n else t1
            return Run(f"hub, MongoDB source, batch {batch['size']}", n, t0, st["first"], end, done=min(got, n),
                       cpu_hub=cpu_hub, cpu_workers=cpu_workers, rss_peak_mb=status_kb(hub.pid, "VmHWM") / 1024,
                       check=text, ok=ok, extra={"insert_many_s": t_ins})

        run: Run = await self.with_hub(self.hub(name), body)
        log(f"{run.label}: {run.total_rate:,.0f} ev/s from insert_many; {run.check}")
        return run

    async def scenario_mongodb(self) -> dict[str, Run]:
        return {"b100": await self.mongo_throughput({"size": 100, "window_ms": 0}),
                "b1": await self.mongo_throughput({"size": 1})}

    # ---- 5. S3 inbox -------------------------------------------------------------------------
    async def scenario_s3(self) -> dict[str, Any]:
        """The webhook with the reconciling scan's dedup on (issue 21's target) and, when asked,
        off (``--s3-dedup on,off``), one fresh hub each, interleaved in that order; then the same
        POSTs to a plain aiohttp handler (what the HTTP server alone costs per POST)."""
        out: dict[str, Any] = {}
        for mode in [m for m in self.args.s3_dedup.split(",") if m]:
            out[mode] = await self.s3_run(dedup=mode == "on")
        out["plain"] = await self.s3_plain_aiohttp()
        return out

    def s3_bodies(self, bucket: str, n: int) -> list[bytes]:
        """``n`` RGW-format notifications (one record each, every object a new ETag)."""
        template = json.loads((ROOT / "tests/data/s3/rgw_put.json").read_text())
        out = []
        for i in range(n):
            rec = json.loads(json.dumps(template["Records"][0]))
            t = dt.datetime.now(dt.timezone.utc)
            rec["eventTime"] = t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            rec["s3"]["bucket"]["name"] = bucket
            rec["s3"]["bucket"]["arn"] = f"arn:aws:s3:default::{bucket}"
            rec["s3"]["object"]["key"] = f"in/obj-{i:06d}.json"
            rec["s3"]["object"]["sequencer"] = f"{0x2B5D4366F8C1A917 + i:016X}"
            rec["s3"]["object"]["eTag"] = uuid.uuid4().hex
            rec["eventId"] = f"{t.timestamp():.6f}.{i}"
            out.append(json.dumps({"Records": [rec]}).encode())
        return out

    @staticmethod
    async def post_all(url: str, bodies: list[bytes], in_flight: int = 16) -> Counter[int]:
        statuses: Counter[int] = Counter()
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        for b_ in bodies:
            queue.put_nowait(b_)

        async def poster(s: aiohttp.ClientSession) -> None:
            while not queue.empty():
                data = queue.get_nowait()
                async with s.post(url, data=data, headers={"Content-Type": "application/json"}) as r:
                    await r.read()
                    statuses[r.status] += 1

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=in_flight)) as s:
            await asyncio.gather(*(poster(s) for _ in range(in_flight)))
        return statuses

    async def s3_plain_aiohttp(self) -> dict[str, Any]:
        """The same POSTs (16 in flight) to a plain aiohttp handler in another process that reads
        the body, parses the JSON and answers a small JSON object: the HTTP server's own share
        of the hub's CPU per notification."""
        n = self.args.s3_events
        port = free_port()
        code = ("import json\nfrom aiohttp import web\n"
                "async def h(r):\n    body = json.loads(await r.read())\n"
                "    return web.json_response({'received': len(body['Records']), 'queued': 1, 'duplicates': 0})\n"
                "app = web.Application()\napp.router.add_post('/v1/sources/s3/events', h)\n"
                f"web.run_app(app, host='127.0.0.1', port={port}, print=None, access_log=None)\n")
        proc = subprocess.Popen([sys.executable, "-c", code])
        try:
            url = f"http://127.0.0.1:{port}/v1/sources/s3/events?token=x"
            async with aiohttp.ClientSession() as s:
                for _ in range(200):
                    try:
                        async with s.get(f"http://127.0.0.1:{port}/") as r:
                            await r.read()
                        break
                    except aiohttp.ClientError:
                        await asyncio.sleep(0.05)
            bodies = self.s3_bodies("plain", n)
            cpu0 = proc_cpu_s(proc.pid) or 0.0
            t0 = time.time()
            statuses = await self.post_all(url, bodies)
            took = time.time() - t0
            cpu = (proc_cpu_s(proc.pid) or 0.0) - cpu0
        finally:
            proc.terminate()
            proc.wait(10)
        log(f"s3 plain aiohttp handler: {n / took:,.0f}/s, {cpu * 1000 / n:.3f} ms CPU per POST")
        return {"n": n, "accept_s": took, "e2e_s": took, "statuses": dict(statuses), "cpu_hub": cpu,
                "cpu_workers": 0.0, "load": os.getloadavg()[0], "plain": True}

    async def s3_run(self, dedup: bool) -> dict[str, Any]:
        assert self.rgw is not None
        rgw = self.rgw
        n = self.args.s3_events
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        await asyncio.to_thread(rgw.s3_client().create_bucket, Bucket=bucket)
        name = "s3-b100" + ("" if dedup else "-nodedup")
        port = free_port()
        hub = self.hub(name, {
            "HUB_HTTP_PORT": str(port), "HUB_PUBLIC_URL": f"http://127.0.0.1:{port}",
            "HUB_S3_ENDPOINT": rgw.endpoint, "HUB_S3_ACCESS_KEY": rgw.access_key,
            "HUB_S3_SECRET_KEY": rgw.secret_key, "HUB_S3_REGION": rgw.region, "HUB_S3_FLAVOR": "rgw",
            # on: the default interval (every notification is claimed against the scan's dedup)
            "HUB_S3_RECONCILE_INTERVAL_S": "30" if dedup else "0"})
        hub.port, hub.url = port, f"http://127.0.0.1:{port}"

        async def body(hub: HubProcess, api: Api) -> dict[str, Any]:
            await api.put_function(f"fn-{name}", NOOP_CODE, max_concurrency=4)
            await api.put_trigger(name, f"fn-{name}", {"type": "s3", "bucket": bucket}, batch={"size": 100, "window_ms": 0})
            bodies = self.s3_bodies(bucket, n)
            url = f"{hub.url}/v1/sources/s3/events?token={WEBHOOK_TOKEN}"
            spy = self._profiler(hub, name)
            commands0 = await mongo_commands(self.mongo.admin_url)
            meter = CpuMeter(hub.pid)
            meter.start()
            t0 = time.time()
            statuses = await self.post_all(url, bodies)
            t_accept = time.time()
            got = await wait_succeeded(self.mongo.url, hub.db, name, n, self.args.timeout)
            t1 = time.time()
            cpu_hub, cpu_workers = await meter.stop()
            commands = (await mongo_commands(self.mongo.admin_url)) - commands0
            if spy:
                await asyncio.to_thread(spy[0].wait, self.args.profile_duration + 30)
            st = await record_stats(self.mongo.url, hub.db, name)
            text, ok = check_text(st, n)
            if got < n:
                text = f"TIMEOUT: {got}/{n}; " + text
                ok = False
            end = st["last"] if got >= n else t1
            return {"n": n, "dedup": dedup, "accept_s": t_accept - t0, "e2e_s": end - t0,
                    "statuses": dict(statuses), "check": text, "ok": ok and set(statuses) == {200},
                    "cpu_hub": cpu_hub, "cpu_workers": cpu_workers, "rss": status_kb(hub.pid, "VmHWM") / 1024,
                    "load": os.getloadavg()[0], "records": st["succeeded_records"], "commands": commands}

        res: dict[str, Any] = await self.with_hub(hub, body)
        log(f"s3 (dedup {'on' if dedup else 'off'}): accept {n / res['accept_s']:,.0f}/s, end to end "
            f"{n / res['e2e_s']:,.0f}/s, {res['cpu_hub'] * 1000 / n:.3f} ms hub CPU per notification; {res['check']}")
        return res


# -- report -------------------------------------------------------------------------------------
def fmt_rate(r: float) -> str:
    return f"{r:,.0f}"


def cpu_text(run: Run) -> str:
    if run.cpu_hub is None or not run.done:
        return ""
    per = 1000 / run.done
    return f"{run.cpu_hub * per:.2f} hub / {(run.cpu_hub + (run.cpu_workers or 0)) * per:.2f} total"


def run_row(run: Run) -> str:
    rss = f"{run.rss_peak_mb:.0f} MB" if run.rss_peak_mb else ""
    return (f"| {run.label} | {fmt_rate(run.steady_rate)} | {fmt_rate(run.total_rate)} | {run.join_s:.2f} s | "
            f"{cpu_text(run)} | {rss} | {run.check} |")


def verdict(ok: bool | None) -> str:
    return "" if ok is None else ("yes" if ok else "NO")


def report(results: dict[str, Any], bench: Bench, args: argparse.Namespace) -> bool:
    all_ok = True
    head = ("| consumer | events/s steady (first event -> last commit) | events/s total (start -> last "
            "commit, join included) | start -> first event | CPU s per 1,000 events (hub / hub + workers) | "
            "peak hub RSS | records check |")
    sep = "|---|---|---|---|---|---|---|"
    targets: list[tuple[str, str, str, str, str, bool]] = []
    if "kafka" in results:
        r = results["kafka"]
        print(f"\n## Kafka backlog: {args.events:,} messages, {PARTITIONS} partitions, no-op handler\n")
        print(head)
        print(sep)
        for key in ("raw", "fs", "fs_ack", "ppe", "hub1", "hub100"):
            print(run_row(r[key]))
        h100, h1, fs, fs_ack = r["hub100"], r["hub1"], r["fs"], r["fs_ack"]
        targets += [
            ("Kafka batch 100 vs FastStream default (steady)", fmt_rate(h100.steady_rate), fmt_rate(fs.steady_rate),
             f"{h100.steady_rate / fs.steady_rate:.2f}x", ">= 2x", h100.steady_rate >= 2 * fs.steady_rate),
            ("Kafka batch 100 events/s (steady)", fmt_rate(h100.steady_rate), "", "", ">= 10,000",
             h100.steady_rate >= 10_000),
            ("Kafka batch 1 vs FastStream AckPolicy.ACK (steady)", fmt_rate(h1.steady_rate),
             fmt_rate(fs_ack.steady_rate), f"{h1.steady_rate / fs_ack.steady_rate:.2f}x", ">= 1x",
             h1.steady_rate >= fs_ack.steady_rate),
            ("Kafka batch 1 events/s (steady)", fmt_rate(h1.steady_rate), "", "", ">= 1,500", h1.steady_rate >= 1500),
        ]
        # issue 21's targets: reported beside the others, judged against the same run's baselines
        ppe, raw = r["ppe"], r["raw"]
        per_k = lambda run: (run.cpu_hub or 0.0) / max(1, run.done) * 1000  # noqa: E731
        print(f"\n(issue 21: batch 1 at log level {args.b1_log_level} / PPE loop "
              f"{h1.steady_rate / ppe.steady_rate:.2f}x (target >= 1.0x), hub CPU {per_k(h1):.3f} s / 1,000 events "
              f"(target <= 0.25); batch 100 / raw loop {h100.steady_rate / raw.steady_rate:.3f}x (target >= 0.25x), "
              f"hub CPU {per_k(h100):.4f} s / 1,000 events (target <= 0.015))")
        print("\n" + "; ".join(f"{run.label}: last record finished {run.extra['last_finished']:.2f} s after the "
                               f"trigger's creation, all offsets committed {run.t_end - run.t_start:.2f} s"
                               for run in (h1, h100)))
        print(f"\n(total-rate ratios, join included: batch 100 / FastStream default "
              f"{h100.total_rate / fs.total_rate:.2f}x; batch 1 / FastStream ACK {h1.total_rate / fs_ack.total_rate:.2f}x;"
              f" raw loop / hub batch 100 {r['raw'].steady_rate / h100.steady_rate:.1f}x steady)")
        all_ok &= h100.ok and h1.ok
    if "tracing" in results:
        all_ok &= report_tracing(results["tracing"], args)
    if "concurrency" in results:
        r = results["concurrency"]
        print(f"\n## Concurrency: {args.sleep_events:,} messages, {PARTITIONS} partitions, handler sleeps 10 ms, "
              f"max_concurrency 4 (ideal: 400 events/s)\n")
        print(head)
        print(sep)
        print(run_row(r["ppe"]))
        print(run_row(r["hub"]))
        targets.append(("10 ms sleep, 4 partitions, max_concurrency 4 (steady)", fmt_rate(r["hub"].steady_rate),
                        f"PPE {fmt_rate(r['ppe'].steady_rate)}", f"{r['hub'].steady_rate / r['ppe'].steady_rate:.2f}x",
                        ">= 300", r["hub"].steady_rate >= 300))
        all_ok &= r["hub"].ok
    if "latency" in results:
        r = results["latency"]
        print(f"\n## Latency: one event every 20 ms, {args.latency_messages} events (source timestamp -> "
              f"handler's time.time())\n")
        print("| source | n | p50 | p90 | p99 | max | target |")
        print("|---|---|---|---|---|---|---|")
        rows = [("Kafka, defaults (fetch wait 10 ms while busy)", "kafka", "p50 <= 10 ms, p99 <= 40 ms"),
                ("Kafka, first message after 7 s quiet (fetch wait 500 ms)", "kafka_quiet", "(reported)"),
                ("Kafka, HUB_KAFKA_FETCH_MAX_WAIT_MS=100", "kafka100", "(reported)"),
                ("MongoDB change stream (wallTime, ms precision)", "mongo", "p50 <= 10 ms")]
        for label, key, tgt in rows:
            v = r.get(key) or []
            if not v:
                print(f"| {label} | 0 | | | | | {tgt} |")
                continue
            print(f"| {label} | {len(v)} | {pct(v, 50):.1f} ms | {pct(v, 90):.1f} ms | {pct(v, 99):.1f} ms | "
                  f"{max(v):.1f} ms | {tgt} |")
        for key, label in (("kafka", "Kafka latency, defaults"),):
            v = r.get(key) or []
            complete = len(v) >= args.latency_messages
            p50, p99 = (pct(v, 50), pct(v, 99)) if v else (float("inf"), float("inf"))
            targets.append((label, f"p50 {p50:.1f} / p99 {p99:.1f} ms", "", "", "p50 <= 10, p99 <= 40 ms",
                            complete and p50 <= 10 and p99 <= 40))
        v = r.get("mongo") or []
        p50 = pct(v, 50) if v else float("inf")
        targets.append(("MongoDB latency", f"p50 {p50:.1f} ms", "", "", "p50 <= 10 ms",
                        len(v) >= args.latency_messages and p50 <= 10))
    if "mongodb" in results:
        r = results["mongodb"]
        print(f"\n## MongoDB source: insert_many of {args.events:,} documents into a watched collection "
              f"(trigger made first); total = insert_many start -> last record finished\n")
        print(head.replace("start -> first event", "insert start -> first event"))
        print(sep)
        for key in ("b100", "b1"):
            print(run_row(r[key]))
        print(f"\n(insert_many itself took {r['b100'].extra['insert_many_s']:.2f} s / "
              f"{r['b1'].extra['insert_many_s']:.2f} s)")
        all_ok &= r["b100"].ok and r["b1"].ok
    if "s3" in results:
        runs = results["s3"]
        n = next(iter(runs.values()))["n"] if runs else 0
        print(f"\n## S3 inbox: {n:,} RGW notifications POSTed to the webhook (one per POST), 16 in flight, "
              f"batch 100\n")
        print("| metric | " + " | ".join("plain aiohttp handler" if m == "plain" else f"scan dedup {m}"
                                         for m in runs) + " |")
        print("|---|" + "---|" * len(runs))

        def commands(r: dict[str, Any]) -> str:
            c: Counter[str] = r["commands"]
            top = ", ".join(f"{k} {v / r['n']:.2f}" for k, v in c.most_common(6))
            return f"{sum(c.values()) / r['n']:.2f} ({top})"

        s3_rows: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
            ("webhook accept rate (notifications/s)", lambda r: f"{r['n'] / r['accept_s']:,.0f} ({r['accept_s']:.1f} s)"),
            ("end to end, first POST -> last record finished (events/s)",
             lambda r: f"{r['n'] / r['e2e_s']:,.0f} ({r['e2e_s']:.1f} s)"),
            ("hub CPU ms per notification (hub + workers)",
             lambda r: f"{r['cpu_hub'] * 1000 / r['n']:.3f} ({(r['cpu_hub'] + r['cpu_workers']) * 1000 / r['n']:.3f})"),
            ("events per invocation", lambda r: f"{r['n'] / r['records']:.1f}" if r.get("records") else ""),
            ("MongoDB commands per notification (all clients; top 6)", lambda r: commands(r) if "commands" in r else ""),
            ("HTTP statuses", lambda r: str(r["statuses"])),
            ("peak hub RSS", lambda r: f"{r['rss']:.0f} MB" if "rss" in r else ""),
            ("load average (1 min) at the end", lambda r: f"{r['load']:.2f}"),
            ("records check", lambda r: r.get("check", "")),
        ]
        for label, cell in s3_rows:
            print(f"| {label} | " + " | ".join(cell(r) for r in runs.values()) + " |")
        for mode, r in runs.items():
            if mode == "plain":
                continue
            all_ok &= r["ok"]
            if mode == "on":  # issue 21: >= 3,000/s end to end at <= 0.3 ms hub CPU per notification
                rate, cpu = r["n"] / r["e2e_s"], r["cpu_hub"] * 1000 / r["n"]
                targets.append(("S3 webhook, batch 100, scan dedup on: end to end / hub CPU per notification",
                                f"{rate:,.0f}/s, {cpu:.3f} ms", "", "", ">= 3,000/s, <= 0.3 ms",
                                rate >= 3000 and cpu <= 0.3))
    if targets:
        print("\n## Targets (steady rates)\n")
        print("| target | ours | baseline | ratio | target | met |")
        print("|---|---|---|---|---|---|")
        for name, ours, base, ratio, tgt, met in targets:
            print(f"| {name} | {ours} | {base} | {ratio} | {tgt} | {verdict(met)} |")
            all_ok &= met
    print("\n## Hub logs (warning and error lines)\n")
    for name, problems in bench.hub_logs.items():
        total = sum(problems.values())
        print(f"- {name} ({bench.hub_log_paths[name]}): {total} warning/error lines"
              + ("" if not total else ": " + "; ".join(f"{k} x{v}" for k, v in problems.most_common(5))))
    return all_ok


def report_tracing(res: dict[str, Any], args: argparse.Namespace) -> bool:
    print(f"\n## Tracing cost: Kafka, {args.tracing_events:,} messages at batch 1 and "
          f"{4 * args.tracing_events:,} at batch 100, {args.tracing_rounds} round(s), modes interleaved; "
          f"OTLP/HTTP to a collector stand-in ({res['requests']} export requests"
          + (f", {res['bad']} not parsed" if res["bad"] else "") + ")\n")
    print("| batch | tracing | round | events/s steady | ratio to off (same round) | CPU s per 1,000 events "
          "(hub / hub + workers) | hub CPU ratio to off | spans exported | peak hub RSS | records check |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    ok = True
    runs = res["runs"]
    for size in (1, 100):
        for rnd in range(args.tracing_rounds):
            off = runs[(size, "off")][rnd]
            for mode, _ in TRACING_MODES:
                run = runs[(size, mode)][rnd]
                cpu_ratio = (f"{(run.cpu_hub / run.done) / (off.cpu_hub / off.done):.2f}"
                             if run.cpu_hub and off.cpu_hub and run.done and off.done else "")
                print(f"| {size} | {mode} | {rnd} | {fmt_rate(run.steady_rate)} | "
                      f"{run.steady_rate / off.steady_rate:.2f} | {cpu_text(run)} | {cpu_ratio} | "
                      f"{run.extra['spans']:,} | {run.rss_peak_mb or 0:.0f} MB | {run.check} |")
                ok &= run.ok
    print("\n| batch | mode | median steady ratio to off | median hub CPU per event, ratio to off |")
    print("|---|---|---|---|")
    for size in (1, 100):
        offs = runs[(size, "off")]
        for mode, _ in TRACING_MODES[1:]:
            ons = runs[(size, mode)]
            rate = sorted(on.steady_rate / off.steady_rate for on, off in zip(ons, offs))
            cpu = sorted((on.cpu_hub / on.done) / (off.cpu_hub / off.done) for on, off in zip(ons, offs)
                         if on.cpu_hub and off.cpu_hub and on.done and off.done)
            med = (lambda xs: xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2)
            print(f"| {size} | {mode} | {med(rate):.2f} | {med(cpu) if cpu else float('nan'):.2f} |")
    print("\n(goal, reported only: at batch 100, tracing on at 1.0 keeps >= 0.80 of the off throughput)")
    return ok


IDLE_LEAVES = ("_worker (concurrent/futures/thread.py",  # a thread-pool thread waiting for work
               "Condition.wait (threading.py")  # a thread waiting on a Condition (the span exporter's, between batches)


def summarise_folded(path: Path, top: int = 15) -> None:
    """Own time per function (all its lines together) from py-spy's raw (folded stacks) output.
    py-spy leaves out threads it sees waiting in the kernel, but not a thread pool's idle workers
    blocked on their queue (a lock wait): those are left out here."""
    own: Counter[str] = Counter()
    total = idle = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        leaf = stack.split(";")[-1]
        if leaf.startswith(IDLE_LEAVES):
            idle += int(count)
            continue
        func, _, where = leaf.partition(" (")
        own[f"{func} ({where.rsplit(':', 1)[0]})"] += int(count)
        total += int(count)
    print(f"\n## py-spy: top {top} functions by own time ({path}; {total} busy samples, {idle} idle "
          f"thread-pool samples left out)\n")
    for frame, c in own.most_common(top):
        print(f"- {100 * c / max(1, total):5.1f}%  {frame}")


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=20_000, help="backlog size (Kafka and MongoDB)")
    ap.add_argument("--sleep-events", type=int, default=2_000, help="backlog of the 10 ms-sleep scenario")
    ap.add_argument("--latency-messages", type=int, default=500)
    ap.add_argument("--s3-events", type=int, default=5_000)
    ap.add_argument("--s3-dedup", default="on,off",
                    help="S3 scenario runs, in order: 'on' (the reconciling scan's dedup, issue 21's target), 'off'")
    ap.add_argument("--only", default="", help=f"comma-separated subset of {','.join(SCENARIOS)} "
                    f"(and tracing: --only tracing runs only the --tracing runs)")
    ap.add_argument("--s3", action=argparse.BooleanOptionalAction, default=True,
                    help="run the S3 inbox scenario (starts Ceph RGW, ~40 s); --no-s3 skips it")
    ap.add_argument("--log-level", default="warning", help="the hubs' HUB_LOG_LEVEL")
    ap.add_argument("--b1-log-level", default="info",
                    help="HUB_LOG_LEVEL of the Kafka scenario's batch-1 hub (default info: what a user gets)")
    ap.add_argument("--info-run", action="store_true",
                    help="also run Kafka batch 1 with HUB_LOG_LEVEL=info, to show the cost of logging")
    ap.add_argument("--timeout", type=float, default=90.0, help="per hub run, seconds")
    ap.add_argument("--profile", default="", help="py-spy each Kafka backlog and S3 hub run: output prefix (PREFIX-NAME.txt|svg|json)")
    ap.add_argument("--profile-format", default="raw", choices=["raw", "flamegraph", "speedscope"])
    ap.add_argument("--profile-duration", type=int, default=20)
    ap.add_argument("--profile-gil", action="store_true",
                    help="py-spy --gil: only the thread holding the GIL (CPU, not waits in system calls)")
    ap.add_argument("--profile-nonblocking", action="store_true",
                    help="py-spy --nonblocking: sample without stopping the hub (stopped for each sample, "
                         "its samples piled up on lines that make a system call: bench/README)")
    ap.add_argument("--tracing", action="store_true",
                    help="also measure OpenTelemetry tracing's cost: Kafka batch 1/100, off / on 1.0 / on 0.01")
    ap.add_argument("--tracing-events", type=int, default=5_000,
                    help="messages per tracing run at batch 1 (batch 100 gets 4x)")
    ap.add_argument("--tracing-rounds", type=int, default=2, help="rounds of the six tracing runs")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (server data)")
    args = ap.parse_args()
    only = [s for s in args.only.split(",") if s] or [s for s in SCENARIOS if s != "s3" or args.s3]
    if "tracing" in only:  # --only tracing: the tracing runs alone
        args.tracing = True
        only = [s for s in only if s != "tracing"]
    unknown = set(only) - set(SCENARIOS)
    if unknown:
        ap.error(f"unknown scenario(s) {sorted(unknown)}; choose from {SCENARIOS}")

    root = Path(tempfile.mkdtemp(prefix="bench-throughput-"))
    os.chmod(root, 0o755)  # the sandboxed workers (their own uid) read code under the hub's data dir
    log(f"scratch dir {root}; scenarios {only}")
    mongo_s: MongoServer | None = None
    kafka_s: TansuServer | None = None
    rgw_s: CephRGW | None = None
    results: dict[str, Any] = {}
    started = time.monotonic()
    try:
        mongo_s = await asyncio.to_thread(MongoServer(root / "mongo").start)
        kafka_s = await asyncio.to_thread(TansuServer(data_dir=root / "tansu").start)
        if "s3" in only:
            rgw_s = await asyncio.to_thread(CephRGW(root / "rgw", access_key="bench",
                                                    secret_key=uuid.uuid4().hex).start)
        log(f"servers up in {time.monotonic() - started:.1f}s")
        bench = Bench(args, root, mongo_s, kafka_s, rgw_s)
        for name in only:
            results[name] = await getattr(bench, f"scenario_{name}")()
        if args.tracing:
            results["tracing"] = await bench.tracing_cost()
        if args.info_run:
            topic = f"bench-info-{uuid.uuid4().hex[:8]}"
            await create_topic(kafka_s.bootstrap, topic)
            ends = await produce_backlog(kafka_s.bootstrap, topic, args.events)
            results.setdefault("info", {})["hub1"] = await bench.hub_backlog(
                "kafka-b1-info", topic, ends, NOOP_CODE, {"size": 1}, log_level="info")
    finally:
        for server in (rgw_s, kafka_s, mongo_s):
            if server is not None:
                await asyncio.to_thread(server.stop)
        for d in ("mongo", "tansu", "rgw"):
            if not args.keep:
                shutil.rmtree(root / d, ignore_errors=True)
    print(f"\n# Throughput benchmark: python {sys.version.split()[0]}, {os.cpu_count()} CPUs, hub log level "
          f"{args.log_level}, sandbox bwrap, {time.monotonic() - started:.0f} s\n")
    ok = report(results, bench, args)
    if "info" in results:
        run = results["info"]["hub1"]
        print("\n## Logging cost: Kafka batch 1 with HUB_LOG_LEVEL=info\n")
        print(run_row(run))
        ok &= run.ok
    if args.profile and args.profile_format == "raw":
        for p in sorted(Path(args.profile).parent.glob(Path(args.profile).name + "-*.txt")):
            summarise_folded(p)
    print(f"\nhub logs and data: {root}")
    print(f"all targets met: {'yes' if ok else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
