"""How a worker is contained: the bubblewrap command line, the rlimits, and whether bwrap works.

Two ways to run bwrap, chosen by who the hub runs as:

- **Hub runs as an ordinary user.** ``bwrap --unshare-user`` maps the sandbox's uid to the hub's
  uid in a fresh user namespace per worker. ``RLIMIT_NPROC`` is counted per (user namespace, uid),
  so the process limit is per worker.
- **Hub runs as root** (containers, CI). A plain ``--unshare-user`` would leave the function at
  kernel uid 0: it could read every root-owned file that ends up visible, and the kernel never
  applies ``RLIMIT_NPROC`` to uid 0, so a fork bomb would be unbounded. Instead the pool creates
  one user namespace at start (:class:`UserNamespace`) mapping ns-uid 0 to root (so bwrap, which
  runs as ns-root with all capabilities *in that namespace only*, can still reach bind sources such
  as a Python under ``/root``) and a range of 65536 ns-uids to unused host uids. Every worker gets
  its own uid from that range: ``setpriv`` switches to it and clears every capability before the
  runtime starts, so the function runs as a nameless, capability-less host uid, and its process
  limit is its own.

Everything outside the sandbox is invisible except what is bound here: the system directories
(read-only), the interpreter's prefix (read-only), a handful of harmless ``/etc`` files, the
function's code at ``/var/task`` (read-only), its dependencies at ``/opt/python`` (read-only, when
it has any; see ``hub.deps``) and the runtime at ``/var/runtime``. ``/tmp`` and
``/dev/shm`` are private size-limited tmpfs mounts; the root is remounted read-only.

Every worker runs under the seccomp filter of :mod:`hub.sandbox.seccomp` (``--seccomp FD``); a
worker of a function with network gets its namespace wired up by :mod:`hub.sandbox.network`
(``--info-fd`` tells the hub which namespace) and a ``resolv.conf`` naming pasta's DNS forwarder.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from hub.sandbox import seccomp
from hub.sandbox.base import FunctionRuntime, network_policy
from hub.sandbox.netns import Attachment, Spares, enter_netns
from hub.sandbox.network import NetworkConfig, NetworkUnavailable

TASK_DIR = "/var/task"  # where the code is mounted (Lambda's path)
DEPS_DIR = "/opt/python"  # where the function's dependencies are mounted (Lambda layers' path)
RUNTIME_DIR = "/var/runtime"
SANDBOX_UID_BASE = 0x70000000  # host uids [BASE, BASE + 65536) are used for sandboxed workers
SANDBOX_NS_UID_FIRST = 1000  # ns-uid mapped to SANDBOX_UID_BASE
SANDBOX_UID_COUNT = 65536

_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# World-readable configuration a program reasonably needs; never shadow/passwd/keys.
_ETC_FILES = (
    "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime",
    "/etc/nsswitch.conf", "/etc/host.conf", "/etc/hosts", "/etc/resolv.conf", "/etc/gai.conf",
    "/etc/ssl", "/etc/ca-certificates", "/etc/pki", "/etc/mime.types", "/etc/protocols",
    "/etc/services",
)


@dataclass(frozen=True)
class SandboxLimits:
    """Pool-wide limits; memory and time come from each :class:`FunctionRuntime`."""

    nofile: int = 1024  # RLIMIT_NOFILE
    nproc: int = 128  # RLIMIT_NPROC (processes + threads), per worker; sandboxed modes only
    fsize_mb: int = 64  # RLIMIT_FSIZE: largest file a function may write
    tmp_mb: int = 64  # size of the private /tmp (and /dev/shm) tmpfs
    cpu_budget_s: float = 600.0  # RLIMIT_CPU hard limit: CPU seconds over a worker's life
    min_memory_mb: int = 48  # floor for RLIMIT_AS: the interpreter alone needs ~25 MB

    def cpu_budget_for(self, fn: FunctionRuntime) -> int:
        return int(max(self.cpu_budget_s, 3 * fn.timeout_s + 10))

    def rlimits_for(self, fn: FunctionRuntime, *, sandboxed: bool) -> dict[str, int | None]:
        """The rlimits the runtime applies to itself before importing the function."""
        return {
            "as": max(fn.memory_mb, self.min_memory_mb) * 1024 * 1024,
            "nofile": self.nofile,
            "fsize": self.fsize_mb * 1024 * 1024,
            # Without our own uid, RLIMIT_NPROC would count every process of the hub's user.
            "nproc": self.nproc if sandboxed else None,
            "cpu": self.cpu_budget_for(fn),
        }


def interpreter() -> str:
    """The real interpreter behind the hub (a venv's python is a symlink to it)."""
    return os.path.realpath(sys.executable)


class SandboxConfigError(ValueError):
    """The function's configuration cannot be expressed safely (e.g. a NUL in ``env``)."""


def check_arg(arg: str, what: str = "argument") -> str:
    """Refuse anything that could break out of its slot in a NUL-separated argument list."""
    if not isinstance(arg, str):
        raise SandboxConfigError(f"{what} must be a string, not {type(arg).__name__}")
    if "\0" in arg:
        raise SandboxConfigError(f"{what} contains a NUL character: {arg[:60]!r}")
    return arg


def clean_env(fn: FunctionRuntime) -> dict[str, str]:
    """The only environment a function sees: a few neutral defaults plus its own ``env``.

    Raises :class:`SandboxConfigError` for names/values that cannot be passed safely (NUL, or a
    name containing ``=``).
    """
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8",
           "TMPDIR": "/tmp"}
    for k, v in fn.env.items():
        name, value = check_arg(str(k), "env name"), check_arg(str(v), f"env value of {k!r}")
        if not name or "=" in name:
            raise SandboxConfigError(f"invalid env name {name[:60]!r}")
        env[name] = value
    return env


def _python_roots(python: str) -> list[str]:
    """Directories holding the interpreter and its standard library, outside the system dirs."""
    roots: list[str] = []
    for cand in {sys.base_prefix, sys.base_exec_prefix, str(Path(python).parent.parent)}:
        real = os.path.realpath(cand)
        if any(real == d or real.startswith(d + "/") for d in _SYSTEM_DIRS):
            continue
        if not os.path.isdir(real) or real in roots:
            continue
        roots.append(real)
    # Drop roots nested in others.
    return [r for r in roots if not any(r != o and r.startswith(o + "/") for o in roots)]


class BwrapCommand:
    """Builds bwrap command lines; computed once per pool (host layout does not change)."""

    def __init__(self, python: str, runtime_file: Path, *, userns_fd: int | None) -> None:
        self.python = python
        self.runtime_file = runtime_file.resolve()
        self.userns_fd = userns_fd
        self.setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"
        self._static = self._static_args()

    def _static_args(self) -> list[str]:
        a: list[str] = []
        for d in _SYSTEM_DIRS:
            if os.path.islink(d):
                a += ["--symlink", os.readlink(d), d]
            elif os.path.isdir(d):
                a += ["--ro-bind", d, d]
        a += ["--perms", "0755", "--dir", "/etc"]
        for f in _ETC_FILES:
            if os.path.exists(f):
                a += ["--ro-bind", f, f]
        for root in _python_roots(self.python):
            parts = Path(root).parts
            for i in range(2, len(parts)):
                # bwrap would copy the host's (maybe 0700) parent modes; the uid must traverse.
                a += ["--perms", "0755", "--dir", str(Path(*parts[:i]))]
            a += ["--ro-bind", root, root]
        a += ["--proc", "/proc", "--dev", "/dev"]
        a += ["--perms", "0755", "--dir", "/var", "--perms", "0755", "--dir", RUNTIME_DIR]
        a += ["--ro-bind", str(self.runtime_file), f"{RUNTIME_DIR}/{self.runtime_file.name}"]
        return a

    def argv(self, fn: FunctionRuntime, *, limits: SandboxLimits, uid: int | None,
             config: dict[str, Any], seccomp_fd: int | None = None, info_fd: int | None = None,
             resolv_conf: Path | None = None, unshare_net: bool = True) -> tuple[list[str], list[str]]:
        """(options, command): options go through ``--args FD`` so the env stays off ``ps``.

        Every worker gets a network namespace of its own: a fresh one (``--unshare-net``; with
        network, ``info_fd`` receives bwrap's child pid so the hub can wire it), or, with
        ``unshare_net=False``, the spare namespace bwrap was started in (hub.sandbox.netns)."""
        a: list[str] = []
        if self.userns_fd is not None:
            a += ["--userns", str(self.userns_fd)]
        else:
            # No nested user namespaces (they would grant mount/tmpfs powers inside).
            a += ["--unshare-user", "--disable-userns"]
        # Never the host's network namespace: with network, pasta gives this one its egress.
        a += ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
        if unshare_net:
            a += ["--unshare-net"]
        if info_fd is not None:
            a += ["--info-fd", str(info_fd)]
        if seccomp_fd is not None:
            a += ["--seccomp", str(seccomp_fd)]
        a += ["--hostname", "sandbox", "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
        if uid is not None:
            a += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_SETPCAP"]
        a += self._static
        tmp = str(limits.tmp_mb * 1024 * 1024)
        a += ["--size", tmp, "--perms", "1777", "--tmpfs", "/tmp"]
        a += ["--size", tmp, "--perms", "1777", "--tmpfs", "/dev/shm"]
        code_dir = os.path.abspath(fn.code_dir)  # bwrap resolves sources from its own root
        a += ["--ro-bind", code_dir, TASK_DIR]
        if fn.deps_dir is not None:
            a += ["--perms", "0755", "--dir", "/opt", "--ro-bind", os.path.abspath(fn.deps_dir), DEPS_DIR]
        if resolv_conf is not None:  # over the host's: pasta's forwarder, not the host's resolver
            a += ["--ro-bind", str(resolv_conf), "/etc/resolv.conf"]
        a += ["--remount-ro", "/", "--chdir", TASK_DIR]
        a += ["--clearenv"]
        for k, v in clean_env(fn).items():
            a += ["--setenv", k, v]
        cmd: list[str] = []
        if uid is not None:
            cmd += [self.setpriv, "--reuid", str(uid), "--regid", str(uid), "--clear-groups",
                    "--inh-caps=-all", "--bounding-set=-all"]
        cmd += [self.python, "-I", "-S", "-B", f"{RUNTIME_DIR}/{self.runtime_file.name}"]
        cmd += [_config_json(config)]
        for arg in (*a, *cmd):  # last line of defence for the NUL-separated --args list
            check_arg(arg)
        return a, cmd


def _config_json(config: dict[str, Any]) -> str:
    import json

    return json.dumps(config, separators=(",", ":"))


def args_memfd(args: list[str]) -> int:
    """A sealed-by-convention memfd holding NUL-separated args for ``bwrap --args``."""
    for a in args:
        if "\0" in a:  # one arg must stay one arg: a NUL would inject bwrap options
            raise SandboxConfigError(f"bwrap argument contains a NUL character: {a[:60]!r}")
    fd = os.memfd_create("bwrap-args", os.MFD_CLOEXEC)
    data = b"".join(a.encode() + b"\0" for a in args)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


@dataclass
class SpawnConfig:
    """Everything a worker needs that is not the function itself (shared by a pool)."""

    isolation: str  # "bwrap" | "process"
    python: str
    runtime_file: Path
    limits: SandboxLimits
    bwrap_path: str | None = None
    bwrap: BwrapCommand | None = None
    userns: UserNamespace | None = None
    scratch_dir: Path | None = None  # process mode: parent of per-worker HOME/TMPDIR
    output_limit: int = 64 * 1024
    seccomp: bool = False  # install hub.sandbox.seccomp's filter in every worker
    network: NetworkConfig | None = None  # None: functions with network cannot start (bwrap)
    spares: Spares | None = None  # namespaces wired ahead of time (hub running as root)
    network_problem: str = "the pool has no network support"  # why, for their init error


@dataclass
class WorkerCommand:
    argv: list[str]
    env: dict[str, str]
    cwd: str
    pass_fds: list[int]
    close_after: list[int]  # ours to close once the child has been spawned
    attachment: Attachment | None = None  # network: to attach once bwrap has made the namespace
    preexec: Callable[[], None] | None = None  # seccomp (process mode) or the spare netns (bwrap)


def worker_command(fn: FunctionRuntime, cfg: SpawnConfig, config: dict[str, Any], *,
                   uid_of: Callable[[], int | None],
                   scratch: Callable[[], Path | None]) -> WorkerCommand:
    """How to start one worker of ``fn`` under ``cfg.isolation``.

    ``config`` is the runtime's configuration; ``code_dir`` is filled in here.
    """
    if cfg.isolation == "bwrap":
        assert cfg.bwrap is not None and cfg.bwrap_path is not None
        policy = network_policy(fn.network)
        if policy is not None and cfg.network is None:
            raise NetworkUnavailable(f"this function has network, which cannot be set up here: "
                                     f"{cfg.network_problem}")
        config["code_dir"] = TASK_DIR
        if fn.deps_dir is not None:
            config["deps_dir"] = DEPS_DIR
        fds: list[int] = []
        attachment: Attachment | None = None
        try:
            seccomp_fd = seccomp.program_fd() if cfg.seccomp else None
            if seccomp_fd is not None:
                fds.append(seccomp_fd)
            if policy is not None and cfg.network is not None:
                attachment = Attachment(cfg.network, policy, cfg.spares)
                if attachment.info_w >= 0:
                    fds.append(attachment.info_w)
                # the runtime waits for the hub before importing, unless all is wired already
                config["net_gate"] = attachment.gate
            uid = uid_of()
            opts, cmd = cfg.bwrap.argv(
                fn, limits=cfg.limits, uid=uid, config=config, seccomp_fd=seccomp_fd,
                info_fd=attachment.info_w if attachment and attachment.info_w >= 0 else None,
                resolv_conf=cfg.network.resolv_conf if attachment and cfg.network else None,
                unshare_net=attachment is None or attachment.ns_fd < 0)
            fds.append(args_memfd(opts))
        except BaseException:
            for fd in fds:
                if attachment is None or fd != attachment.info_w:
                    os.close(fd)
            if attachment is not None:
                attachment.close()
            raise
        pass_fds = [cfg.userns.fd] if cfg.userns is not None else []
        close_after = [fd for fd in fds if attachment is None or fd != attachment.info_w]
        # bwrap's own environ is readable in the sandbox as /proc/1/environ: give it nothing.
        return WorkerCommand([cfg.bwrap_path, "--args", str(fds[-1]), "--", *cmd], {}, "/",
                             pass_fds + fds, close_after, attachment=attachment,
                             preexec=enter_netns(attachment.ns_fd) if attachment and attachment.ns_fd >= 0
                             else None)
    cwd = os.path.abspath(fn.code_dir)
    config["code_dir"] = cwd
    if fn.deps_dir is not None:
        config["deps_dir"] = os.path.abspath(fn.deps_dir)
    env = clean_env(fn)
    home = scratch()
    if home is not None:  # a private HOME/TMPDIR per worker (not enforced without bwrap)
        for key in ("HOME", "TMPDIR"):
            if key not in fn.env:
                env[key] = str(home)
    argv = [cfg.python, "-I", "-S", "-B", str(cfg.runtime_file), _config_json(config)]
    return WorkerCommand(argv, env, cwd, [], [],
                         preexec=seccomp.preexec_installer() if cfg.seccomp else None)


class UserNamespace:
    """A user namespace owned by root, mapping ns-0 to root and a uid range to unused uids.

    Held open by an fd; workers join it with ``bwrap --userns``. Only for a hub running as root.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._next = 0
        self._used: set[int] = set()

    @classmethod
    def create(cls, python: str) -> UserNamespace:
        helper = (
            "import ctypes,sys\n"
            "libc=ctypes.CDLL(None,use_errno=True)\n"
            "if libc.unshare(0x10000000)!=0:\n"
            "    sys.stdout.write('error %d\\n'%ctypes.get_errno());sys.stdout.flush();raise SystemExit(1)\n"
            "sys.stdout.write('ok\\n');sys.stdout.flush()\n"
            "sys.stdin.readline()\n"  # the parent has written our uid/gid maps
            # No user namespaces below this one: a nested userns would give the function
            # CAP_SYS_ADMIN over fresh mount namespaces (unbounded tmpfs, ...). The sysctl is
            # per user namespace: the host's value is untouched.
            "try:\n"
            "    f=open('/proc/sys/user/max_user_namespaces','w');f.write('0');f.close()\n"
            "except OSError as e:\n"
            "    sys.stdout.write('error max_user_namespaces: %s\\n'%e);sys.stdout.flush();raise SystemExit(1)\n"
            "sys.stdout.write('ok\\n');sys.stdout.flush();sys.stdin.read()\n"
        )
        proc = subprocess.Popen([python, "-I", "-S", "-c", helper], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, env={})
        try:
            assert proc.stdout is not None and proc.stdin is not None
            line = proc.stdout.readline().decode().strip()
            if line != "ok":
                raise OSError(f"unshare(CLONE_NEWUSER) failed: {line or 'no answer'}")
            mapping = f"0 0 1\n{SANDBOX_NS_UID_FIRST} {SANDBOX_UID_BASE} {SANDBOX_UID_COUNT}\n"
            for name in ("uid_map", "gid_map"):
                with open(f"/proc/{proc.pid}/{name}", "w") as f:
                    f.write(mapping)
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
            line = proc.stdout.readline().decode().strip()
            if line != "ok":
                raise OSError(f"cannot disable nested user namespaces: {line or 'no answer'}")
            fd = os.open(f"/proc/{proc.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
        finally:
            proc.kill()
            proc.wait()
        return cls(fd)

    def allocate_uid(self) -> int:
        """A ns-uid no live worker uses (each worker: its own host uid, its own NPROC count)."""
        for _ in range(SANDBOX_UID_COUNT):
            cand = SANDBOX_NS_UID_FIRST + self._next
            self._next = (self._next + 1) % SANDBOX_UID_COUNT
            if cand not in self._used:
                self._used.add(cand)
                return cand
        raise RuntimeError("no free sandbox uid")

    def release_uid(self, uid: int) -> None:
        self._used.discard(uid)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


NOT_ISOLATED = "functions are NOT isolated"  # what every start log and /readyz say in process mode


class SandboxUnavailable(RuntimeError):
    """bubblewrap cannot run here and the operator did not ask for unisolated processes."""


def refuse_message(reason: str) -> str:
    return (f"bubblewrap cannot run here: {reason}. The hub refuses to run functions without "
            "isolation unless told to. Fix: install bubblewrap (Debian: apt-get install bubblewrap "
            "passt nftables); allow user namespaces (sysctl kernel.unprivileged_userns_clone=1 and "
            "user.max_user_namespaces > 0; in a container, a seccomp/AppArmor profile that permits "
            "unshare(CLONE_NEWUSER)); or set HUB_SANDBOX=process to run functions as plain "
            f"processes ({NOT_ISOLATED}: only for code you trust).")


def make_undumpable() -> bool:
    """PR_SET_DUMPABLE 0 for the hub process: its /proc files become root's, no ptrace by uid."""
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
        prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
        return bool(prctl(4, 0, 0, 0, 0) == 0)  # PR_SET_DUMPABLE
    except (OSError, AttributeError):
        return False


@dataclass(frozen=True)
class Probe:
    ok: bool
    reason: str


async def probe(python: str, runtime_file: Path, userns: UserNamespace | None,
                bwrap: str) -> Probe:
    """Run a throwaway sandbox with the real flags (seccomp filter included); bwrap "installed"
    is not bwrap "works"."""
    try:
        seccomp_fd = seccomp.program_fd()
    except seccomp.SeccompUnavailable as exc:
        return Probe(False, str(exc))
    a: list[str] = ["--seccomp", str(seccomp_fd)]
    if userns is not None:
        a += ["--userns", str(userns.fd)]
    else:
        a += ["--unshare-user", "--disable-userns"]
    a += ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-net",
          "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
    if userns is not None:
        a += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_SETPCAP"]
    cmd = BwrapCommand(python, runtime_file, userns_fd=None)
    a += cmd._static + ["--tmpfs", "/tmp", "--remount-ro", "/", "--clearenv", "--"]
    if userns is not None:
        a += [cmd.setpriv, "--reuid", str(SANDBOX_NS_UID_FIRST), "--regid",
              str(SANDBOX_NS_UID_FIRST), "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"]
    a += [python, "-I", "-S", "-c", "import os; print(os.getuid())"]
    pass_fds = (userns.fd, seccomp_fd) if userns is not None else (seccomp_fd,)
    try:
        proc = await asyncio.create_subprocess_exec(
            bwrap, *a, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            pass_fds=pass_fds, env={"PATH": "/usr/bin:/bin"})
        out, err = await asyncio.wait_for(proc.communicate(), 20)
    except (OSError, asyncio.TimeoutError) as exc:
        return Probe(False, f"bwrap probe failed: {exc!r}")
    finally:
        os.close(seccomp_fd)
    if proc.returncode != 0:
        return Probe(False, f"bwrap probe exited {proc.returncode}: {err.decode(errors='replace').strip()}")
    return Probe(True, "ok")
