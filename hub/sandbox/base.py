"""The pool's contract with the rest of the hub.

The dispatcher only ever sees these types; how workers are started, contained, reused and reaped
is the pool's business (see ``hub.sandbox.pool``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Protocol


class Destination(Protocol):
    """One ``network.allow`` entry, already checked (``hub.spec.network.AllowEntry``): ``host`` is
    an IP address, a CIDR network or a DNS name; no ports means every port."""

    @property
    def host(self) -> str: ...
    @property
    def port_min(self) -> int | None: ...
    @property
    def port_max(self) -> int | None: ...


@dataclass(frozen=True)
class NetworkPolicy:
    """A function with network: public egress, plus exactly the destinations in ``allow``
    (see ``hub.sandbox.network`` for what public means and how it is enforced)."""

    allow: tuple[Destination, ...] = ()

    @classmethod
    def from_setting(cls, setting: bool | Iterable[Destination]) -> bool | NetworkPolicy:
        """``False`` (no network), ``True`` or a policy, from ``hub.spec.network.network_setting``."""
        if isinstance(setting, bool):
            return setting
        return cls(tuple(setting))


def network_policy(fn_network: bool | NetworkPolicy) -> NetworkPolicy | None:
    """None: no network at all; otherwise what the function may reach."""
    if isinstance(fn_network, NetworkPolicy):
        return fn_network
    return NetworkPolicy() if fn_network else None


@dataclass(frozen=True)
class FunctionRuntime:
    """One immutable version of a function, as the pool needs it."""

    name: str
    version: str  # content hash of code + handler; a new version never reuses an old worker
    handler: str  # "module.attr", e.g. "main.handler"
    code_dir: Path  # materialised code, mounted read-only into the worker
    timeout_s: float = 30.0
    memory_mb: int = 256
    max_concurrency: int = 4
    env: dict[str, str] = field(default_factory=dict, repr=False)  # may hold secret values: never in a repr
    network: bool | NetworkPolicy = False  # False: no network; True: public egress only
    # Installed dependencies (hub.deps), shared by every version with the same resolved set;
    # mounted read-only at /opt/python and put on sys.path after the code. None: no dependencies.
    deps_dir: Path | None = None
    # "aws": Lambda's event shapes (rendered by the dispatcher) and a Lambda context in the worker
    event_format: str = "cloudevents"


@dataclass(frozen=True)
class InvokeContext:
    invocation_id: str
    trigger: str | None
    attempt: int = 1
    # event_format "aws": the ARN the caller invoked (context.invoked_function_arn)
    function_arn: str | None = None
    traceparent: str | None = None  # the invocation span's W3C context (TRACEPARENT in the worker)


class Status(str, enum.Enum):
    succeeded = "succeeded"
    failed = "failed"  # the handler raised
    timeout = "timeout"
    out_of_memory = "out_of_memory"
    crashed = "crashed"  # the worker died: exit code / signal
    throttled = "throttled"  # the function's wait queue was full; never started


@dataclass
class InvocationReport:
    """What one invocation did: Lambda's REPORT line plus the result."""

    status: Status
    result: Any = None
    error: dict[str, Any] | None = None  # {"type", "message", "traceback"}
    duration_ms: float = 0.0
    billed_ms: int = 0
    max_memory_mb: float | None = None
    cold_start: bool = False
    init_duration_ms: float | None = None
    stdout: str = ""
    stderr: str = ""
    output_truncated: bool = False
    exit_code: int | None = None
    signal: int | None = None
    # event_format "aws": the Lambda event the handler was handed (the dispatcher records it)
    handed: Any = field(default=None, repr=False)

    def to_doc(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "result": self.result,
            "error": self.error,
            "duration_ms": self.duration_ms,
            "billed_ms": self.billed_ms,
            "max_memory_mb": self.max_memory_mb,
            "cold_start": self.cold_start,
            "init_duration_ms": self.init_duration_ms,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "output_truncated": self.output_truncated,
            "exit_code": self.exit_code,
            "signal": self.signal,
        }


class WorkerPool(Protocol):
    """Runs invocations; never raises for anything the function does (that is a report)."""

    isolation: str  # "bwrap" or "process": shown in /readyz

    async def start(self) -> None: ...

    async def invoke(
        self, fn: FunctionRuntime, event: dict[str, Any], ctx: InvokeContext
    ) -> InvocationReport: ...

    async def retire(self, name: str) -> None:
        """Stop every worker of a function (deleted or replaced)."""

    async def retire_version(self, name: str, version: str) -> None:
        """Stop the workers of one version of a function (that version was deleted)."""

    def stats(self) -> dict[str, Any]:
        """Per-function worker counts (warm, busy, queued, throttled) for /metrics and /readyz."""

    async def close(self) -> None: ...
