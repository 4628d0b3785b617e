"""S3 source, webhook transport: point a bucket's notifications at the hub.

Events arrive at ``POST /v1/sources/s3/events`` (parsed by ``connectors.s3_records``). What this
module does is the server side set-up, so users never configure the S3 server by hand:

- Ceph RGW: an SNS-style topic whose push-endpoint is the hub's webhook (token in the URL, as RGW
  sends no Authorization header) plus a bucket notification on that topic.
- MinIO: a bucket notification to the webhook target the MinIO server was started with
  (``MINIO_NOTIFY_WEBHOOK_*``; see compose.yaml), addressed by its ARN.

One notification per bucket covers created and removed objects; the hub itself matches events,
prefixes and suffixes per trigger, so triggers can change without touching the server again.
The blocking clients (boto3, minio) run in threads.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

NOTIFICATION_ID = "trigger-hub"
ALL_EVENTS = ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]


class S3SetupError(Exception):
    """The bucket could not be pointed at the hub; the message says why."""


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    region: str
    flavor: str  # "rgw" or "minio"
    minio_webhook_arn: str = "arn:minio:sqs::HUB:webhook"
    persistent: bool = True


async def ensure_bucket_notifications(server: S3Server, bucket: str, push_url: str) -> dict[str, Any]:
    """Make ``bucket`` send its object events to ``push_url``; returns what was configured."""
    if server.flavor == "minio":
        return await asyncio.to_thread(_minio_notify, server, bucket)
    return await asyncio.to_thread(_rgw_notify, server, bucket, push_url)


def _boto(server: S3Server, service: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        service,
        endpoint_url=server.endpoint,
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        region_name=server.region,
        config=Config(retries={"max_attempts": 2}, connect_timeout=5, read_timeout=30),
    )


def _rgw_notify(server: S3Server, bucket: str, push_url: str) -> dict[str, Any]:
    from botocore.exceptions import BotoCoreError, ClientError

    s3 = _boto(server, "s3")
    sns = _boto(server, "sns")
    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("404", "NoSuchBucket", "NotFound"):
            raise S3SetupError(f"bucket {bucket!r} does not exist on {server.endpoint}") from None
        raise S3SetupError(f"cannot reach bucket {bucket!r} on {server.endpoint}: {exc}") from None
    except BotoCoreError as exc:
        raise S3SetupError(f"cannot reach the S3 server at {server.endpoint}: {exc}") from None
    try:
        topic = sns.create_topic(
            Name=f"trigger-hub-{bucket}",
            Attributes={"push-endpoint": push_url, "persistent": "true" if server.persistent else "false"},
        )
        arn = topic["TopicArn"]
        current = s3.get_bucket_notification_configuration(Bucket=bucket)
        configs = [c for c in current.get("TopicConfigurations", []) if c.get("Id") != NOTIFICATION_ID]
        configs.append({"Id": NOTIFICATION_ID, "TopicArn": arn, "Events": ALL_EVENTS})
        s3.put_bucket_notification_configuration(
            Bucket=bucket, NotificationConfiguration={"TopicConfigurations": configs}
        )
    except (ClientError, BotoCoreError) as exc:
        raise S3SetupError(f"could not set up notifications for bucket {bucket!r}: {exc}") from None
    return {"server": "rgw", "topic_arn": arn, "events": ALL_EVENTS, "persistent": server.persistent}


def _minio_notify(server: S3Server, bucket: str) -> dict[str, Any]:
    from urllib.parse import urlparse

    from minio import Minio
    from minio.error import S3Error
    from minio.notificationconfig import NotificationConfig, QueueConfig

    url = urlparse(server.endpoint)
    client = Minio(
        url.netloc, access_key=server.access_key, secret_key=server.secret_key,
        secure=url.scheme == "https", region=server.region,
    )
    try:
        if not client.bucket_exists(bucket):
            raise S3SetupError(f"bucket {bucket!r} does not exist on {server.endpoint}")
        current = client.get_bucket_notification(bucket)
        queues = [q for q in current.queue_config_list if q.config_id != NOTIFICATION_ID]
        queues.append(QueueConfig(ALL_EVENTS, config_id=NOTIFICATION_ID, queue=server.minio_webhook_arn))
        client.set_bucket_notification(
            bucket,
            NotificationConfig(
                cloud_func_config_list=current.cloud_func_config_list,
                queue_config_list=queues,
                topic_config_list=current.topic_config_list,
            ),
        )
    except S3Error as exc:
        raise S3SetupError(f"could not set up notifications for bucket {bucket!r}: {exc}") from None
    return {"server": "minio", "arn": server.minio_webhook_arn, "events": ALL_EVENTS}
