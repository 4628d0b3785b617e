"""Fault injection against a real hub process: kill -9 the hub, kill -9 mongod, under load.

Each test runs the hub as a subprocess (``python -m hub.cli serve``) with a fixed instance id and
port, writes events with unique sequence ids, injects faults at random moments (the seed is
printed; set CHAOS_SEED to replay a schedule) and then checks what the hub recorded in MongoDB
against what the function itself reported doing (tests/witness.py: one request per run to a
server of the test's own): nothing lost, no success run again, every source resumed after the
last fault. Each stream ends with marker events written last; duplicates are counted once those
have run, not after a sleep.

The hub's log (JSON lines) is in the test's tmp dir; its tail is printed when a test fails, and a
py-spy dump of the hub when it stops making progress or ignores SIGTERM.
"""

from __future__ import annotations

import asyncio
import io
import os
import random
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from pymongo import AsyncMongoClient
from pymongo.errors import DuplicateKeyError, PyMongoError

from devstack import MongoServer, free_port
from tests.chaos import (
    HubProcess,
    Ledger,
    counts,
    hub_env,
    kill9_mongod,
    outcome,
    paced,
    produce_seq,
    start_producer,
    summarize,
    timed_get,
    wait_all_succeeded,
)
from tests.cleanup import _forget_buckets as forget_buckets
from tests.hubfixtures import Api, eventually
from tests.test_kafka_connector import create_topic
from tests.test_sources import minio_client
from tests.witness import Judgement, Witness, wait_judged_clean

pytestmark = pytest.mark.integration

PARTITIONS = 4


def _rng(test: str) -> random.Random:
    seed = int(os.environ.get("CHAOS_SEED") or random.SystemRandom().randrange(1 << 30))
    print(f"{test}: CHAOS_SEED={seed}")
    return random.Random(seed)


@asynccontextmanager
async def _private_mongod(tmp_path: Path) -> AsyncIterator[MongoServer]:
    """A mongod of this test's own (the session's stays untouched by the faults)."""
    mongo = MongoServer(tmp_path / "mongo")
    await asyncio.to_thread(mongo.start)  # raises ServerError with the log tail: the test fails
    try:
        yield mongo
    finally:
        await asyncio.to_thread(mongo.stop)


@asynccontextmanager
async def _hub_process(servers: dict[str, Any], tmp_path: Path, mongo_url: str, **extra: str
                       ) -> AsyncIterator[HubProcess]:
    port = free_port()
    env = hub_env(servers, mongo_url=mongo_url, db=f"chaos_{uuid.uuid4().hex[:8]}",
                  data_dir=tmp_path / "hub-data", port=port, instance_id=f"chaos-{uuid.uuid4().hex[:6]}",
                  **extra)
    hub = HubProcess(env, tmp_path / "hub.log", port)
    try:
        yield hub
    except BaseException as exc:
        # printed, and on the exception too: a concurrent case's failure is raised by another test
        tail = f"--- hub log tail ({hub.log_path}; started {hub.starts}x, killed {hub.kills}x) ---\n{hub.tail(80)}"
        print(tail)
        exc.add_note(tail)
        raise
    finally:
        hub.cleanup()


async def _hang_report(hub: HubProcess, what: str) -> str:
    dump = await asyncio.to_thread(hub.py_spy_dump)
    return f"{what}\n--- py-spy dump of the hub (pid {hub.pid}) ---\n{dump}\n--- log tail ---\n{hub.tail(40)}"


async def _ready(api: Api, timeout: float = 60) -> None:
    async def ready() -> Any:
        status, body, _ = await timed_get(api.session, api.base + "/readyz", timeout=5)
        return status == 200
    await eventually(ready, timeout=timeout, interval=0.25)


async def _mongo_insert_until_done(coll: Any, seq: str) -> None:
    """Insert with a retry loop that survives a mongod outage; the _id makes a retry harmless."""
    while True:
        try:
            await coll.insert_one({"_id": seq, "seq": seq})
            return
        except DuplicateKeyError:
            return  # an earlier attempt went through after all
        except PyMongoError:
            await asyncio.sleep(0.3)


async def _delete_s3_notification(rgw: Any, bucket: str) -> None:
    """Best effort: stop RGW pushing (and retrying) to this test's dead hub port. (RGW refuses
    the empty configuration boto3 would send: tests/cleanup.py deletes it RGW's way.)"""
    settings = SimpleNamespace(s3_endpoint=rgw.endpoint, s3_access_key=rgw.access_key,
                               s3_secret_key=rgw.secret_key, s3_region=rgw.region)
    try:
        await asyncio.to_thread(forget_buckets, settings, [bucket])
    except Exception as exc:  # noqa: BLE001 - cleanup only
        print(f"(could not remove the RGW notification for {bucket}: {exc})")


# -- 1 ---------------------------------------------------------------------------------------
@pytest.mark.timeout(600)
async def test_hub_kill9_loses_nothing_and_never_reruns_a_success(
    servers: dict[str, Any], tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """kill -9 the hub 4 times and mongod once while kafka, mongodb and s3 events flow: every write
    ran (the function's own reports) and succeeded (the records), none ran again after its success."""
    rng = _rng("test_hub_kill9")
    tag = uuid.uuid4().hex[:8]
    topic, bucket, app_db = f"chaos-{tag}", f"chaos-{tag}", f"app_{tag}"
    kafka_n, mongo_n, s3_n, write_s = 300, 150, 60, 40.0
    s3 = minio_client(servers["rgw"])
    await asyncio.to_thread(s3.make_bucket, bucket)
    await create_topic(servers["kafka"].bootstrap, topic, PARTITIONS)
    async with _private_mongod(tmp_path) as mongo, \
            _hub_process(servers, tmp_path, mongo.url) as hub:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo.url, serverSelectionTimeoutMS=5000)
        producer = await start_producer(servers["kafka"].bootstrap)
        witness = Witness()
        try:
            hub.start()
            await hub.wait_healthy(http)
            api = Api(http, hub.url)
            await api.put_function("rec", witness.function(), max_concurrency=8, network=witness.network)
            await api.put_trigger("t-kafka", "rec", {"type": "kafka", "topic": topic})
            await api.put_trigger("t-mongo", "rec", {"type": "mongodb", "database": app_db,
                                                     "collection": "items", "operations": ["insert"]})
            trig = await api.put_trigger("t-s3", "rec", {"type": "s3", "bucket": bucket})
            assert trig["notifications"]["configured"] is True, trig
            await _ready(api)

            ledger = Ledger()
            coll = client[app_db]["items"]

            async def kafka_write(i: int, partition: int | None = None) -> None:
                await produce_seq(producer, topic, f"k-{i:06d}", i % PARTITIONS if partition is None else partition)
                ledger.add(f"k-{i:06d}")

            async def mongo_write(i: int) -> None:
                await _mongo_insert_until_done(coll, f"m-{i:06d}")
                ledger.add(f"m-{i:06d}")

            async def s3_write(i: int) -> None:
                body = f"upload {i}".encode()
                await asyncio.to_thread(s3.put_object, bucket, f"chaos/s-{i:06d}", io.BytesIO(body), len(body))
                ledger.add(f"s-{i:06d}")

            faults = ["hub"] * 4 + ["mongod"]
            rng.shuffle(faults)
            log: list[str] = []
            t0 = time.monotonic()

            async def chaos() -> float:
                for fault in faults:
                    await asyncio.sleep(rng.uniform(2.0, 5.0))
                    if fault == "hub":
                        hub.kill9()
                        down = rng.uniform(0.3, 2.5)
                        await asyncio.sleep(down)
                        hub.start()
                        await hub.wait_healthy(http)
                    else:
                        kill9_mongod(mongo)
                        down = rng.uniform(2.0, 5.0)
                        await asyncio.sleep(down)
                        await asyncio.to_thread(mongo.start)
                    log.append(f"{fault} killed at {time.monotonic() - t0:.1f}s, down {down:.1f}s")
                return time.monotonic()

            results = await asyncio.gather(
                paced(kafka_n, write_s, kafka_write),
                paced(mongo_n, write_s, mongo_write),
                paced(s3_n, write_s, s3_write),
                chaos(),
            )
            last_fault = results[-1]
            print("faults:", "; ".join(log))
            # writes after the last fault show that every source resumed
            for i in range(kafka_n, kafka_n + 8):
                await kafka_write(i)
            for i in range(mongo_n, mongo_n + 4):
                await mongo_write(i)
            for i in range(s3_n, s3_n + 3):
                await s3_write(i)
            after_last = ledger.since(last_fault)
            # the end of each stream: one marker per Kafka partition, one insert, one upload
            markers = [f"k-{kafka_n + 8 + p:06d}" for p in range(PARTITIONS)] + \
                [f"m-{mongo_n + 4:06d}", f"s-{s3_n + 3:06d}"]
            for p in range(PARTITIONS):
                await kafka_write(kafka_n + 8 + p, partition=p)
            await mongo_write(mongo_n + 4)
            await s3_write(s3_n + 3)

            db = client[hub.env["HUB_MONGO_DB"]]
            try:
                out = await wait_all_succeeded(db, ledger, timeout=180, interval=2.0)
            except AssertionError as exc:
                raise AssertionError(await _hang_report(hub, str(exc))) from None
            verdict = await _settled_verdict(db, witness, ledger, markers)
            out = await outcome(db)
            print("outcome:", counts(ledger, out), "|", verdict.summary())
            not_resumed = [s for s in after_last if not witness.runs_of(s) or s not in out.succeeded_seqs]
            assert not not_resumed, f"writes after the last fault did not run: {not_resumed}"
            problems = summarize(ledger, out)
            assert not problems, "\n".join(problems)
        finally:
            witness.close()
            await producer.stop()
            await client.close()
            await _delete_s3_notification(servers["rgw"], bucket)


async def _inbox_empty(db: Any) -> bool:
    return await db.inbox.count_documents({}) == 0


async def _settled_verdict(db: Any, witness: Witness, ledger: Ledger, markers: list[str]) -> Judgement:
    """Once every end-of-stream marker has run and the inbox is empty, nothing written earlier can
    still be redelivered (a Kafka partition and the change stream replay in order up to their
    marker; the inbox has nothing left): judge the function's runs against the records."""
    await witness.wait_seen(markers, timeout=120)
    await eventually(lambda: _inbox_empty(db), timeout=60, interval=0.2)
    return await wait_judged_clean(db, witness, ledger.written, timeout=30)


# -- 2 ---------------------------------------------------------------------------------------
@pytest.mark.timeout(600)
async def test_hub_resumes_after_repeated_mongod_kills(
    servers: dict[str, Any], tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """Issue 6 item 1: mongod kill -9 three times under load; the hub resumes every time, /readyz
    answers (503) while mongod is down and 200 after, and SIGTERM still stops the hub."""
    rng = _rng("test_hub_resumes_after_repeated_mongod_kills")
    topic = f"mkill-{uuid.uuid4().hex[:8]}"
    await create_topic(servers["kafka"].bootstrap, topic, PARTITIONS)
    problems: list[str] = []
    async with _private_mongod(tmp_path) as mongo, \
            _hub_process(servers, tmp_path, mongo.url) as hub:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo.url, serverSelectionTimeoutMS=5000)
        producer = await start_producer(servers["kafka"].bootstrap)
        stop = asyncio.Event()
        writers: list[asyncio.Task[None]] = []
        witness = Witness()
        try:
            hub.start()
            await hub.wait_healthy(http)
            api = Api(http, hub.url)
            await api.put_function("rec", witness.function(), max_concurrency=8, network=witness.network)
            await api.put_trigger("t-kafka", "rec", {"type": "kafka", "topic": topic})
            await _ready(api)
            db = client[hub.env["HUB_MONGO_DB"]]
            ledger = Ledger()

            async def kafka_writer() -> None:
                i = 0
                while not stop.is_set():
                    await produce_seq(producer, topic, f"k-{i:06d}", i % PARTITIONS)
                    ledger.add(f"k-{i:06d}")
                    i += 1
                    await asyncio.sleep(0.1)

            async def invoke_writer() -> None:
                """Async invokes through the inbox; a 503 (or no answer) is retried, as a client would."""
                i = 0
                while not stop.is_set():
                    seq = f"a-{i:06d}"
                    try:
                        async with http.post(f"{hub.url}/v1/functions/rec/invoke?mode=async", json={"seq": seq},
                                             headers=api.headers, timeout=aiohttp.ClientTimeout(total=10)) as r:
                            accepted = r.status == 202
                    except (aiohttp.ClientError, asyncio.TimeoutError):
                        accepted = False
                    if accepted:
                        ledger.add(seq)
                        i += 1
                        await asyncio.sleep(0.3)
                    else:
                        await asyncio.sleep(0.5)

            writers = [asyncio.create_task(kafka_writer()), asyncio.create_task(invoke_writer())]

            async def resumed(after: float, what: str) -> None:
                """New writes of both kinds, made after ``after``, run."""
                async def fresh() -> list[str] | None:
                    new = ledger.since(after)
                    k, a = [s for s in new if s[0] == "k"][:3], [s for s in new if s[0] == "a"][:3]
                    return k + a if len(k) == 3 and len(a) == 3 else None

                try:
                    probe = await eventually(fresh, timeout=90, interval=0.2)

                    async def ran() -> bool:
                        out = await outcome(db)
                        return all(s in out.succeeded_seqs for s in probe)
                    await eventually(ran, timeout=90, interval=0.5)
                except AssertionError as exc:
                    out = await outcome(db)
                    report = await _hang_report(hub, f"hub did not resume {what}: {exc}; {counts(ledger, out)}")
                    took_s = await hub.sigterm(timeout=30)
                    report += ("\nand SIGTERM did not stop it within 30 s" if took_s is None
                               else f"\nSIGTERM then stopped it in {took_s:.1f}s")
                    raise AssertionError("\n".join([*problems, report])) from None

            await resumed(time.monotonic(), "at start")
            for round_ in range(1, 4):
                await asyncio.sleep(rng.uniform(1.0, 3.0))
                kill9_mongod(mongo)
                down_s = rng.uniform(2.0, 5.0)
                t_down = time.monotonic()
                for probe in ("right after the kill", "before the restart"):
                    if probe == "before the restart":
                        await asyncio.sleep(max(0.0, t_down + down_s - time.monotonic()))
                    status, took, body = await timed_get(http, hub.url + "/readyz", timeout=3)
                    print(f"round {round_}: /readyz {probe}: {status} in {took:.2f}s")
                    if status != 503:
                        problems.append(f"round {round_}: /readyz {probe} (mongod down) answered {status} "
                                        f"after {took:.2f}s (want 503 within ~1 s): {str(body)[:300]}")
                await asyncio.to_thread(mongo.start)
                t_up = time.monotonic()
                await resumed(t_up, f"after mongod kill {round_}")
                try:
                    await _ready(api, timeout=60)
                except AssertionError as exc:
                    problems.append(f"round {round_}: /readyz not 200 within 60 s after mongod came back: {exc}")
                print(f"round {round_}: mongod down {down_s:.1f}s; resumed {time.monotonic() - t_up:.1f}s "
                      f"after restart")

            stop.set()
            await asyncio.gather(*writers)
            markers = [f"k-end-{p}" for p in range(PARTITIONS)]
            for p, marker in enumerate(markers):
                await produce_seq(producer, topic, marker, p)
                ledger.add(marker)
            try:
                out = await wait_all_succeeded(db, ledger, timeout=120)
                verdict = await _settled_verdict(db, witness, ledger, markers)
            except AssertionError as exc:
                raise AssertionError(await _hang_report(hub, str(exc))) from None
            out = await outcome(db)
            print("outcome:", counts(ledger, out), "|", verdict.summary())
            problems += summarize(ledger, out)

            took_s = await hub.sigterm(timeout=30)
            if took_s is None:
                problems.append(await _hang_report(hub, "SIGTERM did not stop the hub within 30 s"))
            else:
                print(f"SIGTERM: hub exited in {took_s:.1f}s with {hub.proc.returncode if hub.proc else None}")
            assert not problems, "\n".join(problems)
        finally:
            stop.set()
            for w in writers:
                w.cancel()
            await asyncio.gather(*writers, return_exceptions=True)
            witness.close()
            await producer.stop()
            await client.close()


# -- 3 ---------------------------------------------------------------------------------------
@pytest.mark.timeout(600)
async def test_kill_between_success_record_and_marker(
    servers: dict[str, Any], tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """Issue 6 item 2, black box: kill -9 the hub 10 times while a kafka backlog runs through a
    short function; no event may have two succeeded records, and the function may run no event
    again once a run of it has succeeded (runs whose record the kill prevented may repeat).

    The function is short (50 ms) on purpose: the gap between the success record and the
    completion marker is a few milliseconds per event, so the shorter the function, the larger the
    share of time each partition spends in that gap when the kill lands."""
    rng = _rng("test_kill_between_success_record_and_marker")
    topic = f"gap-{uuid.uuid4().hex[:8]}"
    await create_topic(servers["kafka"].bootstrap, topic, PARTITIONS)
    async with _hub_process(servers, tmp_path, servers["mongo"].url) as hub:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(servers["mongo"].url)
        producer = await start_producer(servers["kafka"].bootstrap)
        witness = Witness()
        try:
            hub.start()
            await hub.wait_healthy(http)
            api = Api(http, hub.url)
            await api.put_function("rec", witness.function(0.05), max_concurrency=PARTITIONS,
                                   network=witness.network)
            await api.put_trigger("t-kafka", "rec", {"type": "kafka", "topic": topic})
            await _ready(api)
            db = client[hub.env["HUB_MONGO_DB"]]
            ledger = Ledger()
            next_seq = 0

            async def top_up(backlog: int) -> None:
                nonlocal next_seq
                out = await outcome(db)
                while len(ledger.written) - len(out.succeeded_seqs) < backlog:
                    seq = f"k-{next_seq:06d}"
                    await produce_seq(producer, topic, seq, next_seq % PARTITIONS)
                    ledger.add(seq)
                    next_seq += 1

            for kill in range(10):
                await top_up(150)
                before = (await outcome(db)).records

                async def progressing(before: int = before) -> bool:
                    return (await outcome(db)).records > before + 4

                await eventually(progressing, timeout=90, interval=0.05)
                await asyncio.sleep(rng.uniform(0.0, 1.5))
                hub.kill9()
                await asyncio.sleep(rng.uniform(0.2, 1.5))
                hub.start()
                await hub.wait_healthy(http)
            await top_up(0)
            markers = [f"k-end-{p}" for p in range(PARTITIONS)]
            for p, marker in enumerate(markers):
                await produce_seq(producer, topic, marker, p)
                ledger.add(marker)
            out = await wait_all_succeeded(db, ledger, timeout=180)
            verdict = await _settled_verdict(db, witness, ledger, markers)
            out = await outcome(db)
            print(f"{hub.kills} kills; outcome:", counts(ledger, out), "|", verdict.summary())
            problems = summarize(ledger, out)
            assert not problems, "\n".join(problems)
        finally:
            witness.close()
            await producer.stop()
            await client.close()


CRASH_SEAM_HELP = (
    "the hub did not exit at HUB_TEST_CRASH_POINT={point}: the crash-point seam is missing. The hub "
    "should os._exit(137), once, right after the write that makes {what} durable and before "
    "anything that follows it (a separate completion marker, if any; the source's ack), so this "
    "test can prove that a crash there never reruns the event."
)


CRASH_POINT_TEST = "test_crash_point_between_outcome_and_marker"


@pytest.fixture(scope="module")
async def crash_point_failures(request: pytest.FixtureRequest, servers: dict[str, Any],
                               tmp_path_factory: pytest.TempPathFactory, http: aiohttp.ClientSession
                               ) -> dict[tuple[str, str], Exception | None]:
    """Every selected case of the crash-point test, run at once; (source, point) -> what it raised.

    The cases share nothing but the servers (each has its own hub process, database, topic or
    bucket and witness), and their time is nearly all waiting: hub starts, the restarted hub
    watching its instance id's last heartbeat before it takes it over (tests.chaos.INSTANCE_LIVE_S),
    Kafka group joins, an S3 event's notification or reconciling scan (~15 s). One after the other
    the six took 117 s (load ~4); at once, ~27 s. Each test then raises its own case's failure."""
    selected = [(item.callspec.params["source"], item.callspec.params["point"])
                for item in request.session.items
                if getattr(item, "originalname", None) == CRASH_POINT_TEST and hasattr(item, "callspec")]

    async def case(source: str, point: str) -> Exception | None:
        try:
            await _crash_point_case(source, point, servers, tmp_path_factory.mktemp(f"crash-{source}-{point}"), http)
        except Exception as exc:  # noqa: BLE001 - raised again by the case's own test
            return exc
        return None

    failures = await asyncio.gather(*(case(source, point) for source, point in selected))
    return dict(zip(selected, failures))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("point", ["after_record", "after_dead_letter"])
@pytest.mark.parametrize("source", ["kafka", "mongodb", "s3"])
async def test_crash_point_between_outcome_and_marker(
    source: str, point: str, crash_point_failures: dict[tuple[str, str], Exception | None]
) -> None:
    """Issue 6 item 2, deterministic, for each source: the hub dies exactly between writing an
    event's final outcome (succeeded record / dead letter) and the source's ack (Kafka commit,
    change-stream resume token, inbox item deleted), via the test seam HUB_TEST_CRASH_POINT; after
    a restart the event is redelivered (the log says it was skipped) and the function -- its own
    reports, not only the records -- never runs it again. (The cases run concurrently, in
    :func:`crash_point_failures`; see :func:`_crash_point_case` for each one's steps.)"""
    failure = crash_point_failures[(source, point)]
    if failure is not None:
        raise failure


async def _crash_point_case(source: str, point: str, servers: dict[str, Any], tmp_path: Path,
                            http: aiohttp.ClientSession) -> None:
    """One case of the crash-point test, on a hub process of its own."""
    tag = uuid.uuid4().hex[:8]
    fail = point == "after_dead_letter"
    prefix = {"kafka": "k", "mongodb": "m", "s3": "s"}[source]
    first, marker = f"{prefix}-000000", f"{prefix}-000001"
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(servers["mongo"].url)
    producer = await start_producer(servers["kafka"].bootstrap)
    s3 = minio_client(servers["rgw"])
    witness = Witness()
    if source == "kafka":
        await create_topic(servers["kafka"].bootstrap, f"seam-{tag}", 1)
        spec: dict[str, Any] = {"type": "kafka", "topic": f"seam-{tag}"}
    elif source == "mongodb":
        spec = {"type": "mongodb", "database": f"app_{tag}", "collection": "items", "operations": ["insert"]}
    else:
        await asyncio.to_thread(s3.make_bucket, f"seam-{tag}")
        spec = {"type": "s3", "bucket": f"seam-{tag}"}

    async def write(seq: str, fail: bool = False) -> None:
        if source == "kafka":
            await produce_seq(producer, spec["topic"], seq, 0, fail=fail)
        elif source == "mongodb":
            await client[spec["database"]]["items"].insert_one({"_id": seq, "seq": seq, "fail": fail})
        else:
            key = f"seam/{seq}.fail" if fail else f"seam/{seq}.txt"
            await asyncio.to_thread(s3.put_object, spec["bucket"], key, io.BytesIO(b"x"), 1)

    try:
        async with _hub_process(servers, tmp_path, servers["mongo"].url) as hub:
            hub.start(HUB_TEST_CRASH_POINT=point)
            await hub.wait_healthy(http)
            api = Api(http, hub.url)
            await api.put_function("rec", witness.function(), network=witness.network)
            trig = await api.put_trigger("t", "rec", spec, retry={"max_attempts": 1})
            assert source != "s3" or trig["notifications"]["configured"] is True, trig
            await _ready(api)
            db = client[hub.env["HUB_MONGO_DB"]]
            await write(first, fail=fail)

            async def outcome_written() -> bool:
                if fail:
                    return await db.dead_letters.count_documents({}) > 0
                return await db.invocations.count_documents({"status": "succeeded"}) > 0

            await eventually(outcome_written, timeout=60, interval=0.05)
            code = await hub.wait_exit(timeout=10)
            assert code is not None, CRASH_SEAM_HELP.format(
                point=point, what="an event's dead letter" if fail else "an event's success (its invocation record)")
            assert code == 137, f"hub exited with {code}, expected 137 from the crash point"
            (crashed,) = await db.invocations.find({"trigger": "t"}).to_list(None)
            assert crashed["status"] == ("failed" if fail else "succeeded"), crashed
            log_before = hub.log_path.read_text()

            hub.start()  # no crash point this time
            await hub.wait_healthy(http)
            # a marker behind it: once it has run, the first event was redelivered before it (Kafka,
            # the change stream) or its inbox item taken back at start (S3)
            await write(marker)
            await witness.wait_seen([marker], timeout=90)
            await eventually(lambda: _inbox_empty(db), timeout=30, interval=0.1)
            verdict = await wait_judged_clean(db, witness, [first, marker], timeout=30)
            print(f"{source} {point}:", verdict.summary())
            runs = [(r.n, r.attempt) for r in witness.runs_of(first)]
            assert len(runs) == 1, (f"the function ran {first} {len(runs)} times (its own reports: {runs}); "
                                    f"a {'dead-lettered' if fail else 'succeeded'} event must never run again")
            assert len(witness.runs_of(marker)) == 1
            assert not verdict.unrecorded, f"runs without a record (no kill here): {verdict.unrecorded}"
            records = await db.invocations.find({"event_id": crashed["event_id"]}).to_list(None)
            assert [r["_id"] for r in records] == [crashed["_id"]], \
                f"the event has {len(records)} records: {[(r['_id'], r['status']) for r in records]}"
            assert await db.dead_letters.count_documents({}) == int(fail)
            skipped = [line for line in hub.log_path.read_text()[len(log_before):].splitlines()
                       if "duplicate event skipped" in line and crashed["event_id"] in line]
            assert skipped, (f"the restarted hub never saw {crashed['event_id']} again (no 'duplicate event "
                             f"skipped' in its log): the test did not exercise the redelivery")
    finally:
        witness.close()
        await producer.stop()
        await client.close()
        if source == "s3":
            await _delete_s3_notification(servers["rgw"], spec["bucket"])


@pytest.mark.timeout(300)
async def test_crash_mid_batch_never_reruns_its_finished_records(
    servers: dict[str, Any], tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """Issue 7: a batch partly succeeds (its first records finished, one failed), the hub dies
    right after that record is durable and before the offset is committed; the redelivered batch
    runs only what had not finished, in order, and the failed record is dead-lettered alone. The
    function's own reports show the same runs as the records, and no other."""
    topic = f"midbatch-{uuid.uuid4().hex[:8]}"
    await create_topic(servers["kafka"].bootstrap, topic, 1)
    async with _hub_process(servers, tmp_path, servers["mongo"].url) as hub:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(servers["mongo"].url)
        producer = await start_producer(servers["kafka"].bootstrap)
        witness = Witness()
        try:
            hub.start(HUB_TEST_CRASH_POINT="after_record")
            await hub.wait_healthy(http)
            api = Api(http, hub.url)
            await api.put_function("batch", witness.function(), network=witness.network)
            await api.put_trigger("t-batch", "batch", {"type": "kafka", "topic": topic},
                                  batch={"size": 5, "window_ms": 2000},
                                  retry={"max_attempts": 2, "backoff_s": 0.05, "max_backoff_s": 0.1})
            await _ready(api)
            db = client[hub.env["HUB_MONGO_DB"]]
            for i in range(5):
                await produce_seq(producer, topic, f"b-{i}", 0, fail=i == 2)
            assert await hub.wait_exit(timeout=60) == 137, "the hub did not die at the crash point"
            first = await db.invocations.find_one({"trigger": "t-batch"})
            assert first is not None, "the crashed batch left no record"
            assert first["result"]["seqs"] == [f"b-{i}" for i in range(5)] and len(first["done"]) == 2

            hub.start()
            await hub.wait_healthy(http)

            async def settled() -> bool:
                return await db.dead_letters.count_documents({}) == 1 and \
                    await db.invocations.count_documents({"done": {"$size": 2}, "status": "succeeded"}) == 1

            await eventually(settled, timeout=90, interval=0.2)
            records = await db.invocations.find({"trigger": "t-batch"}).sort("finished_at", 1).to_list(None)
            done = Counter(k for r in records for k in r["done"])
            assert len(done) == 4 and set(done.values()) == {1}, f"a finished record ran again: {done}"
            # after the restart: b-0, b-1 were not offered again; b-2 (and what follows) was
            assert [r["result"]["seqs"] for r in records[1:]] == [
                ["b-2", "b-3", "b-4"], ["b-2", "b-3", "b-4"], ["b-3", "b-4"]]
            (dl,) = await db.dead_letters.find().to_list(None)
            assert dl["event"]["data"]["value"]["seq"] == "b-2"
            # the function saw exactly these four runs, the records name them, and b-0, b-1 ran once
            assert [list(r.seqs) for r in witness.runs] == [r["result"]["seqs"] for r in records], witness.runs
            assert [r.run for r in witness.runs] == [r["result"]["run"] for r in records]
        finally:
            witness.close()
            await producer.stop()
            await client.close()


if __name__ == "__main__":  # ./scripts/test is the way; this is a shortcut
    raise SystemExit(pytest.main([__file__, "-x", "-v", *sys.argv[1:]]))
