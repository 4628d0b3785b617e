"""Settings from ``HUB_*`` environment variables.

One object, read once at start-up and passed down; nothing else reads the environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HUB_", extra="ignore")

    mongo_url: str = "mongodb://127.0.0.1:27017/?replicaSet=rs0"
    mongo_db: str = "trigger_hub"
    kafka_bootstrap: str = "127.0.0.1:9092"
    # Tansu and tests want short sessions; Apache Kafka is happy with the defaults too.
    kafka_session_timeout_ms: int = 10000
    kafka_heartbeat_interval_ms: int = 1000
    s3_endpoint: str = ""  # http://host:port; empty disables automatic bucket-notification setup
    s3_access_key: str = ""
    s3_secret_key: str = ""
    s3_region: str = "us-east-1"
    # "rgw" configures Ceph RGW topics; "minio" points the bucket at a pre-configured webhook ARN.
    s3_flavor: Literal["rgw", "minio"] = "rgw"
    s3_minio_webhook_arn: str = "arn:minio:sqs::HUB:webhook"
    # RGW persistent topics queue and retry deliveries (at-least-once) at the cost of ~seconds of
    # latency; non-persistent ones push during the PUT and drop the event if the hub is down.
    s3_rgw_persistent: bool = True
    # The URL the S3 server uses to reach the hub (webhook push endpoint); defaults to the listen address.
    public_url: str = ""
    api_token: str = "dev-token"
    webhook_token: str = "dev-webhook-token"
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    sandbox: Literal["auto", "bwrap", "process"] = "auto"
    log_format: Literal["console", "json"] = "console"
    log_level: str = "info"
    data_dir: Path = Path(".hub/data")
    # Worker pool
    worker_idle_ttl_s: float = 60.0
    max_queue_per_function: int = 1000
    # Inbox (webhook + async invoke) processing
    inbox_poll_interval_s: float = 0.5
    inbox_lease_s: float = 300.0
    inbox_concurrency: int = 16
    # How often the trigger set is re-read from MongoDB (other instances' changes).
    trigger_sync_interval_s: float = 2.0
    # A change stream is read by one instance at a time, under a lease renewed on every trigger
    # sync; another instance takes over this long after its holder stopped renewing.
    lease_ttl_s: float = 15.0
    completion_ttl_s: float = 14 * 86400
    instance_id: str = Field(default="")

    def base_url(self) -> str:
        return self.public_url or f"http://{self.http_host}:{self.http_port}"
