"""HTTP trigger benchmark: a warm no-op function behind an http trigger under concurrent load, next
to a plain aiohttp handler measured in the same run.

    .venv/bin/python bench/bench_http.py [--connections 16] [--duration 10] [--rounds 2]
                                         [--client auto|wrk|aiohttp] [--profile /tmp/prof-http]

One run starts its own mongod (replica set) in a temporary directory, a hub SUBPROCESS
(``python -m hub.cli serve``, sandbox bwrap, ``HUB_LOG_LEVEL=warning``, every request recorded)
with a no-op function (``return None``, ``max_concurrency`` 4) behind ``GET /fn/bench/noop``
(auth none), and the baseline: a plain aiohttp server in ANOTHER subprocess whose handler answers
the same ``null`` in-process (the limit: HTTP parsing and nothing else). The load comes from a
third process on this machine: ``wrk`` when it is installed (nothing is installed by the
benchmark), else a small aiohttp client (``--load`` mode of this file). Hub and plain rounds are
interleaved, so a noisy machine hurts both alike.

- throughput: N keep-alive connections for D seconds (after a 2 s warm-up), requests/s, p50/p99;
- latency: one connection (sequential requests), p50/p99; the hub's *added* latency is its p50
  minus the p50 of a warm ``pool.invoke`` of the same function with an event of the same shape,
  measured in this process the way ``bench_sandbox.py`` does (so it counts the HTTP round trip
  itself, the routing, the event, the record and the response mapping);
- the hub's records are counted afterwards: every request answered is an invocation record;
- ``--profile``: a separate hub round under the same load, sampled by py-spy (top functions);
  with ``--profile-gil`` only the samples that hold the GIL, i.e. the hub's Python CPU: without
  it, a thread blocked in ``send`` while the process it woke runs is counted as busy, which on a
  busy 2-CPU machine makes the socket writes look several times costlier than they are;
- every round's line and table row carry the 1-minute load average at its end: the machine may
  be shared, and the ratios (same run) and CPU per request are what compare across runs;
- ``--compare DIR``: a second hub started from another source tree (e.g. ``git archive HEAD |
  tar -x -C DIR`` before a change) on the same MongoDB, its 16-connection rounds alternated with
  this tree's hub and the plain handler, so a change is measured against its "before" under the
  same load (a before and an after from two runs on a shared machine differ by more than most
  changes do).

Targets (issue 10): >= 1,000 requests/s and >= 0.3x the plain handler; p50 added latency <= 1 ms
over the warm invoke; (issue 21) p99 <= 15 ms at 16 connections. Exits non-zero when one is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import aiohttp  # noqa: E402

NOOP_CODE = "def handler(event, context):\n    return None\n"
ROUTE = "/bench/noop"
WARMUP_S = 2.0


# -- the baseline server and the fallback load generator (run as subprocesses of this file) -----
def serve_plain(port: int) -> None:
    from aiohttp import web

    async def handle(request: web.Request) -> web.Response:
        return web.Response(text="null", content_type="application/json")

    app = web.Application()
    app.router.add_get(ROUTE, handle)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


async def load(url: str, connections: int, duration: float, warmup: float) -> dict[str, Any]:
    """N connections each sending GETs back to back; latencies of the requests after the warm-up."""
    lat: list[float] = []
    statuses: dict[int, int] = {}
    stop_at = time.perf_counter() + warmup + duration
    measure_from = time.perf_counter() + warmup
    conn = aiohttp.TCPConnector(limit=connections, force_close=False)
    async with aiohttp.ClientSession(connector=conn) as session:

        async def worker() -> None:
            while (t0 := time.perf_counter()) < stop_at:
                async with session.get(url) as r:
                    await r.read()
                    status = r.status
                t1 = time.perf_counter()
                if t0 >= measure_from:
                    lat.append(t1 - t0)
                    statuses[status] = statuses.get(status, 0) + 1

        await asyncio.gather(*(worker() for _ in range(connections)))
    lat.sort()
    return {"requests": len(lat), "seconds": duration, "rps": len(lat) / duration,
            "p50_ms": pct(lat, 50) * 1000, "p99_ms": pct(lat, 99) * 1000,
            "non_2xx": sum(n for s, n in statuses.items() if not 200 <= s < 400)}


def pct(xs: list[float], p: float) -> float:
    import math

    s = sorted(xs)
    k = max(0, min(len(s) - 1, math.ceil(p / 100.0 * len(s)) - 1))
    return s[k] if s else float("nan")


# -- the load, from another process ---------------------------------------------------------
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([0-9.]+)(us|ms|s)", text.strip())
    if not m:
        raise ValueError(f"cannot read wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(out: str, duration: float) -> dict[str, Any]:
    reqs = re.search(r"(\d+) requests in ([0-9.]+)(s|m)", out)
    rps = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    if not (reqs and rps and p50 and p99):
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    return {"requests": int(reqs.group(1)), "seconds": duration, "rps": float(rps.group(1)),
            "p50_ms": _ms(p50.group(1)), "p99_ms": _ms(p99.group(1)),
            "non_2xx": int(non2xx.group(1)) if non2xx else 0, "socket_errors": errors.group(0) if errors else ""}


async def run_load(client: str, url: str, connections: int, duration: float) -> dict[str, Any]:
    threads = max(1, min(2, connections))
    if client == "wrk":
        out = await _run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration:.0f}s", "--latency", url])
        return parse_wrk(out, duration)
    out = await _run([sys.executable, __file__, "--load", url, "--connections", str(connections),
                      "--duration", str(duration), "--warmup", "0"])
    return dict(json.loads(out))


async def warm_up(client: str, url: str, connections: int) -> None:
    """A short run first, not counted (wrk has no warm-up option)."""
    await run_load(client, url, connections, WARMUP_S)


async def _run(cmd: list[str]) -> str:
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): {err.decode()[-2000:]}")
    return out.decode()


# -- the warm invoke, in this process (as bench_sandbox.py measures it) ---------------------------
def sample_event() -> dict[str, Any]:
    """An http event as the hub makes it for ``GET /fn/bench/noop`` from wrk (same size and shape)."""
    t = time.time()
    rid = uuid.uuid4().hex
    return {"specversion": "1.0", "id": rid, "source": "http://bench-noop", "type": "http.request",
            "subject": ROUTE, "time": "2026-01-01T00:00:00.000000Z", "datacontenttype": "application/json",
            "data": {"version": "2.0", "routeKey": f"GET {ROUTE}", "rawPath": ROUTE, "rawQueryString": "",
                     "cookies": [], "headers": {"host": "127.0.0.1:40000"}, "queryStringParameters": {},
                     "pathParameters": {}, "requestContext": {
                         "requestId": rid, "routeKey": f"GET {ROUTE}", "stage": "$default",
                         "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(t)),
                         "timeEpoch": int(t * 1000), "domainName": "127.0.0.1:40000",
                         "http": {"method": "GET", "path": ROUTE, "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1",
                                  "userAgent": ""}},
                     "body": "", "isBase64Encoded": False}}


async def warm_invoke_p50(root: Path, calls: int) -> tuple[float, float]:
    import structlog

    from hub.sandbox.base import FunctionRuntime, InvokeContext, Status
    from hub.sandbox.pool import SandboxPool

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    code = root / "warm-code"
    code.mkdir(mode=0o755)
    os.chmod(code, 0o755)
    (code / "main.py").write_text(NOOP_CODE)
    os.chmod(code / "main.py", 0o644)
    fn = FunctionRuntime(name="bench-warm", version="v1", handler="main.handler", code_dir=code,
                         timeout_s=10.0, memory_mb=128)
    pool = SandboxPool("bwrap", data_dir=root / "warm-data", idle_ttl_s=600.0)
    await pool.start()
    lat: list[float] = []
    try:
        for i in range(calls + 200):
            event = sample_event()
            t = time.perf_counter()
            rep = await pool.invoke(fn, event, InvokeContext(invocation_id=event["id"], trigger="bench-noop"))
            if i >= 200:
                lat.append((time.perf_counter() - t) * 1000)
            assert rep.status is Status.succeeded, rep
    finally:
        await pool.close()
    return pct(lat, 50), pct(lat, 99)


# -- the run --------------------------------------------------------------------------------
def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs together, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [float(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # guest time is already in user
    return total - idle, total


def cpu_per_request(rows: list[tuple[float, float, float, int]]) -> tuple[float, float, float]:
    """(hub, workers, mongod) CPU ms per request over the rounds ``rows``."""
    n_req = max(1, sum(c[3] for c in rows))
    hub_ms, workers_ms, mongo_ms = (sum(c[i] for c in rows) / n_req * 1000 for i in range(3))
    return hub_ms, workers_ms, mongo_ms


async def start_from(hub: Any, tree: Path) -> None:
    """Start ``hub`` (a bench_throughput.HubProcess) from the source tree ``tree``: HubProcess
    runs ``python -m hub.cli.commands`` in bench_throughput's ROOT, so ROOT points there while
    the process starts."""
    import bench_throughput

    if not (tree / "hub" / "cli" / "commands.py").is_file():
        raise SystemExit(f"--compare {tree}: not a source tree of the hub (no hub/cli/commands.py)")
    saved = bench_throughput.ROOT
    bench_throughput.ROOT = tree.resolve()
    try:
        await hub.start()
    finally:
        bench_throughput.ROOT = saved


def load_average() -> float:
    """The 1-minute load average (what else the machine was doing)."""
    return os.getloadavg()[0]


class Plain:
    def __init__(self, root: Path) -> None:
        from devstack import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}{ROUTE}"
        self.log = root / "plain.log"
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> Plain:
        with open(self.log, "wb") as logf:
            self.proc = subprocess.Popen([sys.executable, __file__, "--serve-plain", str(self.port)],
                                         stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        async with aiohttp.ClientSession() as s:
            for _ in range(200):
                try:
                    async with s.get(self.url) as r:
                        if r.status == 200:
                            return self
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        raise RuntimeError(f"plain server did not start: {self.log.read_text()}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per measured round")
    ap.add_argument("--rounds", type=int, default=2, help="hub and plain rounds each, interleaved")
    ap.add_argument("--client", default="auto", choices=["auto", "wrk", "aiohttp"])
    ap.add_argument("--max-concurrency", type=int, default=4, help="the function's max_concurrency")
    ap.add_argument("--warm-calls", type=int, default=3000)
    ap.add_argument("--log-level", default="warning", help="the hub's HUB_LOG_LEVEL")
    ap.add_argument("--hub-env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra environment for the hub process (repeatable)")
    ap.add_argument("--profile", default="", help="py-spy a separate hub round: output prefix (PREFIX.txt)")
    ap.add_argument("--profile-duration", type=int, default=10)
    ap.add_argument("--compare", type=Path, default=None, metavar="DIR",
                    help="also run a hub from the source tree DIR; rounds alternate with this tree's hub")
    ap.add_argument("--profile-gil", action="store_true",
                    help="py-spy --gil: only samples holding the GIL (the hub's Python CPU time)")
    ap.add_argument("--profile-nonblocking", action="store_true",
                    help="py-spy --nonblocking: sample without stopping the hub (stopped for each sample, "
                         "its samples piled up on lines that make a system call: bench/README)")
    args = ap.parse_args()
    client = args.client
    if client == "auto":
        client = "wrk" if shutil.which("wrk") else "aiohttp"
    if client == "wrk" and not shutil.which("wrk"):
        ap.error("wrk is not installed (apt-get install wrk), or use --client aiohttp")

    from bench_throughput import Api, CpuMeter, HubProcess, log, proc_cpu_s, record_stats, summarise_folded
    from devstack import MongoServer

    root = Path(tempfile.mkdtemp(prefix="bench-http-"))
    os.chmod(root, 0o755)  # sandboxed workers (their own uid) read code under the hub's data dir
    log(f"scratch dir {root}; client {client}, {args.connections} connections, {args.duration:.0f} s rounds")
    mongo = await asyncio.to_thread(MongoServer(root / "mongo").start)
    mongo_pid = mongo.pid or 0
    hub_env = dict(kv.split("=", 1) for kv in args.hub_env)
    hub = HubProcess(root, "http", mongo.url, "127.0.0.1:9", args.log_level, hub_env)
    other = HubProcess(root, "compare", mongo.url, "127.0.0.1:9", args.log_level, hub_env) if args.compare else None
    hubs = {"hub": hub, **({"compare": other} if other else {})}
    plain = Plain(root)
    rounds: dict[str, list[dict[str, Any]]] = {"hub": [], "compare": [], "plain": [], "hub_c1": [], "plain_c1": []}
    # per hub: (hub, workers, mongod CPU s; requests) of each 16-connection round
    cpu: dict[str, list[tuple[float, float, float, int]]] = {name: [] for name in hubs}
    busy: dict[str, list[float]] = {"hub": [], "compare": [], "plain": []}  # machine CPU busy fraction per round
    profile_out: Path | None = None
    started = time.monotonic()
    try:
        await hub.start()
        if other is not None:
            await start_from(other, args.compare)
        await plain.start()
        async with aiohttp.ClientSession() as s:
            for each in hubs.values():
                api = Api(s, each.url)
                await api.put_function("bench-noop", NOOP_CODE, max_concurrency=args.max_concurrency)
                await api.put_trigger("bench-noop", "bench-noop",
                                      {"type": "http", "path": ROUTE, "methods": ["GET"], "auth": "none"})
                async with s.get(each.fn_url + "/fn" + ROUTE) as r:
                    assert r.status == 200 and await r.text() == "null", (r.status, await r.text())
        hub_url = hub.fn_url + "/fn" + ROUTE
        urls = [(name, each.fn_url + "/fn" + ROUTE) for name, each in hubs.items()] + [("plain", plain.url)]
        for i in range(args.rounds):
            for name, url in urls:
                await warm_up(client, url, args.connections)
                meter = CpuMeter(hubs[name].pid) if name in hubs else None
                if meter:
                    meter.start()
                mongo0 = proc_cpu_s(mongo_pid) or 0.0
                m0 = machine_cpu()
                res = await run_load(client, url, args.connections, args.duration)
                m1 = machine_cpu()
                busy[name].append((m1[0] - m0[0]) / max(1.0, m1[1] - m0[1]))
                if meter:
                    hub_cpu, workers_cpu = await meter.stop()
                    cpu[name].append((hub_cpu, workers_cpu, (proc_cpu_s(mongo_pid) or 0.0) - mongo0,
                                      res["requests"]))
                res["load"] = load_average()
                rounds[name].append(res)
                log(f"{name} c={args.connections} round {i + 1}: {res['rps']:,.0f} req/s, p50 {res['p50_ms']:.2f} ms, "
                    f"p99 {res['p99_ms']:.2f} ms, non-2xx {res['non_2xx']}, load average {res['load']:.2f}")
            for name, url in (("hub_c1", hub_url), ("plain_c1", plain.url)):
                await warm_up(client, url, 1)
                res = await run_load(client, url, 1, max(3.0, args.duration / 2))
                res["load"] = load_average()
                rounds[name].append(res)
                log(f"{name} round {i + 1}: {res['rps']:,.0f} req/s, p50 {res['p50_ms']:.3f} ms, "
                    f"p99 {res['p99_ms']:.3f} ms")
        if args.profile:
            profile_out = Path(f"{args.profile}.txt")
            spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
            prof = subprocess.Popen([spy, "record", "--pid", str(hub.pid), "--duration", str(args.profile_duration),
                                     "--rate", "200", "--format", "raw", "-o", str(profile_out),
                                     *(["--gil"] if args.profile_gil else []),
                                     *(["--nonblocking"] if args.profile_nonblocking else [])],
                                    stdout=subprocess.DEVNULL, stderr=open(root / "py-spy.log", "wb"))
            await asyncio.sleep(0.5)
            res = await run_load(client, hub_url, args.connections, args.profile_duration)
            await asyncio.to_thread(prof.wait, 60)
            log(f"profiled hub round: {res['rps']:,.0f} req/s (py-spy attached)")
        await asyncio.sleep(1.0)  # the last group commit
        stats = await record_stats(mongo.url, hub.db, "bench-noop")
        warm50, warm99 = await warm_invoke_p50(root, args.warm_calls)
    finally:
        plain.stop()
        await hub.stop()
        if other is not None:
            await other.stop()
        await asyncio.to_thread(mongo.stop)
        shutil.rmtree(root / "mongo", ignore_errors=True)

    def med(name: str, key: str) -> float:
        xs = sorted(r[key] for r in rounds[name])
        return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2

    hub_rps, plain_rps = med("hub", "rps"), med("plain", "rps")
    ratio = hub_rps / plain_rps
    hub_p99 = max(r["p99_ms"] for r in rounds["hub"])
    hub_c1, plain_c1 = med("hub_c1", "p50_ms"), med("plain_c1", "p50_ms")
    added = hub_c1 - warm50
    answered = sum(r["requests"] for k in rounds for r in rounds[k] if k.startswith("hub"))
    non2xx = sum(r["non_2xx"] for k in rounds for r in rounds[k])
    hub_ms, workers_ms, mongo_ms = cpu_per_request(cpu["hub"])

    print(f"\n# HTTP trigger benchmark: python {sys.version.split()[0]}, {os.cpu_count()} CPUs, client {client} "
          f"(another process), hub log level {args.log_level}, sandbox bwrap, {time.monotonic() - started:.0f} s\n")
    print("| round | hub req/s | hub p50 / p99 | plain aiohttp req/s | plain p50 / p99 | hub/plain | load avg. |")
    print("|---|---|---|---|---|---|---|")
    for i, (h, p) in enumerate(zip(rounds["hub"], rounds["plain"])):
        print(f"| {args.connections} connections, #{i + 1} | {h['rps']:,.0f} | {h['p50_ms']:.2f} / {h['p99_ms']:.2f} ms "
              f"| {p['rps']:,.0f} | {p['p50_ms']:.2f} / {p['p99_ms']:.2f} ms | {h['rps'] / p['rps']:.2f}x "
              f"| {h['load']:.1f} / {p['load']:.1f} |")
    for i, (h, p) in enumerate(zip(rounds["hub_c1"], rounds["plain_c1"])):
        print(f"| 1 connection, #{i + 1} | {h['rps']:,.0f} | {h['p50_ms']:.3f} / {h['p99_ms']:.3f} ms "
              f"| {p['rps']:,.0f} | {p['p50_ms']:.3f} / {p['p99_ms']:.3f} ms | {h['rps'] / p['rps']:.2f}x "
              f"| {h['load']:.1f} / {p['load']:.1f} |")
    if other is not None:
        for i, (c, p) in enumerate(zip(rounds["compare"], rounds["plain"])):
            print(f"| {args.connections} connections, #{i + 1}, the hub from {args.compare} | {c['rps']:,.0f} "
                  f"| {c['p50_ms']:.2f} / {c['p99_ms']:.2f} ms | {p['rps']:,.0f} | {p['p50_ms']:.2f} / "
                  f"{p['p99_ms']:.2f} ms | {c['rps'] / p['rps']:.2f}x | {c['load']:.1f} / {p['load']:.1f} |")
    print(f"\n- warm `pool.invoke` of the same no-op with an http-shaped event, in-process: p50 {warm50 * 1000:.0f} us, "
          f"p99 {warm99 * 1000:.0f} us")
    print(f"- hub p50 at 1 connection {hub_c1:.3f} ms = warm invoke {warm50:.3f} ms + {added:.3f} ms added "
          f"(of which the bare HTTP round trip, the plain handler's p50, is {plain_c1:.3f} ms)")
    print(f"- CPU per request under load: hub {hub_ms:.3f} ms, sandboxed workers {workers_ms:.3f} ms, mongod "
          f"{mongo_ms:.3f} ms; machine busy {100 * sum(busy['hub']) / len(busy['hub']):.0f}% during the hub "
          f"rounds, {100 * sum(busy['plain']) / len(busy['plain']):.0f}% during the plain ones "
          f"({os.cpu_count()} CPUs, the client included)")
    if other is not None:
        c_hub, c_workers, c_mongo = cpu_per_request(cpu["compare"])
        print(f"- the hub from {args.compare}, same rounds: req/s {med('compare', 'rps'):,.0f} "
              f"({med('compare', 'rps') / plain_rps:.2f}x the plain handler), worst p99 "
              f"{max(r['p99_ms'] for r in rounds['compare']):.2f} ms; CPU per request hub {c_hub:.3f} ms, "
              f"workers {c_workers:.3f} ms, mongod {c_mongo:.3f} ms (this tree's hub / that one: "
              f"{hub_ms / max(c_hub, 1e-9):.2f}x, {workers_ms / max(c_workers, 1e-9):.2f}x, "
              f"{mongo_ms / max(c_mongo, 1e-9):.2f}x)")
    print(f"- records: {stats['records']} for {answered} answered requests "
          f"({stats['succeeded_records']} succeeded, other {stats['other'] or 'none'}); non-2xx answers {non2xx}")
    checks = [
        (f"hub >= 1,000 req/s ({hub_rps:,.0f})", hub_rps >= 1000),
        (f"hub >= 0.3x the plain handler ({ratio:.2f}x)", ratio >= 0.3),
        (f"hub p99 at {args.connections} connections <= 15 ms (issue 21; worst round {hub_p99:.2f} ms)",
         hub_p99 <= 15.0),
        (f"p50 added latency <= 1 ms over the warm invoke ({added:.3f} ms)", added <= 1.0),
        ("every answered request recorded, all succeeded, no errors",
         stats["records"] >= answered and not stats["other"] and non2xx == 0),
    ]
    print()
    for text, ok in checks:
        print(f"- {'met' if ok else 'MISSED'}: {text}")
    if profile_out is not None and profile_out.exists():
        summarise_folded(profile_out, top=20)
    ok = all(ok for _, ok in checks)
    print(f"\nhub log and data: {root}")
    print(f"all targets met: {'yes' if ok else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--serve-plain":
        serve_plain(int(sys.argv[2]))
        raise SystemExit(0)
    if len(sys.argv) > 2 and sys.argv[1] == "--load":
        lp = argparse.ArgumentParser()
        lp.add_argument("--load")
        lp.add_argument("--connections", type=int, default=16)
        lp.add_argument("--duration", type=float, default=10.0)
        lp.add_argument("--warmup", type=float, default=WARMUP_S)
        a = lp.parse_args()
        print(json.dumps(asyncio.run(load(a.load, a.connections, a.duration, a.warmup))))
        raise SystemExit(0)
    raise SystemExit(asyncio.run(main()))
