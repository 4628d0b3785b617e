"""One worker process: spawn it (sandboxed or not), talk to it, watch it, kill it.

Everything is event-loop driven without helper threads: the protocol socket, the function's
stdout/stderr pipes and a pidfd for the process are all registered with ``loop.add_reader``.
That makes "what did the function print during this invocation" exact: the runtime flushes
stdout/stderr *before* it writes its response frame, so when the response arrives, every byte of
the invocation's output is already in the pipes and one non-blocking drain collects it.

An invocation that ends without a response (timeout, crash, the hub's out-of-memory kill) keeps
its output too: the runtime line-buffers stdout/stderr (so each printed line is in the pipe as
soon as it is written, not in a buffer that dies with the process), the pipes are drained right
before the kill, and again once the process is gone -- a pipe keeps what was written to it after
its writer died, so ``take_output`` after the exit collects everything up to the last line.

The worker is untrusted: frames are size-checked JSON, anything unexpected is a protocol error
that ends the worker, and the durations we report are measured here, not taken from the worker.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import select
import signal
import socket
import subprocess
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable

from hub.events import json_depth_exceeds, json_value
from hub.sandbox.base import FunctionRuntime
from hub.sandbox.bwrap import SandboxConfigError, SpawnConfig, worker_command
from hub.sandbox.netns import Attachment
from hub.sandbox.network import NetworkUnavailable
from hub.sandbox.outcome import (
    Kind,
    Outcome,
    OutputCapture,
    as_float,
    as_int,
    descendants,
    is_signal,
    live_descendants,
    only_chain,
    tree_memory_bytes,
    tree_rss_bytes,
)

MAX_FRAME = 6 * 1024 * 1024 + 256 * 1024  # 6 MB result + envelope
STRAY_CHECK_EVERY = 8
_READ_CHUNK = 256 * 1024
_DRAIN_MAX_READS = 64  # per callback / drain: bounds how long a chatty worker can hold the loop
MEMORY_SAMPLE_S = 0.05  # how often a busy worker's process tree is measured
MEMORY_SLACK_MB = 16  # bwrap's own two processes and measurement jitter
MAX_FRAME_DEPTH = 102  # the runtime refuses results deeper than 100; +1 for the envelope
# Processes a healthy worker has below the process we spawned: bwrap's pid-1 and the runtime.
_EXPECTED_DESCENDANTS = {"bwrap": 2, "process": 0}


def _load_prctl() -> Any:
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the forked child, before exec: SIGKILL us when the hub's spawning thread dies."""
    _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


def runtime_config(fn: FunctionRuntime, cfg: SpawnConfig) -> dict[str, Any]:
    """What the runtime is told of its function: at its start, or a spare's at its assignment."""
    sandboxed = cfg.isolation == "bwrap"
    return {"handler": fn.handler, "name": fn.name, "version": fn.version, "memory_mb": fn.memory_mb,
            "timeout_s": fn.timeout_s, "event_format": fn.event_format,  # "aws": a Lambda context
            "pidns": sandboxed, "limits": cfg.limits.rlimits_for(fn, sandboxed=sandboxed)}


def _both(first: Callable[[], None], second: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        first()
        second()

    return run


class Worker:
    """A single worker process for one version of one function. One invocation at a time."""

    _ids = 0

    spare = False  # hub.sandbox.prewarm.Spare: started before its function is known

    def __init__(self, fn: FunctionRuntime, cfg: SpawnConfig) -> None:
        Worker._ids += 1
        self.wid = Worker._ids
        self.fn = fn
        self.version = fn.version
        self.cfg = cfg
        self.pid: int | None = None
        self.uid: int | None = None
        self.init_ms: float | None = None
        self.cpu_s = 0.0
        self.strays = 0  # processes the function left running after its last invocation
        self.invocations = 0
        self.last_used = time.monotonic()
        self.idle_handle: asyncio.TimerHandle | None = None
        self.parked_at = 0.0  # loop time it last became idle (the pool reaps idle_ttl_s after)
        self.on_exit: Callable[[Worker], None] | None = None  # the pool drops dead idle workers
        self._loop = asyncio.get_running_loop()
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._out_fds: list[int] = []
        self._out_poll: Any = None  # select.poll of the live output pipes: one syscall says which have data
        self._captures = [OutputCapture(cfg.output_limit), OutputCapture(cfg.output_limit)]
        self._pidfd: int | None = None
        self._rbuf = bytearray()
        self._frames: deque[dict[str, Any]] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None  # wakes _next (see there)
        self._eof = False
        self._exited: asyncio.Future[int] = self._loop.create_future()
        self._killed = False
        self._protocol_error = ""
        self._announced_exit: int | None = None
        self._expecting = False  # exactly one frame may arrive per request (ready or response)
        # The request a response must name: a frame the handler forged (it can write to the
        # protocol socket) for another request -- or the real answer of an earlier request whose
        # handler forged one -- never answers this one; the worker ends instead.
        self.seq = 0
        self._expect_seq: int | None = None
        self._scratch: Path | None = None
        self._mem_peak = 0
        self._oom_killed = False
        self._chain: list[int] | None = None  # the worker's own processes below pid, in order
        self._net: Attachment | None = None  # pasta and the rules of a worker with network

    # ------------------------------------------------------------------ lifecycle

    @property
    def alive(self) -> bool:
        return not self._exited.done() and not self._killed and not self._protocol_error

    async def start(self, init_timeout_s: float) -> Outcome:
        """Spawn and wait for the runtime to import the handler. Never raises."""
        t0 = time.perf_counter()
        self._expecting = True
        try:
            self._spawn()
        except (SandboxConfigError, NetworkUnavailable) as exc:  # e.g. a NUL in env
            if not self._exited.done():
                self._exited.set_result(-1)
            self._cleanup()
            kind = "NetworkUnavailable" if isinstance(exc, NetworkUnavailable) else "InvalidConfiguration"
            return Outcome(Kind.init_error, frame={"error": {
                "type": kind, "message": f"refused to start the worker: {exc}",
                "traceback": ""}}, message=str(exc))
        except Exception as exc:  # bwrap/python missing, fd exhaustion, ...
            if not self._exited.done():
                self._exited.set_result(-1)
            self._cleanup()
            return Outcome(Kind.exited, message=f"could not start the worker: {exc!r}",
                           exit_code=None)
        if self._net is not None and self._net.gate:
            problem = await self._attach_network(init_timeout_s)
            if problem:
                self.kill()
                await self._wait_exit(5.0)
                self.init_ms = (time.perf_counter() - t0) * 1000.0
                out = Outcome(Kind.init_error, frame={"error": {
                    "type": "NetworkUnavailable", "message": problem, "traceback": ""}},
                    message=problem)
                out.stdout, out.stderr, out.truncated = self.take_output()
                return out
            init_timeout_s -= time.perf_counter() - t0
        return await self._ready(init_timeout_s, t0)

    async def _ready(self, init_timeout_s: float, t0: float) -> Outcome:
        out = await self._next(init_timeout_s, t0, sample=False)
        self.init_ms = (time.perf_counter() - t0) * 1000.0
        if self._net is not None:
            self._net.started()
        if out.kind is Kind.result:
            # The runtime's first frame must be ready/init_error.
            op = out.frame.get("op")
            if op == "ready":
                out.kind = Kind.ready
            elif op == "init_error":
                out.kind = Kind.init_error
            else:
                self._protocol(f"unexpected first frame {op!r}")
                out = Outcome(Kind.protocol, message=self._protocol_error)
        if out.kind is not Kind.ready:
            out.stdout, out.stderr, out.truncated = self.take_output()
        return out

    async def _attach_network(self, timeout_s: float) -> str:
        """Wire the worker's namespace up (hub.sandbox.network), then let the runtime import the
        function. Returns why not ("" when the network is up)."""
        assert self._net is not None and self._sock is not None
        attach = asyncio.ensure_future(self._net.attach())
        try:
            done, _ = await asyncio.wait(  # type: ignore[type-var]
                {attach, asyncio.shield(self._exited)}, timeout=timeout_s,
                return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not attach.done():
                attach.cancel()
        if attach not in done:
            if self._exited.done():
                return "the sandbox ended while its network was being set up"
            return f"the network was not ready within {timeout_s:.2f} seconds"
        exc = attach.exception()
        if exc is not None:
            return f"cannot set up the function's network: {exc}"
        gate = b'{"op":"network","ok":true}'
        try:
            self._sock.send(len(gate).to_bytes(4, "big") + gate)  # 30 bytes into an empty socket
        except OSError as err:
            return f"the worker did not take its network: {err}"
        return ""

    def _spawn(self) -> None:
        cfg = self.cfg
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock = parent
        parent.setblocking(False)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        self._out_fds = [out_r, err_r]
        config = runtime_config(self.fn, cfg)
        config["fd"] = child.fileno()
        if self.spare:  # the function's part comes with its assignment
            config = {"fd": child.fileno(), "pidns": config["pidns"], "spare": True}
        try:
            cmd = worker_command(self.fn, cfg, config, uid_of=self._allocate_uid,
                                 scratch=self._make_scratch)
        except BaseException:
            child.close()
            os.close(out_w)
            os.close(err_w)
            raise
        # bwrap has --die-with-parent; a plain process gets SIGKILL when the hub dies (and the
        # seccomp filter, which bwrap installs itself for its own workers).
        preexec = cmd.preexec  # bwrap: enter a spare network namespace (hub.sandbox.netns)
        if cfg.isolation != "bwrap" and _PRCTL is not None:
            preexec = _die_with_parent if cmd.preexec is None else _both(_die_with_parent, cmd.preexec)
        self._net = cmd.attachment
        try:
            self._proc = subprocess.Popen(
                cmd.argv, stdin=subprocess.DEVNULL, stdout=out_w, stderr=err_w,
                pass_fds=[child.fileno(), *cmd.pass_fds], close_fds=True, env=cmd.env,
                cwd=cmd.cwd, start_new_session=True, preexec_fn=preexec)
        finally:
            child.close()
            for fd in (out_w, err_w, *cmd.close_after):
                os.close(fd)
            if self._net is not None:
                self._net.close_child_end()
        self.pid = self._proc.pid
        loop = self._loop
        self._out_poll = select.poll()
        for i, fd in enumerate(self._out_fds):
            os.set_blocking(fd, False)
            loop.add_reader(fd, self._on_output, i)
            self._out_poll.register(fd, select.POLLIN)
        loop.add_reader(parent.fileno(), self._on_sock)
        try:
            self._pidfd = os.pidfd_open(self.pid)
            loop.add_reader(self._pidfd, self._on_exit)
        except (AttributeError, OSError):  # kernel < 5.3: poll instead
            self._pidfd = None
            loop.call_later(0.05, self._poll_exit)

    def _allocate_uid(self) -> int | None:
        if self.cfg.userns is None:
            return None
        self.uid = self.cfg.userns.allocate_uid()
        return self.uid

    def _make_scratch(self) -> Path | None:
        if self.cfg.scratch_dir is None:
            return None
        self._scratch = self.cfg.scratch_dir / f"w{os.getpid()}-{self.wid}"
        self._scratch.mkdir(mode=0o700, parents=True, exist_ok=True)
        return self._scratch

    def kill(self) -> None:
        """SIGKILL the worker and everything it started. Idempotent; see :meth:`wait_closed`."""
        if self._killed:
            return
        self._killed = True
        if self.idle_handle is not None:
            self.idle_handle.cancel()
            self.idle_handle = None
        if self.pid is None or self._exited.done():
            self._cleanup()
            return
        if self._net is not None:
            self._net.close()  # pasta goes with its worker
        self._drain_all()  # what it printed so far is ours before anything dies (the rest: after)
        victims = descendants(self.pid) if self.cfg.isolation != "bwrap" else []
        try:
            # Our child leads its own session/process group. Under bwrap, killing the monitor
            # kills bwrap's init (PDEATHSIG) and with it the whole pid namespace.
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        for pid in victims:  # process mode: children that escaped into their own session
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self._wake()

    async def wait_closed(self, timeout: float = 10.0) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(self._exited), timeout)
        except asyncio.TimeoutError:
            pass
        self._cleanup()

    # ------------------------------------------------------------------ invocation

    def next_seq(self) -> int:
        """The number the next request carries (``"seq"``) and its response must echo."""
        self.seq += 1
        return self.seq

    async def call(self, data: bytes, timeout_s: float) -> Outcome:
        """Send one invoke frame (JSON bytes, carrying ``"seq": self.seq``) and wait for its
        response, the timeout or the end."""
        assert self._sock is not None
        self._expect_seq = self.seq
        self.invocations += 1
        self.last_used = time.monotonic()
        frame = len(data).to_bytes(4, "big") + data
        t0 = time.perf_counter()
        self._expecting = True
        try:
            sent = self._sock.send(frame)  # the common case: all of it, without a loop round trip
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            sent = len(frame)  # it died; _next reports how
        if sent < len(frame):
            try:
                await asyncio.wait_for(self._loop.sock_sendall(self._sock, frame[sent:]), timeout_s)
            except asyncio.TimeoutError:  # it stopped reading: as good as hung
                self.kill()
                await self._wait_exit(5.0)
                out = Outcome(Kind.timeout, duration_ms=(time.perf_counter() - t0) * 1000.0)
                out.stdout, out.stderr, out.truncated = self.take_output()
                return out
            except OSError:
                pass
        self._mem_peak = 0
        out = await self._next(timeout_s, t0)
        out.peak_bytes = self._mem_peak
        out.stdout, out.stderr, out.truncated = self.take_output()
        if self._oom_killed:
            # Its processes together went over memory_mb (RLIMIT_AS is per process only).
            code = await self._wait_exit(5.0)
            self._fill_exit(out, code)
            out.kind, out.frame, out.oom_killed = Kind.exited, {}, True
            return out
        if out.kind is Kind.result and self._protocol_error:
            # More than one frame came back (someone else wrote to the socket): trust none.
            self.kill()
            out.kind, out.message, out.frame = Kind.protocol, self._protocol_error, {}
        if out.kind is Kind.result:
            op = out.frame.get("op")
            if op == "exit":  # sys.exit() in the handler: the process ends right after this
                self._announced_exit = as_int(out.frame.get("code"))
                code = await self._wait_exit(2.0)
                out = Outcome(Kind.exited, duration_ms=out.duration_ms, stdout=out.stdout,
                              stderr=out.stderr, truncated=out.truncated)
                self._fill_exit(out, code)
            elif op != "result":
                self._protocol(f"unexpected frame {op!r}")
                out.kind, out.message = Kind.protocol, self._protocol_error
            else:
                # Informational only (bounded); the kernel enforces the CPU budget itself.
                self.cpu_s = as_float(out.frame.get("cpu_s"))
                # Never believe the worker about its own processes: count them from here --
                # after each of a worker's first invocations, then every STRAY_CHECK_EVERY-th (a
                # function that leaves processes behind does it on every call or early; Lambda
                # itself keeps them, frozen, across warm invocations).
                if self.invocations <= STRAY_CHECK_EVERY or self.invocations % STRAY_CHECK_EVERY == 0:
                    self.strays = self.count_strays()
        return out

    def count_strays(self) -> int:
        """Live processes beyond the worker's own (bwrap init + runtime), counted by the hub.

        This runs after every invocation, so the usual answer comes cheap: once the worker's
        own chain of processes is known, "each of them has exactly the next one as its only
        child" (a few small /proc reads) means no strays; anything else gets the full walk."""
        if self.pid is None or self._exited.done():
            return 0
        expected = _EXPECTED_DESCENDANTS.get(self.cfg.isolation, 0)
        if self._chain is not None and only_chain(self.pid, self._chain):
            return 0
        found = live_descendants(self.pid)
        if self._chain is None and len(found) == expected:
            self._chain = found  # parent before child: the walk is depth first from the top
        return max(0, len(found) - expected)

    def memory_limit_bytes(self) -> int:
        mb = max(self.fn.memory_mb, self.cfg.limits.min_memory_mb) + MEMORY_SLACK_MB
        return mb * 1024 * 1024

    def _sample_memory(self) -> None:
        """Every MEMORY_SAMPLE_S during an invocation (from :meth:`_next`): the whole tree
        against memory_mb."""
        if self.pid is None or self._exited.done() or self._killed:
            return
        used = tree_memory_bytes(self.pid)
        self._mem_peak = max(self._mem_peak, used)
        if used > self.memory_limit_bytes():
            self._oom_killed = True
            self.kill()

    async def _next(self, timeout_s: float, t0: float, sample: bool = True) -> Outcome:
        # One timer, not one per wait: it wakes this loop at the deadline or at the next memory
        # sample, whichever comes first. A timer armed by an earlier call that fires sooner stays
        # (an early wake only loops once more), so a busy worker arms one every MEMORY_SAMPLE_S,
        # not one per call (armed and cancelled per call, timers were ~2-4 us of every call).
        deadline = self._loop.time() + timeout_s
        sample_at = self._loop.time() + MEMORY_SAMPLE_S if sample else math.inf  # (not while it starts)
        while True:
            if self._frames:
                frame = self._frames.popleft()
                return Outcome(Kind.result, frame=frame,
                               duration_ms=(time.perf_counter() - t0) * 1000.0)
            dur = (time.perf_counter() - t0) * 1000.0
            if self._protocol_error:
                self.kill()
                await self._wait_exit(5.0)
                return Outcome(Kind.protocol, duration_ms=dur, message=self._protocol_error)
            if self._eof or self._exited.done() or self._killed:
                if not self._eof and self._sock is not None:
                    self._on_sock()  # a last frame may still sit in the socket
                    if self._frames or self._protocol_error:
                        continue
                code = await self._wait_exit(5.0)
                out = Outcome(Kind.exited, duration_ms=(time.perf_counter() - t0) * 1000.0)
                self._fill_exit(out, code)
                return out
            now = self._loop.time()
            if deadline - now <= 0:
                self.kill()
                await self._wait_exit(5.0)
                return Outcome(Kind.timeout, duration_ms=(time.perf_counter() - t0) * 1000.0)
            if now >= sample_at - MEMORY_SAMPLE_S / 10:  # (a timer may run a hair early)
                self._sample_memory()  # over memory_mb: killed, and the exit above reports it
                sample_at = now + MEMORY_SAMPLE_S
                continue
            self._waiter = self._loop.create_future()
            when = min(deadline, sample_at)
            if self._timer is None or self._timer.when() > when:
                if self._timer is not None:
                    self._timer.cancel()
                self._timer = self._loop.call_at(when, self._on_timer)
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def _wait_exit(self, timeout: float) -> int | None:
        if not self._exited.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._exited), timeout)
            except asyncio.TimeoutError:
                self.kill()
                try:
                    await asyncio.wait_for(asyncio.shield(self._exited), 5.0)
                except asyncio.TimeoutError:
                    return None
        return self._exited.result()

    def _fill_exit(self, out: Outcome, code: int | None) -> None:
        """Translate a wait status into exit code / signal (bwrap reports 128+N for signals)."""
        out.kind = Kind.exited
        if code is None:
            out.message = "worker did not exit"
            return
        if code < 0:
            out.signal = -code
        elif self._announced_exit is not None:
            out.exit_code = self._announced_exit
            out.voluntary_exit = True
        elif self.cfg.isolation == "bwrap" and code > 128 and is_signal(code - 128):
            out.signal = code - 128
        else:
            out.exit_code = code

    def take_output(self) -> tuple[str, str, bool]:
        self._drain_all()
        out, t1 = self._captures[0].take()
        err, t2 = self._captures[1].take()
        return out, err, t1 or t2

    # ------------------------------------------------------------------ loop callbacks

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _on_timer(self) -> None:
        self._timer = None
        self._wake()

    def _protocol(self, message: str) -> None:
        if not self._protocol_error:
            self._protocol_error = f"protocol error: {message}"
        if self._waiter is None:  # idle: nobody will look, so end it now
            self.kill()
        self._wake()

    def _on_sock(self) -> None:
        assert self._sock is not None
        for _ in range(_DRAIN_MAX_READS):
            try:
                chunk = self._sock.recv(_READ_CHUNK)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                chunk = b""
            if not chunk:
                self._eof = True
                self._loop.remove_reader(self._sock.fileno())
                break
            self._rbuf += chunk
            if len(self._rbuf) < _READ_CHUNK:
                break
        try:
            self._parse()
        except Exception as exc:  # never let a forged frame escape into the event loop
            self._rbuf.clear()
            self._protocol(f"unreadable frame: {type(exc).__name__}")
        self._wake()

    def _parse(self) -> None:
        buf = self._rbuf
        while len(buf) >= 4:
            n = int.from_bytes(buf[:4], "big")
            if n > MAX_FRAME:
                self._protocol(f"frame of {n} bytes exceeds {MAX_FRAME}")
                buf.clear()
                return
            if len(buf) < 4 + n:
                return
            body = bytes(buf[4:4 + n])
            del buf[:4 + n]
            try:
                # orjson when it reads the frame as the stdlib would (1.0 against 2.4 us a frame);
                # big integers, NaN, lone surrogates and deep nesting take the stdlib parser
                fast = json_value(body)
                frame = fast[0] if fast is not None else json.loads(body)
            except RecursionError:
                self._protocol("invalid JSON frame: nested too deeply")
                return
            except Exception as exc:  # anything a forged frame can provoke ends the worker
                self._protocol(f"invalid JSON frame: {type(exc).__name__}: {str(exc)[:200]}")
                return
            if not isinstance(frame, dict):
                self._protocol("frame is not an object")
                return
            if (body.count(b"[") + body.count(b"{") > MAX_FRAME_DEPTH
                    and json_depth_exceeds(frame, MAX_FRAME_DEPTH)):
                self._protocol("frame nested too deeply")
                return
            if not self._expecting:
                # Nobody asked: a function writing to the protocol socket behind our back.
                self._protocol(f"unsolicited frame {str(frame.get('op'))[:40]!r}")
                return
            if self._expect_seq is not None and frame.get("seq") != self._expect_seq:
                self._protocol(f"a response for request {str(frame.get('seq'))[:20]} while request "
                               f"{self._expect_seq} runs (forged, or late after a forged one)")
                return
            self._expecting = False
            self._frames.append(frame)

    def _on_output(self, i: int) -> None:
        self._drain(i)

    def _drain_all(self) -> None:
        if self._out_poll is not None:  # after every invocation: usually nothing to read
            fds = self._out_fds
            for fd, _ in self._out_poll.poll(0):
                if fd in fds:
                    self._drain(fds.index(fd))
            return
        for i, fd in enumerate(self._out_fds):
            if fd >= 0:
                self._drain(i)

    def _drain(self, i: int) -> None:
        fd = self._out_fds[i]
        if fd < 0:
            return
        cap = self._captures[i]
        for _ in range(_DRAIN_MAX_READS):
            try:
                data = os.read(fd, 65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                self._loop.remove_reader(fd)
                if self._out_poll is not None:
                    self._out_poll.unregister(fd)
                os.close(fd)
                self._out_fds[i] = -1
                return
            cap.feed(data)

    def _on_exit(self) -> None:
        assert self._proc is not None
        code = self._proc.poll()
        if code is None:
            return
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        if not self._exited.done():
            self._exited.set_result(code)
        self._wake()
        if self.on_exit is not None:
            self.on_exit(self)

    def _poll_exit(self) -> None:
        if self._proc is None or self._exited.done():
            return
        if self._proc.poll() is None:
            self._loop.call_later(0.05, self._poll_exit)
        else:
            self._on_exit()

    def _cleanup(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._net is not None:
            self._net.close()
        if self._sock is not None:
            try:
                self._loop.remove_reader(self._sock.fileno())
            except (ValueError, OSError):
                pass
            self._sock.close()
            self._sock = None
        self._out_poll = None
        for i, fd in enumerate(self._out_fds):
            if fd >= 0:
                self._loop.remove_reader(fd)
                os.close(fd)
                self._out_fds[i] = -1
        if self._pidfd is not None and self._exited.done():
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        if self.uid is not None and self.cfg.userns is not None and self._exited.done():
            self.cfg.userns.release_uid(self.uid)
            self.uid = None
        if self._scratch is not None:
            import shutil

            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    # ------------------------------------------------------------------ introspection

    def process_ids(self) -> list[int]:
        """Host pids of the worker's processes (bwrap monitor and init, runtime, children)."""
        if self.pid is None or self._exited.done():
            return []
        return [self.pid, *descendants(self.pid)]

    def rss_bytes(self) -> int:
        """Resident memory summed over the worker's processes."""
        if self.pid is None or self._exited.done():
            return 0
        return tree_rss_bytes(self.pid)
