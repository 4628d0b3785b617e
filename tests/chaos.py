"""Helpers for the fault-injection tests (tests/test_chaos.py).

- :class:`HubProcess`: one hub as a real subprocess (``python -m hub.cli serve``) on a fixed port,
  so it can be ``kill -9``-ed and started again at the same address (RGW keeps pushing there).
- :class:`Ledger`: every event the test wrote, by sequence id ("k-000012", "m-…", "s-…", "a-…"),
  and when the write was acknowledged.
- :func:`outcome`: what the hub recorded, read straight from its MongoDB: successes per
  (trigger, event id) and per sequence id, so lost and duplicate runs can be counted.
- :data:`SEQ_FUNCTION`: the function under test; it returns the sequence ids it was given
  (one event or a ``hub.batch``), so a record says which writes it covered.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiokafka import AIOKafkaProducer

from devstack import MongoServer
from devstack.binaries import spawn, stop_process, tail
from tests.hubfixtures import API_TOKEN, WEBHOOK_TOKEN, eventually

ROOT = Path(__file__).resolve().parent.parent
PYTHON = ROOT / ".venv/bin/python" if (ROOT / ".venv/bin/python").exists() else Path(sys.executable)

# How long a restarted hub watches its instance id's last heartbeat before it takes the id over
# (hub.app.INSTANCE_LIVE_S, 10 s, no setting): these tests restart a hub only once its
# predecessor is dead (kill -9 and reaped, or exited at a crash point), so the watch can only end
# in a takeover, and each restart spent up to 10 s in it: ~7 s a restart, 21 restarts in
# test_chaos.py. 3 s keeps the same path (it still waits for the dead process's last beat to age,
# 1.5 heartbeat intervals) and only shortens the wait. CHAOS_INSTANCE_LIVE_S=10: the hub's own.
INSTANCE_LIVE_S = float(os.environ.get("CHAOS_INSTANCE_LIVE_S") or 3.0)
# The hub's own entry point (python -m hub.cli.commands ...), with INSTANCE_LIVE_S set first.
HUB_MAIN = ("import runpy, sys, hub.app; hub.app.INSTANCE_LIVE_S = float(sys.argv.pop(1)); "
            "runpy.run_module('hub.cli.commands', run_name='__main__', alter_sys=True)")

# What each sequence-id prefix stands for (used in failure reports).
SOURCES = {"k": "kafka", "m": "mongodb", "s": "s3", "a": "async-invoke"}

SEQ_FUNCTION = '''\
import time

SLEEP_S = {sleep}


def _seq(event):
    source = event.get("source") or ""
    data = event.get("data") or {{}}
    if source.startswith("kafka://"):
        value = data["value"]
        if value.get("fail"):
            raise RuntimeError("asked to fail: " + value["seq"])
        return value["seq"]
    if source.startswith("mongodb://"):
        return data["fullDocument"]["seq"]
    if source.startswith("s3://"):
        return data["key"].rsplit("/", 1)[-1]
    return data["seq"]


def handler(event, context):
    if SLEEP_S:
        time.sleep(SLEEP_S)
    if event.get("type") == "hub.batch":
        return {{"seqs": [_seq(r) for r in event["records"]]}}
    return {{"seqs": [_seq(event)]}}
'''


def seq_function(sleep_s: float = 0.0) -> str:
    return SEQ_FUNCTION.format(sleep=sleep_s)


def source_of(seq: str) -> str:
    return SOURCES.get(seq.split("-", 1)[0], "?")


# -- the hub as a subprocess -------------------------------------------------------------------
def hub_env(servers: Mapping[str, Any], *, mongo_url: str, db: str, data_dir: Path, port: int,
            instance_id: str, **extra: str) -> dict[str, str]:
    """The environment of ``python -m hub.cli serve``: the session's real servers, test timings."""
    rgw, kafka = servers["rgw"], servers["kafka"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
    env.update(
        PYTHONUNBUFFERED="1",
        HUB_MONGO_URL=mongo_url,
        HUB_MONGO_DB=db,
        HUB_KAFKA_BOOTSTRAP=kafka.bootstrap,
        HUB_KAFKA_SESSION_TIMEOUT_MS="3000",
        HUB_KAFKA_HEARTBEAT_INTERVAL_MS="500",
        HUB_S3_ENDPOINT=rgw.endpoint,
        HUB_S3_ACCESS_KEY=rgw.access_key,
        HUB_S3_SECRET_KEY=rgw.secret_key,
        HUB_S3_REGION=rgw.region,
        HUB_S3_FLAVOR="rgw",
        # the reconciling bucket scan (issue 6 item 3); ignored by hubs without it
        HUB_S3_RECONCILE_INTERVAL_S="2",
        HUB_API_TOKEN=API_TOKEN,
        HUB_WEBHOOK_TOKEN=WEBHOOK_TOKEN,
        HUB_HTTP_HOST="127.0.0.1",
        HUB_HTTP_PORT=str(port),
        HUB_FN_PORT="0",  # function URLs: any free port (several hubs run on one host)
        HUB_PUBLIC_URL=f"http://127.0.0.1:{port}",
        HUB_DATA_DIR=str(data_dir),
        # fixed, so a restarted hub is recognised as the same instance and takes its leases back
        HUB_INSTANCE_ID=instance_id,
        HUB_TRIGGER_SYNC_INTERVAL_S="0.5",
        HUB_INBOX_POLL_INTERVAL_S="0.2",
        HUB_WORKER_IDLE_TTL_S="30",
        HUB_LOG_FORMAT="json",
    )
    env.update(extra)
    return env


class HubProcess:
    """``python -m hub.cli serve`` in its own process group, logging to ``log_path``."""

    def __init__(self, env: dict[str, str], log_path: Path, port: int) -> None:
        self.env = env
        self.log_path = log_path
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.kills = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, **extra_env: str) -> None:
        assert not self.alive(), "hub already running"
        env = {**self.env, **extra_env}
        self.proc = spawn([PYTHON, "-c", HUB_MAIN, str(INSTANCE_LIVE_S), "serve"], self.log_path, env=env, cwd=ROOT)
        self.starts += 1

    async def wait_healthy(self, http: aiohttp.ClientSession, timeout: float = 90.0) -> None:
        """Until GET /healthz answers 200 (the hub serves HTTP only once it has fully started)."""
        async def healthy() -> bool:
            if not self.alive():
                code = self.proc.returncode if self.proc else None
                raise AssertionError(f"hub exited with {code} while starting; log tail:\n{self.tail()}")
            try:
                async with http.get(self.url + "/healthz", timeout=aiohttp.ClientTimeout(total=2)) as r:
                    return r.status == 200
            except (aiohttp.ClientError, asyncio.TimeoutError):
                return False

        try:
            await eventually(healthy, timeout=timeout, interval=0.1)
        except AssertionError as exc:
            raise AssertionError(f"hub not healthy within {timeout}s: {exc}\nlog tail:\n{self.tail()}") from None

    def kill9(self) -> None:
        """SIGKILL the hub process itself (a crash), then clear what its group left behind."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.kills += 1
        stop_process(self.proc, timeout=1, sig=signal.SIGKILL)  # leftover workers, if any

    async def sigterm(self, timeout: float) -> float | None:
        """SIGTERM; the seconds it took to exit, or None if it was still running after ``timeout``."""
        assert self.proc is not None
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(self.proc.wait, timeout)
        except subprocess.TimeoutExpired:
            return None
        return time.monotonic() - t0

    async def wait_exit(self, timeout: float) -> int | None:
        """The exit code if the process ends within ``timeout``, else None."""
        assert self.proc is not None
        try:
            return await asyncio.to_thread(self.proc.wait, timeout)
        except subprocess.TimeoutExpired:
            return None

    def cleanup(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=5, sig=signal.SIGKILL)

    def tail(self, lines: int = 60) -> str:
        return tail(self.log_path, lines)

    def py_spy_dump(self) -> str:
        """Thread stacks of the live hub (py-spy), for a hang report."""
        if not self.alive():
            return "(hub not running)"
        spy = PYTHON.parent / "py-spy"
        if not spy.exists():
            return "(py-spy not installed: .venv/bin/pip install py-spy)"
        try:
            out = subprocess.run([spy, "dump", "--pid", str(self.pid)], capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired:
            return "(py-spy dump timed out)"
        return (out.stdout + out.stderr)[-12000:]


async def timed_get(http: aiohttp.ClientSession, url: str, timeout: float) -> tuple[int | None, float, Any]:
    """(status or None on timeout/error, seconds taken, body or error text)."""
    t0 = time.monotonic()
    try:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as r:
            body = await r.json(content_type=None) if r.content_type == "application/json" else await r.text()
            return r.status, time.monotonic() - t0, body
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        return None, time.monotonic() - t0, f"{type(exc).__name__}: {exc}"


# -- private mongod faults ---------------------------------------------------------------------
def kill9_mongod(mongo: MongoServer) -> None:
    assert mongo.proc is not None and mongo.proc.poll() is None, "mongod is not running"
    os.kill(mongo.proc.pid, signal.SIGKILL)
    mongo.proc.wait(10)


# -- writing events ----------------------------------------------------------------------------
@dataclass
class Ledger:
    """Every write the test got an acknowledgement for: sequence id -> monotonic time."""

    written: dict[str, float] = field(default_factory=dict)

    def add(self, seq: str) -> None:
        self.written[seq] = time.monotonic()

    def since(self, t: float) -> list[str]:
        return [s for s, at in self.written.items() if at >= t]

    def of(self, prefix: str) -> list[str]:
        return [s for s in self.written if s.startswith(prefix + "-")]


async def start_producer(bootstrap: str) -> AIOKafkaProducer:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, acks="all")
    await producer.start()
    return producer


async def produce_seq(producer: AIOKafkaProducer, topic: str, seq: str, partition: int, **extra: Any) -> None:
    await producer.send_and_wait(topic, json.dumps({"seq": seq, **extra}).encode(), key=seq.encode(),
                                 partition=partition)


async def paced(n: int, duration_s: float, write: Any) -> None:
    """Call ``await write(i)`` for i in range(n), spread evenly over ``duration_s`` (catching up
    after a write that blocked, e.g. during a mongod outage)."""
    t0 = time.monotonic()
    for i in range(n):
        delay = t0 + i * duration_s / n - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await write(i)


# -- what the hub recorded ---------------------------------------------------------------------
@dataclass
class Outcome:
    succeeded_seqs: Counter[str]
    succeeded_events: Counter[tuple[str, str]]  # (trigger key, event id) -> succeeded records
    event_seqs: dict[tuple[str, str], set[str]]
    records: int

    def lost(self, ledger: Ledger) -> list[str]:
        return sorted(s for s in ledger.written if s not in self.succeeded_seqs)

    def duplicate_events(self) -> dict[tuple[str, str], int]:
        return {k: n for k, n in self.succeeded_events.items() if n > 1}

    def duplicate_seqs(self, prefixes: str = "kms") -> dict[str, int]:
        """Sequence ids that ran to success more than once (each was written once; async invokes
        are left out: a client retrying an ambiguous 503 legitimately queues a second event)."""
        return {s: n for s, n in self.succeeded_seqs.items() if n > 1 and s[0] in prefixes}


async def outcome(db: Any) -> Outcome:
    """Successes as the invocation records state them. A record names its events by ``event_id``
    or, for a batch, ``event_ids``; where it carries ``done`` (the "target|event id" success
    markers, also on a batch that partly failed) those are the events it finished."""
    seqs: Counter[str] = Counter()
    events: Counter[tuple[str, str]] = Counter()
    event_seqs: dict[tuple[str, str], set[str]] = {}
    cursor = db.invocations.find(
        {"status": {"$in": ["succeeded", "partial"]}},
        {"trigger": 1, "function": 1, "status": 1, "event_id": 1, "event_ids": 1, "done": 1, "result": 1},
    )
    n = 0
    async for doc in cursor:
        key = doc.get("trigger") or f"invoke:{doc.get('function')}"
        result = doc.get("result")
        got = list(result.get("seqs") or []) if isinstance(result, dict) else []
        if doc.get("done") is not None:
            pairs = [tuple(str(k).split("|", 1)) for k in doc["done"]]
        elif doc.get("status") == "succeeded":
            pairs = [(key, str(i)) for i in (doc.get("event_ids") or [doc.get("event_id")])]
        else:
            pairs = []
        if doc.get("status") != "succeeded":
            got = []  # a partly failed batch: its result does not say which items succeeded
        n += doc.get("status") == "succeeded"
        for pair in pairs:
            events[(pair[0], pair[-1])] += 1
            event_seqs.setdefault((pair[0], pair[-1]), set()).update(got)
        for s in got:
            seqs[s] += 1
    return Outcome(seqs, events, event_seqs, n)


def summarize(ledger: Ledger, out: Outcome, *, seq_dup_prefixes: str = "kms") -> list[str]:
    """One line per problem: lost events and duplicate successes, per source."""
    problems: list[str] = []
    lost = out.lost(ledger)
    for prefix, name in SOURCES.items():
        mine = [s for s in lost if s.startswith(prefix + "-")]
        if mine:
            problems.append(f"LOST {name}: {len(mine)} of {len(ledger.of(prefix))} never succeeded, "
                            f"e.g. {mine[:8]}")
    dup_events = out.duplicate_events()
    if dup_events:
        by_trigger = Counter(k for k, _ in dup_events)
        examples = [(k, e, n, sorted(out.event_seqs.get((k, e), ()))) for (k, e), n in list(dup_events.items())[:6]]
        problems.append(f"DUPLICATE SUCCESSES (same trigger+event id succeeded more than once): "
                        f"{len(dup_events)} events, per trigger {dict(by_trigger)}; e.g. {examples}")
    dup_seqs = out.duplicate_seqs(seq_dup_prefixes)
    if dup_seqs:
        by_source = Counter(source_of(s) for s in dup_seqs)
        problems.append(f"DUPLICATE RUNS of one write (sequence id succeeded more than once): {len(dup_seqs)}, "
                        f"per source {dict(by_source)}; e.g. {sorted(dup_seqs.items())[:8]}")
    return problems


async def wait_all_succeeded(db: Any, ledger: Ledger, timeout: float, interval: float = 1.0) -> Outcome:
    """Until every written sequence id has a succeeded record; AssertionError with a summary if not."""
    last: list[Outcome] = []

    async def done() -> bool:
        out = await outcome(db)
        last[:] = [out]
        return not out.lost(ledger)

    try:
        await eventually(done, timeout=timeout, interval=interval)
    except AssertionError:
        out = last[0] if last else await outcome(db)
        raise AssertionError(f"not every write ran within {timeout}s:\n  " +
                             "\n  ".join(summarize(ledger, out) or ["(none lost?)"]) +
                             f"\n  {await hub_state(db)}") from None
    return last[0]


async def hub_state(db: Any) -> str:
    """Where unfinished work sits: inbox items by kind/state/owner (a lease held by a killed
    instance shows here), dead letters, and the source cursors."""
    try:
        cursor = await db.inbox.aggregate([
            {"$group": {"_id": {"kind": "$kind", "state": "$state", "owner": "$owner"}, "n": {"$sum": 1},
                        "max_deliveries": {"$max": "$deliveries"}, "lease_until": {"$max": "$lease_until"}}}])
        inbox = [{**g["_id"], "n": g["n"], "max_deliveries": g["max_deliveries"],
                  "lease_until": str(g.get("lease_until"))} for g in await cursor.to_list(None)]
        dead = await db.dead_letters.count_documents({})
        received = await db.invocations.distinct("event_source")
    except Exception as exc:  # noqa: BLE001 - diagnostics only
        return f"(hub state unavailable: {type(exc).__name__}: {exc})"
    return f"inbox: {inbox or 'empty'}; dead letters: {dead}; sources with any invocation: {received}"


def counts(ledger: Ledger, out: Outcome) -> str:
    parts = []
    for prefix, name in SOURCES.items():
        written = ledger.of(prefix)
        if written:
            ran = sum(1 for s in written if s in out.succeeded_seqs)
            parts.append(f"{name} {ran}/{len(written)}")
    return ", ".join(parts) + f"; {out.records} succeeded records"
