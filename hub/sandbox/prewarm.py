"""Spare workers: sandboxes started before their function is known, so a cold start skips them.

Most of a cold start is the sandbox's and the interpreter's own start (bwrap's namespaces and
~30 mounts, the seccomp filter, setpriv, ``python -I -S`` and the runtime), not the function's
import: bench/README.md has the breakdown. A pool with ``spares > 0`` keeps that many workers
started ahead of time; the first invocation of a function that has no warm worker takes one,
hands it its function, and a replacement is started.

What keeps this as isolated as a worker started for its function:

- **No function ran in a spare before.** Its runtime stops before anything function-specific:
  it waits on the protocol socket for ``{"op": "assign"}`` (hub.sandbox.runtime) and only then
  applies the function's rlimits, puts its code on ``sys.path`` and imports the handler.
- **One function, once.** A spare is taken by one function's version and from then on is that
  version's worker, stopped like any other; it never returns here.
- **The same sandbox.** bwrap's command line is the one a worker of a plain function gets
  (:meth:`hub.sandbox.bwrap.BwrapCommand.argv`, seccomp included), with its own host uid from the
  start; only its code directory is an empty directory of its own, bound read-only at
  ``/var/task``. At assignment the hub puts the function's code in that directory (hard links,
  or copies across file systems); the sandbox sees it through the bind it already has (a bind
  shows the directory's live contents: no mount into a running sandbox, no mount propagation).
  ``LAMBDA_TASK_ROOT``, the cwd and ``__file__`` are what a fresh worker's are.
- **Env and secrets arrive with the assignment**, over the protocol socket; until then the
  process has only the neutral defaults every function gets (PATH, HOME, LANG, TMPDIR).

Who gets one: functions with little code (``_MOST_ENTRIES``), without dependencies (``/opt/python``
would need a mount inside a running sandbox) whose env sets nothing the interpreter or the loader
reads only at their start (``LANG``/``LC_*``, ``LD_*``, ...), and either without network or with
``network: true`` and no ``allow`` list. The latter take a *network spare*: a spare started inside
one of the network namespaces hub.sandbox.netns wires ahead of time (pasta serving it, the default
rules loaded: what a fresh worker of such a function gets when a namespace is ready), kept once a
function with network has been seen (as netns does), and, like those namespaces, not handed out
once its rules are older than ``SPARE_MAX_AGE_S``, the host's addresses differ from the ones its
rules refuse (an address the host gained since was reachable from it) or its pasta has died (no
route out: the worker would stay warm without network). Everything else starts a worker as before.

The spare directories of a pool live below one directory of its own, ``flock``-ed while the pool
lives: the next hub's start removes the ones no live pool holds (a hub killed with -9; the pid in
the name is no proof, a restarted container's hub has the same one). The code is put in place
without recursion and without following a link; code of more than ``_MOST_ENTRIES`` files and
directories gets a fresh worker (linking and removing them is hub CPU a bind never spends: a
version may hold 1000 files 511 directories deep each).

Cost: a parked spare uses no CPU and the memory of an idle warm worker (bench/README.md); a
network spare holds its pasta too (~30 MB, and netns then prepares its next namespace). A burst
of more first invocations than there are spares: the first ``spares`` take one, the rest start
as before (the replacements start 20 ms after a spare is taken, next to them). A spare that dies
while parked is replaced after a back-off that grows while spares keep dying young. A version that
did not start in a spare (its import crashed, ...) starts fresh workers for ``_COOL_S``: a crash
loop would otherwise take every spare, each replaced at a fresh start's cost.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import shutil
import stat
import time
from pathlib import Path
from typing import Callable

import structlog

from hub.sandbox.base import FunctionRuntime, network_policy
from hub.sandbox.bwrap import TASK_DIR, SandboxConfigError, SpawnConfig, clean_env
from hub.sandbox.netns import SPARE_MAX_AGE_S
from hub.sandbox.network import IPNet, host_addresses
from hub.sandbox.outcome import Kind, Outcome
from hub.sandbox.worker import Worker, runtime_config

log = structlog.get_logger("hub.sandbox")

# Read by the interpreter, the C library or the dynamic loader when the process starts: a spare
# started before them could not honour the function's values.
_START_ENV_PREFIXES = ("LANG", "LC_", "LD_", "GLIBC_", "MALLOC_", "PYTHON", "LANGUAGE")
_BACKOFF_MAX_S = 30.0
# A spare takes code of at most this many files and directories: linking them in and removing them
# is hub CPU a fresh worker (one bind) never spends, ~80 us each. A version may hold 1000 files
# 511 directories deep each: 10,000 directories cost 1.06 s of hub CPU per cold start (and a
# 1.15 s stall of the event loop, which removed them) against 10 ms for a fresh worker.
_MOST_ENTRIES = 128
_COOL_S = 30.0  # a version that did not start in a spare starts fresh workers this long
_INLINE_ENTRIES = 16  # ... up to this many are linked and removed on the loop (no thread hop)
# The replacement of a taken spare starts this much later: by then the cold start that took it
# (a few ms) has most likely answered, and starting a sandbox (fork + exec of bwrap, ~2 ms of the
# event loop) is not part of it. A burst takes the parked ones in the meantime.
_REFILL_DELAY_S = 0.02
_NET_RETRY_S = 0.2  # a network spare waits for hub.sandbox.netns to have a namespace ready
_NET_RETRIES = 50  # ... for 10 s at most (pasta failing): no timer runs on an idle hub


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:  # another file system (or links refused): a copy
        shutil.copy2(src, dst, follow_symlinks=False)


def _put_code(code_dir: Path, spare_dir: Path) -> None:
    """The version's tree, linked into the spare's directory with the modes it has. Iterative: a
    deployed path may be 500 directories deep (shutil.copytree recursed past Python's limit);
    never follows a symlink (one is copied as one, and resolves inside the sandbox)."""
    todo = [(str(code_dir), str(spare_dir))]
    while todo:
        src, dst = todo.pop()
        with os.scandir(src) as it:
            for entry in it:
                to = os.path.join(dst, entry.name)
                if entry.is_symlink():
                    os.symlink(os.readlink(entry.path), to)
                elif entry.is_dir(follow_symlinks=False):
                    os.mkdir(to, 0o700)  # its mode once its contents are in (below)
                    todo.append((entry.path, to))
                else:
                    _link_or_copy(entry.path, to)
        os.chmod(dst, stat.S_IMODE(os.lstat(src).st_mode))


def _entries(code_dir: Path | str, most: int) -> int:
    """Files and directories below ``code_dir``, counted up to ``most + 1`` and no further."""
    n, todo = 0, [str(code_dir)]
    while todo:
        with os.scandir(todo.pop()) as it:
            for entry in it:
                n += 1
                if n > most:
                    return n
                if entry.is_dir(follow_symlinks=False):
                    todo.append(entry.path)
    return n


class Spare(Worker):
    """A worker started without a function (its code directory is ``spare_dir``, empty)."""

    spare = True

    def __init__(self, cfg: SpawnConfig, spare_dir: Path, network: bool = False) -> None:
        # A stand-in with no name, code or env of anyone's: what the sandbox is built from.
        super().__init__(FunctionRuntime(name="", version="", handler="", code_dir=spare_dir,
                                         network=network), cfg)
        self._scratch = spare_dir  # removed with the worker (Worker._cleanup)
        self.spare_dir = spare_dir
        self.born = time.monotonic()  # a network spare: when its namespace's rules were made
        self.hosts: list[IPNet] | None = None  # ... and the host's addresses they refuse
        self.entries = 0  # in its code directory, up to _INLINE_ENTRIES + 1
        self.on_failed: Callable[[FunctionRuntime], None] | None = None  # its function did not start
        self.lost = False  # it could not be given its function (ended, ...): the pool starts one

    def park(self) -> bool:
        """Start; the runtime waits for its function. False if it could not be started."""
        try:
            self._spawn()
        except Exception as exc:
            log.warning("could not start a spare worker", error=repr(exc))
            if not self._exited.done():
                self._exited.set_result(-1)
            self._cleanup()
            return False
        if self._net is not None:  # a network spare: in a namespace wired ahead of time
            if self._net.gate:  # none was ready after all (too old): the caller stops this one
                return False
            self.born, self.hosts = self._net.born, self._net.hosts
            self._net.started()  # hub.sandbox.netns makes the next namespace
        return True

    def current(self) -> bool:
        """A network spare: its rules are young, refuse the host's addresses of now, and its pasta
        still runs (one OOM-killed leaves the namespace without a route out)."""
        return (time.monotonic() - self.born < SPARE_MAX_AGE_S and self.hosts == host_addresses()
                and self._net is not None and self._net.serving())

    def _cleanup(self) -> None:
        big = self._scratch if self.entries > _INLINE_ENTRIES else None
        if big is not None:  # its code (up to _MOST_ENTRIES) is removed off the loop
            self._scratch = None
        super()._cleanup()
        if big is not None:
            self._loop.run_in_executor(None, shutil.rmtree, big, True)

    async def assign(self, fn: FunctionRuntime, init_timeout_s: float) -> Outcome:
        """Give this spare its one function and wait for the handler's import (as
        :meth:`Worker.start`). Never raises."""
        t0 = time.perf_counter()
        self.fn, self.version, self._expecting = fn, fn.version, True
        config = runtime_config(fn, self.cfg)
        config["code_dir"] = TASK_DIR
        try:
            frame = json.dumps({"op": "assign", "config": config, "env": clean_env(fn)},
                               separators=(",", ":")).encode()
            self.entries = _entries(fn.code_dir, _INLINE_ENTRIES)
            if self.entries <= _INLINE_ENTRIES:  # a few links: cheaper than two thread hand-offs
                _put_code(fn.code_dir, self.spare_dir)
            else:
                await asyncio.to_thread(_put_code, fn.code_dir, self.spare_dir)
            assert self._sock is not None
            data = len(frame).to_bytes(4, "big") + frame
            try:
                sent = self._sock.send(data)  # the common case: all of it, without a loop round trip
            except (BlockingIOError, InterruptedError):
                sent = 0
            if sent < len(data):
                await asyncio.wait_for(self._loop.sock_sendall(self._sock, data[sent:]), init_timeout_s)
        except Exception as exc:  # (OSError, a timeout, ...): not the function's doing
            self.lost = True
            self.kill()
            await self._wait_exit(5.0)
            self.init_ms = (time.perf_counter() - t0) * 1000.0
            return Outcome(Kind.exited, message=f"could not start the worker: {exc!r}", exit_code=None)
        out = await self._ready(init_timeout_s - (time.perf_counter() - t0), t0)
        if out.kind is not Kind.ready and self.on_failed is not None:
            self.on_failed(fn)
        return out


class Prewarmed:
    """Up to ``count`` parked spares of one pool; :meth:`take` one for a function's first worker."""

    def __init__(self, cfg: SpawnConfig, count: int, root: Path) -> None:
        self.cfg = cfg
        self.count = count
        # One directory per pool, locked while it lives; a crashed hub's are removed by the next
        # one's start (see _stale).
        self.root = root / f"{os.getpid()}-{os.urandom(4).hex()}"
        self._lock = -1
        self._parked: list[Spare] = []  # oldest first: the one furthest through its start
        # network spares: as many as netns keeps namespaces, once a function with network came
        self.net_count = cfg.spares.target if cfg.spares is not None and count > 0 else 0
        self._net_wanted = False
        self._net_waits = 0
        self._parked_net: list[Spare] = []
        self._failures = 0  # spares that died or failed to start since one was last assigned
        self._refill: asyncio.TimerHandle | None = None
        self._reaping: set[asyncio.Task[None]] = set()
        self._closed = False
        self.taken_total = 0
        # Versions that did not start in a spare (an import that crashes, ...): fresh workers for
        # _COOL_S, so a crash loop does not keep taking the spares other functions' cold starts want.
        self._cooling: dict[tuple[str, str], float] = {}

    def start(self) -> None:
        self.root.parent.mkdir(parents=True, exist_ok=True)
        for old in self.root.parent.iterdir():
            if _stale(old):
                shutil.rmtree(old, ignore_errors=True)
        self.root.mkdir(mode=0o755)
        os.chmod(self.root, 0o755)
        self._lock = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # ours alone (a fresh name)
        self.fill()

    def eligible(self, fn: FunctionRuntime) -> bool:
        """Could a spare serve ``fn`` (network aside: see :meth:`take`)?"""
        if self.count <= 0 or fn.deps_dir is not None:
            return False
        if any(str(k).startswith(_START_ENV_PREFIXES) for k in fn.env):
            return False
        try:
            if _entries(fn.code_dir, _MOST_ENTRIES) > _MOST_ENTRIES:
                return False  # more to link and remove than a fresh start costs
        except OSError:
            return False  # no code: a fresh start reports bwrap's own words for it
        try:
            clean_env(fn)
        except SandboxConfigError:
            return False  # a fresh start refuses it with the usual InvalidConfiguration
        return True

    def take(self, fn: FunctionRuntime) -> Spare | None:
        """A live spare for ``fn``'s new worker (:meth:`Spare.assign` it next), or None."""
        if self._closed or not self.eligible(fn):
            return None
        if self._cooling and self._cooling.get((fn.name, fn.version), 0.0) > time.monotonic():
            return None
        policy = network_policy(fn.network)
        parked = self._parked
        if policy is not None:
            if policy.allow or self.net_count <= 0:
                return None  # an allow list: its own rules (or namespace) are made at its start
            if not self._net_wanted:
                self._net_wanted = True
                self._schedule(_REFILL_DELAY_S)
            parked = self._parked_net
        while parked:
            spare = parked.pop(0)
            spare.on_exit = None
            if spare.alive and (policy is None or spare.current()):
                spare.on_failed = self._cool
                self.taken_total += 1
                self._failures = 0
                self._schedule(_REFILL_DELAY_S)
                return spare
            self._stop(spare)
        self._schedule(_REFILL_DELAY_S)  # (none parked: a burst, or old ones were let go)
        return None

    def _cool(self, fn: FunctionRuntime) -> None:
        now = time.monotonic()
        if len(self._cooling) >= 1024:  # bounded: the expired go, then (a flood of versions) all
            self._cooling = {k: t for k, t in self._cooling.items() if t > now}
            if len(self._cooling) >= 1024:
                self._cooling.clear()
        self._cooling[(fn.name, fn.version)] = now + _COOL_S

    def fill(self) -> None:
        """Start spares until ``count`` (and ``net_count`` network spares) are parked."""
        self._refill = None
        while not self._closed and len(self._parked) < self.count:
            if not self._park(self._parked, network=False):
                return
        while not self._closed and self._net_wanted and len(self._parked_net) < self.net_count:
            assert self.cfg.spares is not None
            if not self.cfg.spares.ready:  # none wired yet: ask for one, look again soon
                self._net_waits += 1
                if self._net_waits > _NET_RETRIES:  # netns cannot make them: until the next one
                    self._net_wanted, self._net_waits = False, 0  # with network asks again
                    return
                self.cfg.spares.fill()
                self._schedule(_NET_RETRY_S)
                return
            self._net_waits = 0
            if not self._park(self._parked_net, network=True):
                return

    def _park(self, parked: list[Spare], network: bool) -> bool:
        d = self.root / f"s{os.urandom(6).hex()}"
        d.mkdir(mode=0o755)
        os.chmod(d, 0o755)
        spare = Spare(self.cfg, d, network)
        if not spare.park():
            if spare.pid is not None:
                self._stop(spare)
            self._failed()
            return False
        spare.on_exit = self._died
        parked.append(spare)
        return True

    def _died(self, w: Worker) -> None:
        for parked in (self._parked, self._parked_net):
            if isinstance(w, Spare) and w in parked:
                parked.remove(w)
                self._stop(w)
                log.warning("a spare worker ended while parked", pid=w.pid)
                self._failed()

    def _stop(self, w: Worker) -> None:
        w.kill()
        task = asyncio.get_running_loop().create_task(w.wait_closed())
        self._reaping.add(task)
        task.add_done_callback(self._reaping.discard)

    def _failed(self) -> None:
        self._failures += 1
        self._schedule(min(_BACKOFF_MAX_S, 0.1 * 2 ** self._failures))

    def _schedule(self, delay: float) -> None:
        if self._closed or self._refill is not None:
            return
        self._refill = asyncio.get_running_loop().call_later(delay, self.fill)

    @property
    def parked(self) -> list[Spare]:
        return list(self._parked)

    @property
    def parked_network(self) -> list[Spare]:
        return list(self._parked_net)

    async def close(self) -> None:
        self._closed = True
        if self._refill is not None:
            self._refill.cancel()
            self._refill = None
        spares, self._parked, self._parked_net = self._parked + self._parked_net, [], []
        for s in spares:
            s.kill()
        await asyncio.gather(*(s.wait_closed() for s in spares), *self._reaping, return_exceptions=True)
        shutil.rmtree(self.root, ignore_errors=True)
        if self._lock >= 0:
            os.close(self._lock)
            self._lock = -1


def _stale(d: Path) -> bool:
    """A pool's directory that no live pool holds: its lock is free (the pid in its name may be
    anyone's by now: a hub restarted in a container is pid 1 again, and its predecessor's links to
    deleted functions' code would stay forever)."""
    pid = d.name.split("-", 1)[0]
    if not pid.isdigit():
        return False
    try:
        fd = os.open(d / ".lock", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:  # a pool between its mkdir and its lock (never one of this process:
        # start() does both at once), or one from before locks
        return pid == str(os.getpid()) or not os.path.exists(f"/proc/{pid}")
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:  # held: that pool lives
        return False
    finally:
        os.close(fd)
