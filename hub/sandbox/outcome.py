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
    oom_killed: bool = False  # the pool killed it: its processes together exceeded memory_mb
    peak_bytes: int = 0  # the pool's own measurement of the worker's memory (all processes)


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
        # rss_kb comes from the worker (informational only): bounded, never trusted.
        rss_kb = frame.get("rss_kb")
        peak_mb = out.peak_bytes / (1024.0 * 1024.0)
        if (isinstance(rss_kb, (int, float)) and not isinstance(rss_kb, bool)
                and math.isfinite(rss_kb) and 0 < rss_kb < 1 << 40):
            peak_mb = max(peak_mb, min(rss_kb / 1024.0, float(fn.memory_mb)))
        if peak_mb > 0:
            report.max_memory_mb = round(peak_mb, 2)
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
    if out.oom_killed:
        report = InvocationReport(
            status=Status.out_of_memory, exit_code=out.exit_code, signal=out.signal,
            error={"type": "MemoryError", "traceback": "",
                   "message": f"memory limit of {fn.memory_mb} MB exceeded: the worker's "
                              f"processes used {out.peak_bytes / 1048576:.0f} MB together; "
                              "the worker was killed"})
        if out.peak_bytes:
            report.max_memory_mb = round(out.peak_bytes / 1048576, 2)
        return report
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
    doc: dict[str, Any] = {
        "type": str(err.get("type") or "Error")[:200],
        "message": str(err.get("message") or "")[:8192],
        "traceback": str(err.get("traceback") or "")[:65536],
    }
    stack = err.get("stackTrace")  # event_format "aws": Lambda's frame lines, bounded too
    if isinstance(stack, list):
        doc["stackTrace"] = [str(line)[:4096] for line in stack[-100:]]
    return doc


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


def as_int(v: Any, default: int = 1, lo: int = -(1 << 31), hi: int = (1 << 31) - 1) -> int:
    """An untrusted number as a bounded int (``default`` for junk, inf, NaN or out of range)."""
    if isinstance(v, bool):
        return int(v)
    try:
        n = int(v)
    except (TypeError, ValueError, OverflowError):
        return default
    return n if lo <= n <= hi else default


def as_float(v: Any, lo: float = 0.0, hi: float = 1e9) -> float:
    """An untrusted number as a finite float clamped to [lo, hi] (0.0 for junk)."""
    try:
        f = float(v)
    except (TypeError, ValueError, OverflowError):
        return 0.0
    if not math.isfinite(f):
        return 0.0
    return min(max(f, lo), hi)


def _proc_read(path: str) -> bytes:
    """A small /proc file whole, without a buffered file object (the leftover-process check reads
    several after every STRAY_CHECK_EVERY-th invocation: 1.9 instead of 4.3 us a file)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = chunk = os.read(fd, 65536)
        while len(chunk) == 65536:  # (a children list that long: read on)
            chunk = os.read(fd, 65536)
            data += chunk
        return data
    finally:
        os.close(fd)


def _live(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        stat = _proc_read(f"/proc/{pid}/stat")
    except OSError:
        return False
    state = stat[stat.rfind(b")") + 2:][:1]
    return state not in (b"Z", b"X", b"")


def _children(pid: int, threads: bool = True) -> list[int] | None:
    """Children of every thread of ``pid`` (of its main thread only with ``threads`` False:
    for bwrap's own processes, which have no others); None if it is gone."""
    try:
        tids = os.listdir(f"/proc/{pid}/task") if threads else [str(pid)]
    except OSError:
        return None
    kids: list[int] = []
    for tid in tids:
        try:
            kids += [int(x) for x in _proc_read(f"/proc/{pid}/task/{tid}/children").split()]
        except (OSError, ValueError):
            return None
    return kids


def only_chain(pid: int, chain: list[int]) -> bool:
    """True when ``pid``'s descendants are exactly ``chain``, each the only child of the one
    before it (the common case after an invocation; a False only means "look closer")."""
    for parent, child in zip([pid, *chain], [*chain, None]):
        kids = _children(parent, threads=child is None)  # only the last runs the user's code
        if kids != ([] if child is None else [child]):
            return False
    return True


def live_descendants(pid: int) -> list[int]:
    return [p for p in descendants(pid) if _live(p)]


def tree_memory_bytes(pid: int) -> int:
    """Memory of ``pid`` and its descendants: PSS (shared pages split, so forks are not
    counted twice), VmRSS where smaps_rollup is unavailable."""
    total = 0
    for p in [pid, *descendants(pid)]:
        key, path = b"Pss:", f"/proc/{p}/smaps_rollup"
        try:
            f = open(path, "rb")
        except OSError:
            key, path = b"VmRSS:", f"/proc/{p}/status"
            try:
                f = open(path, "rb")
            except OSError:
                continue
        try:
            with f:
                for line in f:
                    if line.startswith(key):
                        total += int(line.split()[1]) * 1024
                        break
        except (OSError, ValueError):
            pass
    return total


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
                kids = [int(x) for x in _proc_read(f"/proc/{cur}/task/{tid}/children").split()]
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
