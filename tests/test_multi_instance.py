"""Three hub processes behind one HAProxy, as a multi-instance deployment runs (issue 11).

Events come from all three sources while all three instances run, then while the instance
reading the change stream is stopped gracefully, then after the one that took the stream over is
killed with -9 (both chosen on purpose: /readyz and the lease in MongoDB agree who holds
``stream:t-mongo``). Checked from the records in MongoDB and from the function's own reports of
its runs (tests/witness.py): every event ran and succeeded exactly once while nothing failed, none
was lost or ran again after its success through the stop and the kill, every source kept going to
the end (each stream ends with marker events), and while all three ran each instance ran a share
of the Kafka events (partitions split across the group) and of the S3 events (the shared inbox,
fed through the proxy by RGW's notifications).
"""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pymongo import AsyncMongoClient
from pymongo.errors import DuplicateKeyError

from devstack import free_port
from devstack.haproxy import HAProxy
from tests.chaos import (
    HubProcess,
    Ledger,
    counts,
    hub_env,
    outcome,
    paced,
    produce_seq,
    start_producer,
    summarize,
    wait_all_succeeded,
)
from tests.hubfixtures import Api, eventually
from tests.test_chaos import _delete_s3_notification, _inbox_empty
from tests.test_kafka_connector import create_topic
from tests.test_sources import minio_client
from tests.witness import Witness, wait_judged_clean

pytestmark = pytest.mark.integration

PARTITIONS = 6
Write = Callable[[int], Awaitable[None]]


async def _partitions(http: aiohttp.ClientSession, hub: HubProcess, trigger: str) -> list[int]:
    """The Kafka partitions this instance's group member holds (its own view of the cursor).
    The view also lists the partitions the other instances' heartbeats report, each with its
    holder's id: only this instance's own count."""
    status, body = await Api(http, hub.url).call("GET", f"/v1/triggers/{trigger}")
    assert status == 200, body
    me = hub.env["HUB_INSTANCE_ID"]
    return [p["partition"] for p in (body.get("cursor") or {}).get("partitions") or [] if p.get("instance") == me]


async def _proxy_serves(http: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with http.get(url + "/healthz", timeout=aiohttp.ClientTimeout(total=2)) as r:
            return r.status == 200
    except (aiohttp.ClientError, asyncio.TimeoutError):
        return False


async def _stream_holder(http: aiohttp.ClientSession, db: Any, hubs: list[HubProcess], trigger: str) -> HubProcess:
    """The live instance reading ``trigger``'s change stream: its /readyz says "running" for it,
    every other live instance's says "held by" it, and the lease ``stream:<trigger>`` names it."""
    async def agreed() -> HubProcess | None:
        states: list[tuple[HubProcess, Any]] = []
        for hub in (h for h in hubs if h.alive()):
            _, body = await Api(http, hub.url).call("GET", "/readyz")
            subs = body.get("subscriptions") if isinstance(body, dict) else None
            states.append((hub, ((subs or {}).get(trigger) or {}).get("state")))
        running = [h for h, state in states if state == "running"]
        if len(running) != 1:
            return None
        holder_id = running[0].env["HUB_INSTANCE_ID"]
        lease = await db.leases.find_one({"_id": f"stream:{trigger}"})
        others_agree = all(state == f"held by {holder_id}" for h, state in states if h is not running[0])
        return running[0] if others_agree and lease and lease["owner"] == holder_id else None

    return await eventually(agreed, timeout=60, interval=0.3)  # type: ignore[no-any-return]


async def _ran_by(db: Any, trigger: str, seqs: set[str]) -> Counter[str]:
    """Which instance ran which of these writes: succeeded records per instance."""
    ran: Counter[str] = Counter()
    async for doc in db.invocations.find({"trigger": trigger, "status": "succeeded"}, {"instance": 1, "result": 1}):
        got = (doc.get("result") or {}).get("seqs") or []
        ran[doc.get("instance") or "?"] += sum(1 for s in got if s in seqs)
    return ran


@pytest.mark.timeout(600)
async def test_three_instances_share_the_work_and_survive_a_stop_and_a_kill(
    servers: dict[str, Any], tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    tag = uuid.uuid4().hex[:8]
    topic, bucket, app_db, hub_db = f"multi-{tag}", f"multi-{tag}", f"app_{tag}", f"multi_{tag}"
    ports = [free_port() for _ in range(3)]
    proxy = HAProxy(ports, data_dir=tmp_path / "haproxy", check_interval_ms=300)
    hubs = [
        HubProcess(hub_env(servers, mongo_url=servers["mongo"].url, db=hub_db, data_dir=tmp_path / f"hub-{n}",
                           port=port, instance_id=f"multi-{n}-{tag}",
                           # the shared address: RGW's notifications go there, never to one instance
                           HUB_PUBLIC_URL=proxy.url,
                           HUB_LEASE_TTL_S="3", HUB_INBOX_LEASE_S="3", HUB_INBOX_CONCURRENCY="2",
                           # notifications, spread by the proxy, queue the uploads: RGW's persistent
                           # topic takes ~25 s here, past the scan's default 15 s grace, and the
                           # scan's turns need not reach every instance
                           HUB_S3_RECONCILE_GRACE_S="60"),
                   tmp_path / f"hub-{n}.log", port)
        for n, port in zip("abc", ports)
    ]
    s3 = minio_client(servers["rgw"])
    await asyncio.to_thread(s3.make_bucket, bucket)
    await create_topic(servers["kafka"].bootstrap, topic, PARTITIONS)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(servers["mongo"].url)
    producer = await start_producer(servers["kafka"].bootstrap)
    witness = Witness()
    await asyncio.to_thread(proxy.start)
    try:
        for hub in hubs:
            hub.start()
        for hub in hubs:
            await hub.wait_healthy(http)
        # and the proxy has seen them healthy (its checks run every 0.3 s)
        await eventually(lambda: _proxy_serves(http, proxy.url), timeout=30)
        api = Api(http, proxy.url)  # clients use the shared address too
        # a little work per event, so that a burst needs more than one instance's workers
        await api.put_function("rec", witness.function(sleep_s=0.02), max_concurrency=4, network=witness.network)
        await api.put_trigger("t-kafka", "rec", {"type": "kafka", "topic": topic})
        await api.put_trigger("t-mongo", "rec", {"type": "mongodb", "database": app_db,
                                                 "collection": "items", "operations": ["insert"]})
        trig = await api.put_trigger("t-s3", "rec", {"type": "s3", "bucket": bucket})
        assert trig["notifications"]["configured"] is True, trig
        assert trig["notifications"]["push_url"] == proxy.url, trig

        async def all_hold_partitions() -> bool:
            held = [await _partitions(http, h, "t-kafka") for h in hubs]
            return all(held) and sorted(p for ps in held for p in ps) == list(range(PARTITIONS))

        await eventually(all_hold_partitions, timeout=90, interval=0.5)

        ledger = Ledger()
        coll = client[app_db]["items"]
        counter = Counter[str]()

        async def kafka_write(_: int, partition: int | None = None) -> None:
            i = counter["k"]
            counter["k"] += 1
            await produce_seq(producer, topic, f"k-{i:06d}", i % PARTITIONS if partition is None else partition)
            ledger.add(f"k-{i:06d}")

        async def mongo_write(_: int) -> None:
            i = counter["m"]
            counter["m"] += 1
            try:
                await coll.insert_one({"_id": f"m-{i:06d}", "seq": f"m-{i:06d}"})
            except DuplicateKeyError:
                pass
            ledger.add(f"m-{i:06d}")

        async def s3_write(_: int) -> None:
            i = counter["s"]
            counter["s"] += 1
            body = f"upload {i}".encode()
            await asyncio.to_thread(s3.put_object, bucket, f"multi/s-{i:06d}", io.BytesIO(body), len(body))
            ledger.add(f"s-{i:06d}")

        async def phase(seconds: float, kafka_n: int, mongo_n: int, s3_n: int) -> None:
            await asyncio.gather(paced(kafka_n, seconds, kafka_write), paced(mongo_n, seconds, mongo_write),
                                 paced(s3_n, seconds, s3_write))

        db = client[hub_db]
        # 1. all three run: the work is shared
        await phase(6.0, 180, 30, 45)
        await wait_all_succeeded(db, ledger, timeout=120)
        first = set(ledger.written)
        # nothing failed yet: the function ran each write exactly once, and each run has its record
        verdict = await wait_judged_clean(db, witness, first, timeout=30)
        twice = {s: len(witness.runs_of(s)) for s in first if len(witness.runs_of(s)) != 1}
        assert not twice and not verdict.unrecorded, f"with no fault: runs per write {twice}; " \
            f"runs with no record {verdict.unrecorded[:5]}"
        kafka_share = await _ran_by(db, "t-kafka", first)
        s3_share = await _ran_by(db, "t-s3", first)
        ids = [h.env["HUB_INSTANCE_ID"] for h in hubs]
        print("while all ran -- kafka:", dict(kafka_share), "s3:", dict(s3_share), "|", verdict.summary())
        assert all(kafka_share[i] > 0 for i in ids), f"an instance ran no Kafka events: {kafka_share}"
        assert all(s3_share[i] > 0 for i in ids), f"an instance ran no S3 events: {s3_share}"

        async def whole_cursor() -> dict[str, Any] | None:
            """Any one instance shows the group's whole cursor: its partitions, and the others'
            from their heartbeats; the lag of the finished backlog is 0."""
            status, body = await Api(http, hubs[0].url).call("GET", "/v1/triggers/t-kafka")
            cursor = body["cursor"]
            parts = cursor["partitions"]
            whole = sorted(p["partition"] for p in parts) == list(range(PARTITIONS))
            return cursor if whole and cursor["lag"] == 0 and {p["instance"] for p in parts} == set(ids) else None

        await eventually(whole_cursor, timeout=30)

        # 2. the stream's reader stops gracefully while events flow; 3. the instance that took the
        # stream over is killed while events flow
        stopping = await _stream_holder(http, db, hubs, "t-mongo")
        print("stopping gracefully: the stream holder", stopping.env["HUB_INSTANCE_ID"])

        async def stop_gracefully() -> int | None:
            await asyncio.sleep(1.5)
            took = await stopping.sigterm(timeout=60)
            assert took is not None, f"SIGTERM: still running after 60 s\n{stopping.tail()}"
            return stopping.proc.returncode if stopping.proc else None

        results = await asyncio.gather(phase(5.0, 120, 20, 30), stop_gracefully())
        assert results[1] == 0, f"a graceful stop exited with {results[1]}\n{stopping.tail()}"

        killed_at: list[float] = []
        new_holder = await _stream_holder(http, db, hubs, "t-mongo")  # it took the stream over
        killed = new_holder
        left = next(h for h in hubs if h is not stopping and h is not killed)

        async def kill() -> None:
            await asyncio.sleep(1.5)
            assert await _stream_holder(http, db, hubs, "t-mongo") is killed  # still, at the kill
            killed.kill9()
            killed_at.append(time.monotonic())
            print("killed -9: the stream holder", killed.env["HUB_INSTANCE_ID"])

        await asyncio.gather(phase(5.0, 120, 20, 30), kill())
        after_kill = set(ledger.since(killed_at[0]))  # only the last instance can run these
        # the end of each stream, written last: a marker per partition, one insert, one upload
        markers = [f"k-{counter['k'] + p:06d}" for p in range(PARTITIONS)] + \
            [f"m-{counter['m']:06d}", f"s-{counter['s']:06d}"]
        for p in range(PARTITIONS):
            await kafka_write(0, partition=p)
        await mongo_write(0)
        await s3_write(0)
        await wait_all_succeeded(db, ledger, timeout=180, interval=1.0)
        # once every marker ran and the inbox is empty, nothing written before can be redelivered
        await witness.wait_seen(markers, timeout=120)
        await eventually(lambda: _inbox_empty(db), timeout=60, interval=0.2)
        verdict = await wait_judged_clean(db, witness, ledger.written, timeout=30)
        out = await outcome(db)
        print("outcome:", counts(ledger, out), "|", verdict.summary())
        problems = summarize(ledger, out)
        assert not problems, "\n".join(problems)
        for trigger, prefix in (("t-kafka", "k"), ("t-mongo", "m"), ("t-s3", "s")):
            late = {s for s in after_kill if s.startswith(prefix + "-")}
            ran = await _ran_by(db, trigger, late)
            assert late and {i for i, n in ran.items() if n} == {left.env["HUB_INSTANCE_ID"]}, (trigger, ran)
        assert left.alive()
        assert await _stream_holder(http, db, hubs, "t-mongo") is left
    except BaseException:
        for hub in hubs:
            print(f"--- {hub.env['HUB_INSTANCE_ID']} log tail ({hub.log_path}) ---\n{hub.tail(40)}")
        raise
    finally:
        for hub in hubs:
            hub.cleanup()
        await asyncio.to_thread(proxy.stop)
        witness.close()
        await producer.stop()
        await client.close()
        await _delete_s3_notification(servers["rgw"], bucket)
