"""What came back from a worker, and how that becomes the dispatcher's :class:`InvocationReport`.

The worker side is untrusted: errors are reduced to three bounded strings, and nothing it says
about timing is used (durations are measured by the pool). Also here: the bounded capture of a
worker's stdout/stderr and the helpers that look at a worker's process tree in ``/proc``.
"""

from __future__ import annotations

import enum
import math
import os
import signal
from dataclasses import dataclass, field
from typing import Any

from hub.sandbox.base import FunctionRuntime, InvocationReport, Status

# A dying interpreter or C library says one of these on stderr when an allocation fails.
_MEMORY_HINTS = ("MemoryError", "Cannot allocate memory", "out of memory", "std::bad_alloc")


class Kind(str, enum.Enum):
    ready = "ready"
    init_error = "init_error"
    result = "result"
    timeout = "timeout"
    exited = "exited"  # the process ended (crash, sys.exit, killed, failed to start)
    protocol = "protocol"  # it sent something we do not accept


@dataclass
class Outcome:
    kind: Kind
    frame: dict[str, Any] = field(default_factory=dict)
    duration_ms: float = 0.0
    stdout: str = ""
    stderr: str = ""
    truncated: bool = False
    exit_code: int | None = None
    signal: int | None = None
    voluntary_exit: bool = False  # the runtime announced the exit (sys.exit in the handler)
    message: str = ""


class OutputCapture:
    """Keeps the first ``limit`` bytes of a stream and counts the rest."""

    __slots__ = ("limit", "buf", "dropped")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.buf = bytearray()
        self.dropped = 0

    def feed(self, data: bytes) -> None:
        room = self.limit - len(self.buf)
        if room >= len(data):
            self.buf += data
        else:
            if room > 0:
                self.buf += data[:room]
            self.dropped += len(data) - max(room, 0)

    def take(self) -> tuple[str, bool]:
        text = self.buf.decode("utf-8", "replace")
        truncated = self.dropped > 0
        if truncated:
            text += f"\n[... output truncated: {self.dropped} more bytes not shown]"
        self.buf = bytearray()
        self.dropped = 0
        return text, truncated


# ---------------------------------------------------------------------------- reports


def init_failure_report(fn: FunctionRuntime, out: Outcome, init_ms: float | None,
                        init_timeout_s: float) -> InvocationReport:
    """The worker never became ready: import error, hung import, or it died starting."""
    if out.kind is Kind.init_error:
        error = clean_error(out.frame.get("error"))
        status = Status.out_of_memory if out.frame.get("oom") else Status.failed
        report = InvocationReport(status=status, error=error)
    elif out.kind is Kind.timeout:
        report = InvocationReport(status=Status.timeout, error={
            "type": "InitTimeout",
            "message": f"the worker did not finish importing {fn.handler!r} within "
                       f"{init_timeout_s:.2f} seconds", "traceback": ""})
    else:
        report = abnormal_report(fn, out)
    if report.error is not None:
        report.error["phase"] = "init"
    report.cold_start = True
    report.init_duration_ms = init_ms
    report.stdout, report.stderr, report.output_truncated = out.stdout, out.stderr, out.truncated
    return report


def invocation_report(fn: FunctionRuntime, out: Outcome) -> InvocationReport:
    frame = out.frame
    if out.kind is Kind.result:
        if frame.get("ok"):
            report = InvocationReport(status=Status.succeeded, result=frame.get("result"))
        else:
            status = Status.out_of_memory if frame.get("oom") else Status.failed
            report = InvocationReport(status=status, error=clean_error(frame.get("error")))
        rss_kb = frame.get("rss_kb")
        if isinstance(rss_kb, (int, float)) and rss_kb > 0:
            report.max_memory_mb = round(rss_kb / 1024.0, 2)
    elif out.kind is Kind.timeout:
        report = InvocationReport(status=Status.timeout, error={
            "type": "Timeout",
            "message": f"Task timed out after {fn.timeout_s:.2f} seconds; the worker was killed",
            "traceback": ""})
    else:
        report = abnormal_report(fn, out)
    report.duration_ms = out.duration_ms
    report.billed_ms = max(1, math.ceil(out.duration_ms))
    report.stdout, report.stderr, report.output_truncated = out.stdout, out.stderr, out.truncated
    return report


def abnormal_report(fn: FunctionRuntime, out: Outcome) -> InvocationReport:
    """The worker process ended (or broke the protocol) without a response."""
    if out.kind is Kind.protocol:
        return InvocationReport(status=Status.crashed, error={
            "type": "ProtocolError", "message": out.message, "traceback": ""})
    if out.signal is not None:
        name = signal_name(out.signal)
        if name == "SIGXCPU":
            return InvocationReport(status=Status.timeout, signal=out.signal, error={
                "type": "Timeout", "traceback": "",
                "message": "CPU time limit exceeded (RLIMIT_CPU); the worker was killed"})
        message = f"worker was killed by {name}"
    elif out.exit_code is not None:
        how = " (sys.exit in the handler)" if out.voluntary_exit else ""
        message = f"worker exited with code {out.exit_code}{how}"
    else:
        message = out.message or "worker ended without a response"
    if not out.voluntary_exit and any(h in out.stderr[-4096:] for h in _MEMORY_HINTS):
        return InvocationReport(
            status=Status.out_of_memory, exit_code=out.exit_code, signal=out.signal,
            error={"type": "MemoryError", "traceback": "",
                   "message": f"memory limit of {fn.memory_mb} MB exceeded: {message}"})
    return InvocationReport(status=Status.crashed, exit_code=out.exit_code, signal=out.signal,
                            error={"type": "Crashed", "message": message, "traceback": ""})


def clean_error(err: Any) -> dict[str, Any]:
    """Errors come from the worker (untrusted): keep the three string fields, bounded."""
    if not isinstance(err, dict):
        return {"type": "Error", "message": str(err)[:4096], "traceback": ""}
    return {
        "type": str(err.get("type") or "Error")[:200],
        "message": str(err.get("message") or "")[:8192],
        "traceback": str(err.get("traceback") or "")[:65536],
    }


def pool_closed_report() -> InvocationReport:
    return InvocationReport(status=Status.crashed, error={
        "type": "PoolClosed", "message": "the worker pool is shutting down", "traceback": ""})


# ---------------------------------------------------------------------------- small helpers


def is_signal(n: int) -> bool:
    try:
        signal.Signals(n)
    except ValueError:
        return False
    return True


def signal_name(n: int) -> str:
    try:
        return signal.Signals(n).name
    except ValueError:
        return f"signal {n}"


def as_int(v: Any, default: int = 1) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        return default


def as_float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return 0.0


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (via /proc/PID/task/TID/children)."""
    seen: list[int] = []
    todo = [pid]
    while todo:
        cur = todo.pop()
        try:
            tids = os.listdir(f"/proc/{cur}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{cur}/task/{tid}/children") as f:
                    kids = [int(x) for x in f.read().split()]
            except (OSError, ValueError):
                continue
            for k in kids:
                if k not in seen:
                    seen.append(k)
                    todo.append(k)
    return seen


def tree_rss_bytes(pid: int) -> int:
    """Resident memory summed over ``pid`` and its descendants."""
    total = 0
    for p in [pid, *descendants(pid)]:
        try:
            with open(f"/proc/{p}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
        except (OSError, ValueError):
            pass
    return total
