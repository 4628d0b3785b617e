"""Validated shapes of what users send: functions, triggers, retry policies.

pydantic does the checking so every 4xx says which field is wrong and why.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
Name = Annotated[str, Field(pattern=NAME_RE)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CodeSpec(_Strict):
    files: dict[str, str] | None = None
    zip_base64: str | None = None

    @model_validator(mode="after")
    def _one_of(self) -> CodeSpec:
        if (self.files is None) == (self.zip_base64 is None):
            raise ValueError("give exactly one of code.files or code.zip_base64")
        if self.files is not None and not self.files:
            raise ValueError("code.files is empty")
        return self


class FunctionSpec(_Strict):
    handler: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")
    code: CodeSpec
    timeout_s: float = Field(default=30.0, gt=0, le=900)
    memory_mb: int = Field(default=256, ge=32, le=10240)
    max_concurrency: int = Field(default=4, ge=1, le=256)
    env: dict[str, str] = Field(default_factory=dict)
    network: bool = False
    description: str = ""

    @field_validator("env")
    @classmethod
    def _env_names(cls, env: dict[str, str]) -> dict[str, str]:
        for key, value in env.items():
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                raise ValueError(f"env name {key!r} is not a valid variable name")
            # NUL cannot be in an environment variable (and would split sandbox arguments)
            if "\x00" in value:
                raise ValueError(f"env {key}: values cannot contain NUL characters")
        if sum(len(k) + len(v) for k, v in env.items()) > 4096:
            raise ValueError("env is larger than 4 KB in total (Lambda's limit)")
        return env


class RetryPolicy(_Strict):
    max_attempts: int = Field(default=3, ge=1, le=100)
    backoff_s: float = Field(default=1.0, ge=0, le=3600)  # first retry delay; doubles each time
    max_backoff_s: float = Field(default=60.0, ge=0, le=3600)
    max_event_age_s: float = Field(default=21600.0, gt=0)  # Lambda's async default: 6 h


class S3Source(_Strict):
    type: Literal["s3"]
    bucket: str = Field(min_length=3, max_length=63, pattern=r"^[a-z0-9][a-z0-9.-]+[a-z0-9]$")
    events: list[str] = Field(default_factory=lambda: ["s3:ObjectCreated:*"], min_length=1)
    prefix: str = ""
    suffix: str = ""
    transport: Literal["webhook", "listen"] = "webhook"

    @field_validator("events")
    @classmethod
    def _event_names(cls, events: list[str]) -> list[str]:
        for name in events:
            if not re.match(r"^s3:(ObjectCreated|ObjectRemoved|ObjectRestore|Replication|ObjectLifecycle|ObjectTagging|ObjectAcl|LifecycleExpiration|LifecycleTransition|ObjectAccessed)(:[A-Za-z*]+)*$", name):
                raise ValueError(f"unknown S3 event name {name!r} (expected e.g. 's3:ObjectCreated:*')")
        return events


MongoOp = Literal["insert", "update", "replace", "delete"]
ALL_MONGO_OPS: tuple[MongoOp, ...] = ("insert", "update", "replace", "delete")


class MongoSource(_Strict):
    type: Literal["mongodb"]
    database: str = Field(min_length=1, max_length=63, pattern=r"^[^/\\. \"$]+$")
    collection: str = Field(min_length=1, max_length=255, pattern=r"^[^$]+$")
    operations: list[MongoOp] = Field(default_factory=lambda: list(ALL_MONGO_OPS), min_length=1)
    full_document: Literal["default", "updateLookup", "whenAvailable", "required"] = "default"


class KafkaSource(_Strict):
    type: Literal["kafka"]
    topic: str = Field(min_length=1, max_length=249, pattern=r"^[A-Za-z0-9._-]+$")
    start: Literal["latest", "earliest"] = "latest"


Source = Annotated[S3Source | MongoSource | KafkaSource, Field(discriminator="type")]


class TriggerSpec(_Strict):
    function: Name
    source: Source
    filter: dict[str, Any] = Field(default_factory=dict)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    batch: int = Field(default=1, ge=1, le=1)  # batching is reserved; one event per invocation today
    enabled: bool = True
    description: str = ""
