"""Spare workers (hub.sandbox.prewarm) against the real sandbox: a spare is taken by one function
only, has seen no function's code, env or secrets before, and is the sandbox a fresh worker gets."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hub.sandbox.bwrap import clean_env
from hub.sandbox.pool import SandboxPool
from hub.sandbox.prewarm import Prewarmed, Spare
from tests.test_isolation import PROBE as NET_PROBE
from tests.test_isolation import host_ips, policy, refused
from tests.test_sandbox import ctx, make_pool, ok, until, write_fn

pytestmark = pytest.mark.timeout(120)

SPARES = 2

PROBE = """
import os, subprocess, sys
SEEN = sorted(os.listdir("/var/task"))
def handler(event, context):
    status = open("/proc/self/status").read()
    child = subprocess.run(["/usr/bin/env"], capture_output=True, text=True).stdout
    return {"file": __file__, "cwd": os.getcwd(), "path0": sys.path[0], "task": SEEN,
            "env": dict(os.environ), "child_env": sorted(child.split()),
            "seccomp": [l.split()[1] for l in status.splitlines() if l.startswith("Seccomp:")][0],
            "uid": os.getuid(), "mods": "requests" in sys.modules}
"""


def prewarmed(p: SandboxPool) -> Prewarmed:
    pw = p._prewarmed
    assert pw is not None
    return pw


def runtime_pid(w: Spare) -> int | None:
    """The spare's runtime (bwrap monitor -> bwrap init -> runtime), once it runs Python."""
    pids = w.process_ids()
    if len(pids) != 3:
        return None
    try:
        with open(f"/proc/{pids[-1]}/cmdline", "rb") as f:
            return pids[-1] if b"/var/runtime/" in f.read() else None
    except OSError:
        return None


def all_parked(p: SandboxPool) -> bool:
    parked = prewarmed(p).parked
    return len(parked) == SPARES and all(runtime_pid(w) for w in parked)


def parked_pids(p: SandboxPool) -> set[int]:
    return {w.pid for w in prewarmed(p).parked if w.pid is not None}


def worker_pid(p: SandboxPool, name: str) -> int | None:
    (w,) = p.workers(name)
    return w.pid


@pytest.fixture
async def pool(tmp_path: Path) -> AsyncIterator[SandboxPool]:
    p = await make_pool(tmp_path / "data", idle_ttl_s=30.0, spares=SPARES)
    await until(lambda: all_parked(p))
    yield p
    await p.close()


async def test_first_worker_is_a_spare_with_a_fresh_workers_layout(pool: SandboxPool, tmp_path: Path) -> None:
    before = parked_pids(pool)
    fn = write_fn(tmp_path, PROBE, env={"GREETING": "hello", "TZ": "UTC"}, files={"util.py": "X = 1\n"})
    rep = await pool.invoke(fn, {}, ctx())
    got: dict[str, Any] = ok(rep)
    assert rep.cold_start
    assert worker_pid(pool, fn.name) in before  # taken from the parked ones
    assert (got["file"], got["cwd"], got["path0"]) == ("/var/task/main.py", "/var/task", "/var/task")
    assert got["task"] == ["main.py", "util.py"]
    # exactly what a fresh worker of this function gets (bwrap's --chdir sets PWD)
    assert got["env"] == {**clean_env(fn), "PWD": "/var/task"}
    assert "GREETING=hello" in got["child_env"]  # and what its own processes inherit
    assert got["seccomp"] == "2"  # the filter is on
    assert got["uid"] != 0 and not got["mods"]
    # a replacement is started
    await until(lambda: all_parked(pool) and worker_pid(pool, fn.name) not in parked_pids(pool))
    assert pool.stats()["spares"] == {"parked": SPARES, "parked_network": 0, "taken_total": 1}


async def test_spare_never_reused_across_functions(pool: SandboxPool, tmp_path: Path) -> None:
    a = write_fn(tmp_path, PROBE, files={"only_a.py": ""})
    got_a = ok(await pool.invoke(a, {}, ctx()))
    (wa,) = pool.workers(a.name)
    assert isinstance(wa, Spare)
    spare_dir = wa.spare_dir
    assert sorted(os.listdir(spare_dir)) == ["main.py", "only_a.py"]
    await pool.retire(a.name)
    await until(lambda: not spare_dir.exists())  # its code goes with it
    assert wa.pid not in parked_pids(pool)
    b = write_fn(tmp_path, PROBE, files={"only_b.py": ""})
    got_b = ok(await pool.invoke(b, {}, ctx()))
    assert worker_pid(pool, b.name) != wa.pid
    assert got_b["task"] == ["main.py", "only_b.py"]  # nothing of a's
    assert got_a["uid"] != got_b["uid"]  # each worker its own host uid


async def test_parked_spare_has_no_function_env_or_secret(pool: SandboxPool, tmp_path: Path) -> None:
    secret = "s3cr3t-" + os.urandom(8).hex()
    for w in prewarmed(pool).parked:
        pid = runtime_pid(w)
        assert pid is not None
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if kv)
        assert set(env) == {b"PATH", b"HOME", b"LANG", b"TMPDIR", b"PWD"}
        assert os.listdir(w.spare_dir) == []  # no code either
    fn = write_fn(tmp_path, PROBE, env={"API_KEY": secret})
    got = ok(await pool.invoke(fn, {}, ctx()))
    assert got["env"]["API_KEY"] == secret
    for w in prewarmed(pool).parked:  # the others (and the replacement) never saw it
        pid = runtime_pid(w)
        if pid is not None:
            with open(f"/proc/{pid}/environ", "rb") as f:
                assert secret.encode() not in f.read()


async def test_spare_killed_while_parked_is_replaced(pool: SandboxPool, tmp_path: Path) -> None:
    victim = prewarmed(pool).parked[0]
    assert victim.pid is not None
    os.kill(victim.pid, signal.SIGKILL)  # the bwrap monitor: the whole sandbox goes
    await until(lambda: all_parked(pool) and victim.pid not in parked_pids(pool))
    await until(lambda: not victim.spare_dir.exists())
    fn = write_fn(tmp_path, PROBE)
    rep = await pool.invoke(fn, {}, ctx())
    ok(rep)
    assert rep.cold_start


def network_parked(p: SandboxPool) -> bool:
    parked = prewarmed(p).parked_network
    return len(parked) == prewarmed(p).net_count and all(runtime_pid(w) for w in parked)


async def test_network_spare_has_the_rules_of_a_fresh_worker(pool: SandboxPool, tmp_path: Path) -> None:
    if pool._cfg is None or pool._cfg.spares is None:
        pytest.skip("network namespaces are not prepared ahead of time here (hub not root)")
    assert not prewarmed(pool).parked_network  # none before a function with network came
    server = await asyncio.start_server(lambda r, w: w.close(), host="0.0.0.0", port=0)
    port = server.sockets[0].getsockname()[1]
    dests = [("127.0.0.1", port), *((ip, port) for ip in host_ips())]
    try:
        first = write_fn(tmp_path, NET_PROBE, network=True, timeout_s=30.0)
        assert all(refused(v) for v in ok(await pool.invoke(first, {"tcp": dests}, ctx())).values())
        await until(lambda: network_parked(pool), timeout=30.0)
        before = {w.pid for w in prewarmed(pool).parked_network}
        # an allow list gets its own rules at its start: not a network spare
        allow = write_fn(tmp_path, NET_PROBE, network=policy("10.0.0.5:5432"), timeout_s=30.0)
        ok(await pool.invoke(allow, {"tcp": []}, ctx()))
        assert worker_pid(pool, allow.name) not in before
        fn = write_fn(tmp_path, NET_PROBE, network=True, timeout_s=30.0)
        got = ok(await pool.invoke(fn, {"tcp": dests}, ctx()))
        assert worker_pid(pool, fn.name) in before  # taken from the network spares
        assert got and all(refused(v) for v in got.values()), got  # nothing of the host
        await until(lambda: network_parked(pool) and worker_pid(pool, fn.name) not in
                    {w.pid for w in prewarmed(pool).parked_network}, timeout=30.0)
    finally:
        server.close()
        await server.wait_closed()


async def test_functions_a_spare_cannot_serve_start_fresh(pool: SandboxPool, tmp_path: Path) -> None:
    deps = tmp_path / "deps"
    deps.mkdir(mode=0o755)
    os.chmod(deps, 0o755)
    for kw in ({"env": {"LANG": "C"}}, {"env": {"LD_LIBRARY_PATH": "/var/task"}}, {"deps_dir": deps}):
        before = parked_pids(pool)
        fn = write_fn(tmp_path, PROBE, **kw)
        ok(await pool.invoke(fn, {}, ctx()))
        assert worker_pid(pool, fn.name) not in before, kw
        assert parked_pids(pool) == before, kw


async def test_limits_apply_after_assignment(pool: SandboxPool, tmp_path: Path) -> None:
    fn = write_fn(tmp_path, """
def handler(event, context):
    try:
        b = bytearray(200 * 1024 * 1024)
    except MemoryError:
        return "refused"
    return "allocated"
""", memory_mb=64)
    assert ok(await pool.invoke(fn, {}, ctx())) == "refused"


async def test_burst_larger_than_the_spares(pool: SandboxPool, tmp_path: Path) -> None:
    fns = [write_fn(tmp_path, PROBE) for _ in range(SPARES + 3)]
    reps = await asyncio.gather(*(pool.invoke(fn, {}, ctx()) for fn in fns))
    uids = {ok(r)["uid"] for r in reps}
    assert len(uids) == len(fns) and all(r.cold_start for r in reps)
    await until(lambda: all_parked(pool))


async def test_code_on_another_file_system_is_copied(pool: SandboxPool, tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("no second file system to put the code on")
    root = shm / f"prewarm-{os.urandom(4).hex()}"
    root.mkdir(mode=0o755)
    try:
        fn = write_fn(root, PROBE, files={"extra.py": ""})
        assert ok(await pool.invoke(fn, {}, ctx()))["task"] == ["extra.py", "main.py"]
    finally:
        import shutil

        shutil.rmtree(root, ignore_errors=True)


async def test_close_ends_spares_and_removes_their_directories(tmp_path: Path) -> None:
    data = tmp_path / "data"
    stale = data / "sandbox" / "spares" / "999999999-dead"  # a crashed hub's: no such process
    stale.mkdir(parents=True)
    p = await make_pool(data, spares=SPARES)
    await until(lambda: all_parked(p))
    assert not stale.exists()
    pids = parked_pids(p)
    root = prewarmed(p).root
    await p.close()
    assert not root.exists()
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
