"""Worker pool behaviour against the real sandbox: reuse, limits, reports, scaling, isolation."""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from hub.sandbox.base import FunctionRuntime, InvocationReport, InvokeContext, Status
from hub.sandbox.pool import SandboxPool

pytestmark = pytest.mark.timeout(60)


def write_fn(root: Path, source: str, *, name: str | None = None, handler: str = "main.handler",
             files: dict[str, str] | None = None, **kw: Any) -> FunctionRuntime:
    """Materialise a function the way the registry does (world-readable, immutable)."""
    body = textwrap.dedent(source)
    version = hashlib.sha256((body + repr(sorted((files or {}).items()))).encode()).hexdigest()[:12]
    code = root / f"code-{version}-{uuid.uuid4().hex[:6]}"
    code.mkdir(mode=0o755)
    os.chmod(code, 0o755)
    for rel, text in {"main.py": body, **(files or {})}.items():
        path = code / rel
        path.write_text(textwrap.dedent(text))
        os.chmod(path, 0o644)
    kw.setdefault("timeout_s", 2.0)
    return FunctionRuntime(name=name or f"fn-{uuid.uuid4().hex[:8]}", version=version, handler=handler,
                           code_dir=code, **kw)


def ctx(trigger: str | None = None, attempt: int = 1) -> InvokeContext:
    return InvokeContext(invocation_id=uuid.uuid4().hex, trigger=trigger, attempt=attempt)


async def until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    """Await a condition the pool exposes (no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def fnstats(p: SandboxPool, name: str) -> dict[str, Any]:
    stats: dict[str, Any] = p.stats()["functions"].get(name, {})
    return stats


async def make_pool(tmp: Path, isolation: str = "bwrap", **kw: Any) -> SandboxPool:
    # HUB_TEST_SPARES=N runs the sandbox suites again with first workers taken from N spare
    # workers (hub.sandbox.prewarm); tests/test_prewarm.py covers them either way.
    kw.setdefault("spares", int(os.environ.get("HUB_TEST_SPARES", "0")))
    pool = SandboxPool(isolation, data_dir=tmp, **kw)
    try:
        await pool.start()
    except RuntimeError as exc:
        # bwrap is installed by ./scripts/setup; a sandbox test that cannot sandbox must fail
        pytest.fail(f"bubblewrap does not work here (run ./scripts/setup?): {exc}", pytrace=False)
    return pool


@pytest.fixture(scope="module")
async def pool(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SandboxPool]:
    p = await make_pool(tmp_path_factory.mktemp("pooldata"), idle_ttl_s=30.0)
    yield p
    await p.close()


@pytest.fixture
def fndir(tmp_path: Path) -> Path:
    return tmp_path


GOOD = """
import os
TOKEN = os.urandom(8).hex()   # identifies the worker process
CALLS = 0
def handler(event, context):
    global CALLS
    CALLS += 1
    return {"token": TOKEN, "calls": CALLS, "echo": event}
"""

SLEEPY = """
import os, time
TOKEN = os.urandom(8).hex()
def handler(event, context):
    time.sleep(event.get("sleep", 0))
    return TOKEN
"""


def ok(report: InvocationReport) -> Any:
    assert report.status is Status.succeeded, (report.error, report.stderr)
    return report.result


async def test_isolation_is_bwrap(pool: SandboxPool) -> None:
    assert pool.isolation == "bwrap"
    assert pool.stats()["isolation"] == "bwrap"


async def test_warm_reuse_and_cold_flags(pool: SandboxPool, fndir: Path) -> None:
    fn = write_fn(fndir, GOOD)
    first = await pool.invoke(fn, {"n": 1}, ctx())
    second = await pool.invoke(fn, {"n": 2}, ctx())
    a, b = ok(first), ok(second)
    assert a["echo"] == {"n": 1} and b["echo"] == {"n": 2}
    assert a["token"] == b["token"] and b["calls"] == 2  # same process, module imported once
    assert first.cold_start and first.init_duration_ms is not None and first.init_duration_ms > 0
    assert not second.cold_start and second.init_duration_ms is None
    for r in (first, second):
        assert r.billed_ms == max(1, math.ceil(r.duration_ms))
        assert r.max_memory_mb is not None and 1 < r.max_memory_mb < fn.memory_mb
    assert pool.stats()["functions"][fn.name]["warm"] == 1


async def test_report_doc_is_complete(pool: SandboxPool, fndir: Path) -> None:
    fn = write_fn(fndir, GOOD)
    doc = (await pool.invoke(fn, {}, ctx())).to_doc()
    assert doc["status"] == "succeeded" and doc["cold_start"] is True
    assert set(doc) >= {"duration_ms", "billed_ms", "max_memory_mb", "init_duration_ms",
                        "stdout", "stderr", "output_truncated", "exit_code", "signal"}


async def test_max_memory_is_each_invocations_own(pool: SandboxPool, fndir: Path) -> None:
    """A report's peak memory is its own invocation's: a light call after a heavy one on the same
    warm worker reports the light one's (the peak is reset before each call and read back from
    getrusage), and memory a child process used counts while it ran in the call."""
    fn = write_fn(fndir, """
        import os

        def touch(mb):
            block = bytearray(mb << 20)
            block[::4096] = b"x" * len(block[::4096])  # every page, so it is resident

        def handler(event, context):
            if event.get("child"):
                pid = os.fork()
                if pid == 0:
                    touch(event["child"])
                    os._exit(0)
                os.waitpid(pid, 0)
            elif event.get("mb"):
                touch(event["mb"])
            return None
    """, memory_mb=256)
    light = await pool.invoke(fn, {}, ctx())
    heavy = await pool.invoke(fn, {"mb": 100}, ctx())
    light_again = await pool.invoke(fn, {}, ctx())
    for r in (light, heavy, light_again):
        ok(r)
    assert not heavy.cold_start and not light_again.cold_start
    assert light.max_memory_mb is not None and heavy.max_memory_mb is not None
    assert light_again.max_memory_mb is not None
    assert heavy.max_memory_mb >= light.max_memory_mb + 80, (light.max_memory_mb, heavy.max_memory_mb)
    assert light_again.max_memory_mb <= heavy.max_memory_mb - 80, (heavy.max_memory_mb, light_again.max_memory_mb)
    forked = await pool.invoke(fn, {"child": 100}, ctx())
    ok(forked)
    assert forked.max_memory_mb is not None and forked.max_memory_mb >= 80, forked.max_memory_mb


async def test_concurrency_limit_and_queueing(pool: SandboxPool, fndir: Path) -> None:
    fn = write_fn(fndir, SLEEPY, max_concurrency=2)
    seen_busy: list[int] = []

    def watch() -> bool:
        row = pool.stats()["functions"].get(fn.name, {})
        seen_busy.append(row.get("busy", 0))
        return bool(row.get("busy") == 2 and row.get("queued") == 3)

    tasks = [asyncio.create_task(pool.invoke(fn, {"sleep": 0.4}, ctx())) for _ in range(5)]
    await until(watch)
    reports = await asyncio.gather(*tasks)
    tokens = {ok(r) for r in reports}
    assert len(tokens) <= 2  # never more than max_concurrency workers
    assert max(seen_busy) <= 2
    row = pool.stats()["functions"][fn.name]
    assert row["throttled_total"] == 3 and row["rejected_total"] == 0 and row["queued"] == 0
    assert sum(r.cold_start for r in reports) == 2


async def test_queue_full_returns_throttled(fndir: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    p = await make_pool(tmp_path_factory.mktemp("q"), max_queue=1)
    try:
        fn = write_fn(fndir, SLEEPY, max_concurrency=1)
        running = asyncio.create_task(p.invoke(fn, {"sleep": 0.5}, ctx()))
        await until(lambda: fnstats(p, fn.name).get("busy") == 1)
        queued = asyncio.create_task(p.invoke(fn, {}, ctx()))
        await until(lambda: fnstats(p, fn.name).get("queued") == 1)
        rejected = await p.invoke(fn, {}, ctx())
        assert rejected.status is Status.throttled
        assert "queue is full" in (rejected.error or {})["message"]
        ok(await running)
        ok(await queued)
        row = p.stats()["functions"][fn.name]
        assert row["rejected_total"] == 1 and row["throttled_total"] == 2
    finally:
        await p.close()


async def test_idle_workers_are_reaped(fndir: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    p = await make_pool(tmp_path_factory.mktemp("reap"), idle_ttl_s=0.3)
    try:
        fn = write_fn(fndir, GOOD)
        first = await p.invoke(fn, {}, ctx())
        (worker,) = p.workers(fn.name)
        await until(lambda: p.stats()["totals"]["warm"] == 0)
        await until(lambda: worker.pid is not None and not os.path.exists(f"/proc/{worker.pid}"))
        again = await p.invoke(fn, {}, ctx())
        assert again.cold_start and ok(again)["token"] != ok(first)["token"]
    finally:
        await p.close()


async def test_new_version_never_uses_old_worker(pool: SandboxPool, fndir: Path) -> None:
    v1 = write_fn(fndir, GOOD + "\nVERSION = 1\n", name="versioned")
    v2 = write_fn(fndir, GOOD + "\nVERSION = 2\n", name="versioned")
    assert v1.version != v2.version
    r1 = ok(await pool.invoke(v1, {}, ctx()))
    (old,) = pool.workers("versioned")
    rep = await pool.invoke(v2, {}, ctx())
    assert rep.cold_start and ok(rep)["token"] != r1["token"]
    await until(lambda: not old.alive)
    assert pool.stats()["functions"]["versioned"]["version"] == v2.version
    assert [w.version for w in pool.workers("versioned")] == [v2.version]


async def test_async_handler(pool: SandboxPool, fndir: Path) -> None:
    fn = write_fn(fndir, """
        import asyncio
        async def handler(event, context):
            await asyncio.sleep(0.01)
            return {"async": True, "n": event["n"]}
    """)
    assert ok(await pool.invoke(fn, {"n": 1}, ctx())) == {"async": True, "n": 1}
    again = await pool.invoke(fn, {"n": 2}, ctx())
    assert ok(again) == {"async": True, "n": 2} and not again.cold_start


async def test_results_come_back_as_the_function_made_them(pool: SandboxPool, fndir: Path) -> None:
    """The hub reads a worker's answer with orjson when that reads it as the stdlib would: values
    only the stdlib reads exactly (integers beyond 64 bits, lone surrogates) keep their value and
    type, and so does what both read."""
    source = """
        def handler(event, context):
            return VALUES
    """
    values = {"big": 2 ** 70, "neg": -(2 ** 70), "u64": 2 ** 64 - 1, "i64": -(2 ** 63), "n19": 10 ** 18,
              "exact": 9007199254740993, "floats": [0.1 + 0.2, 1e308, -0.0, 5e-324, 1.5],
              "lone": "x\ud800y", "low": "\udc80", "text": "\u2028\u00e9\U0001f600\x00",
              "nested": [[{"a": [True, False, None]}]], "dup": 1}
    fn = write_fn(fndir, source.replace("VALUES", repr(values)))
    for _ in range(2):  # cold, then warm
        result = ok(await pool.invoke(fn, {}, ctx()))
        assert result == values
        assert type(result["big"]) is int and type(result["exact"]) is int and type(result["u64"]) is int
        assert [math.copysign(1.0, f) for f in result["floats"]] == [1.0, 1.0, -1.0, 1.0, 1.0]


async def test_context_fields(pool: SandboxPool, fndir: Path) -> None:
    fn = write_fn(fndir, """
        def handler(event, context):
            context.logger.info("hello from the logger")
            return {k: getattr(context, k) for k in (
                "invocation_id", "function_name", "function_version", "trigger", "attempt",
                "deadline", "memory_limit_mb")} | {
                "remaining": context.get_remaining_time_in_millis()}
    """, memory_mb=128, timeout_s=3.0)
    c = InvokeContext(invocation_id="inv-123", trigger="orders-trigger", attempt=2)
    before = time.time()
    rep = await pool.invoke(fn, {}, c)
    after = time.time()
    got = ok(rep)
    assert got["invocation_id"] == "inv-123" and got["trigger"] == "orders-trigger"
    assert got["attempt"] == 2 and got["function_name"] == fn.name
    assert got["function_version"] == fn.version and got["memory_limit_mb"] == 128
    assert before + 3.0 <= got["deadline"] <= after + 3.0  # sent at some moment of the call, + timeout_s
    assert 0 < got["remaining"] <= 3000
    assert "hello from the logger" in rep.stderr and "inv-123" in rep.stderr
    assert "[INFO]" in rep.stderr


async def test_stdout_stderr_capture_per_invocation(pool: SandboxPool, fndir: Path) -> None:
    fn = write_fn(fndir, """
        import sys
        print("at import")
        def handler(event, context):
            print("out", event["n"])
            print("err", event["n"], file=sys.stderr)
            return None
    """)
    r1 = await pool.invoke(fn, {"n": 1}, ctx())
    r2 = await pool.invoke(fn, {"n": 2}, ctx())
    assert r1.status is Status.succeeded and r1.result is None
    assert r1.stdout == "at import\nout 1\n" and r1.stderr == "err 1\n"
    assert r2.stdout == "out 2\n" and r2.stderr == "err 2\n"
    assert not r1.output_truncated and not r2.output_truncated


async def test_output_truncation(pool: SandboxPool, fndir: Path) -> None:
    fn = write_fn(fndir, """
        import sys
        def handler(event, context):
            sys.stdout.write("a" * 200_000)
            sys.stderr.write("b" * 10)
            return "done"
    """)
    rep = await pool.invoke(fn, {}, ctx())
    assert ok(rep) == "done" and rep.output_truncated
    assert rep.stdout.startswith("a" * 65536)
    assert "output truncated: 134464 more bytes" in rep.stdout
    assert rep.stderr == "b" * 10
    again = await pool.invoke(fn, {}, ctx())  # the capture was reset
    assert again.output_truncated and again.stdout.startswith("a" * 65536 + "\n[... output")


async def test_handler_exception_is_failed_with_traceback(pool: SandboxPool, fndir: Path) -> None:
    fn = write_fn(fndir, """
        def helper(x):
            raise ValueError(f"bad input {x}")
        def handler(event, context):
            return helper(event["x"])
    """)
    rep = await pool.invoke(fn, {"x": 42}, ctx())
    assert rep.status is Status.failed
    err = rep.error or {}
    assert err["type"] == "ValueError" and err["message"] == "bad input 42"
    assert "main.py" in err["traceback"] and "helper" in err["traceback"]
    assert "runtime.py" not in err["traceback"]  # the runtime's own frames are hidden
    nxt = await pool.invoke(fn, {"x": 1}, ctx())
    assert nxt.status is Status.failed and not nxt.cold_start  # a raising handler stays warm


async def test_timeout_kills_and_replaces_worker(pool: SandboxPool, fndir: Path) -> None:
    fn = write_fn(fndir, SLEEPY, timeout_s=0.5)
    warm = await pool.invoke(fn, {}, ctx())
    token = ok(warm)
    (worker,) = pool.workers(fn.name)
    rep = await pool.invoke(fn, {"sleep": 30}, ctx())
    assert rep.status is Status.timeout
    assert "timed out after 0.50 seconds" in (rep.error or {})["message"]
    assert rep.billed_ms >= 500
    await until(lambda: not os.path.exists(f"/proc/{worker.pid}"))
    after = await pool.invoke(fn, {}, ctx())
    assert after.cold_start and ok(after) != token


async def test_env_isolation(pool: SandboxPool, fndir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUB_API_TOKEN", "hub-secret-token-xyz")
    monkeypatch.setenv("HUB_MONGO_URL", "mongodb://user:pw@db/x")
    fn = write_fn(fndir, """
        import os
        def handler(event, context):
            return dict(os.environ)
    """, env={"GREETING": "hello", "API_KEY": "fn-own-secret"})
    env = ok(await pool.invoke(fn, {}, ctx()))
    assert env["GREETING"] == "hello" and env["API_KEY"] == "fn-own-secret"
    assert not [k for k in env if k.startswith("HUB_")]
    assert set(env) <= {"GREETING", "API_KEY", "PATH", "HOME", "LANG", "TMPDIR", "PWD"}


async def test_code_is_read_only_and_tmp_is_private(pool: SandboxPool, fndir: Path) -> None:
    fn = write_fn(fndir, """
        import os
        def handler(event, context):
            out = {"cwd": os.getcwd()}
            with open("/tmp/mine", "w") as f:
                f.write(event["v"])
            out["tmp"] = sorted(os.listdir("/tmp"))
            try:
                open("main.py", "a").write("# pwned")
                out["code"] = "written"
            except OSError as exc:
                out["code"] = type(exc).__name__
            return out
    """, max_concurrency=2)
    r = ok(await pool.invoke(fn, {"v": "x"}, ctx()))
    assert r["cwd"] == "/var/task" and r["tmp"] == ["mine"]
    assert r["code"] in ("PermissionError", "OSError")
    assert not (fn.code_dir / "main.py").read_text().endswith("# pwned")


async def test_invalid_handler_spec(pool: SandboxPool, fndir: Path) -> None:
    fn = write_fn(fndir, GOOD, handler="main.nope")
    rep = await pool.invoke(fn, {}, ctx())
    assert rep.status is Status.failed and rep.error is not None
    assert rep.error["type"] == "AttributeError" and "nope" in rep.error["message"]
    assert rep.error.get("phase") == "init" and rep.cold_start


async def test_retire_stops_workers(pool: SandboxPool, fndir: Path) -> None:
    fn = write_fn(fndir, GOOD, name="to-retire")
    ok(await pool.invoke(fn, {}, ctx()))
    workers = pool.workers("to-retire")
    assert workers
    await pool.retire("to-retire")
    assert all(not w.alive for w in workers)
    assert "to-retire" not in pool.stats()["functions"]


async def test_stats_shape(pool: SandboxPool) -> None:
    s = pool.stats()
    assert {"isolation", "functions", "totals"} <= set(s) <= {"isolation", "functions", "totals", "spares"}
    assert {"warm", "busy", "queued", "throttled_total"} <= set(s["totals"])
    for row in s["functions"].values():
        assert {"warm", "busy", "queued", "throttled_total"} <= set(row)


async def test_worker_memory_is_small(pool: SandboxPool, fndir: Path) -> None:
    fn = write_fn(fndir, GOOD)
    ok(await pool.invoke(fn, {}, ctx()))
    (w,) = pool.workers(fn.name)
    assert 0 < w.rss_bytes() < 40 * 1024 * 1024


async def test_process_mode_basics(fndir: Path, tmp_path_factory: pytest.TempPathFactory,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUB_API_TOKEN", "hub-secret-token-xyz")
    p = await make_pool(tmp_path_factory.mktemp("proc"), "process")
    try:
        assert p.isolation == "process"
        fn = write_fn(fndir, GOOD + "\nimport os\ndef env(event, context):\n    return dict(os.environ)\n")
        a = await p.invoke(fn, {"x": 1}, ctx())
        b = await p.invoke(fn, {"x": 2}, ctx())
        assert ok(a)["token"] == ok(b)["token"] and a.cold_start and not b.cold_start
        envfn = write_fn(fndir, GOOD + "\nimport os\ndef env(event, context):\n    return dict(os.environ)\n",
                         handler="main.env", env={"X": "1"})
        env = ok(await p.invoke(envfn, {}, ctx()))
        assert env["X"] == "1" and not [k for k in env if k.startswith("HUB_")]
    finally:
        await p.close()
