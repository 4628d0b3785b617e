"""Validated shapes of what users send: functions, triggers, retry policies, batching.

pydantic does the checking so every 4xx says which field is wrong and why. Validation is strict
(no ``true`` -> 1, no ``"3"`` -> 3, no NaN or Infinity) and every string, list and number has a
bound: what is accepted here is stored in MongoDB and shown back, so nothing unbounded gets in.
The bounds are part of the JSON schema and so of ``GET /v1/openapi.json``.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic import Discriminator, Tag  # the network setting's two shapes

from hub.spec import filters, network
from hub.spec.requirements import MAX_REQUIREMENT_CHARS, MAX_REQUIREMENTS, check_requirement

NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
NAME_MAX = 63
Name = Annotated[str, Field(pattern=NAME_RE, max_length=NAME_MAX)]
# Versions and aliases (hub.catalog.registry): a version is 16 hex digits of a content hash; "latest" is the
# head. A trigger names NAME, NAME:ALIAS or NAME:VERSION (NAME:latest is NAME).
VERSION_RE = r"^[0-9a-f]{16}$"
LATEST = "latest"
FUNCTION_REF_RE = NAME_RE[:-1] + "(:" + NAME_RE[1:-1] + ")?$"
FunctionRef = Annotated[str, Field(
    pattern=FUNCTION_REF_RE, max_length=2 * NAME_MAX + 1,
    description="NAME, NAME:ALIAS or NAME:VERSION: events run the version the qualifier points at "
                "when each one runs (NAME alone, or NAME:latest, is the current version)")]

# Bounds (Lambda's where it has one).
DESCRIPTION_MAX = 256  # Lambda: 256 characters
HANDLER_MAX = 128  # Lambda: 128 characters
ENV_TOTAL_MAX = 4096  # Lambda: 4 KB for all variables together
ENV_NAME_RE = r"^[A-Za-z_][A-Za-z0-9_]*$"
CODE_PATH_MAX = 1024  # bytes; each path component at most 255 bytes (see hub.catalog.code)
CODE_FILES_MAX = 1000
CODE_TEXT_MAX = 8 * 1024 * 1024  # characters of one inline file; hub.catalog.code bounds bytes exactly
ZIP_BASE64_MAX = 12 * 1024 * 1024  # a zip of up to ~9 MB; unpacked size is bounded by hub.catalog.code
S3_KEY_MAX = 1024  # bytes: S3's own key limit, so a longer prefix or suffix can never match
S3_EVENTS_MAX = 32
MONGO_DB_MAX = 63  # bytes (MongoDB: fewer than 64)
MONGO_NAMESPACE_MAX = 255  # bytes of "database.collection" (MongoDB 4.4+, unsharded)
TIMEOUT_MIN_S = 0.1  # below this not even a warm worker can answer; Lambda's minimum is 1 s
HANDLER_RE = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$"
BUCKET_RE = r"^[a-z0-9][a-z0-9.-]+[a-z0-9]$"
TOPIC_RE = r"^[A-Za-z0-9._-]+$"
RATE_RE = r"^[1-9][0-9]{0,8} (second|seconds|minute|minutes|hour|hours|day|days)$"


def _utf8(text: str) -> str:
    """Refuse lone surrogates (JSON allows ``"\\ud800"``): MongoDB, file systems and other
    servers only take valid UTF-8, so such a string could never be stored or used."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid unicode text (it holds a lone surrogate)") from None
    return text


def _no_nul(text: str) -> str:
    if "\x00" in text:
        raise ValueError("cannot contain NUL characters")
    return text


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


Description = Annotated[str, Field(max_length=DESCRIPTION_MAX), AfterValidator(_utf8)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class SecretRef(_Strict):
    """An env value taken from a secret (``hub.catalog.secrets``): the worker gets the value, the
    function's documents and answers only this reference."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"secret": "db-password"}]})
    secret: Name = Field(description="the secret's name (PUT /v1/secrets/{name} creates it)")


class CodeSpec(_Strict):
    files: dict[str, str] | None = Field(
        default=None, max_length=CODE_FILES_MAX,
        description="Inline files: relative path -> source text. Paths are POSIX, relative, at most "
                    f"{CODE_PATH_MAX} bytes; no file may also be a directory of another path.",
        json_schema_extra={
            "propertyNames": {"minLength": 1, "maxLength": CODE_PATH_MAX},
            "additionalProperties": {"type": "string", "maxLength": CODE_TEXT_MAX},
        },
    )
    zip_base64: str | None = Field(
        default=None, max_length=ZIP_BASE64_MAX, description="A zip of the code, base64-encoded."
    )

    @model_validator(mode="after")
    def _one_of(self) -> CodeSpec:
        if (self.files is None) == (self.zip_base64 is None):
            raise ValueError("give exactly one of code.files or code.zip_base64")
        if self.files is not None and not self.files:
            raise ValueError("code.files is empty")
        return self


def _network_kind(value: Any) -> str | None:
    """Which shape a ``network`` value has, so an error names only the shape that was meant."""
    if isinstance(value, bool):
        return "bool"
    return "allow" if isinstance(value, (dict, BaseModel)) else None


class NetworkAllow(_Strict):
    """``network: {"allow": [...]}``: destinations opened on top of public egress (hub.spec.network)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"allow": ["10.0.0.5:5432", "db.internal:5432",
                                                                         "10.1.0.0/16", "127.0.0.1:9999"]}]})
    allow: list[Annotated[str, Field(min_length=1, max_length=network.ENTRY_MAX),
                          AfterValidator(network.check_allow_entry)]] = Field(
        max_length=network.ALLOW_MAX,
        description="HOST[:PORT], IP[:PORT], CIDR[:PORT] or [IPv6]:PORT (PORT: N or N-M; none: every "
                    "port). Loopback entries (127.0.0.1, ::1, localhost) need a port.",
    )


class FunctionSpec(_Strict):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "handler": "main.handler", "timeout_s": 10, "memory_mb": 128,
        "code": {"files": {"main.py": "def handler(event, context):\n    return {'got': event['subject']}\n"}},
    }]})

    handler: str = Field(
        pattern=HANDLER_RE, max_length=HANDLER_MAX,
        description="module.function, e.g. main.handler",
    )
    code: CodeSpec
    timeout_s: float = Field(default=30.0, ge=TIMEOUT_MIN_S, le=900)
    memory_mb: int = Field(default=256, ge=32, le=10240)
    max_concurrency: int = Field(default=4, ge=1, le=256)
    env: dict[str, Annotated[str, Field(max_length=ENV_TOTAL_MAX)] | SecretRef] = Field(
        default_factory=dict,
        description=f"Environment variables; names like C identifiers, at most {ENV_TOTAL_MAX} bytes "
                    "in total (names and plain values). A value is a string, or {\"secret\": NAME} to "
                    "hand the worker a secret's value (shown back as the reference, never the value).",
        json_schema_extra={
            "propertyNames": {"pattern": ENV_NAME_RE, "maxLength": ENV_TOTAL_MAX},
        },
    )
    network: Annotated[
        Annotated[bool, Tag("bool")] | Annotated[NetworkAllow, Tag("allow")],
        Discriminator(_network_kind, custom_error_type="network_type",
                      custom_error_message='network must be false, true or {"allow": [...]}, e.g. '
                                           '{"allow": ["10.0.0.5:5432", "db.internal:5432"]}'),
    ] = Field(
        default=False,
        description="false: no network at all; true: public egress only (never the host's loopback, "
                    "private or link-local ranges, nor the hub's own servers); "
                    '{"allow": [...]}: public egress plus exactly those destinations.',
    )
    description: Description = ""
    # What the handler is handed (hub.spec.aws_events): the hub's CloudEvents, or Lambda's own shapes.
    event_format: Literal["cloudevents", "aws"] = Field(
        default="cloudevents",
        description='"cloudevents": the CloudEvents 1.0 envelope (and hub.batch); "aws": what Lambda hands a '
                    "handler for the source (S3 Records, self-managed Kafka records, DocumentDB events, "
                    "EventBridge scheduled event, function URL 2.0, the invoke body) and a Lambda context.",
    )
    # Dependencies (hub.catalog.deps): checked here, resolved and built at PUT.
    requirements: list[Annotated[str, Field(min_length=1, max_length=MAX_REQUIREMENT_CHARS)]] | None = Field(
        default=None, max_length=MAX_REQUIREMENTS,
        description="Dependencies, PEP 508 requirements such as 'requests==2.32.3' (or a requirements.txt in "
                    "the code; not both). Installed from wheels only and mounted read-only at /opt/python. "
                    "No pip options, URLs, paths or 'name @ URL'.",
    )

    @field_validator("requirements")
    @classmethod
    def _requirements(cls, reqs: list[str] | None) -> list[str] | None:
        return None if reqs is None else [check_requirement(r) for r in reqs]

    @field_validator("env", mode="before")
    @classmethod
    def _env_shapes(cls, env: Any) -> Any:
        """One readable message for a value that is neither text nor a secret reference (the
        union's own errors would list both alternatives' complaints)."""
        if isinstance(env, dict):
            for key, value in env.items():
                if isinstance(value, str):
                    continue
                if not (isinstance(value, dict) and set(value) == {"secret"} and isinstance(value["secret"], str)):
                    raise ValueError(f"env {str(key)[:64]}: a value is a string, or {{\"secret\": NAME}} to use a "
                                     f"secret, e.g. {{\"DB_PASSWORD\": {{\"secret\": \"db-password\"}}}}")
                if not re.fullmatch(NAME_RE, value["secret"]):
                    raise ValueError(f"env {str(key)[:64]}: bad secret name {value['secret'][:80]!r}: use letters, "
                                     f"digits, '_', '-', '.' (max {NAME_MAX}), starting with a letter or digit")
        return env

    @field_validator("env")
    @classmethod
    def _env_names(cls, env: dict[str, str | SecretRef]) -> dict[str, str | SecretRef]:
        for key, value in env.items():
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                raise ValueError(f"env name {key!r} is not a valid variable name")
            if isinstance(value, SecretRef):
                continue
            # NUL cannot be in an environment variable (and would split sandbox arguments)
            if "\x00" in value:
                raise ValueError(f"env {key}: values cannot contain NUL characters")
            _utf8(value)
        if sum(_utf8_len(k) + _utf8_len(v if isinstance(v, str) else "") for k, v in env.items()) > ENV_TOTAL_MAX:
            raise ValueError(f"env is larger than {ENV_TOTAL_MAX} bytes in total (Lambda's limit)")
        return env


class AliasSpec(_Strict):
    """``PUT /v1/functions/{name}/aliases/{alias}``: a name for one version (moving it is a rollback)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"version": "3f2a9c0d1b4e5f60",
                                                               "description": "production"}]})

    version: str = Field(pattern=VERSION_RE, max_length=16, description="an existing version of the function")
    description: Description = ""


def alias_name_problem(alias: str) -> str | None:
    """Why ``alias`` cannot name an alias (None if it can): the function name pattern, not a
    version's shape (16 hex digits: NAME:QUALIFIER must be unambiguous), not "latest"."""
    shown = alias if len(alias) <= 80 else alias[:80] + "..."
    if not re.fullmatch(NAME_RE, alias):
        return f"bad alias name {shown!r}: use letters, digits, '_', '-', '.' (max {NAME_MAX})"
    if alias == LATEST:
        return "'latest' is reserved: it always means the current version"
    if re.fullmatch(VERSION_RE, alias):
        return f"bad alias name {shown!r}: 16 hex digits look like a version"
    return None


class RetryPolicy(_Strict):
    max_attempts: int = Field(default=3, ge=1, le=100)
    backoff_s: float = Field(default=1.0, ge=0, le=3600, description="first retry delay; doubles each time")
    max_backoff_s: float = Field(
        default=60.0, ge=0, le=3600,
        description="cap on the retry delay; at least backoff_s (defaults to backoff_s when that is larger)",
    )
    max_event_age_s: float = Field(  # Lambda's async default: 6 h
        default=21600.0, ge=1, le=14 * 86400, description="events older than this are not retried"
    )
    bisect_on_error: bool = Field(
        default=False, description="split a failing batch in two and retry the halves (batch.size > 1)"
    )

    @model_validator(mode="after")
    def _backoff_order(self) -> RetryPolicy:
        if self.max_backoff_s < self.backoff_s:
            if "max_backoff_s" in self.model_fields_set:
                raise ValueError(f"max_backoff_s ({self.max_backoff_s}) is smaller than backoff_s "
                                 f"({self.backoff_s}); the cap must be at least the first delay")
            self.max_backoff_s = self.backoff_s
        return self


class BatchSpec(_Strict):
    """How many events one handler call gets: up to ``size``, waiting at most ``window_ms`` to fill
    a batch (Lambda's BatchSize / MaximumBatchingWindowInSeconds)."""

    size: int = Field(default=1, ge=1, le=10000)
    window_ms: int = Field(default=0, ge=0, le=300_000)


_S3_EVENT_RE = re.compile(
    r"^s3:(ObjectCreated|ObjectRemoved|ObjectRestore|Replication|ObjectLifecycle|ObjectTagging|ObjectAcl|"
    r"LifecycleExpiration|LifecycleTransition|ObjectAccessed)(:[A-Za-z*]+)*$"
)


def _s3_key_part(text: str) -> str:
    _utf8(text)
    if _utf8_len(text) > S3_KEY_MAX:
        raise ValueError(f"is longer than {S3_KEY_MAX} bytes, S3's limit for a whole key")
    return text


S3KeyPart = Annotated[str, Field(max_length=S3_KEY_MAX), AfterValidator(_s3_key_part)]


class S3Source(_Strict):
    type: Literal["s3"]
    bucket: str = Field(min_length=3, max_length=63, pattern=BUCKET_RE)
    events: list[Annotated[str, Field(max_length=64)]] = Field(
        default_factory=lambda: ["s3:ObjectCreated:*"], min_length=1, max_length=S3_EVENTS_MAX
    )
    prefix: S3KeyPart = ""
    suffix: S3KeyPart = ""
    transport: Literal["webhook", "listen"] = "webhook"
    # tracing: continue the uploader's trace from the object's x-amz-meta-traceparent
    trace_metadata: bool = False

    @field_validator("events")
    @classmethod
    def _event_names(cls, events: list[str]) -> list[str]:
        for name in events:
            if not _S3_EVENT_RE.match(name):
                raise ValueError(f"unknown S3 event name {name!r} (expected e.g. 's3:ObjectCreated:*')")
        return events


MongoOp = Literal["insert", "update", "replace", "delete"]
ALL_MONGO_OPS: tuple[MongoOp, ...] = ("insert", "update", "replace", "delete")
# Change streams cannot watch these (MongoDB refuses, and the trigger would retry forever).
MONGO_UNWATCHABLE_DBS = frozenset({"admin", "local", "config"})


def _mongo_database(name: str) -> str:
    """MongoDB's rules for database names (Unix): no ``/\\. "$`` or NUL, under 64 bytes."""
    _utf8(name)
    bad = sorted({c for c in name if c in '/\\. "$\x00'})
    if bad:
        raise ValueError(f"database names cannot contain {' '.join(repr(c) for c in bad)}")
    if _utf8_len(name) > MONGO_DB_MAX:
        raise ValueError(f"database name is {_utf8_len(name)} bytes; MongoDB allows at most {MONGO_DB_MAX}")
    if name in MONGO_UNWATCHABLE_DBS:
        raise ValueError(f"change streams cannot watch the {name!r} database")
    return name


def _mongo_collection(name: str) -> str:
    """MongoDB's rules for collection names: no ``$`` or NUL, not empty, not ``system.*``."""
    _utf8(name)
    _no_nul(name)
    if "$" in name:
        raise ValueError("collection names cannot contain '$'")
    if name.startswith("."):
        raise ValueError("collection names cannot start with '.'")
    if name.startswith("system."):
        raise ValueError("'system.*' collections are MongoDB's own; they cannot be watched")
    return name


class MongoSource(_Strict):
    type: Literal["mongodb"]
    # The patterns are for the schema; the validators say precisely what is wrong.
    database: Annotated[str, Field(min_length=1, max_length=MONGO_DB_MAX,
                                   json_schema_extra={"pattern": r'^[^/\\. "$\x00]+$'}),
                        AfterValidator(_mongo_database)]
    collection: Annotated[str, Field(min_length=1, max_length=MONGO_NAMESPACE_MAX - 2,
                                     json_schema_extra={"pattern": r"^[^$\x00.][^$\x00]*$"},
                                     description="not starting with 'system.'"),
                          AfterValidator(_mongo_collection)]
    operations: list[MongoOp] = Field(default_factory=lambda: list(ALL_MONGO_OPS), min_length=1, max_length=4)
    full_document: Literal["default", "updateLookup", "whenAvailable", "required"] = "default"
    # tracing: a document field holding the writer's W3C traceparent (read from fullDocument)
    trace_field: str | None = Field(default=None, min_length=1, max_length=200)

    @model_validator(mode="after")
    def _namespace_length(self) -> MongoSource:
        size = _utf8_len(self.database) + 1 + _utf8_len(self.collection)
        if size > MONGO_NAMESPACE_MAX:
            raise ValueError(f"namespace '{self.database}.{self.collection}' is {size} bytes; MongoDB "
                             f"allows at most {MONGO_NAMESPACE_MAX}")
        return self


class KafkaSource(_Strict):
    type: Literal["kafka"]
    topic: str = Field(min_length=1, max_length=249, pattern=TOPIC_RE)
    start: Literal["latest", "earliest"] = "latest"

    @field_validator("topic")
    @classmethod
    def _not_dots(cls, topic: str) -> str:
        if topic in (".", ".."):
            raise ValueError("'.' and '..' are not valid Kafka topic names")
        return topic


HttpMethod = Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "ANY"]
# /orders/{id}, /files/{path+} (greedy, the last segment only); literal segments are URL-safe.
_HTTP_PATH_RE = r"^(/([A-Za-z0-9._~!$&'()*,;=:@-]+|\{[A-Za-z_][A-Za-z0-9_]*\+?\}))*/?$"


class CorsSpec(_Strict):
    allow_origins: list[Annotated[str, Field(max_length=256)]] = Field(default_factory=list, max_length=32,
                                                                       description='["*"] or exact origins')
    allow_methods: list[Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "*"]] = Field(
        default_factory=list, max_length=8)
    allow_headers: list[Annotated[str, Field(max_length=128)]] = Field(default_factory=list, max_length=32)
    expose_headers: list[Annotated[str, Field(max_length=128)]] = Field(default_factory=list, max_length=32)
    allow_credentials: bool = False
    max_age: int = Field(default=0, ge=0, le=86400)


class HttpSource(_Strict):
    """A public route under /fn/ that runs the function synchronously (a Lambda function URL)."""

    type: Literal["http"]
    path: str = Field(min_length=1, max_length=512, pattern=_HTTP_PATH_RE,
                      description="under /fn, e.g. /orders/{id} or /files/{path+} (greedy, last segment)")
    methods: list[HttpMethod] = Field(default_factory=lambda: list[HttpMethod](["ANY"]), min_length=1, max_length=8)
    auth: Literal["none", "token"] = "token"
    cors: CorsSpec | None = None

    @field_validator("path")
    @classmethod
    def _path_shape(cls, path: str) -> str:
        segments = [p for p in path.split("/") if p]
        names = [p[1:-1].rstrip("+") for p in segments if p.startswith("{")]
        if len(names) != len(set(names)):
            raise ValueError("path parameter names must be distinct")
        if any(p.endswith("+}") for p in segments[:-1]):
            raise ValueError("a greedy parameter ({name+}) can only be the last segment")
        return "/" + "/".join(segments)


Rate = Annotated[str, Field(max_length=32, pattern=RATE_RE,
                            description='e.g. "30 seconds", "5 minutes", "1 hour", "2 days"; at least 1 second')]


class ScheduleSource(_Strict):
    """Fires once per tick across every hub instance."""

    type: Literal["schedule"]
    cron: str | None = Field(default=None, max_length=128,
                             description='cron: 5 fields ("*/5 * * * *") or 6 with seconds last')
    rate: Rate | None = None
    timezone: str = Field(default="UTC", max_length=64, description="an IANA zone for cron, e.g. Europe/Paris")
    catch_up: bool = Field(default=False, description="fire once on return for ticks missed while no hub ran")

    @model_validator(mode="after")
    def _one_of(self) -> ScheduleSource:
        from hub.spec import schedule_times

        if (self.cron is None) == (self.rate is None):
            raise ValueError("give exactly one of cron or rate")
        try:
            schedule_times.check(self.cron, self.rate, self.timezone)
        except ValueError as exc:
            raise ValueError(str(exc)) from None
        return self


Source = Annotated[S3Source | MongoSource | KafkaSource | HttpSource | ScheduleSource, Field(discriminator="type")]
SOURCE_TYPES = ("s3", "mongodb", "kafka", "http", "schedule")


class TriggerSpec(_Strict):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "function": "hello", "source": {"type": "kafka", "topic": "clicks", "start": "latest"},
        "retry": {"max_attempts": 5, "backoff_s": 0.5}, "batch": {"size": 10, "window_ms": 100},
    }]})

    function: FunctionRef
    source: Source
    filter: dict[str, Any] = Field(
        default_factory=dict,
        description=f"EventBridge-style content pattern; objects nest at most {filters.MAX_PATTERN_DEPTH} "
                    f"levels, at most {filters.MAX_PATTERN_BYTES} bytes as JSON",
    )
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    batch: BatchSpec = Field(default_factory=BatchSpec)
    ordering: Literal["partition", "key"] = Field(
        default="partition",
        description="kafka only: 'key' runs different keys of one partition in parallel, each key in order",
    )
    enabled: bool = True
    description: Description = ""

    @field_validator("filter")
    @classmethod
    def _pattern(cls, pattern: dict[str, Any]) -> dict[str, Any]:
        try:
            filters.validate_pattern(pattern)
        except filters.PatternError as exc:
            raise ValueError(str(exc)) from None
        return pattern

    @model_validator(mode="after")
    def _batches_need_a_stream(self) -> TriggerSpec:
        if self.batch.size > 1 and self.source.type in ("http", "schedule"):
            raise ValueError(f"{self.source.type} triggers run one event per call; leave batch.size at 1")
        return self

    @model_validator(mode="after")
    def _ordering_needs_keys(self) -> TriggerSpec:
        if self.ordering == "key" and self.source.type != "kafka":
            raise ValueError(f"ordering 'key' is only for kafka sources ({self.source.type} events have no "
                             f"message key); use 'partition'")
        return self


# -- messages a person reads ------------------------------------------------------------------
# pydantic's own wording names regular expressions ("String should match pattern '^[A-Za-z_]...'")
# and its internals ("Input tag 'ftp' found using 'type'"); hub.web.wire.validate and the CLI's
# deploy say instead what was wrong, what is allowed and a value that would do. The patterns stay
# in the schema (GET /v1/openapi.json) for programs.
_HTTP_PATH_HELP = ("a path under /fn made of segments separated by '/': literal segments of letters, digits and "
                   "-._~!$&'()*,;=:@, or parameters {name} (one segment) and {name+} (the rest, last segment "
                   "only), e.g. \"/orders/{id}\" or \"/files/{path+}\"")
PATTERN_HELP: dict[str, str] = {
    NAME_RE: f"a name is 1 to {NAME_MAX} letters, digits, '_', '-' or '.', starting with a letter or digit, "
             "e.g. \"resize-images\"",
    FUNCTION_REF_RE: "a function is NAME, NAME:ALIAS or NAME:VERSION (names: letters, digits, '_', '-', '.'), "
                     "e.g. \"hello\", \"hello:prod\" or \"hello:3f2a9c0d1b4e5f60\"",
    VERSION_RE: "a version is 16 lower-case hex digits, e.g. \"3f2a9c0d1b4e5f60\" "
                "(GET /v1/functions/NAME lists them)",
    HANDLER_RE: "a handler is module.function (Python names joined by '.'), e.g. \"main.handler\" for "
                "def handler in main.py",
    BUCKET_RE: "an S3 bucket name is 3 to 63 lower-case letters, digits, '.' or '-', starting and ending "
               "with a letter or digit, e.g. \"uploads\"",
    TOPIC_RE: "a Kafka topic is letters, digits, '.', '_' or '-', e.g. \"clicks\"",
    RATE_RE: "a rate is a whole number from 1 and a unit: second(s), minute(s), hour(s) or day(s), "
             "e.g. \"30 seconds\", \"5 minutes\" or \"1 day\"",
    _HTTP_PATH_RE: _HTTP_PATH_HELP,
}
SOURCE_EXAMPLE = '{"type": "kafka", "topic": "clicks"}'


def _shown(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    return repr(text if len(text) <= 80 else text[:80] + "...")


def error_field(loc: tuple[Any, ...] | list[Any]) -> str:
    """A pydantic location as a dotted path; inside a source it names the source's type
    (``source.schedule.rate``: the rate of a schedule source), which clients already match on."""
    return ".".join(str(p) for p in loc) or "(body)"


def error_message(err: Any) -> str:
    """What one pydantic error means, in words (``err`` is an item of ``ValidationError.errors()``,
    taken with its input)."""
    kind = err.get("type", "")
    ctx = err.get("ctx") or {}
    given = err.get("input")
    if kind == "string_pattern_mismatch":
        help_text = PATTERN_HELP.get(str(ctx.get("pattern")))
        if help_text:
            return f"{_shown(given)} is not valid: {help_text}"
        return f"{_shown(given)} is not valid here (GET /v1/openapi.json has the allowed form)"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        allowed = ", ".join(SOURCE_TYPES)
        if kind == "union_tag_invalid":
            return (f"{_shown(ctx.get('tag', given))} is not a source type; the types are {allowed}, "
                    f"e.g. {SOURCE_EXAMPLE}")
        return f"a source needs a \"type\": one of {allowed}, e.g. {SOURCE_EXAMPLE}"
    if kind == "extra_forbidden":
        return "is not a field here (a typo? GET /v1/openapi.json lists the fields)"
    msg = str(err.get("msg", ""))
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            return msg[len(prefix):]
    return msg
