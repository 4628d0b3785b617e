"""Settings from ``HUB_*`` environment variables.

One object, read once at start-up and passed down; nothing else reads the environment.

No token is built in: an unset ``HUB_API_TOKEN`` or ``HUB_WEBHOOK_TOKEN`` is generated once into
the data dir (mode 0600) and read back on later starts, and an empty or short one is refused
(:meth:`Settings.ensure_tokens`, called by the hub before it listens).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HUB_", extra="ignore")

    mongo_url: str = "mongodb://127.0.0.1:27017/?replicaSet=rs0"
    mongo_db: str = "trigger_hub"
    kafka_bootstrap: str = "127.0.0.1:9092"
    # Tansu and tests want short sessions; Apache Kafka is happy with the defaults too.
    kafka_session_timeout_ms: int = 10000
    kafka_heartbeat_interval_ms: int = 1000
    # How long the broker may hold an empty fetch while records flow (latency: Tansu answers a
    # waiting fetch only when this runs out) and once a topic has been quiet for
    # KAFKA_IDLE_AFTER_S (idle cost: about 1000 / this fetches per second per trigger).
    kafka_fetch_max_wait_ms: int = 10
    kafka_idle_fetch_max_wait_ms: int = 500
    kafka_idle_after_s: float = 5.0
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
    # What functions with event_format "aws" are told about where they run (ARNs, awsRegion,
    # AWS_REGION) and the region SigV4 requests to the Lambda API are signed for; the account is a
    # stable placeholder: no AWS account is behind it (hub.spec.aws_events).
    aws_region: str = Field(default="us-east-1", pattern=r"^[a-z]{2}(-[a-z0-9]+)+-\d+$")
    aws_account: str = Field(default="000000000000", pattern=r"^\d{12}$")
    # None = not set: generated into DATA_DIR (see ensure_tokens); "" or short = refused at start.
    api_token: str | None = None
    webhook_token: str | None = None
    # Secrets (hub.catalog.secrets): base64 of 32 bytes for AES-256-GCM; empty: a key generated
    # into DATA_DIR/secrets.key (0600). Several instances on one database need the same key.
    secrets_key: str = Field(default="", repr=False)
    # /metrics answers without a token only when this is true (else it needs a read token).
    metrics_public: bool = False
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    # Function URLs (/fn/...) have a listener of their own, so no function's answer ever shares
    # an origin with the console or the admin API. Empty host: the admin listener's host.
    fn_host: str = ""
    fn_port: int = 8081
    # The base users call function URLs at, where a proxy stands in front (shown in a trigger's url).
    public_fn_url: str = ""
    # Slow or greedy clients: a request head must arrive within this long of the connection (or
    # of the previous answer on a kept-alive one), and a body within HTTP_BODY_TIMEOUT_S.
    http_head_timeout_s: float = Field(default=15.0, gt=0)
    http_body_timeout_s: float = Field(default=30.0, gt=0)
    # Request bodies of public routes (function URLs, the S3 webhook) buffered at once, in bytes;
    # past it a request gets 503 with Retry-After instead of more memory.
    public_body_budget: int = Field(default=64 * 1024 * 1024, gt=0)
    sandbox: Literal["auto", "bwrap", "process"] = "auto"
    log_format: Literal["console", "json"] = "console"
    log_level: str = "info"
    # "failures": a failed, timed-out or dead-lettered invocation is a log line, a success is only
    # its record (GET /v1/invocations); "all": every success is an info line too (like Lambda's
    # REPORT), at a log line's CPU per invocation.
    log_invocations: Literal["failures", "all"] = "failures"
    data_dir: Path = Path(".hub/data")
    # Worker pool
    worker_idle_ttl_s: float = 60.0
    # Sandboxes started ahead of any function (hub.sandbox.prewarm): a function's first worker
    # takes one instead of starting bwrap and the interpreter. Each parked one holds an idle
    # worker's memory (~12 MB RSS, ~3.5 MB PSS) and no CPU; once a function with network ran,
    # one more waits in a network namespace (+ its pasta, ~30 MB). 0: every worker starts on demand.
    worker_spares: int = Field(default=2, ge=0, le=64)
    max_queue_per_function: int = 1000
    # Inbox (webhook + async invoke) processing
    # New and handed-back items wake every instance's inbox through a change stream; the poll
    # finds retries coming due and expired leases (and everything while the stream is down).
    inbox_poll_interval_s: float = 2.0
    # Claims are renewed every third of this while held; another instance takes over a dead
    # instance's items after it. (A restarted instance takes its own back at once.)
    inbox_lease_s: float = 15.0
    inbox_concurrency: int = 16  # chunks of one trigger (or one function's async invokes) at once
    # A ceiling on the items one instance holds at once; it claims only what can start soon:
    # 2 x inbox_concurrency, or two of the largest s3 batch.
    inbox_capacity: int = 1000
    # On SIGTERM: how long running invocations may finish before they are cut off (and their
    # events come back, unacked).
    shutdown_grace_s: float = 10.0
    # How often the trigger set is re-read from MongoDB (other instances' changes).
    trigger_sync_interval_s: float = 2.0
    # A change stream is read by one instance at a time, under a lease renewed on every trigger
    # sync; another instance takes over this long after its holder stopped renewing.
    lease_ttl_s: float = 15.0
    # Every instance writes a heartbeat this often, on a task of its own.
    heartbeat_interval_s: float = Field(default=2.0, gt=0)
    # 0: a killed instance's change-stream leases and inbox claims move when they run out
    # (LEASE_TTL_S, INBOX_LEASE_S). > 0: an instance whose heartbeat another one has watched
    # stand still this long (while that one's own beats went through) is taken for dead: its
    # leases expire and its inbox claims are handed back at once. An instance that had only
    # stalled that long can no longer move a cursor or complete an item (the fences), but what
    # it was running runs again elsewhere (and may then succeed twice, as after a stall past the
    # leases). Keep it above 2 heartbeat intervals plus the longest stall you expect (event
    # loop, MongoDB failover), e.g. 3 with a 1 s beat (bench/README.md, bench_rollout.py).
    takeover_after_s: float = Field(default=0.0, ge=0)
    # Invocation records expire this long after they finished (a TTL index). They are also the
    # success markers of the duplicate check: an event redelivered after that runs again.
    invocation_retention_s: float = Field(default=14 * 86400, gt=0)
    # The old name of invocation_retention_s (HUB_COMPLETION_TTL_S), still read: used when
    # HUB_INVOCATION_RETENTION_S is not set; afterwards it always equals it.
    completion_ttl_s: float | None = Field(default=None, gt=0)
    # Usage buckets (hub.delivery.usage) outlive the records; 0 keeps them for ever, else they expire this
    # long after their hour (applies to buckets written from then on).
    usage_retention_s: float = Field(default=0.0, ge=0)
    # S3 reconciling scan (hub/intake/s3_reconcile.py): lists watched buckets and runs uploads whose
    # notifications were late or lost; 0 disables it (and the webhook's dedup against it).
    s3_reconcile_interval_s: float = Field(default=30.0, ge=0)
    s3_reconcile_grace_s: float = Field(default=15.0, ge=0)  # left to the notification this long
    s3_reconcile_max_keys: int = Field(default=10000, ge=1)  # keys listed per bucket per pass
    s3_reconcile_slack_s: float = Field(default=2.0, ge=0)  # notification eventTime vs LastModified
    s3_seen_ttl_s: float = Field(default=7 * 86400, gt=0)  # how long observed changes are remembered
    # Empty: a stable id kept in DATA_DIR/instance-id, so a restarted hub takes back its own
    # leases and inbox claims at once. Give each instance on one host its own data dir (or id).
    instance_id: str = Field(default="")
    # Tests only: "after_record" or "after_dead_letter" makes the hub exit (as kill -9 would)
    # the first time an outcome is durable and not yet acked (see hub.delivery.dispatch).
    test_crash_point: Literal["", "after_record", "after_dead_letter"] = ""
    # A trace UI's page for one trace, e.g. http://jaeger:16686/trace/{trace_id}: the console links
    # an invocation's trace id there (GET /v1/invocations/ID answers it as trace_url). Empty: no link.
    trace_url_template: str = ""

    @field_validator("trace_url_template")
    @classmethod
    def _trace_url(cls, value: str) -> str:
        value = value.strip()
        if value and (not value.startswith(("http://", "https://")) or "{trace_id}" not in value):
            raise ValueError("HUB_TRACE_URL_TEMPLATE must be an http(s) URL containing {trace_id}")
        return value

    @model_validator(mode="after")
    def _retention_alias(self) -> Settings:
        if "invocation_retention_s" not in self.model_fields_set and self.completion_ttl_s is not None:
            self.invocation_retention_s = self.completion_ttl_s
        self.completion_ttl_s = self.invocation_retention_s
        return self

    def ensure_tokens(self) -> list[Path]:
        """Fill unset tokens from (or generate them into) the data dir; refuse empty or short
        ones with a message that says how to fix it. Returns the files generated now."""
        made: list[Path] = []
        for field, env, file in (("api_token", "HUB_API_TOKEN", "api-token"),
                                 ("webhook_token", "HUB_WEBHOOK_TOKEN", "webhook-token")):
            value = getattr(self, field)
            if value is None:
                path = self.data_dir / file
                value, created = _token_file(path)
                setattr(self, field, value)
                if created:
                    made.append(path)
            if len(value) < MIN_TOKEN_CHARS:
                what = "empty" if not value else f"{len(value)} characters long"
                raise ValueError(f"{env} is {what}: a token must have at least {MIN_TOKEN_CHARS} characters. "
                                 f"Set a long random one (e.g. {env}=$(python3 -c 'import secrets; "
                                 f"print(secrets.token_urlsafe(32))')), or unset it and the hub generates one "
                                 f"into {self.data_dir / file}")
        return made

    def fn_base_url(self, port: int | None = None) -> str:
        """Where function URLs are called: HUB_PUBLIC_FN_URL, else the function listener itself."""
        return self.public_fn_url.rstrip("/") or f"http://{self.fn_host or self.http_host}:{port or self.fn_port}"

    def base_url(self) -> str:
        # "http://proxy:8080/" and "http://proxy:8080" are one address (a doubled slash would 404)
        return self.public_url.rstrip("/") or f"http://{self.http_host}:{self.http_port}"


MIN_TOKEN_CHARS = 24


def _token_file(path: Path) -> tuple[str, bool]:
    """The token kept in ``path``, or a new one written there (0600, never replacing another
    process's: O_EXCL). True when it was made now."""
    try:
        return path.read_text().strip(), False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another instance on this data dir won the race
        return path.read_text().strip(), False
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token, True
