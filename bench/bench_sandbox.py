"""Sandbox pool benchmark: cold start, warm invoke overhead and memory, next to baselines.

    .venv/bin/python bench/bench_sandbox.py [--isolation bwrap] [--cold-runs 60] [--warm-calls 3000]

Baselines are measured in the same run, interleaved with our own measurements so that a noisy
machine hurts both sides alike:

- cold start floor: ``python -I -S -c pass`` (an interpreter that does nothing, no sandbox);
- cold start: a fresh ``ProcessPoolExecutor``'s first call (start method: the platform default);
- warm overhead: a ``ProcessPoolExecutor`` round trip of a no-op, both ``submit().result()`` and
  ``await loop.run_in_executor()``; the target compares with the faster of the two.
- cold start with a dependency: a function whose module imports ``requests``, deployed with it as
  a dependency (built by ``hub.deps`` into a directory mounted at ``/opt/python``), next to the
  plain cold start, a function with the same dependencies that does not import them (what the
  mechanism itself costs: the mount and ``site.addsitedir``), and the floor for that import:
  ``python -I -S -c "import sys; sys.path.insert(0, DEPSDIR); import requests"``.
- cold start with network: the same no-op function with ``network: true`` (its own namespace,
  pasta and the nftables rules, see ``hub.sandbox.network``; a namespace wired ahead of time when
  one is ready, ``hub.sandbox.netns``), with an ``allow`` list of addresses (a spare whose rules
  are replaced) and with one that forwards a loopback port (a namespace of its own, wired while the
  worker starts), interleaved with the no-network function and the floor.

Targets (from the issue): cold p50 <= 25 ms and p99 <= 60 ms; warm p50 <= 1.5x the pool round
trip; <= 25 MB per warm worker (RSS summed over the worker's processes, bwrap included); a
network function's cold start at most 15 ms above the no-network one at p50.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import gc
import math
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import structlog  # noqa: E402

from hub.catalog.deps import Deps  # noqa: E402
from hub.sandbox.base import FunctionRuntime, InvokeContext, NetworkPolicy, Status  # noqa: E402
from hub.sandbox.pool import SandboxPool  # noqa: E402
from hub.spec.network import network_setting  # noqa: E402

NOOP = "def handler(event, context):\n    return None\n"
REQUESTS = "import requests\n\ndef handler(event, context):\n    return requests.__version__\n"


def noop() -> None:
    return None


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    k = max(0, min(len(s) - 1, math.ceil(p / 100.0 * len(s)) - 1))
    return s[k]


def rss_kb(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def make_code(root: Path, source: str) -> Path:
    d = root / uuid.uuid4().hex[:10]
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)
    (d / "main.py").write_text(source)
    os.chmod(d / "main.py", 0o644)
    return d


def fn_for(code: Path, name: str | None = None, deps_dir: Path | None = None,
           network: bool | NetworkPolicy = False) -> FunctionRuntime:
    return FunctionRuntime(name=name or f"bench-{uuid.uuid4().hex[:8]}", version=uuid.uuid4().hex[:12],
                           handler="main.handler", code_dir=code, timeout_s=10.0, memory_mb=256,
                           deps_dir=deps_dir, network=network)


def ctx() -> InvokeContext:
    return InvokeContext(invocation_id=uuid.uuid4().hex, trigger=None)


async def cold_start(pool: SandboxPool, root: Path) -> float:
    """ms from invoke to the first result of a function the pool has never seen."""
    fn = fn_for(make_code(root, NOOP))
    t = time.perf_counter()
    rep = await pool.invoke(fn, {}, ctx())
    ms = (time.perf_counter() - t) * 1000
    assert rep.status is Status.succeeded and rep.cold_start, rep
    await pool.retire(fn.name)
    return ms


async def bench_cold(pool: SandboxPool, root: Path, runs: int,
                     spare_pool: SandboxPool | None) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"ours": [], "spares": [], "floor": [], "ppe": [], "ppe_spawn": []}
    spawn = multiprocessing.get_context("spawn")
    python = pool.python
    for i in range(runs + 3):  # 3 warm-up rounds, not recorded
        # ours: a function the pool has never seen -> first result
        ours = await cold_start(pool, root)
        # ... with spares (hub.sandbox.prewarm); the one taken last round was replaced meanwhile
        if spare_pool is not None:
            spares = await cold_start(spare_pool, root)
        # floor: an interpreter doing nothing
        t = time.perf_counter()
        subprocess.run([python, "-I", "-S", "-c", "pass"], check=True)
        floor = (time.perf_counter() - t) * 1000
        # a fresh ProcessPoolExecutor's first call
        t = time.perf_counter()
        with concurrent.futures.ProcessPoolExecutor(max_workers=1) as ex:
            ex.submit(noop).result()
            ppe = (time.perf_counter() - t) * 1000
        # ... and with the "spawn" start method (a fresh interpreter, like our workers)
        t = time.perf_counter()
        with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=spawn) as ex:
            ex.submit(noop).result()
            ppe_spawn = (time.perf_counter() - t) * 1000
        if i >= 3:
            out["ours"].append(ours)
            if spare_pool is not None:
                out["spares"].append(spares)
            out["floor"].append(floor)
            out["ppe"].append(ppe)
            out["ppe_spawn"].append(ppe_spawn)
    return out


async def spares_parked(pool: SandboxPool, timeout: float = 30.0) -> None:
    """Wait until every spare of ``pool`` is parked and its runtime waits for a function."""
    pw = pool._prewarmed
    assert pw is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        parked = pw.parked
        # parked and blocked in read(): its start-up is over (wchan of the runtime, bwrap's last)
        if len(parked) == pw.count and all(_waiting(w.process_ids()) for w in parked):
            return
        await asyncio.sleep(0.01)
    raise TimeoutError("spares were not parked in time")


def _waiting(pids: list[int]) -> bool:
    if len(pids) < 3:
        return False
    try:
        with open(f"/proc/{pids[-1]}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "S"
    except OSError:
        return False


async def bench_burst(pool: SandboxPool, root: Path, size: int, rounds: int,
                      settle: bool) -> dict[str, list[float]]:
    """``size`` first invocations of different functions at once; per invocation and whole."""
    out: dict[str, list[float]] = {"each": [], "wall": []}
    for _ in range(rounds):
        if settle:
            await spares_parked(pool)
        t = time.perf_counter()
        times = await asyncio.gather(*(cold_start(pool, root) for _ in range(size)))
        out["wall"].append((time.perf_counter() - t) * 1000)
        out["each"] += times
    return out


async def hub_cpu_per_cold_start(pool: SandboxPool, root: Path, n: int) -> float:
    """CPU of this process (the hub's side: spawning, the spare's code copy, the protocol) per
    cold start, ms; the replacement spare's start is counted (each round waits it out)."""
    cpu = 0.0
    for _ in range(n):
        t = time.process_time()
        await cold_start(pool, root)
        await asyncio.sleep(0.15)  # the replacement (started 20 ms after the take) parks
        cpu += time.process_time() - t
    return cpu * 1000 / n


def spare_costs(pool: SandboxPool, idle_s: float) -> dict[str, float]:
    """RSS/PSS per parked spare (its processes summed) and the CPU they use while parked."""
    pw = pool._prewarmed
    assert pw is not None
    pids = [w.process_ids() for w in pw.parked]

    def cpu_ticks() -> int:
        total = 0
        for group in pids:
            for pid in group:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
        return total

    t0 = cpu_ticks()
    time.sleep(idle_s)
    cpu_ms = (cpu_ticks() - t0) * 1000 / os.sysconf("SC_CLK_TCK")
    return {"rss": sum(sum(rss_kb(p) for p in g) for g in pids) / len(pids) / 1024,
            "pss": sum(sum(pss_kb(p) for p in g) for g in pids) / len(pids) / 1024,
            "cpu_ms": cpu_ms, "count": len(pids), "idle_s": idle_s}


async def build_requests(root: Path) -> Path:
    """``requests`` and its dependencies, built the way the hub builds a function's (hub.deps:
    resolve, then install the pinned wheels into a directory of their own)."""
    deps = Deps(None, root / "deps")  # type: ignore[arg-type]  # no store: nothing is recorded
    pins = await deps._resolve(["requests"])
    key = "0" * 32
    await deps._install(key, pins)
    print("dependency set: " + ", ".join(p.spec() for p in pins))
    return deps.path(key)


async def bench_cold_deps(pool: SandboxPool, root: Path, runs: int, deps_dir: Path) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"plain": [], "mounted": [], "requests": [], "floor": [], "floor_import": []}
    python = pool.python
    floor_import = f"import sys; sys.path.insert(0, {str(deps_dir)!r}); import requests"
    for i in range(runs + 3):  # 3 warm-up rounds, not recorded
        times = {}
        for key, source, deps in (("plain", NOOP, None), ("mounted", NOOP, deps_dir),
                                  ("requests", REQUESTS, deps_dir)):
            fn = fn_for(make_code(root, source), deps_dir=deps)
            t = time.perf_counter()
            rep = await pool.invoke(fn, {}, ctx())
            times[key] = (time.perf_counter() - t) * 1000
            assert rep.status is Status.succeeded and rep.cold_start, rep
            await pool.retire(fn.name)
        for key, code in (("floor", "pass"), ("floor_import", floor_import)):
            t = time.perf_counter()
            subprocess.run([python, "-I", "-S", "-c", code], check=True)
            times[key] = (time.perf_counter() - t) * 1000
        if i >= 3:
            for key, value in times.items():
                out[key].append(value)
    return out


async def bench_cold_network(pool: SandboxPool, root: Path, runs: int,
                             spare_pool: SandboxPool | None = None) -> dict[str, list[float]]:
    """No network, network, network with an allow list, and the floor, interleaved."""
    allow = network_setting({"allow": ["127.0.0.1:18777", "10.0.0.5:5432", "10.1.0.0/16"]})
    assert not isinstance(allow, bool)
    addresses = network_setting({"allow": ["10.0.0.5:5432", "10.1.0.0/16"]})
    assert not isinstance(addresses, bool)
    kinds: tuple[tuple[str, bool | NetworkPolicy], ...] = (
        ("plain", False), ("network", True), ("addresses", NetworkPolicy(addresses)),
        ("allow", NetworkPolicy(allow)))
    out: dict[str, list[float]] = {"plain": [], "network": [], "addresses": [], "allow": [], "floor": [],
                                   "network_spares": []}
    for i in range(runs + 3):  # 3 warm-up rounds, not recorded
        times = {}
        if spare_pool is not None:  # network: true taking a network spare (the first round wakes them)
            fn = fn_for(make_code(root, NOOP), network=True)
            t = time.perf_counter()
            rep = await spare_pool.invoke(fn, {}, ctx())
            times["network_spares"] = (time.perf_counter() - t) * 1000
            assert rep.status is Status.succeeded and rep.cold_start, rep
            await spare_pool.retire(fn.name)
        for key, network in kinds:
            fn = fn_for(make_code(root, NOOP), network=network)
            t = time.perf_counter()
            rep = await pool.invoke(fn, {}, ctx())
            times[key] = (time.perf_counter() - t) * 1000
            assert rep.status is Status.succeeded and rep.cold_start, rep
            await pool.retire(fn.name)
        t = time.perf_counter()
        subprocess.run([pool.python, "-I", "-S", "-c", "pass"], check=True)
        times["floor"] = (time.perf_counter() - t) * 1000
        if i >= 3:
            for key, value in times.items():
                out[key].append(value)
    return out


async def bench_warm(pool: SandboxPool, root: Path, calls: int) -> dict[str, list[float]]:
    fn = fn_for(make_code(root, NOOP))
    out: dict[str, list[float]] = {"ours": [], "ppe_sync": [], "ppe_async": []}
    loop = asyncio.get_running_loop()
    with concurrent.futures.ProcessPoolExecutor(max_workers=1) as ex:
        ex.submit(noop).result()
        await pool.invoke(fn, {}, ctx())
        block = 100
        gc.disable()
        try:
            for _ in range(0, calls + 200, block):
                for _ in range(block):
                    t = time.perf_counter()
                    rep = await pool.invoke(fn, {}, ctx())
                    out["ours"].append((time.perf_counter() - t) * 1000)
                    assert rep.status is Status.succeeded and not rep.cold_start
                for _ in range(block):
                    t = time.perf_counter()
                    ex.submit(noop).result()
                    out["ppe_sync"].append((time.perf_counter() - t) * 1000)
                for _ in range(block):
                    t = time.perf_counter()
                    await loop.run_in_executor(ex, noop)
                    out["ppe_async"].append((time.perf_counter() - t) * 1000)
        finally:
            gc.enable()
    for k in out:
        out[k] = out[k][200:]  # warm-up
    await pool.retire(fn.name)
    return out


async def bench_memory(pool: SandboxPool, root: Path, n: int) -> dict[str, float]:
    gc.collect()
    hub0 = rss_kb()
    fns = [fn_for(make_code(root, NOOP)) for _ in range(n)]
    reps = await asyncio.gather(*(pool.invoke(fn, {}, ctx()) for fn in fns))
    assert all(r.status is Status.succeeded for r in reps)
    gc.collect()
    hub_n = rss_kb()
    per_rss, per_pss, per_runtime = [], [], []
    for fn in fns:
        (w,) = pool.workers(fn.name)
        assert w.pid is not None
        pids = w.process_ids()
        per_rss.append(sum(rss_kb(p) for p in pids) / 1024)
        per_pss.append(sum(pss_kb(p) for p in pids) / 1024)
        per_runtime.append(rss_kb(pids[-1]) / 1024)
    assert pool.stats()["totals"]["warm"] >= n
    for fn in fns:
        await pool.retire(fn.name)
    return {
        "hub0": hub0 / 1024, "hubn": hub_n / 1024,
        "rss_mean": sum(per_rss) / n, "rss_max": max(per_rss),
        "pss_mean": sum(per_pss) / n, "runtime_rss_mean": sum(per_runtime) / n,
    }


def row(name: str, ours: str, base: str, ratio: str, target: str, met: bool | None) -> str:
    verdict = "" if met is None else ("yes" if met else "NO")
    return f"| {name} | {ours} | {base} | {ratio} | {target} | {verdict} |"


async def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--isolation", default="bwrap", choices=["bwrap", "process", "auto"])
    ap.add_argument("--cold-runs", type=int, default=60)
    ap.add_argument("--warm-calls", type=int, default=3000)
    ap.add_argument("--workers", type=int, default=20)
    ap.add_argument("--deps-runs", type=int, default=40, help="cold starts with a dependency (0: skip)")
    ap.add_argument("--net-runs", type=int, default=60, help="cold starts with network (0: skip)")
    ap.add_argument("--spares", type=int, default=2,
                    help="a second pool with this many spare workers, measured next to the first (0: skip)")
    ap.add_argument("--burst", type=int, default=8, help="first invocations started at once")
    ap.add_argument("--burst-rounds", type=int, default=10)
    args = ap.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))

    root = Path(tempfile.mkdtemp(prefix="bench-sandbox-"))
    os.chmod(root, 0o755)
    pool = SandboxPool(args.isolation, data_dir=root / "data", idle_ttl_s=600.0)
    await pool.start()
    spare_pool = None
    if args.spares > 0:
        spare_pool = SandboxPool(args.isolation, data_dir=root / "data-spares", idle_ttl_s=600.0,
                                 spares=args.spares)
        await spare_pool.start()
        if spare_pool._prewarmed is None:
            await spare_pool.close()
            spare_pool = None
    burst: dict[str, dict[str, list[float]]] = {}
    costs = None
    cpu_fresh = cpu_spares = 0.0
    try:
        cold = await bench_cold(pool, root, args.cold_runs, spare_pool)
        if spare_pool is not None:
            await spares_parked(spare_pool)
            costs = spare_costs(spare_pool, 5.0)
            cpu_fresh = await hub_cpu_per_cold_start(pool, root, 30)
            cpu_spares = await hub_cpu_per_cold_start(spare_pool, root, 30)
            if args.burst > 0:
                for _ in range(args.burst_rounds):  # interleaved, one round at a time
                    for key, p, settle in (("fresh", pool, False), ("spares", spare_pool, True)):
                        r = await bench_burst(p, root, args.burst, 1, settle)
                        for k, v in r.items():
                            burst.setdefault(key, {}).setdefault(k, []).extend(v)
        net_cold = None
        if args.net_runs > 0 and pool.isolation == "bwrap":
            net_cold = await bench_cold_network(pool, root, args.net_runs, spare_pool)
        deps_cold = None
        if args.deps_runs > 0:
            deps_dir = await build_requests(root)
            deps_cold = await bench_cold_deps(pool, root, args.deps_runs, deps_dir)
        warm = await bench_warm(pool, root, args.warm_calls)
        mem = await bench_memory(pool, root, args.workers)
    finally:
        await pool.close()
        if spare_pool is not None:
            await spare_pool.close()
        shutil.rmtree(root, ignore_errors=True)

    c50, c99 = pct(cold["ours"], 50), pct(cold["ours"], 99)
    f50, f99 = pct(cold["floor"], 50), pct(cold["floor"], 99)
    p50, p99 = pct(cold["ppe"], 50), pct(cold["ppe"], 99)
    q50, q99 = pct(cold["ppe_spawn"], 50), pct(cold["ppe_spawn"], 99)
    w50, w99 = pct(warm["ours"], 50), pct(warm["ours"], 99)
    s50, s99 = pct(warm["ppe_sync"], 50), pct(warm["ppe_sync"], 99)
    a50, a99 = pct(warm["ppe_async"], 50), pct(warm["ppe_async"], 99)
    base50 = min(s50, a50)
    print(f"\nSandbox pool benchmark — isolation={pool.isolation}, python {sys.version.split()[0]}, "
          f"{os.cpu_count()} CPUs, cold runs={len(cold['ours'])}, warm calls={len(warm['ours'])}\n")
    print("| metric | ours | baseline | ratio | target | met |")
    print("|---|---|---|---|---|---|")
    print(row("cold start p50 (new function -> first result)", f"{c50:.1f} ms",
              f"floor `python -I -S -c pass` {f50:.1f} ms; PPE first call {p50:.1f} ms (fork), "
              f"{q50:.1f} ms (spawn)",
              f"{c50 / f50:.2f}x floor, {c50 / p50:.2f}x PPE fork, {c50 / q50:.2f}x PPE spawn",
              "<= 25 ms", c50 <= 25))
    print(row("cold start p99", f"{c99:.1f} ms",
              f"floor {f99:.1f} ms; PPE {p99:.1f} ms (fork), {q99:.1f} ms (spawn)",
              f"{c99 / f99:.2f}x floor, {c99 / p99:.2f}x PPE fork, {c99 / q99:.2f}x PPE spawn",
              "<= 60 ms", c99 <= 60))
    ok_spares = True
    if cold["spares"]:
        sp50, sp99 = pct(cold["spares"], 50), pct(cold["spares"], 99)
        ok_spares = sp50 <= 1.5 * f50 and sp99 <= 30
        print(row(f"cold start p50 with {args.spares} spares (one taken per run, replaced between runs)",
                  f"{sp50:.1f} ms", f"floor {f50:.1f} ms; no spares {c50:.1f} ms (above)",
                  f"{sp50 / f50:.2f}x floor, {sp50 / c50:.2f}x no spares", "<= 1.5x floor", sp50 <= 1.5 * f50))
        print(row("cold start p99 with spares", f"{sp99:.1f} ms", f"floor {f99:.1f} ms; no spares {c99:.1f} ms",
                  f"{sp99 / f99:.2f}x floor", "<= 30 ms", sp99 <= 30))
    print(row("warm invoke p50 (no-op handler)", f"{w50 * 1000:.0f} us",
              f"PPE submit().result() {s50 * 1000:.0f} us; run_in_executor {a50 * 1000:.0f} us",
              f"{w50 / base50:.2f}x", "<= 1.5x PPE round trip", w50 <= 1.5 * base50))
    print(row("warm invoke p99", f"{w99 * 1000:.0f} us",
              f"PPE sync {s99 * 1000:.0f} us; async {a99 * 1000:.0f} us",
              f"{w99 / min(s99, a99):.2f}x", "(none)", None))
    print(row("hub RSS, 0 warm workers", f"{mem['hub0']:.1f} MB", "", "", "", None))
    print(row(f"hub RSS, {args.workers} warm workers", f"{mem['hubn']:.1f} MB",
              f"+{(mem['hubn'] - mem['hub0']) / args.workers * 1024:.0f} KB per worker in the hub",
              "", "", None))
    what = "bwrap + runtime" if pool.isolation == "bwrap" else "runtime"
    print(row(f"RSS per warm worker ({what})", f"{mem['rss_mean']:.1f} MB mean",
              f"max {mem['rss_max']:.1f} MB; PSS {mem['pss_mean']:.1f} MB; runtime alone "
              f"{mem['runtime_rss_mean']:.1f} MB", "", "<= 25 MB", mem["rss_mean"] <= 25))
    if costs is not None:
        print(row(f"per parked spare ({costs['count']:.0f} parked)", f"{costs['rss']:.1f} MB RSS",
                  f"PSS {costs['pss']:.1f} MB; CPU while parked {costs['cpu_ms']:.0f} ms in "
                  f"{costs['idle_s']:.0f} s (all spares)", "", "", None))
    if costs is not None:
        print(row("hub CPU per cold start (30 in a row, 150 ms apart)", f"{cpu_spares:.2f} ms with spares",
                  f"{cpu_fresh:.2f} ms without", f"{cpu_spares / cpu_fresh:.2f}x", "", None))
    if burst:
        print(f"\nBurst: {args.burst} first invocations of different functions at once, "
              f"{args.burst_rounds} rounds interleaved ({args.spares} spares, all parked at each "
              "round's start; p50 / p99 per invocation, and the whole burst):\n")
        print("| pool | each invocation | whole burst |")
        print("|---|---|---|")
        for key, label in (("fresh", "no spares"), ("spares", f"{args.spares} spares")):
            b = burst[key]
            print(f"| {label} | {pct(b['each'], 50):.1f} / {pct(b['each'], 99):.1f} ms | "
                  f"{pct(b['wall'], 50):.1f} / {pct(b['wall'], 99):.1f} ms |")
    if deps_cold is not None:
        d = {k: (pct(v, 50), pct(v, 99)) for k, v in deps_cold.items()}
        imp50 = d["floor_import"][0] - d["floor"][0]
        print(f"\nCold start with a dependency ({len(deps_cold['plain'])} runs, interleaved; p50 / p99):\n")
        print("| function | ours | floor in the same run | ours - plain | floor's import cost |")
        print("|---|---|---|---|---|")
        print(f"| no-op, no dependencies | {d['plain'][0]:.1f} / {d['plain'][1]:.1f} ms | `python -I -S -c pass` "
              f"{d['floor'][0]:.1f} / {d['floor'][1]:.1f} ms | | |")
        print(f"| no-op, `requests` mounted, not imported | {d['mounted'][0]:.1f} / {d['mounted'][1]:.1f} ms | | "
              f"{d['mounted'][0] - d['plain'][0]:+.1f} ms (mount + site.addsitedir) | |")
        print(f"| `import requests` at module level | {d['requests'][0]:.1f} / {d['requests'][1]:.1f} ms | "
              f"`python -I -S -c \"...; import requests\"` {d['floor_import'][0]:.1f} / {d['floor_import'][1]:.1f} ms"
              f" | {d['requests'][0] - d['plain'][0]:+.1f} ms | {imp50:+.1f} ms |")
    net_ok = True
    if net_cold is not None:
        n = {k: (pct(v, 50), pct(v, 99)) for k, v in net_cold.items() if v}
        extra50 = n["network"][0] - n["plain"][0]
        net_ok = extra50 <= 15
        print(f"\nCold start with network ({len(net_cold['plain'])} runs, interleaved; p50 / p99):\n")
        print("| function | cold start | above no network | target | met |")
        print("|---|---|---|---|---|")
        print(f"| floor `python -I -S -c pass` | {n['floor'][0]:.1f} / {n['floor'][1]:.1f} ms | | | |")
        print(f"| no-op, no network | {n['plain'][0]:.1f} / {n['plain'][1]:.1f} ms | | | |")
        print(f"| no-op, `network: true` | {n['network'][0]:.1f} / {n['network'][1]:.1f} ms | "
              f"{extra50:+.1f} / {n['network'][1] - n['plain'][1]:+.1f} ms | <= +15 ms at p50 | "
              f"{'yes' if net_ok else 'NO'} |")
        if net_cold["network_spares"]:
            ns = (pct(net_cold["network_spares"], 50), pct(net_cold["network_spares"], 99))
            print(f"| no-op, `network: true`, {args.spares} spares pool (a network spare) | {ns[0]:.1f} / "
                  f"{ns[1]:.1f} ms | {ns[0] - n['plain'][0]:+.1f} / {ns[1] - n['plain'][1]:+.1f} ms | | |")
        print(f"| no-op, `network: {{allow: [address:port, network]}}` (spare, rules replaced) | "
              f"{n['addresses'][0]:.1f} / {n['addresses'][1]:.1f} ms | "
              f"{n['addresses'][0] - n['plain'][0]:+.1f} / {n['addresses'][1] - n['plain'][1]:+.1f} ms | | |")
        print(f"| no-op, `network: {{allow: [loopback port, address, network]}}` (own namespace) | {n['allow'][0]:.1f} / "
              f"{n['allow'][1]:.1f} ms | {n['allow'][0] - n['plain'][0]:+.1f} / "
              f"{n['allow'][1] - n['plain'][1]:+.1f} ms | | |")
    ok = c50 <= 25 and c99 <= 60 and w50 <= 1.5 * base50 and mem["rss_mean"] <= 25 and net_ok and ok_spares
    print(f"\nall targets met: {'yes' if ok else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
