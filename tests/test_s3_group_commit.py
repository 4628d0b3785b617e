"""Webhook POSTs that arrive together are claimed and queued together (hub.intake.group_commit),
and the instance that queues an item runs it without waking the others (issue 21), on real
MongoDB and a real hub."""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import json
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from hub.app import Hub
from tests.hubfixtures import WEBHOOK_TOKEN, Api, eventually, make_settings
from tests.test_sources import minio_client
from tests.test_webhook import DATA

pytestmark = pytest.mark.integration

BATCH = """
def handler(event, context):
    return {"subjects": [r["subject"] for r in event["records"]]}
"""


def _notes(bucket: str, n: int) -> list[bytes]:
    """``n`` RGW notifications of different objects, each one POST body."""
    template = json.loads((DATA / "rgw_put.json").read_text())["Records"][0]
    out = []
    for i in range(n):
        rec = copy.deepcopy(template)
        rec["eventTime"] = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        rec["s3"]["bucket"]["name"] = bucket
        rec["s3"]["bucket"]["arn"] = f"arn:aws:s3:::{bucket}"
        rec["s3"]["object"]["key"] = f"gc/obj-{i:04d}"
        rec["s3"]["object"]["eTag"] = uuid.uuid4().hex
        rec["s3"]["object"]["sequencer"] = f"{0x2B5D4366F8C1A917 + i:016X}"
        rec["eventId"] = f"gc-{uuid.uuid4().hex}"
        out.append(json.dumps({"Records": [rec]}).encode())
    return out


async def _post_all(http: aiohttp.ClientSession, base: str, bodies: list[bytes]) -> list[tuple[int, Any]]:
    url = f"{base}/v1/sources/s3/events?token={WEBHOOK_TOKEN}"

    async def one(body: bytes) -> tuple[int, Any]:
        async with http.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
            return r.status, await r.json(content_type=None)

    return list(await asyncio.gather(*(one(b) for b in bodies)))


def _batches(hub: Hub) -> int:
    return sum(g.batches for g in hub.s3_reconciler._admits.values())


async def test_concurrent_notifications_are_claimed_together_and_each_runs_once(
    api: Api, hub: Hub, http: aiohttp.ClientSession, servers: dict[str, Any], unique: str
) -> None:
    """40 POSTs at once, 10 of them second copies: every POST is answered only after its own
    batch, the copies are told "duplicate" whichever batch they landed in, every object runs
    exactly once, and the claims are confirmed (no stored copy left pending)."""
    assert hub.s3_reconciler.enabled, "the scan's dedup must be on for this test"
    bucket = f"gc-{unique}"
    await asyncio.to_thread(minio_client(servers["rgw"]).make_bucket, bucket)
    await api.put_function(f"rec-{unique}", BATCH)
    await api.put_trigger(f"gc-{unique}", f"rec-{unique}", {"type": "s3", "bucket": bucket},
                          batch={"size": 10, "window_ms": 0})
    bodies = _notes(bucket, 30)
    before = _batches(hub)
    replies = await _post_all(http, api.base, bodies + bodies[:10])
    assert [status for status, _ in replies] == [200] * 40, replies
    assert sum(r["queued"] for _, r in replies) == 30
    assert sum(r["duplicates"] for _, r in replies) == 10
    assert _batches(hub) - before < 40, "concurrent POSTs were not claimed together"

    await api.wait_invocations(1, trigger=f"gc-{unique}")

    async def ran() -> list[str] | None:
        docs = await hub.store.db.invocations.find({"trigger": f"gc-{unique}", "status": "succeeded"},
                                                   {"event_ids": 1, "event_id": 1}).to_list(None)
        ids = [i for d in docs for i in (d.get("event_ids") or [d.get("event_id")])]
        return ids if len(ids) >= 30 else None

    ids = await eventually(ran, timeout=60)
    assert len(ids) == len(set(ids)) == 30

    async def confirmed() -> bool:
        return await hub.store.db.s3_seen.count_documents({"bucket": bucket, "obs.state": "pending"}) == 0

    await eventually(confirmed, timeout=10)
    assert await hub.store.db.s3_seen.count_documents({"bucket": bucket}) == 30


async def test_the_queueing_instance_runs_its_items_and_wakes_no_other(
    servers: dict[str, Any], tmp_path: Path, http: aiohttp.ClientSession, unique: str
) -> None:
    """Two instances on one database. Notifications POSTed to A are inserted already claimed by
    A and run there: neither A nor B needs a claim query for them, and B's claimer is not woken
    by the inserts (its change stream passes on pending inserts only)."""
    db = f"gc_{unique}"
    shared = "http://127.0.0.1:9"  # a proxy's address (nothing is pushed to it here)
    a = Hub(make_settings(servers, tmp_path / "a", db, instance_id=f"a-{unique}", public_url=shared))
    b = Hub(make_settings(servers, tmp_path / "b", db, instance_id=f"b-{unique}", public_url=shared))
    await a.start()
    await b.start()
    claims = {"a": 0, "b": 0}

    def counting(name: str, real: Any) -> Any:
        async def claim(*args: Any, **kw: Any) -> list[dict[str, Any]]:
            items = await real(*args, **kw)
            claims[name] += len(items)
            return list(items)
        return claim

    a.store.inbox_claim = counting("a", a.store.inbox_claim)  # type: ignore[method-assign]
    b.store.inbox_claim = counting("b", b.store.inbox_claim)  # type: ignore[method-assign]
    try:
        api = Api(http, a.url)
        bucket = f"gc2-{unique}"
        await asyncio.to_thread(minio_client(servers["rgw"]).make_bucket, bucket)
        await api.put_function(f"rec-{unique}", BATCH)
        await api.put_trigger(f"gc2-{unique}", f"rec-{unique}", {"type": "s3", "bucket": bucket},
                              batch={"size": 10, "window_ms": 0})
        replies = await _post_all(http, a.url, _notes(bucket, 20))
        assert [status for status, _ in replies] == [200] * 20

        async def ran() -> list[dict[str, Any]] | None:
            docs = await a.store.db.invocations.find({"trigger": f"gc2-{unique}"}).to_list(None)
            n = sum(len(d.get("event_ids") or [d.get("event_id")]) for d in docs)
            return docs if n >= 20 else None

        docs = await eventually(ran, timeout=60)
        assert {d["instance"] for d in docs} == {a.instance_id}
        assert {d["status"] for d in docs} == {"succeeded"}
        await eventually(lambda: _inbox_empty(a), timeout=10)
        assert claims == {"a": 0, "b": 0}, "items queued by A were claimed through a query"
    finally:
        await a.stop()
        await b.stop()


async def _inbox_empty(hub: Hub) -> bool:
    return await hub.store.inbox_depth() == 0


async def test_an_sns_message_hiding_its_nesting_in_escapes_is_still_refused(api: Api) -> None:
    """The webhook skips the stored-depth walk for bodies with too few brackets to nest that
    deep, but an SNS Message can spell its brackets as \\u escapes: those bodies are walked."""
    envelope = json.loads((DATA / "aws_sns_notification.json").read_text())
    inner = json.loads(envelope["Message"])
    deep: Any = 1
    for _ in range(95):
        deep = {"d": deep}
    inner["Records"][0]["deep"] = deep
    message = json.dumps(json.dumps(inner))  # the Message as a JSON string literal
    message = message.replace("{", "\\u007b").replace("[", "\\u005b")
    body = json.dumps({**envelope, "Message": "@@"}).replace('"@@"', message).encode()
    assert body.count(b"{") + body.count(b"[") < 10
    ((status, reply),) = await _post_all(api.session, api.base, [body])
    assert status == 400, reply
    assert "more than MongoDB can store" in reply["error"]
