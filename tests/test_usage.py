"""Usage metering, trigger cursors and the new metrics, on a real hub, sandbox and servers.

Usage figures are checked against the invocation records themselves (the sum over the records
the API lists), per hour, per day and in total; then the records are deleted (what their TTL
does) and the figures must not move.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import math
import re
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from bson import Timestamp
from prometheus_client.parser import text_string_to_metric_families
from pymongo import AsyncMongoClient
from pymongo.errors import AutoReconnect

import pytest

from hub.app import Hub
from hub.intake.cursors import position_time, token_time
from hub.metrics import Metrics
from hub.store import Store
from hub.delivery.usage import EDGES_MS, TOP, Usage, hist_bucket, percentile
from tests.hubfixtures import WEBHOOK_TOKEN, Api, eventually
from tests.test_kafka_connector import create_topic
from tests.test_sources import minio_client, produce

DATA = Path(__file__).parent / "data" / "s3"

WORKLOAD = """
import os, time

def handler(event, context):
    kind = (event.get("data") or {}).get("kind")
    if kind == "fail":
        raise ValueError("asked to fail")
    if kind == "crash":
        os._exit(3)
    if kind == "hang":
        time.sleep(30)
    time.sleep((event.get("data") or {}).get("sleep", 0))
    return {"ok": True}
"""

SLOW = "import time\ndef handler(event, context):\n    time.sleep(%s)\n    return {'ok': True}\n"
FAIL = "def handler(event, context):\n    raise RuntimeError('no')\n"

FIELDS = ("invocations", "failures", "throttles", "billed_ms", "cold_starts")
FAILED = {"failed", "timeout", "out_of_memory", "crashed"}


def _time(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def _sums(records: list[dict[str, Any]]) -> dict[str, Any]:
    ran = [r for r in records if r["status"] != "throttled"]
    return {
        "invocations": len(ran),
        "failures": sum(1 for r in ran if r["status"] in FAILED),
        "throttles": len(records) - len(ran),
        "billed_ms": sum(r["billed_ms"] for r in records),
        "cold_starts": sum(1 for r in ran if r["cold_start"]),
        "gb_seconds": sum(r["billed_ms"] / 1000 * r["memory_mb"] / 1024 for r in records),
    }


def _assert_figures(got: dict[str, Any], records: list[dict[str, Any]]) -> None:
    want = _sums(records)
    assert {k: got[k] for k in FIELDS} == {k: want[k] for k in FIELDS}
    assert math.isclose(got["gb_seconds"], want["gb_seconds"], rel_tol=1e-9, abs_tol=1e-12)


async def _metrics(api: Api) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with api.session.get(api.base + "/metrics", headers=api.headers) as r:
        assert r.status == 200
        text = await r.text()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


# -- usage --------------------------------------------------------------------------------------
@pytest.mark.integration
async def test_usage_equals_the_records_per_hour_day_and_total_and_outlives_them(
    api: Api, hub: Hub, unique: str
) -> None:
    fn = f"use-{unique}"
    await api.put_function(fn, WORKLOAD, memory_mb=128, timeout_s=1)
    # 20 invocations, 5 failing (the crash and the timeout replace the worker)
    kinds = ["ok"] * 5 + ["crash"] + ["ok"] * 5 + ["hang"] + ["ok"] * 5 + ["fail"] * 3
    for i, kind in enumerate(kinds):
        status, body = await api.call("POST", f"/v1/functions/{fn}/invoke",
                                      {"kind": kind, "sleep": 0.02 if i % 4 == 0 else 0})
        assert status == 200, body
    records = await api.invocations(function=fn)
    assert len(records) == 20
    assert sum(1 for r in records if r["status"] in FAILED) == 5
    assert {r["memory_mb"] for r in records} == {128}
    assert sum(1 for r in records if r["cold_start"]) >= 1  # the first (a crash or timeout may add more)

    starts = [_time(r["started_at"]) for r in records]
    lo = min(starts) - dt.timedelta(hours=2)
    hi = max(starts) + dt.timedelta(hours=2)
    period = {"function": fn, "from": lo.isoformat(), "to": str(hi.timestamp())}

    async def usage_landed() -> Any:
        body = await api.ok("GET", "/v1/usage", params=period)
        return body if body["totals"]["invocations"] == 20 else None

    hourly = await eventually(usage_landed)
    assert hourly["function"] == fn and hourly["granularity"] == "hour"
    _assert_figures(hourly["totals"], records)
    by_hour: dict[dt.datetime, list[dict[str, Any]]] = defaultdict(list)
    for r, t in zip(records, starts):
        by_hour[t.replace(minute=0, second=0, microsecond=0)].append(r)
    assert len(hourly["buckets"]) >= 4  # zero-filled around the workload
    for bucket in hourly["buckets"]:
        _assert_figures(bucket, by_hour.get(_time(bucket["start"]), []))
    assert [_time(b["start"]) for b in hourly["buckets"]] == sorted(_time(b["start"]) for b in hourly["buckets"])

    # p50/p99 from the histogram: within one bucket of the records' own, inside their range
    durations = sorted(r["duration_ms"] for r in records)
    true_p50 = durations[math.ceil(0.5 * len(durations)) - 1]
    assert abs(math.log10(hourly["totals"]["p50_ms"] / true_p50)) <= 0.1 + 1e-9
    assert durations[0] <= hourly["totals"]["p99_ms"] <= durations[-1]
    assert hourly["totals"]["p99_ms"] >= 900  # the timeout (1 s) is the slowest

    daily = await api.ok("GET", "/v1/usage", params={**period, "granularity": "day"})
    by_day: dict[dt.datetime, list[dict[str, Any]]] = defaultdict(list)
    for r, t in zip(records, starts):
        by_day[t.replace(hour=0, minute=0, second=0, microsecond=0)].append(r)
    assert daily["granularity"] == "day" and len(daily["buckets"]) in (1, 2)
    for bucket in daily["buckets"]:
        assert _time(bucket["start"]).hour == 0
        _assert_figures(bucket, by_day.get(_time(bucket["start"]), []))
    _assert_figures(daily["totals"], records)

    everyone = await api.ok("GET", "/v1/usage", params={"from": period["from"], "to": period["to"]})
    assert everyone["function"] is None and "buckets" not in everyone
    mine = [f for f in everyone["functions"] if f["function"] == fn]
    assert len(mine) == 1
    _assert_figures(mine[0], records)
    assert everyone["totals"]["invocations"] >= 20

    version = records[0]["version"]
    per_version = await api.ok("GET", "/v1/usage", params={**period, "version": version})
    _assert_figures(per_version["totals"], records)

    # the records expire (simulated: deleted); usage stays
    deleted = await hub.store.db.invocations.delete_many({"function": fn})
    assert deleted.deleted_count == 20
    assert await api.invocations(function=fn) == []
    again = await api.ok("GET", "/v1/usage", params=period)
    assert again["totals"] == hourly["totals"] and again["buckets"] == hourly["buckets"]


@pytest.mark.integration
async def test_usage_default_period_and_bad_queries(api: Api, unique: str) -> None:
    body = await api.ok("GET", "/v1/usage", params={"function": f"nothing-{unique}"})
    assert len(body["buckets"]) == 25  # the last 24 hours, floored to the hour: 25 hour buckets
    assert body["totals"]["invocations"] == 0 and body["totals"]["p50_ms"] is None
    assert all(b["invocations"] == 0 for b in body["buckets"])
    span = _time(body["to"]) - _time(body["from"])
    assert span == dt.timedelta(hours=25)  # from floored, to rounded up: whole hours
    assert _time(body["to"]).minute == 0 and _time(body["to"]) > dt.datetime.now(dt.timezone.utc)
    bad = [
        {"granularity": "minute"},
        {"from": "yesterday"},
        {"to": "-5"},
        {"from": "2025-05-02T00:00:00Z", "to": "2025-05-01T00:00:00Z"},
        {"from": "2020-01-01T00:00:00Z", "to": "2025-01-01T00:00:00Z"},  # > 400 days
        {"version": "0123456789abcdef"},  # needs function
        {"function": "bad name!"},
        {"function": "f", "version": "latest"},
        {"to": "0001-01-01T00:00:00"},
    ]
    for params in bad:
        status, reply = await api.call("GET", "/v1/usage", params=params)
        assert status == 400, (params, reply)
        assert reply["error"]
    status, _ = await api.call("GET", "/v1/usage", headers={"Authorization": "Bearer wrong"})
    assert status == 401


@pytest.mark.integration
async def test_a_failed_usage_write_is_retried_and_counted_once(api: Api, hub: Hub, unique: str) -> None:
    """The usage store fails twice: first after applying the write (an ambiguous failure: the
    reply was lost), then before it. Records are not held up; the retry lands and the usage
    counts the invocation once, not twice."""
    fn = f"lost-{unique}"
    await api.put_function(fn, "def handler(event, context):\n    return 1\n", memory_mb=128)
    real = hub.usage.coll
    calls: list[str] = []

    class Flaky:
        async def bulk_write(self, *args: Any, **kwargs: Any) -> Any:
            calls.append("call")
            if len(calls) == 1:
                await real.bulk_write(*args, **kwargs)
                raise AutoReconnect("connection closed after the write")
            if len(calls) == 2:
                raise AutoReconnect("usage store away")
            return await real.bulk_write(*args, **kwargs)

    before = (await _metrics(api)).get(("hub_usage_write_failures_total", ()), 0.0)
    hub.usage.coll = Flaky()  # type: ignore[assignment]
    try:
        status, body = await api.call("POST", f"/v1/functions/{fn}/invoke", {})
        assert status == 200 and body["status"] == "succeeded"
        assert len(await api.invocations(function=fn)) == 1  # the record did not wait for usage
        await eventually(lambda: _value(len(calls) >= 3), timeout=30)
    finally:
        hub.usage.coll = real
    # one failing flush: its invocation counted once, however many attempts it took
    assert (await _metrics(api)).get(("hub_usage_write_failures_total", ()), 0.0) == before + 1

    async def usage() -> dict[str, Any]:
        return dict((await api.ok("GET", "/v1/usage", params={"function": fn}))["totals"])

    assert (await usage())["invocations"] == 1  # the ambiguous write was not counted again
    status, body = await api.call("POST", f"/v1/functions/{fn}/invoke", {})
    assert status == 200

    async def counted_twice() -> bool:
        return bool((await usage())["invocations"] == 2)

    await eventually(counted_twice)


async def _value(value: bool) -> bool:
    return value


async def _failures_above(api: Api, before: float) -> bool:
    return (await _metrics(api)).get(("hub_usage_write_failures_total", ()), 0.0) >= before + 1


def test_histogram_and_percentiles() -> None:
    assert hist_bucket(0.002) == 0 and hist_bucket(float("nan")) == 0
    assert hist_bucket(0.01) == 1 and hist_bucket(0.012) == 1 and hist_bucket(0.1) == 11 and hist_bucket(1.0) == 21
    assert hist_bucket(5e6) == TOP
    for ms in (0.02, 0.5, 1, 3.3, 47, 999, 12_345, 899_999):
        b = hist_bucket(ms)
        assert (EDGES_MS[b - 1] if b else 0) <= ms < EDGES_MS[b]
    values = [1.5, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 610, 987]
    hist: dict[int, int] = defaultdict(int)
    for v in values:
        hist[hist_bucket(v)] += 1
    p50 = percentile(hist, 0.5, min(values), max(values))
    assert p50 is not None and abs(math.log10(p50 / statistics.median_low(values))) <= 0.1
    assert percentile(hist, 0.99, min(values), max(values)) == 987  # clamped to the max
    assert percentile({}, 0.5, None, None) is None
    # warm calls take well under a millisecond: the percentiles hold there too
    sub_ms = [0.41, 0.45, 0.5, 0.55, 0.6, 0.62, 0.7, 0.72, 0.8, 0.95]
    hist = defaultdict(int)
    for v in sub_ms:
        hist[hist_bucket(v)] += 1
    p50 = percentile(hist, 0.5, min(sub_ms), max(sub_ms))
    assert p50 is not None and abs(math.log10(p50 / statistics.median_low(sub_ms))) <= 0.1, p50


def test_resume_token_times() -> None:
    # a resume token's _data starts with 0x82 and the cluster time (seconds, increment)
    assert token_time({"_data": "82" + "6650A2C0" + "00000003" + "2B022C0100296E5A1004"}) == \
        dt.datetime.fromtimestamp(0x6650A2C0, dt.timezone.utc)
    assert token_time({"_data": "zz"}) is None and token_time(None) is None
    assert position_time({"start_at_operation_time": Timestamp(1_700_000_000, 1)}) == \
        dt.datetime.fromtimestamp(1_700_000_000, dt.timezone.utc)
    assert position_time({}) is None


@pytest.mark.integration
async def test_a_changed_record_retention_is_applied_to_the_ttl_index(servers: dict[str, Any], unique: str) -> None:
    db = f"ttl_{unique}"
    for seconds in (3600, 7200):
        store = Store(servers["mongo"].url, db, seconds)
        try:
            await store.init()
            info = await store.db.invocations.index_information()
            ttl = [i for i in info.values() if i["key"] == [("finished_at", 1)]]
            assert ttl and ttl[0]["expireAfterSeconds"] == seconds
        finally:
            await store.client.drop_database(db)
            await store.close()


# -- cursors ------------------------------------------------------------------------------------
@pytest.mark.integration
async def test_kafka_cursor_lag_while_a_backlog_runs_then_zero(
    api: Api, hub: Hub, servers: dict[str, Any], unique: str
) -> None:
    topic, trigger, failing = f"lag-{unique}", f"lag-{unique}", f"dl-{unique}"
    bootstrap = servers["kafka"].bootstrap
    await create_topic(bootstrap, topic, 1)
    await api.put_function(f"slow-{unique}", SLOW % 0.4, max_concurrency=1)
    await api.put_function(f"fail-{unique}", FAIL)
    await api.put_trigger(trigger, f"slow-{unique}", {"type": "kafka", "topic": topic})
    await api.put_trigger(failing, f"fail-{unique}", {"type": "kafka", "topic": topic},
                          retry={"max_attempts": 1})
    view = await api.ok("GET", f"/v1/triggers/{trigger}")
    assert view["cursor"]["group"].startswith(f"trigger-hub.{trigger}.")

    async def running() -> bool:
        views = await asyncio.gather(*(api.ok("GET", f"/v1/triggers/{t}") for t in (trigger, failing)))
        return all(v["state"] == "running" for v in views)

    await eventually(running)
    await produce(bootstrap, topic, [(None, json.dumps({"n": i}).encode()) for i in range(8)])

    async def lagging() -> Any:
        cursor = (await api.ok("GET", f"/v1/triggers/{trigger}"))["cursor"]
        return cursor if (cursor["lag"] or 0) > 0 else None

    behind = await eventually(lagging, timeout=30, interval=0.05)
    part = behind["partitions"][0]
    assert part["partition"] == 0 and part["end"] <= 8 and part["lag"] == part["end"] - part["committed"] > 0
    assert behind["held_elsewhere"] is False

    async def caught_up() -> Any:
        cursor = (await api.ok("GET", f"/v1/triggers/{trigger}"))["cursor"]
        p = cursor["partitions"]
        return cursor if cursor["lag"] == 0 and p and p[0]["committed"] == p[0]["end"] == 8 else None

    done = await eventually(caught_up, timeout=60)
    assert done["partitions"] == [{"partition": 0, "committed": 8, "end": 8, "lag": 0, "instance": hub.instance_id}]
    assert len(await api.invocations(trigger=trigger)) == 8

    listed = await api.ok("GET", "/v1/triggers", params={"function": f"slow-{unique}"})
    assert [t["cursor"]["lag"] for t in listed["triggers"]] == [0]

    async def dead_lettered() -> Any:
        m = await _metrics(api)
        return m if m.get(("hub_dead_letters_stored", (("trigger", failing),))) == 8 else None

    m = await eventually(dead_lettered, timeout=60)
    assert m[("hub_trigger_lag", (("trigger", trigger),))] == 0


@pytest.mark.integration
async def test_mongodb_cursor_shows_its_resume_time_and_a_small_age(
    api: Api, servers: dict[str, Any], unique: str
) -> None:
    trigger = f"cs-{unique}"
    await api.put_function(f"rec-{unique}", "def handler(event, context):\n    return event['type']\n")
    await api.put_trigger(trigger, f"rec-{unique}", {
        "type": "mongodb", "database": f"app_{unique}", "collection": "things", "operations": ["insert"]})
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(servers["mongo"].url)
    try:
        async def running() -> bool:
            return bool((await api.ok("GET", f"/v1/triggers/{trigger}"))["state"] == "running")

        await eventually(running)
        await client[f"app_{unique}"]["things"].insert_one({"x": 1})
        await api.wait_invocations(1, trigger=trigger)
    finally:
        await client.close()
    cursor = (await api.ok("GET", f"/v1/triggers/{trigger}"))["cursor"]
    assert cursor["resume_token_at"] is not None
    age = dt.datetime.now(dt.timezone.utc) - _time(cursor["resume_token_at"])
    assert dt.timedelta(seconds=-5) < age < dt.timedelta(seconds=60)
    assert 0 <= cursor["age_s"] < 60
    assert cursor["oplog_window_s"] > 0 and cursor["at_risk"] is False and cursor["held_elsewhere"] is False
    m = await _metrics(api)
    assert 0 <= m[("hub_trigger_cursor_age_seconds", (("trigger", trigger),))] < 60


@pytest.mark.integration
async def test_s3_cursor_shows_the_inbox_depth(api: Api, servers: dict[str, Any], unique: str) -> None:
    bucket, trigger = f"depth-{unique}", f"depth-{unique}"
    await asyncio.to_thread(minio_client(servers["rgw"]).make_bucket, bucket)
    await api.put_function(f"slow-{unique}", SLOW % 0.5, max_concurrency=1)
    await api.put_trigger(trigger, f"slow-{unique}", {"type": "s3", "bucket": bucket})
    template = json.loads((DATA / "rgw_put.json").read_text())
    for i in range(4):
        body = json.loads(json.dumps(template))
        record = body["Records"][0]
        record["s3"]["bucket"]["name"] = bucket
        record["s3"]["object"]["key"] = f"in/{i}.csv"
        record["s3"]["object"]["sequencer"] = f"{i + 1:016X}"
        record["eventId"] = f"{unique}-{i}"
        async with api.session.post(api.base + f"/v1/sources/s3/events?token={WEBHOOK_TOKEN}", data=json.dumps(body)) as r:
            assert r.status == 200, await r.text()
            assert (await r.json())["queued"] == 1
    first = (await api.ok("GET", f"/v1/triggers/{trigger}"))["cursor"]
    assert 1 <= first["inbox_depth"] <= 4  # 0.5 s each, one at a time

    async def drained() -> bool:
        return bool((await api.ok("GET", f"/v1/triggers/{trigger}"))["cursor"]["inbox_depth"] == 0)

    await eventually(drained, timeout=60)
    assert len(await api.invocations(trigger=trigger)) == 4
    http = await api.put_trigger(f"url-{unique}", f"slow-{unique}", {"type": "http", "path": f"/d-{unique}"})
    assert http["name"] == f"url-{unique}"
    assert (await api.ok("GET", f"/v1/triggers/url-{unique}"))["cursor"] == {}


# -- metrics ------------------------------------------------------------------------------------
@pytest.mark.integration
async def test_metrics_billed_ms_and_gb_seconds_per_function(api: Api, unique: str) -> None:
    fn = f"bill-{unique}"
    await api.put_function(fn, WORKLOAD, memory_mb=256)
    for i in range(3):
        status, _ = await api.call("POST", f"/v1/functions/{fn}/invoke", {"sleep": 0.05 * i})
        assert status == 200
    status, _ = await api.call("POST", f"/v1/functions/{fn}/invoke", {"kind": "fail"})
    assert status == 200
    records = await api.invocations(function=fn)
    assert len(records) == 4
    m = await _metrics(api)
    label = (("function", fn),)
    assert m[("hub_billed_ms_total", label)] == sum(r["billed_ms"] for r in records)
    assert math.isclose(m[("hub_gb_seconds_total", label)], sum(r["billed_ms"] / 1000 * 256 / 1024 for r in records))
    assert m[("hub_invocations_total", (("function", fn), ("status", "failed")))] == 1
    assert ("hub_inbox_depth", ()) in m
    assert any(name == "hub_workers" for name, _ in m)


# A known sleep at a known memory size: the expected figures come from these numbers and the
# billing rule, not from the hub's records. The rule (hub/sandbox/outcome.py): billed_ms =
# max(1, ceil(duration_ms)), the duration measured by the pool around the whole call, so never
# shorter than the sleep; GB-s = memory_mb / 1024 x billed_ms / 1000 (hub/delivery/usage.py).
KNOWN_SLEEP_S = 1.0
KNOWN_MEMORY_MB = 512
KNOWN_RUNS = 3
OVERSHOOT_MS = 250  # what a sleep and the frame's way back may add on a loaded machine; never less


@pytest.mark.integration
async def test_gb_seconds_of_a_known_sleep_in_usage_and_metrics(api: Api, unique: str) -> None:
    fn = f"gbs-{unique}"
    await api.put_function(fn, SLOW % KNOWN_SLEEP_S, memory_mb=KNOWN_MEMORY_MB, timeout_s=10)
    for _ in range(KNOWN_RUNS):
        out = await api.ok("POST", f"/v1/functions/{fn}/invoke", {})
        assert out["status"] == "succeeded", out
    least_ms = KNOWN_RUNS * math.ceil(KNOWN_SLEEP_S * 1000)  # 3000 ms
    most_ms = least_ms + KNOWN_RUNS * OVERSHOOT_MS
    gb = KNOWN_MEMORY_MB / 1024  # 0.5 GB
    least_gbs, most_gbs = gb * least_ms / 1000, gb * most_ms / 1000  # 1.5 .. 1.875 GB-s

    async def landed() -> Any:
        body = await api.ok("GET", "/v1/usage", params={"function": fn})
        return body["totals"] if body["totals"]["invocations"] == KNOWN_RUNS else None

    totals = await eventually(landed)
    assert least_ms <= totals["billed_ms"] <= most_ms, totals
    assert least_gbs <= totals["gb_seconds"] <= most_gbs, totals
    # whatever the overshoot was, GB-s is exactly the billed seconds at half a GB
    assert math.isclose(totals["gb_seconds"], totals["billed_ms"] / 1000 * gb, rel_tol=1e-12)

    label = (("function", fn),)
    m = await _metrics(api)
    assert m[("hub_billed_ms_total", label)] == totals["billed_ms"]
    assert least_gbs <= m[("hub_gb_seconds_total", label)] <= most_gbs, m[("hub_gb_seconds_total", label)]
    assert math.isclose(m[("hub_gb_seconds_total", label)], totals["gb_seconds"], rel_tol=1e-9)


def test_the_grafana_dashboard_uses_only_metrics_the_hub_exports() -> None:
    from hub.metrics import Metrics

    board = json.loads((Path(__file__).parent.parent / "grafana" / "trigger-hub.json").read_text())
    assert board["schemaVersion"] >= 36 and board["uid"] and board["title"]
    assert any(v["type"] == "datasource" and v["query"] == "prometheus" for v in board["templating"]["list"])
    suffixes = {"counter": ["_total"], "gauge": [""], "histogram": ["_bucket", "_sum", "_count"]}
    exported = {f.name + s for f in Metrics().registry.collect() for s in suffixes.get(f.type, [""])}
    used = set()
    for panel in board["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            used.update(re.findall(r"\bhub_[a-z_]+", target["expr"]))
    assert used and used <= exported, used - exported
    titles = " ".join(p["title"] for p in board["panels"]).lower()
    for topic in ("status", "p50", "billed", "gb-seconds", "lag", "cursor age", "inbox", "dead letters", "workers"):
        assert topic in titles, topic


@pytest.mark.integration
async def test_usage_of_several_instances_adds_up(servers: dict[str, Any], unique: str) -> None:
    """Three instances fold records of one function and hour at the same moment, several rounds:
    each writes buckets of its own (no upsert race between them, which could lose a write), and
    the query adds them up to exactly what was recorded."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(servers["mongo"].url, tz_aware=True)
    db = client[f"usage_{unique}"]
    meters = [Usage(db, Metrics(), instance=f"i{n}") for n in range(3)]
    started = dt.datetime.now(dt.timezone.utc)
    try:
        await meters[0].init()
        for round_ in range(20):
            for n, meter in enumerate(meters):
                meter.add([{"function": "f", "version": "v1", "started_at": started, "status": "succeeded",
                            "billed_ms": 2, "memory_mb": 128, "duration_ms": 1.5, "cold_start": round_ == 0}
                           for _ in range(n + 1)])
            await asyncio.gather(*(m.flush() for m in meters))
        body = await meters[0].query(function="f", version=None, start=started - dt.timedelta(hours=1),
                                     end=started + dt.timedelta(hours=1), granularity="hour", now=started)
        totals = body["totals"]
        assert totals["invocations"] == 20 * (1 + 2 + 3) and totals["billed_ms"] == 2 * 120, totals
        assert totals["cold_starts"] == 6 and totals["gb_seconds"] == 240 / 1000 * 128 / 1024
        assert await db.usage.count_documents({}) == 3  # one bucket per instance
    finally:
        await client.drop_database(f"usage_{unique}")
        await client.close()
