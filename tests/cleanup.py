"""Pytest plugin: a test on the session hub leaves no trigger behind.

Every test that uses the shared ``hub`` (directly or through ``api``) gets its triggers deleted
when it ends: the hub then closes their Kafka consumers, change streams and schedules, and stops
scanning their buckets. What lives on the servers is removed too: the Kafka consumer groups of
the deleted triggers, and the bucket notification (and its RGW topic) of a bucket no trigger
watches any more. So the session hub does not collect hundreds of live subscriptions over a run,
and no test sees another's leftovers. Functions stay (they hold no subscription; their idle
workers are reaped after ``worker_idle_ttl_s``).

Tests that build their own hub stop it themselves; they are not touched here.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import structlog

log = structlog.get_logger("tests.cleanup")

NOTIFICATION_ID = "trigger-hub"  # connectors/s3.py: the hub's entry in a bucket's configuration


@pytest.fixture(autouse=True)
async def _triggers_cleaned_up(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    if "hub" not in request.fixturenames:
        yield
        return
    hub = request.getfixturevalue("hub")
    before = {t["_id"] for t in await hub.store.list_triggers()}
    yield
    after = await hub.store.list_triggers()
    created = [t for t in after if t["_id"] not in before]
    if not created:
        return
    for trigger in created:
        await hub.triggers.delete(trigger["_id"])
    left = {(t.get("source") or {}).get("bucket") for t in after if t["_id"] in before}
    buckets: set[str] = {b for t in created if (t.get("source") or {}).get("type") == "s3"
                         and (b := (t.get("source") or {}).get("bucket")) is not None} - left
    names = [t["_id"] for t in created if (t.get("source") or {}).get("type") == "kafka"]
    if buckets and hub.settings.s3_endpoint and hub.settings.s3_flavor == "rgw":
        await asyncio.to_thread(_forget_buckets, hub.settings, sorted(buckets))
    if names:
        await _delete_groups(hub.settings.kafka_bootstrap, names)


def _forget_buckets(settings: Any, buckets: list[str]) -> None:
    """Take the hub's notification off each bucket and delete its RGW topic (a bucket that is
    gone already is fine)."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError

    keys = dict(endpoint_url=settings.s3_endpoint, aws_access_key_id=settings.s3_access_key,
                aws_secret_access_key=settings.s3_secret_key, region_name=settings.s3_region)
    s3 = boto3.client("s3", config=Config(s3={"addressing_style": "path"}), **keys)
    sns = boto3.client("sns", **keys)
    for bucket in buckets:
        try:
            current = s3.get_bucket_notification_configuration(Bucket=bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchBucket", "404"):
                continue
            raise
        configs = [c for c in current.get("TopicConfigurations", []) if c.get("Id") != NOTIFICATION_ID]
        if configs:
            s3.put_bucket_notification_configuration(
                Bucket=bucket, NotificationConfiguration={"TopicConfigurations": configs})
        else:  # RGW refuses an empty configuration; it removes them all with DELETE ?notification
            _rgw_delete_notifications(settings, bucket)
    topics = [t["TopicArn"] for t in sns.list_topics().get("Topics", [])]
    for bucket in buckets:
        for arn in topics:
            if arn.rsplit(":", 1)[-1] == f"trigger-hub-{bucket}":
                sns.delete_topic(TopicArn=arn)


def _rgw_delete_notifications(settings: Any, bucket: str) -> None:
    """``DELETE /BUCKET?notification`` (an RGW extension boto3 has no call for), SigV4-signed."""
    import urllib.request

    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    request = AWSRequest(method="DELETE", url=f"{settings.s3_endpoint.rstrip('/')}/{bucket}?notification")
    S3SigV4Auth(Credentials(settings.s3_access_key, settings.s3_secret_key), "s3",
                settings.s3_region).add_auth(request)
    prepared = request.prepare()
    with urllib.request.urlopen(urllib.request.Request(prepared.url, method="DELETE",
                                                       headers=dict(prepared.headers)), timeout=30) as r:
        assert r.status in (200, 204), r.status


async def _delete_groups(bootstrap: str, triggers: list[str]) -> None:
    """Delete the consumer groups of these triggers (``trigger-hub.NAME.…``, see
    hub.catalog.triggers.kafka_group_id), now that their consumers are closed. aiokafka's admin
    client has no call for it: a DeleteGroups request goes to each group's coordinator."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.protocol.admin import DeleteGroupsRequest

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        groups = [g[0] if isinstance(g, tuple) else g for g in await admin.list_consumer_groups()]
        mine = [g for g in groups for name in triggers if g.startswith(f"trigger-hub.{name}.")]
        for group in mine:
            node = await admin.find_coordinator(group)
            response = await admin._send_request_to_node(node, DeleteGroupsRequest([group]))
            failed = [(g, code) for g, code in response.results if code not in (0, GROUP_ID_NOT_FOUND)]
            assert not failed, f"could not delete consumer groups: {failed}"
    finally:
        await admin.close()


GROUP_ID_NOT_FOUND = 69
