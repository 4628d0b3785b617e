"""The sandboxed worker pool: warm reuse, per-version concurrency, throttling, scale to zero.

Per function version (name and version: an alias on v1 and latest on v2 are both live at once)
the pool keeps a LIFO stack of idle warm workers, the invocations in flight (never more than
``max_concurrency``, which so applies per version) and a bounded FIFO of waiting invocations. An
invocation takes the most recently used idle worker (warm) or starts one (cold). Workers are never
shared across versions.

Which versions are worth keeping warm is the registry's knowledge, not the pool's: each runtime it
hands over says which versions of the function are *live* (the head and every alias target,
``live_versions``). When an invocation brings a different live set (a deploy, an alias moved),
idle workers of versions that left it are stopped at once and busy ones when they finish; a
version invoked explicitly (``?version=``, a trigger on NAME:VERSION) is kept warm like any other
until the next such change or its idle timeout. A runtime without ``live_versions`` (a plain
``FunctionRuntime``) counts only its own version as live, which is the old rule: a new version
replaces the previous one's idle workers. Idle workers are stopped after ``idle_ttl_s`` (a timer
per worker, no polling). A worker that timed out, crashed, ran out of memory or spoke out of turn
is never reused.

Isolation is decided once at :meth:`SandboxPool.start`: ``bwrap`` (see :mod:`hub.sandbox.bwrap`),
or ``process`` (rlimited plain processes: no filesystem, network or /proc isolation). ``auto``
means bwrap: when bubblewrap cannot run, ``start`` raises :class:`SandboxUnavailable` saying what
failed and how to fix it; nothing falls back to unisolated processes unless the operator asked for
``process`` by name. Every worker runs under the seccomp filter of :mod:`hub.sandbox.seccomp`;
functions with network get their namespace from :mod:`hub.sandbox.network`, which refuses the hub's
own servers (``deny_addresses``) besides every private range. At start the hub process makes itself
non-dumpable (``PR_SET_DUMPABLE`` 0): a process of the same uid (a plain-process worker) can then
no longer read ``/proc/<hub>/environ`` or ptrace it. Children are unaffected: ``execve`` makes a
process dumpable again, so bwrap, pasta and the workers start as before.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import py_compile
import shutil
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import orjson
import structlog

from hub.events import Prepared
from hub.logs import enabled as log_enabled
from hub.sandbox import bwrap as bw
from hub.sandbox import seccomp
from hub.sandbox.base import FunctionRuntime, InvocationReport, InvokeContext, Status
from hub.sandbox.bwrap import (
    NOT_ISOLATED,
    SandboxUnavailable,
    make_undumpable,
    refuse_message,
)
from hub.sandbox.netns import Spares
from hub.sandbox.network import NetworkConfig, NetworkUnavailable
from hub.sandbox.outcome import (
    Kind,
    init_failure_report,
    invocation_report,
    pool_closed_report,
)
from hub.sandbox.prewarm import Prewarmed
from hub.sandbox.worker import Worker

log = structlog.get_logger("hub.sandbox")
# One encoder for every request: json.dumps with arguments builds a new one per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str)


def _encode(request: dict[str, Any]) -> bytes:
    """The request frame's JSON. A payload the hub prepared for orjson (hub.events.Prepared: no
    value orjson would write differently from the stdlib, its events' data already JSON) goes
    through orjson, several times faster; anything else through the stdlib encoder, whose output
    (NaN, str() of odd types, non-str keys) the handlers have always got."""
    if type(request["event"]) is Prepared:
        return orjson.dumps(request)
    return _ENCODER.encode(request).encode()


class _InvocationLog:
    """``log.bind(function=, version=, invocation_id=, trigger=)``, bound only when something is
    logged: most invocations log nothing, and binding a structlog proxy costs every call."""

    __slots__ = ("_fn", "_ctx", "_bound")

    def __init__(self, fn: FunctionRuntime, ctx: InvokeContext) -> None:
        self._fn, self._ctx, self._bound = fn, ctx, None

    def __getattr__(self, name: str) -> Any:
        if self._bound is None:
            self._bound = log.bind(function=self._fn.name, version=self._fn.version,
                                   invocation_id=self._ctx.invocation_id, trigger=self._ctx.trigger)
        return getattr(self._bound, name)


@dataclass
class _Version:
    """One version of a function: its workers, concurrency slots and queue."""

    name: str
    version: str
    # retired, or no longer live: idle workers were stopped, busy ones stop when they finish,
    # and the state is forgotten once empty. An invocation of the version makes it wanted again.
    stale: bool = False
    max_concurrency: int = 1
    idle: list[Worker] = field(default_factory=list)  # LIFO: last is the warmest
    busy: set[Worker] = field(default_factory=set)
    active: int = 0  # invocations holding a concurrency slot (starting or running)
    waiters: deque[asyncio.Future[None]] = field(default_factory=deque)
    throttled_total: int = 0  # had to wait or were rejected
    rejected_total: int = 0  # queue full: returned status throttled
    invocations_total: int = 0
    cold_starts_total: int = 0


_COUNTERS = ("throttled_total", "rejected_total", "invocations_total", "cold_starts_total")


@dataclass
class _Function:
    """A function's versions, and which of them the registry last said are live."""

    name: str
    versions: dict[str, _Version] = field(default_factory=dict)
    live: frozenset[str] = frozenset()
    last_version: str | None = None  # the most recently invoked
    retired: bool = False
    # counters of versions already forgotten, so the function's totals never go down
    past: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_COUNTERS, 0))


class SandboxPool:
    """Runs function invocations in sandboxed, reusable worker processes (``WorkerPool``)."""

    def __init__(
        self,
        isolation: str = "auto",
        data_dir: Path = Path(".hub/data"),
        idle_ttl_s: float = 60.0,
        max_queue: int = 1000,
        *,
        limits: bw.SandboxLimits | None = None,
        python: str | None = None,
        init_timeout_s: float = 10.0,
        output_limit: int = 64 * 1024,
        deny_addresses: Sequence[str] = (),
        bwrap_path: str | None = None,
        network_spares: int = 1,
        spares: int = 0,
    ) -> None:
        """``deny_addresses``: the hub's own servers as connection strings (``mongodb://...``,
        ``host:9092,host2:9092``, ``http://host:9000``), refused to functions with network even
        when public. ``bwrap_path``: the bubblewrap binary (default: ``bwrap`` on PATH).
        ``network_spares``: network namespaces kept wired ahead of time (hub.sandbox.netns).
        ``spares``: workers kept started ahead of any function (hub.sandbox.prewarm; bwrap only)."""
        if isolation not in ("auto", "bwrap", "process"):
            raise ValueError(f"isolation must be auto, bwrap or process, not {isolation!r}")
        self.requested = isolation
        self.isolation = "process" if isolation == "process" else "bwrap"
        self.deny_addresses = tuple(a for a in deny_addresses if a)
        self.bwrap_path = bwrap_path
        self.network_spares = network_spares
        self.spares = spares
        self._prewarmed: Prewarmed | None = None
        self.data_dir = Path(data_dir).absolute()
        self.idle_ttl_s = idle_ttl_s
        self.max_queue = max_queue
        self.limits = limits or bw.SandboxLimits()
        self.python = python or bw.interpreter()
        self.init_timeout_s = init_timeout_s
        self.output_limit = output_limit
        self.isolation_reason = ""
        self._fns: dict[str, _Function] = {}
        self._cfg: bw.SpawnConfig | None = None
        self._userns: bw.UserNamespace | None = None
        self._started = False
        self._start_lock: asyncio.Lock | None = None
        self._closed = False
        self._reaping: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._started:
                return
            runtime_file = await asyncio.to_thread(self._compile_runtime)
            cfg = bw.SpawnConfig(isolation="process", python=self.python,
                                 runtime_file=runtime_file, limits=self.limits,
                                 output_limit=self.output_limit,
                                 scratch_dir=self.data_dir / "sandbox" / "scratch")
            # Before any worker exists: a same-uid worker must never read our environ.
            undumpable = make_undumpable()
            if self.requested in ("auto", "bwrap"):
                reason = await self._setup_bwrap(cfg)
                if reason:
                    self.isolation_reason = reason
                    log.error("bubblewrap cannot run: refusing to start", reason=reason,
                              requested=self.requested)
                    raise SandboxUnavailable(refuse_message(reason))
                cfg.seccomp = True  # the probe ran under the same filter
                try:
                    cfg.network = await NetworkConfig.create(
                        self.data_dir / "sandbox" / "net", self.deny_addresses,
                        as_root=self._userns is not None)
                    if self._userns is not None and self.network_spares > 0:  # made on first use
                        cfg.spares = Spares(cfg.network, self.network_spares)
                except NetworkUnavailable as exc:
                    cfg.network_problem = str(exc)
                    log.warning("functions with network cannot start", reason=str(exc))
            else:
                self.isolation_reason = "HUB_SANDBOX=process"
                try:
                    seccomp.program()
                    cfg.seccomp = True
                except seccomp.SeccompUnavailable as exc:
                    log.warning("plain-process workers run without a seccomp filter", reason=str(exc))
            self.isolation = cfg.isolation
            self._cfg = cfg
            if self.isolation == "bwrap" and self.spares > 0:
                self._prewarmed = Prewarmed(cfg, self.spares, self.data_dir / "sandbox" / "spares")
                self._prewarmed.start()
            self._started = True
            users = "-" if self.isolation != "bwrap" else (
                "one uid per worker (shared root-owned userns)" if self._userns
                else "per-worker userns")
            if self.isolation == "process":
                log.warning(f"worker pool started: {NOT_ISOLATED}: they run as plain processes of "
                            "the hub's user, with the host's files, network and processes in view "
                            "(HUB_SANDBOX=process)", isolation=self.isolation, seccomp=cfg.seccomp,
                            undumpable=undumpable, python=self.python)
            else:
                log.info("worker pool started", isolation=self.isolation, users=users,
                         seccomp=cfg.seccomp, network=cfg.network is not None,
                         denied_servers=len(cfg.network.deny) if cfg.network else 0,
                         undumpable=undumpable, python=self.python)

    async def _setup_bwrap(self, cfg: bw.SpawnConfig) -> str:
        """Configure ``cfg`` for bwrap; returns why not ("" on success)."""
        bwrap_path = shutil.which(self.bwrap_path or "bwrap")
        if bwrap_path is None:
            return f"{self.bwrap_path or 'bwrap'} not found" + ("" if self.bwrap_path else " on PATH")
        userns: bw.UserNamespace | None = None
        if os.geteuid() == 0:
            try:
                userns = await asyncio.to_thread(bw.UserNamespace.create, self.python)
            except OSError as exc:
                return f"cannot create a user namespace: {exc}"
        result = await bw.probe(self.python, cfg.runtime_file, userns, bwrap_path)
        if not result.ok:
            if userns is not None:
                userns.close()
            return result.reason
        self._userns = userns
        cfg.isolation = "bwrap"
        cfg.bwrap_path = bwrap_path
        cfg.userns = userns
        cfg.bwrap = bw.BwrapCommand(self.python, cfg.runtime_file,
                                    userns_fd=userns.fd if userns else None)
        return ""

    def _compile_runtime(self) -> Path:
        """Byte-compile runtime.py once (a script run from source is re-compiled every start)."""
        src = Path(__file__).with_name("runtime.py")
        digest = hashlib.sha256(src.read_bytes() + sys.version.encode()).hexdigest()[:16]
        out_dir = self.data_dir / "sandbox" / "runtime"
        out_dir.mkdir(parents=True, exist_ok=True)
        target = out_dir / f"runtime-{digest}.pyc"
        if not target.exists():
            tmp = out_dir / f".runtime-{digest}-{os.getpid()}.pyc"
            py_compile.compile(str(src), cfile=str(tmp), dfile=f"{bw.RUNTIME_DIR}/runtime.py",
                               doraise=True,
                               invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        return target

    async def close(self) -> None:
        self._closed = True
        workers: list[Worker] = []
        for st in self._versions():
            workers += st.idle + list(st.busy)
            st.idle.clear()
            while st.waiters:  # let them through: each gets a "pool closed" report
                fut = st.waiters.popleft()
                if not fut.done():
                    st.active += 1
                    fut.set_result(None)
        for w in workers:
            w.kill()
        await asyncio.gather(*(w.wait_closed() for w in workers), return_exceptions=True)
        if self._reaping:
            await asyncio.gather(*self._reaping, return_exceptions=True)
        if self._prewarmed is not None:
            await self._prewarmed.close()
        if self._userns is not None:
            self._userns.close()
            self._userns = None
        if self._cfg is not None and self._cfg.spares is not None:
            await self._cfg.spares.close()

    async def retire(self, name: str) -> None:
        """Stop every worker of a function, every version; busy ones stop as soon as their
        invocation ends."""
        f = self._fns.get(name)
        if f is None:
            return
        f.retired = True
        f.live = frozenset()
        await self._retire(list(f.versions.values()))

    async def retire_version(self, name: str, version: str) -> None:
        """Stop the workers of one version (deleted); the function's other versions keep theirs."""
        f = self._fns.get(name)
        st = f.versions.get(version) if f else None
        if st is not None:
            await self._retire([st])

    async def _retire(self, states: list[_Version]) -> None:
        idle: list[Worker] = []
        for st in states:
            st.stale = True
            idle += st.idle
            st.idle = []
        for w in idle:
            if w.idle_handle is not None:
                w.idle_handle.cancel()
                w.idle_handle = None
            w.kill()
        await asyncio.gather(*(w.wait_closed() for w in idle), return_exceptions=True)
        for st in states:
            self._maybe_forget(st)

    # ------------------------------------------------------------------ invoke

    async def invoke(self, fn: FunctionRuntime, event: dict[str, Any],
                     ctx: InvokeContext) -> InvocationReport:
        if not self._started:
            await self.start()
        blog: Any = _InvocationLog(fn, ctx)
        f = self._fns.get(fn.name)
        if f is None:
            f = self._fns[fn.name] = _Function(fn.name)
        live = getattr(fn, "live_versions", None) or frozenset((fn.version,))
        if live is not f.live and live != f.live:  # (a cached runtime brings the same set object)
            self._set_live(f, live)
        st = f.versions.get(fn.version)
        if st is None:
            st = f.versions[fn.version] = _Version(fn.name, fn.version)
        st.stale = f.retired = False  # wanted (again)
        f.last_version = fn.version
        st.max_concurrency = max(1, fn.max_concurrency)
        st.invocations_total += 1

        if st.active >= st.max_concurrency or st.waiters:
            st.throttled_total += 1
            if len(st.waiters) >= self.max_queue:
                st.rejected_total += 1
                blog.info("invocation throttled: queue full", queued=len(st.waiters))
                return InvocationReport(status=Status.throttled, error={
                    "type": "Throttled",
                    "message": f"function {fn.name} (version {fn.version}) is at "
                               f"max_concurrency={st.max_concurrency} "
                               f"and its queue is full ({self.max_queue} waiting)",
                    "traceback": ""})
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            st.waiters.append(fut)
            try:
                await fut  # the releaser hands its slot over (st.active already counts us)
            except asyncio.CancelledError:
                if fut in st.waiters:
                    st.waiters.remove(fut)
                elif fut.done() and not fut.cancelled():
                    self._release_slot(st)
                raise
        else:
            st.active += 1
        try:
            if self._closed:
                return pool_closed_report()
            return await self._run(st, fn, event, ctx, blog)
        except Exception as exc:  # a bug of ours must not look like the function's failure
            blog.exception("worker pool internal error")
            return InvocationReport(status=Status.crashed, error={
                "type": "PoolError", "message": f"internal error in the worker pool: {exc!r}",
                "traceback": ""})
        finally:
            self._release_slot(st)

    def _release_slot(self, st: _Version) -> None:
        st.active -= 1
        while st.waiters and st.active < st.max_concurrency:
            fut = st.waiters.popleft()
            if not fut.done():
                st.active += 1
                fut.set_result(None)
        self._maybe_forget(st)

    def _set_live(self, f: _Function, live: frozenset[str]) -> None:
        """The function's live versions changed: versions that left the set lose their idle
        workers now and their busy ones when they finish."""
        f.live = live
        for st in list(f.versions.values()):
            if st.version not in live and not st.stale:
                st.stale = True
                old, st.idle = st.idle, []
                for w in old:
                    if w.idle_handle is not None:
                        w.idle_handle.cancel()
                        w.idle_handle = None
                    self._stop_later(w)
                self._maybe_forget(st)

    async def _run(self, st: _Version, fn: FunctionRuntime, event: dict[str, Any],
                   ctx: InvokeContext, blog: Any) -> InvocationReport:
        assert self._cfg is not None
        worker = self._take_idle(st, fn.version)
        cold = worker is None
        if worker is None:
            st.cold_starts_total += 1
            spare = self._prewarmed.take(fn) if self._prewarmed is not None else None
            worker = spare or Worker(fn, self._cfg)
            worker.on_exit = lambda w, st=st: self._forget_idle(st, w)
            st.busy.add(worker)
            try:
                timeout = max(self.init_timeout_s, 0.1)
                init = await (spare.assign(fn, timeout) if spare else worker.start(timeout))
                if spare is not None and spare.lost:  # it ended before it got its function
                    st.busy.discard(spare)
                    worker = Worker(fn, self._cfg)
                    worker.on_exit = lambda w, st=st: self._forget_idle(st, w)
                    st.busy.add(worker)
                    init = await worker.start(timeout)
            except BaseException:
                st.busy.discard(worker)
                self._stop_later(worker)
                raise
            if init.kind is not Kind.ready:
                st.busy.discard(worker)
                self._stop_later(worker)
                report = init_failure_report(fn, init, worker.init_ms, self.init_timeout_s)
                blog.info("worker init failed", status=report.status.value,
                          error_type=(report.error or {}).get("type"), pid=worker.pid)
                return report
            blog.debug("worker started", pid=worker.pid, uid=worker.uid,
                       init_ms=round(worker.init_ms or 0.0, 2))
        else:
            st.busy.add(worker)
        request = {
            "id": ctx.invocation_id,
            "trigger": ctx.trigger,
            "attempt": ctx.attempt,
            "arn": ctx.function_arn,  # event_format "aws" only; else None
            "traceparent": ctx.traceparent,  # hub.tracing: the invocation span's, or None
            "deadline": time.time() + fn.timeout_s,
            "seq": worker.next_seq(),  # echoed by the response: nothing else answers this request
            "event": event,
        }
        try:
            data = _encode(request)
        except (TypeError, ValueError) as exc:  # e.g. a circular structure (orjson raises a TypeError)
            st.busy.discard(worker)
            self._park(st, worker)
            return InvocationReport(status=Status.failed, cold_start=cold, error={
                "type": "InvalidEvent", "message": f"event is not JSON serializable: {exc}",
                "traceback": ""})
        try:
            outcome = await worker.call(data, fn.timeout_s)
        except BaseException:  # cancelled mid-invocation: the worker's state is unknown
            st.busy.discard(worker)
            self._stop_later(worker)
            raise
        st.busy.discard(worker)
        report = invocation_report(fn, outcome)
        report.cold_start = cold
        if cold:
            report.init_duration_ms = worker.init_ms
        keep = (outcome.kind is Kind.result and report.status in (Status.succeeded, Status.failed)
                and worker.alive and not self._closed and not st.stale
                and worker.cpu_s + fn.timeout_s + 2 < self.limits.cpu_budget_for(fn))
        if keep and worker.strays:
            # Lambda freezes an idle sandbox; we cannot, so background processes end with the
            # invocation that started them (a fork bomb's children included).
            keep = False
            blog.info("function left processes running; worker stopped", strays=worker.strays)
        if keep:
            self._park(st, worker)
        else:
            self._stop_later(worker)
        if report.status in (Status.succeeded, Status.failed):
            if log_enabled(logging.DEBUG):
                blog.debug("invocation finished", status=report.status.value, cold=cold,
                           duration_ms=round(report.duration_ms, 3))
        else:
            blog.info("invocation ended abnormally; worker stopped", status=report.status.value,
                      message=(report.error or {}).get("message"), pid=worker.pid,
                      exit_code=report.exit_code, signal=report.signal)
        return report

    # ------------------------------------------------------------------ workers

    def _take_idle(self, st: _Version, version: str) -> Worker | None:
        while st.idle:
            w = st.idle.pop()
            # its reaping timer stays armed: _reap looks at when it was parked last (a timer
            # per invocation, armed and cancelled, was ~3% of the hub at batch 1)
            if w.alive and w.version == version:
                return w
            self._stop_later(w)
        return None

    def _park(self, st: _Version, w: Worker) -> None:
        st.idle.append(w)
        loop = asyncio.get_running_loop()
        w.parked_at = loop.time()
        if w.idle_handle is None:
            w.idle_handle = loop.call_later(self.idle_ttl_s, self._reap, st, w)

    def _forget_idle(self, st: _Version, w: Worker) -> None:
        """An idle worker died on its own (or was killed): it is no longer warm."""
        if w in st.idle:
            st.idle.remove(w)
            self._stop_later(w)
            self._maybe_forget(st)

    def _reap(self, st: _Version, w: Worker) -> None:
        w.idle_handle = None
        if w not in st.idle:
            return  # busy (its next _park arms a timer again) or gone
        left = w.parked_at + self.idle_ttl_s - asyncio.get_running_loop().time()
        if left > 0:  # used since the timer was armed: idle for less than idle_ttl_s yet
            w.idle_handle = asyncio.get_running_loop().call_later(left, self._reap, st, w)
            return
        if w in st.idle:
            st.idle.remove(w)
            log.debug("idle worker reaped", function=st.name, version=w.version, pid=w.pid)
            self._stop_later(w)
            self._maybe_forget(st)

    def _stop_later(self, w: Worker) -> None:
        w.kill()
        task = asyncio.get_running_loop().create_task(w.wait_closed())
        self._reaping.add(task)
        task.add_done_callback(self._reaping.discard)

    def _maybe_forget(self, st: _Version) -> None:
        """Drop a stale version's state once nothing is left in it (and a retired function's
        once it has no versions)."""
        f = self._fns.get(st.name)
        if (f is None or not st.stale or st.active or st.idle or st.busy or st.waiters
                or f.versions.get(st.version) is not st):
            return
        del f.versions[st.version]
        for k in _COUNTERS:
            f.past[k] += getattr(st, k)
        if f.retired and not f.versions:
            del self._fns[st.name]

    def _versions(self) -> list[_Version]:
        return [st for f in self._fns.values() for st in f.versions.values()]

    # ------------------------------------------------------------------ introspection

    def stats(self) -> dict[str, Any]:
        fns: dict[str, Any] = {}
        totals = {"warm": 0, "busy": 0, "queued": 0, "throttled_total": 0, "rejected_total": 0,
                  "invocations_total": 0, "cold_starts_total": 0}
        for name, f in self._fns.items():
            versions = {
                v: {"warm": len(st.idle), "busy": len(st.busy), "queued": len(st.waiters),
                    "live": v in f.live, **{k: getattr(st, k) for k in _COUNTERS}}
                for v, st in f.versions.items()
            }
            # the function's row: every version together; "version" is the one invoked last
            row: dict[str, Any] = {"version": f.last_version}
            for k in ("warm", "busy", "queued"):
                row[k] = sum(vr[k] for vr in versions.values())
            for k in _COUNTERS:
                row[k] = f.past[k] + sum(vr[k] for vr in versions.values())
            row["versions"] = versions
            fns[name] = row
            for k in totals:
                totals[k] += row[k]
        out = {"isolation": self.isolation, "functions": fns, "totals": totals}
        if self._prewarmed is not None:  # /readyz: spare workers parked, and taken so far
            pw = self._prewarmed
            out["spares"] = {"parked": len(pw.parked), "parked_network": len(pw.parked_network),
                             "taken_total": pw.taken_total}
        return out

    def workers(self, name: str | None = None) -> list[Worker]:
        """Live workers (idle and busy), e.g. to measure their memory."""
        out: list[Worker] = []
        for st in self._versions():
            if name is None or st.name == name:
                out += st.idle + list(st.busy)
        return out
