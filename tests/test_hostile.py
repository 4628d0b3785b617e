"""Hostile functions against the real sandbox. After each one, the pool must keep serving.

Every test here runs against bubblewrap isolation; the ones marked ``both`` also run against the
plain-process fallback (which contains CPU, memory, output and crashes, but not file, network or
/proc access).
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import hub.sandbox.pool as pool_module
from hub.sandbox.base import FunctionRuntime, InvocationReport, NetworkPolicy, Status
from hub.sandbox.pool import SandboxPool
from hub.sandbox.worker import STRAY_CHECK_EVERY
from hub.spec.network import network_setting
from tests.test_sandbox import ctx, make_pool, until, write_fn

pytestmark = pytest.mark.timeout(90)

HUB_SECRET = "hub-secret-" + uuid.uuid4().hex


GOOD = """
def handler(event, context):
    return {"ok": True, "n": event.get("n")}
"""


@pytest.fixture(scope="module")
def hub_secret_in_env() -> Iterator[None]:
    """The hub's environment holds a secret while this module's pools run (and only then)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HUB_API_TOKEN_FOR_TEST", HUB_SECRET)
        yield


async def _pool(tmp: Path, isolation: str) -> SandboxPool:
    return await make_pool(tmp, isolation, idle_ttl_s=30.0)


@pytest.fixture(scope="module")
async def bwrap_pool(tmp_path_factory: pytest.TempPathFactory, hub_secret_in_env: None) -> AsyncIterator[SandboxPool]:
    p = await _pool(tmp_path_factory.mktemp("hostile-bwrap"), "bwrap")
    yield p
    await p.close()


@pytest.fixture(scope="module")
async def process_pool(tmp_path_factory: pytest.TempPathFactory,
                       hub_secret_in_env: None) -> AsyncIterator[SandboxPool]:
    p = await _pool(tmp_path_factory.mktemp("hostile-process"), "process")
    yield p
    await p.close()


@pytest.fixture(params=["bwrap", "process"])
def both(request: pytest.FixtureRequest) -> SandboxPool:
    """The key hostile cases run in both isolation modes."""
    p: SandboxPool = request.getfixturevalue(f"{request.param}_pool")
    return p


@pytest.fixture
def pool(bwrap_pool: SandboxPool) -> SandboxPool:
    return bwrap_pool


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> FunctionRuntime:
    return write_fn(tmp_path_factory.mktemp("good"), GOOD)


async def still_serving(p: SandboxPool, good: FunctionRuntime) -> None:
    rep = await p.invoke(good, {"n": 7}, ctx())
    assert rep.status is Status.succeeded and rep.result == {"ok": True, "n": 7}, rep


def gone(pid: int | None) -> bool:
    return pid is not None and not os.path.exists(f"/proc/{pid}")


# --------------------------------------------------------------------------- CPU, memory, processes


async def test_infinite_loop(both: SandboxPool, good: FunctionRuntime, tmp_path: Path) -> None:
    fn = write_fn(tmp_path, "def handler(event, context):\n    while True:\n        pass\n",
                  timeout_s=1.0)
    rep = await both.invoke(fn, {}, ctx())
    assert rep.status is Status.timeout
    assert "Task timed out after 1.00 seconds" in (rep.error or {})["message"]
    assert both.stats()["functions"][fn.name]["warm"] == 0  # killed, not kept
    await still_serving(both, good)


async def test_cpu_rlimit_is_armed_per_invocation(pool: SandboxPool, tmp_path: Path) -> None:
    """RLIMIT_CPU backs up the wall-clock timeout (threads outside the GIL burn CPU faster)."""
    fn = write_fn(tmp_path, """
        import resource
        def handler(event, context):
            ru = resource.getrusage(resource.RUSAGE_SELF)
            soft, hard = resource.getrlimit(resource.RLIMIT_CPU)
            return {"used": ru.ru_utime + ru.ru_stime, "soft": soft, "hard": hard}
    """, timeout_s=3.0)
    got = (await pool.invoke(fn, {}, ctx())).result
    assert got["used"] + 3 <= got["soft"] <= got["used"] + 6
    assert got["hard"] == pool.limits.cpu_budget_for(fn)


async def test_cpu_limit_signal_is_a_timeout(both: SandboxPool, good: FunctionRuntime,
                                             tmp_path: Path) -> None:
    fn = write_fn(tmp_path, """
        import os, signal
        def handler(event, context):
            os.kill(os.getpid(), signal.SIGXCPU)  # what the kernel sends at the soft limit
    """)
    rep = await both.invoke(fn, {}, ctx())
    assert rep.status is Status.timeout and rep.signal == signal.SIGXCPU, rep
    assert "CPU time limit exceeded" in (rep.error or {})["message"]
    await still_serving(both, good)


async def test_memory_bomb(both: SandboxPool, good: FunctionRuntime, tmp_path: Path) -> None:
    fn = write_fn(tmp_path, """
        def handler(event, context):
            hoard = []
            while True:
                hoard.append(bytearray(1024 * 1024))
    """, memory_mb=96)
    rep = await both.invoke(fn, {}, ctx())
    assert rep.status is Status.out_of_memory, rep
    assert (rep.error or {})["type"] == "MemoryError"
    assert "memory limit of 96 MB exceeded" in (rep.error or {})["message"]
    assert both.stats()["functions"][fn.name]["warm"] == 0  # not reused after OOM
    await still_serving(both, good)


async def test_single_huge_allocation(pool: SandboxPool, good: FunctionRuntime,
                                      tmp_path: Path) -> None:
    fn = write_fn(tmp_path, "def handler(event, context):\n    return len(bytearray(8 << 30))\n",
                  memory_mb=128)
    rep = await pool.invoke(fn, {}, ctx())
    assert rep.status is Status.out_of_memory
    assert rep.max_memory_mb is not None and rep.max_memory_mb < 128
    await still_serving(pool, good)


async def test_memory_bomb_at_import(pool: SandboxPool, good: FunctionRuntime,
                                     tmp_path: Path) -> None:
    fn = write_fn(tmp_path, "HOARD = bytearray(1 << 30)\ndef handler(event, context):\n    pass\n",
                  memory_mb=64)
    rep = await pool.invoke(fn, {}, ctx())
    assert rep.status is Status.out_of_memory and (rep.error or {}).get("phase") == "init"
    await still_serving(pool, good)


async def test_fork_bomb(pool: SandboxPool, good: FunctionRuntime, tmp_path: Path) -> None:
    # Each child forks on until the process limit, then lingers (a bomb whose children all exit
    # at once leaves nothing to count, and the test would race them).
    fn = write_fn(tmp_path, """
        import os, time
        MAIN = os.getpid()
        def handler(event, context):
            while True:
                try:
                    os.fork()
                except BlockingIOError:
                    if os.getpid() != MAIN:
                        time.sleep(30)
                    raise
    """, timeout_s=5.0)
    rep = await pool.invoke(fn, {}, ctx())
    assert rep.status is Status.failed, rep
    assert (rep.error or {})["type"] == "BlockingIOError"
    assert "Resource temporarily unavailable" in (rep.error or {})["message"]
    assert pool.stats()["functions"][fn.name]["warm"] == 0  # its children die with the worker
    await still_serving(pool, good)


async def test_fork_bomb_is_bounded_by_the_process_limit(pool: SandboxPool, good: FunctionRuntime,
                                                         tmp_path: Path) -> None:
    fn = write_fn(tmp_path, """
        import os, time
        def handler(event, context):
            n = 0
            try:
                while True:
                    if os.fork() == 0:
                        time.sleep(60)
                        os._exit(0)
                    n += 1
            except OSError as exc:
                return {"forked": n, "error": type(exc).__name__}
    """, timeout_s=10.0)
    rep = await pool.invoke(fn, {}, ctx())
    assert rep.status is Status.succeeded, rep
    assert rep.result["error"] == "BlockingIOError"
    assert 0 < rep.result["forked"] < pool.limits.nproc
    assert pool.stats()["functions"][fn.name]["warm"] == 0  # stray processes: worker stopped
    await still_serving(pool, good)


async def test_abort(both: SandboxPool, good: FunctionRuntime, tmp_path: Path) -> None:
    fn = write_fn(tmp_path, "import os\ndef handler(event, context):\n    os.abort()\n")
    rep = await both.invoke(fn, {}, ctx())
    assert rep.status is Status.crashed and rep.signal == signal.SIGABRT, rep
    assert "killed by SIGABRT" in (rep.error or {})["message"]
    await still_serving(both, good)


async def test_segfault(pool: SandboxPool, good: FunctionRuntime, tmp_path: Path) -> None:
    fn = write_fn(tmp_path, "import ctypes\ndef handler(event, context):\n    ctypes.string_at(0)\n")
    rep = await pool.invoke(fn, {}, ctx())
    assert rep.status is Status.crashed and rep.signal == signal.SIGSEGV, rep
    assert "killed by SIGSEGV" in (rep.error or {})["message"]
    await still_serving(pool, good)


async def test_sys_exit(both: SandboxPool, good: FunctionRuntime, tmp_path: Path) -> None:
    fn = write_fn(tmp_path, "import sys\ndef handler(event, context):\n    sys.exit(3)\n")
    rep = await both.invoke(fn, {}, ctx())
    assert rep.status is Status.crashed and rep.exit_code == 3 and rep.signal is None, rep
    assert "exited with code 3" in (rep.error or {})["message"]
    again = await both.invoke(fn, {}, ctx())  # a new worker each time
    assert again.status is Status.crashed and again.cold_start
    await still_serving(both, good)


# --------------------------------------------------------------------------- secrets and files


SPY = """
import os
def handler(event, context):
    out = {}
    for path in event["read"]:
        try:
            with open(path, "rb") as f:
                out[path] = "read:" + f.read(200).decode("latin-1")
        except Exception as exc:
            out[path] = "error:" + type(exc).__name__
    for path in event["list"]:
        try:
            out["ls " + path] = "read:" + ",".join(sorted(os.listdir(path)))
        except Exception as exc:
            out["ls " + path] = "error:" + type(exc).__name__
    out["environ"] = dict(os.environ)
    out["proc"] = sorted(p for p in os.listdir("/proc") if p.isdigit())
    out["uid"] = os.getuid()
    return out
"""


async def test_cannot_read_hub_secrets_or_files(pool: SandboxPool, good: FunctionRuntime,
                                                tmp_path: Path) -> None:
    repo = Path(pool_module.__file__).resolve().parents[2]
    data_file = pool.data_dir / "secret.txt"
    data_file.write_text(HUB_SECRET)
    fn = write_fn(tmp_path, SPY)
    reads = ["/etc/shadow", "/etc/passwd", "/etc/gshadow", "/proc/1/environ",
             f"/proc/{os.getpid()}/environ", f"/proc/{os.getppid()}/environ",
             "/proc/self/environ", str(repo / "pyproject.toml"), str(data_file),
             str(Path(pool_module.__file__).resolve()), "/root/.bash_history"]
    lists = [str(repo), str(pool.data_dir), "/home", "/work"]
    rep = await pool.invoke(fn, {"read": reads, "list": lists}, ctx())
    got = rep.result
    assert rep.status is Status.succeeded, rep
    assert HUB_SECRET not in repr(got) and HUB_SECRET not in rep.stdout + rep.stderr
    for path in reads:
        if path == "/proc/self/environ":  # its own environment: only what the function was given
            continue
        assert got[path].startswith("error:"), (path, got[path])
    for path in lists:
        assert got["ls " + path].startswith("error:"), (path, got["ls " + path])
    assert not [k for k in got["environ"] if k.startswith("HUB_")]
    assert got["proc"] == ["1", "2"]  # its own pid namespace: the hub is not even visible
    assert got["uid"] != 0
    await still_serving(pool, good)


async def test_cannot_write_outside_tmp(pool: SandboxPool, good: FunctionRuntime,
                                        tmp_path: Path) -> None:
    fn = write_fn(tmp_path, """
        import os
        def handler(event, context):
            out = {}
            for path in event["paths"]:
                try:
                    with open(path, "w") as f:
                        f.write("x")
                    out[path] = "written"
                except Exception as exc:
                    out[path] = type(exc).__name__
            return out
    """)
    targets = ["/var/task/evil.py", "/evil", "/usr/evil", "/etc/evil", "/var/runtime/evil",
               "/root/evil", "/proc/sys/kernel/hostname", "/dev/evil",
               str(pool.data_dir / "evil"), str(tmp_path / "evil"), "/tmp/fine", "/dev/shm/fine"]
    rep = await pool.invoke(fn, {"paths": targets}, ctx())
    got = rep.result
    assert rep.status is Status.succeeded, rep
    assert got.pop("/tmp/fine") == "written" and got.pop("/dev/shm/fine") == "written"
    assert all(v != "written" for v in got.values()), got
    assert not (fn.code_dir / "evil.py").exists() and not (pool.data_dir / "evil").exists()
    assert not (tmp_path / "evil").exists()
    await still_serving(pool, good)


async def test_tmp_size_is_limited(pool: SandboxPool, good: FunctionRuntime,
                                   tmp_path: Path) -> None:
    """Each 40 MB file is within RLIMIT_FSIZE; together they overflow the 64 MB /tmp."""
    fn = write_fn(tmp_path, """
        def handler(event, context):
            out = {}
            for name in ("/tmp/a", "/tmp/b"):
                try:
                    with open(name, "wb") as f:
                        for _ in range(40):
                            f.write(b"x" * (1024 * 1024))
                    out[name] = "ok"
                except OSError as exc:
                    out[name] = "%s %s" % (exc.errno, exc.strerror)
            return out
    """, timeout_s=10.0)
    rep = await pool.invoke(fn, {}, ctx())
    assert rep.status is Status.succeeded, rep
    assert rep.result["/tmp/a"] == "ok", rep.result
    assert rep.result["/tmp/b"].startswith("28 "), rep.result  # ENOSPC
    big = write_fn(tmp_path, """
        def handler(event, context):
            with open("/tmp/big", "wb") as f:
                for _ in range(1024):
                    f.write(b"x" * (1024 * 1024))
    """, timeout_s=10.0)
    rep = await pool.invoke(big, {}, ctx())
    assert rep.status is Status.failed and (rep.error or {})["type"] == "OSError", rep
    assert "File too large" in (rep.error or {})["message"] or \
        "No space left" in (rep.error or {})["message"]
    await still_serving(pool, good)


async def test_env_nul_cannot_inject_bwrap_options(pool: SandboxPool, good: FunctionRuntime,
                                                   tmp_path: Path) -> None:
    """bwrap's --args list is NUL-separated: a NUL in env must not become extra options."""
    fn = write_fn(tmp_path, """
        import os
        def handler(event, context):
            return sorted(os.listdir("/tmp"))
    """, env={"X": "a\0--ro-bind\0/\0/tmp"})
    rep = await pool.invoke(fn, {}, ctx())
    assert rep.status is Status.failed, rep
    err = rep.error or {}
    assert err["type"] == "InvalidConfiguration" and "NUL" in err["message"], err
    for env in ({"A\0B": "x"}, {"A=B": "x"}):  # names too
        bad = write_fn(tmp_path, GOOD, env=env)
        rep = await pool.invoke(bad, {}, ctx())
        assert rep.status is Status.failed and (rep.error or {})["type"] == "InvalidConfiguration"
    await still_serving(pool, good)


def test_bwrap_args_refuse_nul(tmp_path: Path) -> None:
    from hub.sandbox import bwrap as bw

    with pytest.raises(ValueError):
        bw.args_memfd(["--setenv", "X", "a\0--ro-bind\0/\0/tmp"])
    cmd = bw.BwrapCommand(bw.interpreter(), Path(pool_module.__file__), userns_fd=None)
    fn = write_fn(tmp_path, GOOD, env={"X": "a\0b"})
    with pytest.raises(ValueError):
        cmd.argv(fn, limits=bw.SandboxLimits(), uid=None, config={})


async def test_nested_user_namespaces_are_blocked(pool: SandboxPool, good: FunctionRuntime,
                                                  tmp_path: Path) -> None:
    """A nested userns would give mount powers (an unbounded tmpfs past /tmp and RLIMIT_AS)."""
    fn = write_fn(tmp_path, """
        import ctypes, os, shutil, subprocess
        def handler(event, context):
            libc = ctypes.CDLL(None, use_errno=True)
            out = {"unshare": libc.unshare(0x10000000), "errno": ctypes.get_errno()}
            if shutil.which("unshare"):
                p = subprocess.run(["unshare", "-r", "true"], capture_output=True)
                out["cli"] = p.returncode
            return out
    """, timeout_s=10.0)
    rep = await pool.invoke(fn, {}, ctx())
    assert rep.status is Status.succeeded, rep
    assert rep.result["unshare"] == -1 and rep.result["errno"] != 0, rep.result
    assert rep.result.get("cli", 1) != 0, rep.result
    await still_serving(pool, good)


async def test_stray_processes_are_counted_by_the_hub(pool: SandboxPool, good: FunctionRuntime,
                                                      tmp_path: Path) -> None:
    """A function that silences the runtime's own stray check still loses its daemon."""
    fn = write_fn(tmp_path, """
        import os, time, __main__
        __main__._stray_processes = lambda *args: 0
        def handler(event, context):
            if event.get("spawn"):
                if os.fork() == 0:
                    os.setsid()
                    while True:
                        time.sleep(0.2)
            return sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    """)
    first = await pool.invoke(fn, {"spawn": True}, ctx())
    assert first.status is Status.succeeded and len(first.result) == 3, first
    second = await pool.invoke(fn, {}, ctx())
    assert second.status is Status.succeeded, second
    assert second.cold_start, "a worker with a leftover process was reused"
    assert second.result == [1, 2], second.result
    await still_serving(pool, good)



@pytest.mark.parametrize("how", ["daemon", "thread"])
async def test_a_later_stray_is_found_on_a_warm_worker(pool: SandboxPool, tmp_path: Path, how: str) -> None:
    """Past its first calls a worker is checked every STRAY_CHECK_EVERY-th call, the quick way
    first (each of its own processes has only the next as child): a process left by such a call,
    reparented to the sandbox's init or started from a thread of the handler, still ends it."""
    fn = write_fn(tmp_path, """
        import os, subprocess, threading, time
        def handler(event, context):
            if event.get("spawn") == "daemon":
                if os.fork() == 0:
                    os.setsid()
                    if os.fork() == 0:
                        while True:
                            time.sleep(0.2)
                    os._exit(0)
                os.wait()
            elif event.get("spawn") == "thread":
                done = []
                threading.Thread(target=lambda: done.append(subprocess.Popen(["sleep", "60"]))).start()
                while not done:
                    time.sleep(0.01)
            return os.getpid()
    """)
    first = await pool.invoke(fn, {}, ctx())
    assert first.status is Status.succeeded and first.cold_start, first
    for _ in range(2, 2 * STRAY_CHECK_EVERY):
        rep = await pool.invoke(fn, {}, ctx())
        assert rep.status is Status.succeeded and not rep.cold_start, rep  # the same warm worker
    rep = await pool.invoke(fn, {"spawn": how}, ctx())  # its 16th call: a checked one
    assert rep.status is Status.succeeded and not rep.cold_start, rep
    after = await pool.invoke(fn, {}, ctx())
    assert after.status is Status.succeeded and after.cold_start, "a worker with a leftover process was reused"

FORGED = """
    import os, __main__
    def handler(event, context):
        __main__._send_bytes(event["frame"].encode())
        if event.get("die"):
            os._exit(0)
        return "real"
"""


@pytest.mark.parametrize("frame", [
    '{"op":"result","ok":true,"result":1,"strays":1e999,"cpu_s":1e999,"rss_kb":1e999}',
    '{"op":"result","ok":true,"result":1,"strays":-1e999,"cpu_s":NaN,"rss_kb":-Infinity}',
    '{"op":"result","ok":true,"result":1,"strays":"x","cpu_s":[],"rss_kb":{}}',
    '{"op":"exit","code":1e999}',
])
async def test_forged_numbers_do_not_break_the_pool(pool: SandboxPool, good: FunctionRuntime,
                                                    tmp_path: Path, frame: str) -> None:
    fn = write_fn(tmp_path, FORGED)
    for die in (True, False):
        rep = await pool.invoke(fn, {"frame": frame, "die": die}, ctx())
        assert rep.status in (Status.succeeded, Status.crashed), rep
        assert (rep.error or {}).get("type") != "PoolError", rep
        if rep.max_memory_mb is not None:
            assert math.isfinite(rep.max_memory_mb) and rep.max_memory_mb <= fn.memory_mb + 64
    await still_serving(pool, good)


async def test_deeply_nested_frame_is_a_protocol_error(pool: SandboxPool, good: FunctionRuntime,
                                                       tmp_path: Path) -> None:
    fn = write_fn(tmp_path, """
        import os, __main__
        def handler(event, context):
            nested = (b"[" * event["n"]) + (b"]" * event["n"])
            body = b'{"op":"result","ok":true,"result":' + nested + b'}'
            os.write(__main__._fd, len(body).to_bytes(4, "big") + body)
            return "real"
    """, timeout_s=30.0)
    for n in (200_000, 500):
        rep = await pool.invoke(fn, {"n": n}, ctx())
        # Not a timeout: the pool notices at once and ends the worker.
        assert rep.status is Status.crashed, rep
        err = rep.error or {}
        assert err["type"] == "ProtocolError" and "nested too deeply" in err["message"], err
    await still_serving(pool, good)


@pytest.mark.parametrize("result, message", [
    (b"1" * 5_000, "invalid JSON frame"),  # beyond the stdlib's 4,300-digit limit for int()
    (b"1" * 6_000_000, "invalid JSON frame"),  # as long as a frame may be: scanned once, refused
    (b"NaN", "while request"),  # only the stdlib reads it; then the frame is not the answer asked for
    (b'"\\ud800"', "while request"),  # a lone surrogate: the same
])
async def test_a_forged_answer_only_the_stdlib_reads_is_still_refused(
        pool: SandboxPool, good: FunctionRuntime, tmp_path: Path, result: bytes, message: str) -> None:
    """The hub reads answers with orjson where orjson agrees with the stdlib and hands the rest to
    the stdlib: a function writing its own frame with such values, or a frame as long as allowed,
    ends its worker with a protocol error at once, as before, and the pool goes on serving."""
    fn = write_fn(tmp_path, """
        import os, __main__
        def handler(event, context):
            body = b'{"op":"result","ok":true,"result":' + bytes.fromhex(event["hex"]) + b'}'
            os.write(__main__._fd, len(body).to_bytes(4, "big") + body)
            return "real"
    """, timeout_s=30.0)
    rep = await pool.invoke(fn, {"hex": result.hex()}, ctx())
    assert rep.status is Status.crashed, rep
    err = rep.error or {}
    assert err["type"] == "ProtocolError" and message in err["message"], err
    await still_serving(pool, good)


@pytest.mark.parametrize("depth, ok", [(100, True), (101, False), (500, False), (995, False)])
async def test_result_nested_too_deeply(both: SandboxPool, good: FunctionRuntime, tmp_path: Path,
                                        depth: int, ok: bool) -> None:
    fn = write_fn(tmp_path, """
        def handler(event, context):
            x = 0
            for _ in range(event["d"]):
                x = [x]
            return x
    """)
    rep = await both.invoke(fn, {"d": depth}, ctx())
    if ok:
        assert rep.status is Status.succeeded, rep
    else:
        assert rep.status is Status.failed, rep
        assert (rep.error or {})["type"] == "ResultTooDeep"
        assert "result nested too deeply" in (rep.error or {})["message"]
    await still_serving(both, good)


async def test_memory_is_limited_across_child_processes(pool: SandboxPool, good: FunctionRuntime,
                                                        tmp_path: Path) -> None:
    """RLIMIT_AS is per process: the pool measures the whole tree against memory_mb."""
    fn = write_fn(tmp_path, """
        import os, time
        def handler(event, context):
            kids = []
            for i in range(10):
                pid = os.fork()
                if pid == 0:
                    try:
                        b = bytearray(50 << 20)
                        for j in range(0, len(b), 4096):
                            b[j] = 1
                        time.sleep(3)
                    finally:
                        os._exit(0)
                kids.append(pid)
            for k in kids:
                os.waitpid(k, 0)
            return "done"
    """, memory_mb=64, timeout_s=20.0)
    rep = await pool.invoke(fn, {}, ctx())
    assert rep.status is Status.out_of_memory, rep
    assert "memory limit of 64 MB exceeded" in (rep.error or {})["message"]
    assert pool.stats()["functions"][fn.name]["warm"] == 0
    await still_serving(pool, good)


# --------------------------------------------------------------------------- network


NET = """
import socket
def handler(event, context):
    out = {}
    for name, port in event["ports"].items():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=event.get("timeout", 1)) as s:
                s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n" if name == "http" else b"\\x3a\\x00\\x00\\x00")
                out[name] = "connected:" + s.recv(100).decode("latin-1")
        except Exception as exc:
            out[name] = "error:" + type(exc).__name__
    return out
"""


@pytest.fixture
async def listeners() -> AsyncIterator[tuple[dict[str, int], list[str]]]:
    """An HTTP port and a MongoDB-like TCP port on the host's 127.0.0.1."""
    seen: list[str] = []

    # Each reads the client's request before it answers and closes: closing with the request
    # unread makes the kernel reset the connection, and pasta may then drop the answer it was
    # relaying (the function saw an empty read once in a full run).
    async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append("http")
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi")
        await writer.drain()
        writer.close()

    async def mongo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append("mongo")
        await asyncio.wait_for(reader.readexactly(4), 10)
        writer.write(b"mongo-like")
        await writer.drain()
        writer.close()

    s1 = await asyncio.start_server(http, "127.0.0.1", 0)
    s2 = await asyncio.start_server(mongo, "127.0.0.1", 0)
    ports = {"http": s1.sockets[0].getsockname()[1], "mongo": s2.sockets[0].getsockname()[1]}
    yield ports, seen
    s1.close()
    s2.close()


async def test_network_off_blocks_loopback(pool: SandboxPool, good: FunctionRuntime,
                                           tmp_path: Path, listeners: Any) -> None:
    ports, seen = listeners
    fn = write_fn(tmp_path, NET)
    rep = await pool.invoke(fn, {"ports": ports}, ctx())
    assert rep.status is Status.succeeded, rep
    assert rep.result["http"].startswith("error:") and rep.result["mongo"].startswith("error:")
    assert seen == []
    await still_serving(pool, good)


async def test_network_on_is_opt_in(pool: SandboxPool, tmp_path: Path, listeners: Any) -> None:
    """Loopback servers (as the hub's own are) open only when the function lists them exactly:
    ``network: true`` alone reaches the world, never the host (tests/test_isolation.py)."""
    ports, seen = listeners
    allow = network_setting({"allow": [f"127.0.0.1:{p}" for p in ports.values()]})
    fn = write_fn(tmp_path, NET, network=NetworkPolicy.from_setting(allow), timeout_s=30.0)
    # (a busy machine can take over the default 1 s to connect through pasta and answer)
    rep = await pool.invoke(fn, {"ports": ports, "timeout": 10}, ctx())
    assert rep.status is Status.succeeded, rep
    assert rep.result["http"].startswith("connected:HTTP/1.0 200")
    assert rep.result["mongo"] == "connected:mongo-like"
    assert sorted(seen) == ["http", "mongo"]


# --------------------------------------------------------------------------- output and results


async def test_print_100mb(both: SandboxPool, good: FunctionRuntime, tmp_path: Path) -> None:
    fn = write_fn(tmp_path, """
        import sys
        def handler(event, context):
            chunk = "x" * (1024 * 1024)
            for _ in range(100):
                sys.stdout.write(chunk)
            print("to stderr", file=sys.stderr)
            return "printed"
    """, timeout_s=30.0)
    rep = await both.invoke(fn, {}, ctx())
    assert rep.status is Status.succeeded and rep.result == "printed", rep.error
    assert rep.output_truncated
    assert len(rep.stdout) < 70_000 and "more bytes not shown" in rep.stdout
    assert rep.stderr == "to stderr\n"
    await still_serving(both, good)


@pytest.mark.parametrize("expr, detail", [
    ("{1, 2}", "Object of type set is not JSON serializable"),
    ("object()", "Object of type object is not JSON serializable"),
    ("float('nan')", "Out of range float values are not JSON compliant"),
    ("b'bytes'", "Object of type bytes is not JSON serializable"),
])
async def test_non_json_result(both: SandboxPool, good: FunctionRuntime, tmp_path: Path,
                               expr: str, detail: str) -> None:
    fn = write_fn(tmp_path, f"def handler(event, context):\n    return {{'value': {expr}}}\n")
    rep = await both.invoke(fn, {}, ctx())
    assert rep.status is Status.failed
    assert (rep.error or {})["message"] == f"result is not JSON serializable: {detail}"
    await still_serving(both, good)


async def test_result_too_large(pool: SandboxPool, good: FunctionRuntime, tmp_path: Path) -> None:
    fn = write_fn(tmp_path, "def handler(event, context):\n    return 'x' * (7 << 20)\n")
    rep = await pool.invoke(fn, {}, ctx())
    assert rep.status is Status.failed and (rep.error or {})["type"] == "ResultTooLarge"
    await still_serving(pool, good)


async def test_forged_protocol_frames(pool: SandboxPool, good: FunctionRuntime,
                                      tmp_path: Path) -> None:
    """Writing to the runtime's protocol socket behind its back ends the worker, nothing else."""
    fn = write_fn(tmp_path, """
        import json, os
        def handler(event, context):
            fake = json.dumps({"op": "result", "ok": True, "result": "forged"}).encode()
            for fd in range(3, 1024):
                try:
                    os.write(fd, len(fake).to_bytes(4, "big") + fake + b"garbage")
                except OSError:
                    pass
            return "real"
    """)
    rep = await pool.invoke(fn, {}, ctx())
    # The forged frame may win the race, but the worker never survives to serve again.
    assert rep.status in (Status.crashed, Status.succeeded)
    if rep.status is Status.crashed:
        assert (rep.error or {})["type"] == "ProtocolError"
    await until(lambda: pool.stats()["functions"][fn.name]["warm"] == 0
                and pool.stats()["functions"][fn.name]["busy"] == 0)
    await still_serving(pool, good)


FORGE_THEN_WORK = """
    import os, time, __main__
    def handler(event, context):
        if event.get("forge"):
            body = b'{"op":"result","ok":true,"result":"FORGED"}'
            os.write(__main__._fd, len(body).to_bytes(4, "big") + body)
        time.sleep(event.get("work_s", 0))  # the real work goes on after the forged answer
        return event["tag"]
"""

# A handler can write to the worker's protocol socket. Every request carries a sequence number
# that its response must echo (hub/sandbox/worker.py): a forged frame without it ends the worker
# (ProtocolError), and a handler's real answer arriving after a forged one can never answer a
# later request. What stays possible, by design: a handler that reads the current number out of
# the runtime's memory can end *its own* invocation early with a result of its choosing -- no
# more than returning that result -- and its worker is ended when the real answer turns up.


async def test_a_forged_result_frame_is_never_a_success(pool: SandboxPool, good: FunctionRuntime,
                                                        tmp_path: Path) -> None:
    fn = write_fn(tmp_path, FORGE_THEN_WORK, timeout_s=10.0)
    rep = await pool.invoke(fn, {"forge": True, "work_s": 0.5, "tag": "real"}, ctx())
    assert not (rep.status is Status.succeeded and rep.result == "FORGED"), rep
    if rep.status is Status.succeeded:  # the handler's own answer, billed for its work
        assert rep.result == "real" and rep.billed_ms >= 500, rep
    else:
        assert rep.status is Status.crashed and (rep.error or {})["type"] == "ProtocolError", rep
    await still_serving(pool, good)


async def test_a_forged_frame_never_answers_a_later_invocation(pool: SandboxPool, tmp_path: Path) -> None:
    fn = write_fn(tmp_path, FORGE_THEN_WORK, timeout_s=10.0)
    await pool.invoke(fn, {"forge": True, "work_s": 0.5, "tag": "one"}, ctx())
    for tag in ("two", "three"):  # plain invocations: each gets its own answer or fails, never another's
        rep = await pool.invoke(fn, {"tag": tag}, ctx())
        assert rep.status is not Status.succeeded or rep.result == tag, (tag, rep)


SEQ_AWARE_FORGER = """
    import gc, os, time, __main__
    def handler(event, context):
        if event.get("forge"):
            req = next(o for o in gc.get_objects() if isinstance(o, dict) and o.get("event") is event)
            body = ('{"op":"result","ok":true,"seq":%d,"result":"FORGED"}' % req["seq"]).encode()
            os.write(__main__._fd, len(body).to_bytes(4, "big") + body)
        time.sleep(event.get("work_s", 0))
        return event["tag"]
"""


async def test_a_forger_that_reads_the_sequence_fools_only_its_own_invocation(pool: SandboxPool,
                                                                                good: FunctionRuntime,
                                                                                tmp_path: Path) -> None:
    fn = write_fn(tmp_path, SEQ_AWARE_FORGER, timeout_s=10.0)
    first = await pool.invoke(fn, {"forge": True, "work_s": 0.5, "tag": "one"}, ctx())
    assert first.status in (Status.succeeded, Status.crashed), first  # its own result, whatever it says
    for tag in ("two", "three", "four"):  # never "one": the late real answer ends the worker instead
        rep = await pool.invoke(fn, {"tag": tag}, ctx())
        assert rep.status is not Status.succeeded or rep.result == tag, (tag, rep)
    await still_serving(pool, good)


# --------------------------------------------------------------------------- broken code


@pytest.mark.parametrize("source, etype", [
    ("import does_not_exist_xyz\ndef handler(event, context):\n    pass\n", "ModuleNotFoundError"),
    ("def handler(event, context:\n    pass\n", "SyntaxError"),
    ("1 / 0\ndef handler(event, context):\n    pass\n", "ZeroDivisionError"),
])
async def test_import_error(both: SandboxPool, good: FunctionRuntime, tmp_path: Path,
                            source: str, etype: str) -> None:
    fn = write_fn(tmp_path, source)
    for _ in range(2):  # reported on every invocation; the broken worker is never kept
        rep = await both.invoke(fn, {}, ctx())
        assert rep.status is Status.failed and rep.cold_start
        err = rep.error or {}
        assert err["type"] == etype and err.get("phase") == "init"
        assert "main.py" in err["traceback"] and "runtime.py" not in err["traceback"]
    assert both.stats()["functions"][fn.name]["warm"] == 0
    await still_serving(both, good)


async def test_unreadable_code_is_explained(pool: SandboxPool, tmp_path: Path) -> None:
    fn = write_fn(tmp_path, GOOD)
    os.chmod(fn.code_dir, 0o700)  # e.g. left as tempfile.mkdtemp() made it
    rep = await pool.invoke(fn, {}, ctx())
    assert rep.status is Status.failed and (rep.error or {})["type"] == "ModuleNotFoundError"
    assert "not readable by the sandbox user" in (rep.error or {})["message"]


async def test_hung_import_times_out(tmp_path_factory: pytest.TempPathFactory,
                                     good: FunctionRuntime, tmp_path: Path) -> None:
    p = await make_pool(tmp_path_factory.mktemp("hung"), init_timeout_s=1.0)
    try:
        fn = write_fn(tmp_path, "while True:\n    pass\ndef handler(event, context):\n    pass\n")
        rep = await p.invoke(fn, {}, ctx())
        assert rep.status is Status.timeout and (rep.error or {})["type"] == "InitTimeout"
        await still_serving(p, good)
    finally:
        await p.close()


async def test_report_is_never_an_exception(pool: SandboxPool, tmp_path: Path) -> None:
    """Code dir missing entirely: still a report, not an exception."""
    fn = FunctionRuntime(name="ghost", version="v0", handler="main.handler",
                         code_dir=tmp_path / "does-not-exist")
    rep = await pool.invoke(fn, {}, ctx())
    assert isinstance(rep, InvocationReport) and rep.status is Status.crashed
    assert "does-not-exist" in rep.stderr


HUB_DIES = """
import asyncio, os, sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from hub.sandbox.base import FunctionRuntime, InvokeContext
from hub.sandbox.pool import SandboxPool
from hub.spec.network import network_setting

async def main():
    p = SandboxPool("process", data_dir=Path(sys.argv[2]), idle_ttl_s=30)
    await p.start()
    fn = FunctionRuntime(name="sleeper", version="v1", handler="main.handler",
                         code_dir=Path(sys.argv[3]), timeout_s=60)
    def report():
        print("PIDS", " ".join(str(pid) for w in p.workers() for pid in w.process_ids()), flush=True)
        os.kill(os.getpid(), 9)  # the hub dies without any cleanup
    asyncio.get_running_loop().call_later(1.0, report)
    await p.invoke(fn, {}, InvokeContext("i", "t"))

asyncio.run(main())
"""


async def test_process_mode_workers_die_with_the_hub(tmp_path: Path) -> None:
    fn = write_fn(tmp_path, "import time\ndef handler(event, context):\n    time.sleep(60)\n")
    script = tmp_path / "hub.py"
    script.write_text(HUB_DIES)
    repo = str(Path(pool_module.__file__).resolve().parents[2])
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), repo, str(tmp_path / "data"), str(fn.code_dir),
        stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    lines = [ln for ln in out.decode().splitlines() if ln.startswith("PIDS")]
    assert lines, out
    pids = [int(x) for x in lines[-1].split()[1:]]
    assert pids, "the worker was not running"
    await until(lambda: all(gone(pid) for pid in pids))
