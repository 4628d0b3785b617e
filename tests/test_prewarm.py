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


async def test_code_tree_is_linked_into_the_spare(pool: SandboxPool, tmp_path: Path) -> None:
    fn = write_fn(tmp_path, """
import os
def handler(event, context):
    path = "/var/task/" + "a/" * 60 + "x.txt"
    return [open(path).read(), oct(os.stat("/var/task/a").st_mode & 0o777), os.path.islink("/var/task/l")]
""")
    deep = Path(fn.code_dir, *["a"] * 60)
    deep.mkdir(parents=True)
    (deep / "x.txt").write_text("deep")
    os.symlink("/etc/hostname", Path(fn.code_dir, "l"))  # copied as a link, never followed by the hub
    for d in [deep, *deep.parents]:
        if d == Path(fn.code_dir):
            break
        os.chmod(d, 0o755)
    before = parked_pids(pool)
    assert ok(await pool.invoke(fn, {}, ctx())) == ["deep", "0o755", True]
    assert worker_pid(pool, fn.name) in before
    spare = pool.workers(fn.name)[0]
    assert isinstance(spare, Spare)
    await pool.retire(fn.name)
    await until(lambda: not spare.spare_dir.exists())  # (removed off the loop: 60 directories)


async def test_code_with_many_directories_starts_fresh(pool: SandboxPool, tmp_path: Path) -> None:
    # A version may hold 1000 files, each 511 directories deep. Linked into a spare, 10,000 of
    # them cost 1.06 s of hub CPU per cold start and stalled the event loop 1.15 s (removing
    # them); the deepest one (shutil.copytree) crashed the invocation with a RecursionError. A
    # fresh worker binds them (10 ms): code with more than a few files and directories gets one.
    fn = write_fn(tmp_path, """
def handler(event, context):
    return open("/var/task/" + "a/" * 511 + "x.txt").read()
""")
    deep = Path(fn.code_dir, *["a"] * 511)
    deep.mkdir(parents=True)
    (deep / "x.txt").write_text("deep")
    before = parked_pids(pool)
    assert ok(await pool.invoke(fn, {}, ctx())) == "deep"
    assert worker_pid(pool, fn.name) not in before
    assert parked_pids(pool) == before


async def test_network_spare_not_taken_once_the_host_has_a_new_address(
        pool: SandboxPool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A network spare's rules refuse the host's addresses of when they were made: one the host
    # gained since (a server listening on 0.0.0.0 answers there) was reachable from it, where a
    # fresh worker's rules refused it (measured with `ip addr add <public>/32 dev lo`).
    if pool._cfg is None or pool._cfg.spares is None:
        pytest.skip("network namespaces are not prepared ahead of time here (hub not root)")
    first = write_fn(tmp_path, NET_PROBE, network=True, timeout_s=30.0)
    ok(await pool.invoke(first, {"tcp": []}, ctx()))
    await until(lambda: network_parked(pool), timeout=30.0)
    before = {w.pid for w in prewarmed(pool).parked_network}
    import hub.sandbox.netns as netns
    import hub.sandbox.prewarm as prewarm
    from hub.sandbox.network import host_addresses

    def more() -> list[Any]:
        import ipaddress

        return sorted([*host_addresses(), ipaddress.ip_network("1.2.3.4/32")], key=lambda n: (n.version, n))

    monkeypatch.setattr(prewarm, "host_addresses", more)
    monkeypatch.setattr(netns, "host_addresses", more)
    fn = write_fn(tmp_path, NET_PROBE, network=True, timeout_s=30.0)
    ok(await pool.invoke(fn, {"tcp": []}, ctx()))
    assert worker_pid(pool, fn.name) not in before  # its rules were made now
    await until(lambda: network_parked(pool) and not before & {w.pid for w in prewarmed(pool).parked_network},
                timeout=30.0)
    assert all(w.hosts == more() for w in prewarmed(pool).parked_network)  # the new ones know it


HUB = """
import asyncio, sys
from pathlib import Path
from hub.sandbox.pool import SandboxPool
async def main():
    p = SandboxPool("bwrap", data_dir=Path(sys.argv[1]), spares=1)
    await p.start()
    while not p._prewarmed.parked:
        await asyncio.sleep(0.01)
    print("ROOT", p._prewarmed.root, flush=True)
    await asyncio.sleep(600)
asyncio.run(main())
"""


async def test_a_killed_hubs_spare_dirs_go_even_when_its_pid_is_reused(tmp_path: Path) -> None:
    import subprocess
    import sys

    data = tmp_path / "data"
    hub = subprocess.Popen([sys.executable, "-c", HUB, str(data)], stdout=subprocess.PIPE,
                           cwd=Path(__file__).parent.parent)
    assert hub.stdout is not None
    line = b""
    while not line.startswith(b"ROOT "):  # (after the pool's log lines)
        line = await asyncio.to_thread(hub.stdout.readline)
        assert line, "the hub ended"
    hub.kill()  # kill -9: no close()
    hub.wait()
    root = Path(line.decode().split(" ", 1)[1].strip())
    assert root.is_dir() and any(root.iterdir())
    # the next hub of a container is pid 1 again: the old name's pid is alive, its lock is free
    reused = root.with_name(f"1-{root.name.split('-', 1)[1]}")
    root.rename(reused)
    mine = root.with_name(f"{os.getpid()}-{os.urandom(4).hex()}")
    mine.mkdir()
    held = os.open(mine / ".lock", os.O_RDWR | os.O_CREAT)
    import fcntl

    fcntl.flock(held, fcntl.LOCK_EX)  # a live pool's (another process, or this one)
    try:
        p = await make_pool(data, spares=1)
        try:
            assert not reused.exists()
            assert mine.exists()
        finally:
            await p.close()
    finally:
        os.close(held)


async def test_a_version_that_crashes_at_import_stops_taking_spares(pool: SandboxPool, tmp_path: Path) -> None:
    # Every cold start of a crash loop took a spare (30 in a row: 30 taken, 2.2-2.4 ms of hub CPU
    # each against 1.7-1.8 ms fresh, load 1.5), so other functions' first workers found none.
    crash = write_fn(tmp_path, "import os\nos._exit(3)\n")
    taken = prewarmed(pool).taken_total
    first = await pool.invoke(crash, {}, ctx())
    assert first.status.value == "crashed"
    assert prewarmed(pool).taken_total == taken + 1  # it had not failed yet
    await until(lambda: all_parked(pool))
    taken += 1
    parked = parked_pids(pool)
    for _ in range(3):
        assert (await pool.invoke(crash, {}, ctx())).status.value == "crashed"
    assert prewarmed(pool).taken_total == taken and parked_pids(pool) == parked  # fresh workers
    other = write_fn(tmp_path, PROBE)
    ok(await pool.invoke(other, {}, ctx()))
    assert worker_pid(pool, other.name) in parked  # the spares stayed for it


async def test_network_spare_whose_pasta_died_is_not_taken(pool: SandboxPool, tmp_path: Path) -> None:
    # pasta (~30 MB) is the likelier victim of the OOM killer than a parked spare; once it is
    # gone the namespace has no route out: the function's first worker got ENETUNREACH for
    # everything (and stayed warm with it), where a fresh worker's pasta gets it a route.
    if pool._cfg is None or pool._cfg.spares is None:
        pytest.skip("network namespaces are not prepared ahead of time here (hub not root)")
    dest = {"tcp": [("10.0.0.1", 80)]}  # refused by the rules: ECONNREFUSED at once, with a route
    first = write_fn(tmp_path, NET_PROBE, network=True, timeout_s=30.0)
    assert ok(await pool.invoke(first, dest, ctx())) == {"10.0.0.1|80": "error:ECONNREFUSED"}
    await until(lambda: network_parked(pool), timeout=30.0)
    victims = prewarmed(pool).parked_network
    spares = pool._cfg.spares
    await until(lambda: bool(spares.ready), timeout=30.0)  # and one wired for a fresh network worker
    for spare in victims:
        assert spare._net is not None
        for proc in spare._net._procs.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for ns in spares.ready:
        for proc in ns.procs.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    fn = write_fn(tmp_path, NET_PROBE, network=True, timeout_s=30.0)
    assert ok(await pool.invoke(fn, dest, ctx())) == {"10.0.0.1|80": "error:ECONNREFUSED"}
    assert worker_pid(pool, fn.name) not in {w.pid for w in victims}


async def test_spare_that_ends_before_its_assignment_gives_way_to_a_fresh_worker(
        pool: SandboxPool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Taken alive, gone before its function reached it (the OOM killer, ...): the invocation
    # failed as "Crashed: could not start the worker: BrokenPipeError", for nothing the function did.
    real = Spare.assign
    lost: list[int | None] = []

    async def dies_first(self: Spare, fn: Any, timeout: float) -> Any:
        assert self.pid is not None
        os.kill(self.pid, signal.SIGKILL)
        await self.wait_closed()
        lost.append(self.pid)
        return await real(self, fn, timeout)

    monkeypatch.setattr(Spare, "assign", dies_first)
    fn = write_fn(tmp_path, PROBE)
    rep = await pool.invoke(fn, {}, ctx())
    assert ok(rep)["task"] == ["main.py"] and rep.cold_start
    (w,) = pool.workers(fn.name)
    assert lost and w.pid not in lost and not isinstance(w, Spare)
