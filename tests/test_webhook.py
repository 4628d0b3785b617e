"""The S3 webhook receiver: MinIO, Ceph RGW and AWS-via-SNS bodies, tokens, malformed input."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from connectors.s3_records import parse_notification
from hub.app import Hub
from tests.hubfixtures import WEBHOOK_TOKEN, Api
from tests.test_sources import RECORD, minio_client

pytestmark = pytest.mark.integration

DATA = Path(__file__).parent / "data" / "s3"


def _retarget(body: dict[str, Any], bucket: str) -> dict[str, Any]:
    """A sample body with its records pointed at our bucket (SNS keeps them in a JSON string)."""
    if "Message" in body:
        inner = json.loads(body["Message"])
        body = {**body, "Message": json.dumps(_retarget(inner, bucket))}
        return body
    for rec in body.get("Records", []):
        rec["s3"]["bucket"]["name"] = bucket
        rec["s3"]["bucket"]["arn"] = f"arn:aws:s3:::{bucket}"
    return body


async def _post(api: Api, body: Any, *, header: str | None = None, query: str | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {header}"} if header else {}
    url = api.base + "/v1/sources/s3/events" + (f"?token={query}" if query else "")
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    async with api.session.post(url, data=data, headers=headers) as r:
        return r.status, await r.json(content_type=None)


async def test_webhook_all_formats_run_the_function_once(
    api: Api, hub: Hub, servers: dict[str, Any], unique: str
) -> None:
    bucket = f"hook-{unique}"
    await asyncio.to_thread(minio_client(servers["rgw"]).make_bucket, bucket)
    await api.put_function(f"rec-{unique}", RECORD)
    await api.put_trigger(f"hook-{unique}", f"rec-{unique}", {
        "type": "s3", "bucket": bucket, "events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]})
    bodies = {
        "minio": _retarget(json.loads((DATA / "minio_put.json").read_text()), bucket),
        "rgw": _retarget(json.loads((DATA / "rgw_put.json").read_text()), bucket),
        "sns": _retarget(json.loads((DATA / "aws_sns_notification.json").read_text()), bucket),
    }
    expected = {name: parse_notification(json.dumps(b).encode())[0] for name, b in bodies.items()}
    assert (await _post(api, bodies["minio"], header=WEBHOOK_TOKEN))[0] == 200
    assert (await _post(api, bodies["rgw"], query=WEBHOOK_TOKEN))[0] == 200
    assert (await _post(api, bodies["sns"], header=WEBHOOK_TOKEN))[0] == 200
    # a redelivered notification is recognised by its stable id and does not run again
    assert (await _post(api, bodies["minio"], query=WEBHOOK_TOKEN))[0] == 200

    invs = await api.wait_invocations(3, trigger=f"hook-{unique}")
    await hub.inbox.idle()
    invs = await api.invocations(trigger=f"hook-{unique}")
    assert sorted(i["event_id"] for i in invs) == sorted(e.id for e in expected.values())
    by_id = {i["event_id"]: i["result"] for i in invs}
    minio_run = by_id[expected["minio"].id]
    assert minio_run["type"] == "s3:ObjectCreated:Put" and " " in minio_run["subject"]
    assert by_id[expected["rgw"].id]["type"] == "s3:ObjectCreated:Put"
    assert by_id[expected["sns"].id]["type"].startswith("s3:ObjectRemoved:")


async def test_webhook_rejects_bad_token_and_malformed_bodies(api: Api, hub: Hub, unique: str) -> None:
    body = json.loads((DATA / "rgw_put.json").read_text())
    for kwargs in ({}, {"header": "wrong"}, {"query": "wrong"}, {"header": "test-api-token"}):
        status, reply = await _post(api, body, **kwargs)
        assert status == 401, kwargs
        assert "webhook token" in reply["error"]
    before = await hub.store.inbox_depth()
    for bad in (b"{not json", b"[]", b'{"Records": "nope"}', b'{"Records": [{"eventName": "x"}]}', b""):
        status, reply = await _post(api, bad, header=WEBHOOK_TOKEN)
        assert status == 400, (bad, reply)
        assert "not an S3 notification" in reply["error"]
    assert await hub.store.inbox_depth() <= before


async def test_sns_subscription_confirmation_only_follows_aws_urls(api: Api) -> None:
    body = json.loads((DATA / "aws_sns_subscription_confirmation.json").read_text())
    # a SubscribeURL pointing anywhere but AWS SNS (here: the hub itself) is not fetched
    body["SubscribeURL"] = api.base + "/v1/functions"
    status, reply = await _post(api, body, header=WEBHOOK_TOKEN)
    assert status == 200 and reply["status"].startswith("ignored")


async def test_webhook_reads_what_only_the_stdlib_reads_and_refuses_what_it_refuses(api: Api, unique: str) -> None:
    """The body is parsed by orjson when it reads it as the stdlib would; an integer beyond 64
    bits (orjson: a float), a lone surrogate or a BOM go to the stdlib's parser as before, and
    NaN or nesting past the limit are refused as before."""
    body = json.loads((DATA / "rgw_put.json").read_text())
    body["Records"][0]["s3"]["bucket"]["name"] = f"nobody-{unique}"
    text = json.dumps(body)
    for odd in (text.replace('"eventVersion"', '"big": 123456789012345678901234567890, "eventVersion"', 1),
                text.replace('"eventVersion"', '"lone": "\\ud800", "eventVersion"', 1),
                "\ufeff" + text):
        status, reply = await _post(api, odd.encode(), header=WEBHOOK_TOKEN)
        assert status == 200 and reply["received"] == 1, (odd[:60], reply)
    nan = text.replace('"eventVersion"', '"x": NaN, "eventVersion"', 1)
    deep = text.replace('"eventVersion"', '"x": ' + "[" * 70 + "]" * 70 + ', "eventVersion"', 1)
    for bad, words in ((nan, "not valid JSON"), (deep, "nested too deeply")):
        status, reply = await _post(api, bad.encode(), header=WEBHOOK_TOKEN)
        assert status == 400 and words in reply["error"], reply
