"""Wiring a worker's network namespace: pasta and the rules, ahead of time when possible.

pasta needs ~20 ms of CPU to start (it sets up large flow tables), more than the rest of a cold
start on these machines. So the hub, when it runs as root, keeps a *spare*: a network namespace
it made itself (``unshare(CLONE_NEWNET)`` in a throwaway thread, held by an fd), with pasta
already serving it and the default rules loaded. A worker of a function with ``network: true``
takes the spare (bwrap starts inside it: ``setns`` before ``exec``, no ``--unshare-net``), and a
new spare is made in the background. Such a namespace belongs to the host's user namespace, not
the sandbox's: even a process that gained every capability of the sandbox's user namespace could
not change its rules or routes. A spare is used once, by one worker, and dies with it.

When no spare fits (the hub is not root; the function's ``allow`` list forwards loopback ports,
which pasta takes only at start; the spare is being made; a burst took it), the worker gets a
fresh namespace from bwrap (``--unshare-net``, ``--info-fd`` tells the hub its pid) and the hub
attaches pasta and loads the rules while the interpreter starts. An ``allow`` list without
loopback ports can still use a spare: its rules replace the default ones, in one nft transaction.
Either way, when rules or pasta are not in place yet the runtime waits for one frame from the hub
(``net_gate``) before it imports the function: the handler never runs on a half-wired network.

pasta and nft run as children of the hub with a parent-death signal; pasta runs in the foreground
(``-f``) and is killed with its worker. pasta runs as root (``--runas 0``: as root it cannot drop
to ``nobody`` and still join a namespace owned by root), confined by its own sandbox (empty mount
namespace, seccomp, capabilities dropped).
"""

from __future__ import annotations

import asyncio
import ctypes
import ipaddress
import json
import os
import signal
import subprocess
import threading
import time
from typing import Any

import structlog

from hub.sandbox.base import NetworkPolicy
from hub.sandbox.network import (
    IPNet,
    NetworkConfig,
    NetworkUnavailable,
    host_addresses,
    ruleset,
)

log = structlog.get_logger("hub.sandbox.network")

_CLONE_NEWNET = 0x40000000
SPARE_MAX_AGE_S = 120.0  # the host's addresses (in the rules) may change: spares do not age far


def _libc_fn(name: str) -> Any:
    fn = getattr(ctypes.CDLL(None, use_errno=True), name)
    fn.restype = ctypes.c_int
    return fn


_PRCTL = _libc_fn("prctl")  # looked up here: a forked child must not load libraries
_PRCTL.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_SETNS = _libc_fn("setns")
_UNSHARE = _libc_fn("unshare")
_REAPING: set[asyncio.Task[int]] = set()


def _pdeathsig() -> None:
    """In the forked child: SIGKILL when the hub (its spawning thread) dies."""
    _PRCTL(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG


def enter_netns(fd: int) -> Any:
    """A preexec function for bwrap: start inside the namespace ``fd`` refers to."""
    def enter() -> None:
        if _SETNS(fd, _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns(CLONE_NEWNET)")

    return enter


def _new_netns() -> int:
    """A fresh network namespace, held by the returned fd (root only: CAP_SYS_ADMIN)."""
    result: list[int | BaseException] = []

    def make() -> None:  # namespaces are per thread: this thread's dies with it
        try:
            if _UNSHARE(_CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET)")
            result.append(os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC))
        except BaseException as exc:
            result.append(exc)

    t = threading.Thread(target=make, name="netns")
    t.start()
    t.join()
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]


class _Procs:
    """The helper processes of one namespace, on the event loop (pidfds, no threads)."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.procs: list[subprocess.Popen[bytes]] = []
        self.fds: list[int] = []

    def serving(self) -> bool:
        """Its pasta still runs: a namespace whose pasta died (OOM-killed, ...) has no route out."""
        return any(proc.poll() is None for proc in self.procs)

    def readable(self, fd: int) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = self.loop.create_future()

        def ready() -> None:
            self.loop.remove_reader(fd)
            if not fut.done():
                fut.set_result(None)

        self.loop.add_reader(fd, ready)
        fut.add_done_callback(lambda _: self.loop.remove_reader(fd))
        return fut

    async def exited(self, proc: subprocess.Popen[bytes]) -> int:
        try:
            fd = os.pidfd_open(proc.pid)
        except ProcessLookupError:
            return proc.wait()
        try:
            while proc.poll() is None:
                await self.readable(fd)
        finally:
            os.close(fd)
        return proc.returncode

    def spawn(self, argv: list[str], **kw: Any) -> tuple[subprocess.Popen[bytes], int]:
        # stderr into a memfd, not a pipe: a long-lived pasta that logs must never block on a
        # full pipe (nor die of SIGPIPE once we stop reading); it is read only on failure.
        err = os.memfd_create("sandbox-net-stderr", os.MFD_CLOEXEC)
        self.fds.append(err)
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, close_fds=True,
                                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                                preexec_fn=_pdeathsig, **kw)
        self.procs.append(proc)
        return proc, err

    @staticmethod
    def stderr(fd: int) -> str:
        try:
            text = os.pread(fd, 16384, 0).decode(errors="replace")
        except OSError:
            text = ""
        noise = ("syslog", "uid_map", "user mappings")
        return " | ".join(ln for ln in text.splitlines() if not any(n in ln for n in noise))[-400:]

    async def rules(self, cfg: NetworkConfig, netns: str, userns: str | None, text: str,
                    pass_fds: tuple[int, ...] = ()) -> None:
        proc, err = self.spawn(cfg.nft_argv(netns, userns), stdin=subprocess.PIPE, pass_fds=pass_fds)
        assert proc.stdin is not None
        proc.stdin.write(text.encode())  # a few KB: fits in the pipe, never blocks
        proc.stdin.close()
        if await self.exited(proc) != 0:
            raise NetworkUnavailable(f"nft refused the sandbox rules: {self.stderr(err)}")

    async def pasta(self, cfg: NetworkConfig, netns: str, userns: str | None, tcp_ns: str,
                    pass_fds: tuple[int, ...] = ()) -> None:
        ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
        self.fds.append(ready_r)
        try:
            proc, err = self.spawn(cfg.pasta_argv(netns, userns, tcp_ns, ready_w),
                                   pass_fds=(ready_w, *pass_fds))
        finally:
            os.close(ready_w)
        exited = asyncio.ensure_future(self.exited(proc))
        ready = self.readable(ready_r)  # pasta writes its pid file once its setup is done
        try:
            await asyncio.wait({exited, ready}, return_when=asyncio.FIRST_COMPLETED)  # type: ignore[type-var]
        finally:
            ready.cancel()
        if not ready.done() or exited.done() or not os.read(ready_r, 64):
            exited.cancel()
            raise NetworkUnavailable(f"pasta failed (exit {proc.poll()}): {self.stderr(err)}")
        exited.cancel()

    def close(self) -> None:
        for fd in self.fds:
            try:
                self.loop.remove_reader(fd)
            except (ValueError, OSError):
                pass
            os.close(fd)
        self.fds = []
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    proc.kill()
                except ProcessLookupError:
                    pass
                task = self.loop.create_task(self.exited(proc))  # reaped once it is gone
                _REAPING.add(task)
                task.add_done_callback(_REAPING.discard)
        self.procs = []


class Spare:
    """A namespace the hub made, pasta serving it and the default rules loaded."""

    def __init__(self, fd: int, procs: _Procs, hosts: list[IPNet]) -> None:
        self.fd = fd
        self.procs = procs
        self.born = time.monotonic()
        self.hosts = hosts  # the host's addresses its rules refuse: stale once the host's change

    @classmethod
    async def make(cls, cfg: NetworkConfig) -> Spare:
        fd = await asyncio.to_thread(_new_netns)
        procs = _Procs()
        path = f"/proc/self/fd/{fd}"  # each helper gets the fd at the same number
        hosts = host_addresses()
        try:
            await asyncio.gather(procs.rules(cfg, path, None, ruleset([], cfg.deny, hosts), (fd,)),
                                 procs.pasta(cfg, path, None, "none", (fd,)))
        except BaseException:
            procs.close()
            os.close(fd)
            raise
        return cls(fd, procs, hosts)

    def close(self) -> None:
        self.procs.close()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Spares:
    """Keeps ``target`` spares ready once a function with network has been seen (root only)."""

    def __init__(self, cfg: NetworkConfig, target: int = 1) -> None:
        self.cfg = cfg
        self.target = target
        self.ready: list[Spare] = []
        self._making: asyncio.Task[None] | None = None
        self._closed = False
        self._failed = False

    def take(self, policy: NetworkPolicy) -> Spare | None:
        spare = None
        hosts: list[IPNet] = host_addresses() if self.ready else []  # ~0.1 ms: /proc/net
        while self.ready and spare is None:
            cand = self.ready.pop(0)
            # a host address added since it was wired is not refused by its rules (0.0.0.0 servers)
            if (time.monotonic() - cand.born > SPARE_MAX_AGE_S or cand.hosts != hosts
                    or not cand.procs.serving()):
                cand.close()
            else:
                spare = cand
        return spare  # the next one is made once this worker has started (see Attachment.started)

    def fill(self) -> None:
        if self._closed or self._failed or self._making is not None or len(self.ready) >= self.target:
            return
        self._making = asyncio.get_running_loop().create_task(self._make())

    async def _make(self) -> None:
        try:
            while not self._closed and len(self.ready) < self.target:
                spare = await Spare.make(self.cfg)
                if self._closed:
                    spare.close()
                else:
                    self.ready.append(spare)
        except Exception as exc:  # the on-demand path still works, and reports its own errors
            self._failed = True
            log.warning("cannot prepare network namespaces ahead of time", error=str(exc))
        finally:
            self._making = None

    async def close(self) -> None:
        self._closed = True
        if self._making is not None:
            self._making.cancel()
            await asyncio.gather(self._making, return_exceptions=True)
        for spare in self.ready:
            spare.close()
        self.ready = []


class Attachment:
    """The network of one worker: a spare taken, or a namespace bwrap makes and the hub wires.

    ``ns_fd`` (spare): bwrap starts inside it. ``info_w`` (otherwise): bwrap writes its child's
    pid there. ``gate``: the runtime must wait for the hub's go before importing the function."""

    def __init__(self, cfg: NetworkConfig, policy: NetworkPolicy, spares: Spares | None) -> None:
        self.cfg = cfg
        self.policy = policy
        # a spare's pasta forwards no loopback port, and names are resolved per worker: those
        # policies get a namespace of their own
        own = any(_needs_own(d.host) for d in policy.allow)
        self._spares = spares if not own else None
        self._spare = spares.take(policy) if spares is not None and not own else None
        self.ns_fd = self._spare.fd if self._spare is not None else -1
        self.info_r, self.info_w = os.pipe2(os.O_CLOEXEC) if self._spare is None else (-1, -1)
        self.gate = self._spare is None or bool(policy.allow)
        self.born = self._spare.born if self._spare is not None else time.monotonic()  # its rules' age
        self.hosts = self._spare.hosts if self._spare is not None else None  # ... and host addresses
        self._procs = self._spare.procs if self._spare is not None else _Procs()
        self._closed = False

    async def _child_pid(self) -> int:
        os.set_blocking(self.info_r, False)
        buf = b""
        while True:
            await self._procs.readable(self.info_r)
            try:
                chunk = os.read(self.info_r, 4096)
            except BlockingIOError:
                continue
            if not chunk:
                raise NetworkUnavailable("the sandbox ended before its namespace was ready")
            buf += chunk
            try:
                return int(json.loads(buf)["child-pid"])
            except (ValueError, KeyError, TypeError):
                if len(buf) > 65536:
                    raise NetworkUnavailable("bwrap wrote no child-pid") from None

    async def attach(self) -> None:
        """Load the rules (and start pasta) where that was not done ahead of time."""
        plan = asyncio.ensure_future(self.cfg.plan(self.policy))  # names resolve meanwhile
        try:
            if self._spare is not None:
                rules, _ = await plan
                path = f"/proc/self/fd/{self.ns_fd}"
                replace = "delete table inet hub_sandbox\n" + rules  # one transaction
                await self._procs.rules(self.cfg, path, None, replace, (self.ns_fd,))
                return
            pid = await self._child_pid()
            rules, tcp_ns = await plan
        finally:
            plan.cancel()
        netns = f"/proc/{pid}/ns/net"
        userns = None if self.cfg.as_root else f"/proc/{pid}/ns/user"
        results = await asyncio.gather(self._procs.rules(self.cfg, netns, userns, rules),
                                       self._procs.pasta(self.cfg, netns, userns, tcp_ns),
                                       return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r

    def serving(self) -> bool:
        return self._procs.serving()

    def started(self) -> None:
        """The worker is up (or failed): now make the next spare, not while it competed with
        this start for the CPU."""
        if self._spares is not None:
            self._spares.fill()

    def close_child_end(self) -> None:
        """After the spawn: the info pipe's write end belongs to bwrap alone."""
        if self.info_w >= 0:
            os.close(self.info_w)
            self.info_w = -1

    def close(self) -> None:
        """Stop pasta (the worker is gone or going) and drop the namespace; idempotent."""
        if self._closed:
            return
        self._closed = True
        self.close_child_end()
        for fd in (self.info_r,):
            if fd >= 0:
                try:
                    self._procs.loop.remove_reader(fd)
                except (ValueError, OSError):
                    pass
                os.close(fd)
        self.info_r = -1
        if self._spare is not None:
            self._spare.close()
            self.ns_fd = -1
        else:
            self._procs.close()


def _needs_own(host: str) -> bool:
    """A loopback destination (a port forward pasta takes at start) or a name (which may
    resolve to loopback)."""
    try:
        return ipaddress.ip_network(host).is_loopback
    except ValueError:
        return True
