"""Logs: output kept when an invocation ends abnormally, paged invocation lists, the follow stream, the CLI.

Real servers and the real sandbox throughout: the pool tests run functions under bubblewrap (and
as plain processes for the key cases), the API tests against the session's hub.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from hub.web.admin_history import LOG_STREAMS
from hub.app import Hub
from hub.sandbox.base import Status
from hub.sandbox.pool import SandboxPool
from tests.hubfixtures import API_TOKEN, Api, eventually, make_settings
from tests.test_sandbox import ctx, make_pool, write_fn

pytestmark = pytest.mark.timeout(120)


# --------------------------------------------------------------------------- output on abnormal ends


@pytest.fixture(scope="module")
async def bwrap_pool(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SandboxPool]:
    p = await make_pool(tmp_path_factory.mktemp("logs-bwrap"), idle_ttl_s=30.0)
    yield p
    await p.close()


@pytest.fixture(scope="module")
async def process_pool(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SandboxPool]:
    p = await make_pool(tmp_path_factory.mktemp("logs-process"), "process", idle_ttl_s=30.0)
    yield p
    await p.close()


@pytest.fixture(params=["bwrap", "process"])
def both(request: pytest.FixtureRequest) -> SandboxPool:
    p: SandboxPool = request.getfixturevalue(f"{request.param}_pool")
    return p


BEFORE = """
import sys
def handler(event, context):
    print("line one before the end")
    sys.stdout.write("line two, written not printed\\n")
    print("to stderr", file=sys.stderr)
    context.logger.info("from the logger")
"""


async def test_output_kept_on_timeout(both: SandboxPool, tmp_path: Path) -> None:
    fn = write_fn(tmp_path, BEFORE + "    import time\n    time.sleep(30)\n", timeout_s=1.0)
    rep = await both.invoke(fn, {}, ctx())
    assert rep.status is Status.timeout, rep
    assert rep.stdout == "line one before the end\nline two, written not printed\n", rep
    assert rep.stderr.startswith("to stderr\n") and "from the logger" in rep.stderr


async def test_output_kept_on_os_exit(both: SandboxPool, tmp_path: Path) -> None:
    fn = write_fn(tmp_path, BEFORE + "    import os\n    os._exit(7)\n")
    rep = await both.invoke(fn, {}, ctx())
    assert rep.status is Status.crashed and rep.exit_code == 7, rep
    assert "line one before the end\nline two" in rep.stdout and "from the logger" in rep.stderr


async def test_output_kept_on_segfault(both: SandboxPool, tmp_path: Path) -> None:
    fn = write_fn(tmp_path, BEFORE + "    import ctypes\n    ctypes.string_at(0)\n")
    rep = await both.invoke(fn, {}, ctx())
    assert rep.status is Status.crashed and rep.signal == 11, rep
    assert "line one before the end\nline two" in rep.stdout and "to stderr" in rep.stderr


async def test_output_kept_on_sys_exit(bwrap_pool: SandboxPool, tmp_path: Path) -> None:
    fn = write_fn(tmp_path, BEFORE + "    sys.exit(4)\n")
    rep = await bwrap_pool.invoke(fn, {}, ctx())
    assert rep.status is Status.crashed and rep.exit_code == 4, rep
    assert "line one before the end" in rep.stdout and "from the logger" in rep.stderr


async def test_output_kept_on_out_of_memory_in_process(both: SandboxPool, tmp_path: Path) -> None:
    """RLIMIT_AS: the allocation fails inside the worker (MemoryError)."""
    fn = write_fn(tmp_path, BEFORE + "    hog = [bytearray(1 << 20) for _ in range(10_000)]\n", memory_mb=64)
    rep = await both.invoke(fn, {}, ctx())
    assert rep.status is Status.out_of_memory, rep
    assert "line one before the end\nline two" in rep.stdout and "from the logger" in rep.stderr


async def test_output_kept_when_the_hub_kills_for_memory(bwrap_pool: SandboxPool, tmp_path: Path) -> None:
    """Children that each stay under RLIMIT_AS but together pass memory_mb: the hub kills the tree."""
    fn = write_fn(tmp_path, BEFORE + """
    import os, time
    for i in range(10):
        if os.fork() == 0:
            try:
                b = bytearray(30 << 20)
                for j in range(0, len(b), 4096):
                    b[j] = 1
                time.sleep(10)
            finally:
                os._exit(0)
    print("all forked")
    time.sleep(10)
""", memory_mb=64, timeout_s=20.0)
    rep = await bwrap_pool.invoke(fn, {}, ctx())
    assert rep.status is Status.out_of_memory, rep
    assert "killed" in (rep.error or {})["message"]
    assert rep.stdout.startswith("line one before the end\nline two"), rep
    assert "from the logger" in rep.stderr


async def test_output_kept_on_init_timeout(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    pool = await make_pool(tmp_path_factory.mktemp("logs-init"), init_timeout_s=1.0)
    try:
        fn = write_fn(tmp_path, "import time\nprint('importing')\ntime.sleep(30)\n"
                                "def handler(e, c):\n    return 1\n")
        rep = await pool.invoke(fn, {}, ctx())
        assert rep.status is Status.timeout and rep.stdout == "importing\n", rep
    finally:
        await pool.close()


@pytest.mark.integration
async def test_timeout_record_has_the_output(api: Api, unique: str) -> None:
    name = f"slow-{unique}"
    await api.put_function(name, "import time\ndef handler(event, context):\n"
                                 "    print('started', event['data']['n'])\n    time.sleep(30)\n", timeout_s=1)
    out = await api.ok("POST", f"/v1/functions/{name}/invoke", {"n": 5})
    assert out["status"] == "timeout" and out["stdout"] == "started 5\n", out
    record = await api.ok("GET", f"/v1/invocations/{out['invocation_id']}")
    assert record["stdout"] == "started 5\n"


# --------------------------------------------------------------------------- paging and filters

PRINTER = ("def handler(event, context):\n    print('run', event['data']['n'])\n"
           "    context.logger.warning('warned %s', event['data']['n'])\n    return event['data']['n']\n")


async def _invoke_n(api: Api, name: str, n: int) -> list[str]:
    ids = []
    for i in range(n):
        out = await api.ok("POST", f"/v1/functions/{name}/invoke", {"n": i})
        assert out["status"] == "succeeded", out
        ids.append(out["invocation_id"])
    return ids


def _key(rec: dict[str, Any]) -> tuple[str, str]:
    return rec["started_at"], rec["invocation_id"]


@pytest.mark.integration
async def test_paging_25_by_10(api: Api, unique: str) -> None:
    name = f"page-{unique}"
    await api.put_function(name, PRINTER)
    ids = await _invoke_n(api, name, 25)
    pages: list[list[dict[str, Any]]] = []
    cursor: str | None = None
    while True:
        params = {"function": name, "limit": "10", **({"cursor": cursor} if cursor else {})}
        body = await api.ok("GET", "/v1/invocations", params=params)
        pages.append(body["invocations"])
        cursor = body["next_cursor"]
        if cursor is None:
            break
        assert len(pages) < 5, "paging does not end"
    assert [len(p) for p in pages] == [10, 10, 5]
    got = [r["invocation_id"] for p in pages for r in p]
    assert len(got) == len(set(got)) == 25 and set(got) == set(ids)  # no duplicates, no gaps
    keys = [_key(r) for p in pages for r in p]
    assert keys == sorted(keys, reverse=True)  # newest first across the pages
    assert got[0] == ids[-1] and got[-1] == ids[0]  # sequential invokes: the last one started last
    assert all("stdout" not in r and "stderr" not in r for p in pages for r in p)
    one = await api.ok("GET", "/v1/invocations", params={"function": name, "limit": "25"})
    assert len(one["invocations"]) == 25 and one["next_cursor"] is None


@pytest.mark.integration
async def test_paging_breaks_ties_on_the_same_start_time(hub: Hub, api: Api, unique: str) -> None:
    """Records that started in the same millisecond are neither repeated nor skipped at a page edge."""
    name = f"ties-{unique}"
    t = dt.datetime(2024, 3, 1, 12, 0, 0, 123000, tzinfo=dt.timezone.utc)
    docs = [{"_id": f"{unique}-{i:02d}", "function": name, "status": "succeeded", "started_at": t,
             "finished_at": dt.datetime.now(dt.timezone.utc), "stdout": f"out {i}\n", "stderr": ""}
            for i in range(7)]
    docs.append({**docs[0], "_id": f"{unique}-older", "started_at": t - dt.timedelta(milliseconds=1)})
    await hub.store.db.invocations.insert_many(docs)
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        params = {"function": name, "limit": "3", **({"cursor": cursor} if cursor else {})}
        body = await api.ok("GET", "/v1/invocations", params=params)
        seen += [r["invocation_id"] for r in body["invocations"]]
        cursor = body["next_cursor"]
        if not cursor:
            break
    assert seen == [f"{unique}-{i:02d}" for i in reversed(range(7))] + [f"{unique}-older"]


@pytest.mark.integration
async def test_time_range_and_include_output(hub: Hub, api: Api, unique: str) -> None:
    name = f"range-{unique}"
    base = dt.datetime(2024, 5, 1, 0, 0, tzinfo=dt.timezone.utc)
    docs = [{"_id": f"{unique}-{h}", "function": name, "status": "failed" if h % 2 else "succeeded",
             "started_at": base + dt.timedelta(hours=h), "finished_at": dt.datetime.now(dt.timezone.utc),
             "stdout": f"hour {h}\n", "stderr": "err\n"} for h in range(10)]
    await hub.store.db.invocations.insert_many(docs)

    async def hours(**params: str) -> list[int]:
        body = await api.ok("GET", "/v1/invocations", params={"function": name, **params})
        return [int(r["invocation_id"].rsplit("-", 1)[1]) for r in body["invocations"]]

    assert await hours() == list(reversed(range(10)))
    assert await hours(**{"from": "2024-05-01T03:00:00Z", "to": "2024-05-01T06:00:00Z"}) == [5, 4, 3]
    epoch = int(base.timestamp())
    assert await hours(**{"from": str(epoch + 7 * 3600)}) == [9, 8, 7]  # epoch seconds, from inclusive
    assert await hours(to=str(epoch + 2 * 3600)) == [1, 0]  # to exclusive
    assert await hours(**{"from": "2024-05-01T04:00:00+02:00"}) == list(reversed(range(2, 10)))  # offsets
    assert await hours(**{"from": "2024-05-01T05:00:00", "status": "failed"}) == [9, 7, 5]  # naive is UTC
    assert await hours(status="failed,succeeded", to="2024-05-01T02:00:00Z") == [1, 0]
    # paging inside a range
    body = await api.ok("GET", "/v1/invocations", params={"function": name, "from": "2024-05-01T02:00:00Z",
                                                           "to": "2024-05-01T08:00:00Z", "limit": "4"})
    assert [r["invocation_id"] for r in body["invocations"]] == [f"{unique}-{h}" for h in (7, 6, 5, 4)]
    rest = await api.ok("GET", "/v1/invocations", params={"function": name, "from": "2024-05-01T02:00:00Z",
                                                           "to": "2024-05-01T08:00:00Z", "limit": "4",
                                                           "cursor": body["next_cursor"]})
    assert [r["invocation_id"] for r in rest["invocations"]] == [f"{unique}-3", f"{unique}-2"]
    assert rest["next_cursor"] is None
    # include=output
    with_output = await api.ok("GET", "/v1/invocations", params={"function": name, "include": "output",
                                                                  "limit": "2"})
    assert [(r["stdout"], r["stderr"]) for r in with_output["invocations"]] == [("hour 9\n", "err\n"),
                                                                                ("hour 8\n", "err\n")]
    plain = await api.ok("GET", "/v1/invocations", params={"function": name, "limit": "2"})
    assert all("stdout" not in r and "stderr" not in r for r in plain["invocations"])


@pytest.mark.integration
async def test_include_output_of_real_invocations(api: Api, unique: str) -> None:
    name = f"out-{unique}"
    await api.put_function(name, PRINTER)
    await _invoke_n(api, name, 2)
    body = await api.ok("GET", "/v1/invocations", params={"function": name, "include": "output"})
    assert [r["stdout"] for r in body["invocations"]] == ["run 1\n", "run 0\n"]
    assert "warned 1" in body["invocations"][0]["stderr"]


@pytest.mark.parametrize(("params", "message"), [
    ({"cursor": "not-a-cursor"}, "cursor is not one this API gave out"),
    ({"cursor": "W10"}, "cursor is not one this API gave out"),  # base64 of "[]"
    ({"cursor": "a b"}, "cursor is not one this API gave out"),
    ({"from": "yesterday"}, "from must be an ISO 8601 time"),
    ({"to": "2024-13-01T00:00:00Z"}, "to must be an ISO 8601 time"),
    ({"from": "-1"}, "from must be an ISO 8601 time"),
    ({"from": "1e30"}, "from must be an ISO 8601 time"),
    ({"from": "2024-05-02", "to": "2024-05-01"}, "from is after to"),
    ({"include": "event"}, "include: unknown 'event'"),
    ({"limit": "0"}, "limit must be an integer between 1 and 1000"),
    ({"limit": "1001"}, "limit must be an integer between 1 and 1000"),
])
@pytest.mark.integration
async def test_bad_paging_input_is_a_400(api: Api, params: dict[str, str], message: str) -> None:
    status, body = await api.call("GET", "/v1/invocations", params=params)
    assert status == 400 and message in body["error"], body


# --------------------------------------------------------------------------- the follow stream


class Lines:
    """Reads an NDJSON response line by line (blank heartbeat lines kept apart)."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.heartbeats = 0

    async def next(self, timeout: float = 30.0) -> dict[str, Any]:
        while True:
            line = await asyncio.wait_for(self.response.content.readline(), timeout)
            if not line:
                raise EOFError("the stream ended")
            if not line.strip():
                self.heartbeats += 1
                continue
            doc: dict[str, Any] = json.loads(line)
            return doc


async def _open(api: Api, name: str, **params: str) -> aiohttp.ClientResponse:
    response = await api.session.get(f"{api.base}/v1/functions/{name}/logs", params=params,
                                     headers=api.headers, timeout=aiohttp.ClientTimeout(total=None))
    return response


@pytest.mark.integration
async def test_logs_without_follow_return_what_exists_and_end(api: Api, unique: str) -> None:
    name = f"tail-{unique}"
    await api.put_function(name, PRINTER)
    ids = await _invoke_n(api, name, 4)
    async with await _open(api, name, limit="3") as response:
        assert response.status == 200 and response.content_type == "application/x-ndjson"
        body = await response.read()
    recs = [json.loads(line) for line in body.splitlines() if line.strip()]
    assert [r["invocation_id"] for r in recs] == ids[1:]  # the newest 3, oldest first
    assert [r["stdout"] for r in recs] == ["run 1\n", "run 2\n", "run 3\n"]
    future = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)
    async with await _open(api, name, since=future.isoformat()) as response:
        assert response.status == 200 and (await response.read()).strip() == b""


@pytest.mark.integration
async def test_follow_streams_new_invocations_then_ends_when_the_client_leaves(
        hub: Hub, api: Api, unique: str) -> None:
    name = f"follow-{unique}"
    streams = hub.web[LOG_STREAMS]
    await api.put_function(name, PRINTER)
    (old,) = await _invoke_n(api, name, 1)
    before = streams.live
    response = await _open(api, name, follow="true")
    try:
        assert response.status == 200 and response.content_type == "application/x-ndjson"
        lines = Lines(response)
        first = await lines.next()
        assert first["invocation_id"] == old and first["stdout"] == "run 0\n"  # what existed, first
        assert streams.live == before + 1
        ids = []
        for n in (10, 11, 12):
            out = await api.ok("POST", f"/v1/functions/{name}/invoke", {"n": n})
            ids.append(out["invocation_id"])
        got = [await lines.next() for _ in range(3)]
        assert [g["invocation_id"] for g in got] == ids
        assert [g["stdout"] for g in got] == ["run 10\n", "run 11\n", "run 12\n"]
        assert all(g["status"] == "succeeded" and "warned" in g["stderr"] and "event" not in g for g in got)
    finally:
        response.close()  # the client goes away: the hub's stream task must end on its own
    await eventually(lambda: _async(streams.live == before), timeout=10)


async def _async(value: Any) -> Any:
    return value


@pytest.mark.integration
async def test_follow_filters_by_status_and_sends_heartbeats(hub: Hub, api: Api, unique: str) -> None:
    name = f"hb-{unique}"
    streams = hub.web[LOG_STREAMS]
    await api.put_function(name, "def handler(event, context):\n    if event['data']['fail']:\n"
                                 "        raise ValueError('bad ' + str(event['data']['n']))\n"
                                 "    return 1\n")
    old = streams.heartbeat_s
    streams.heartbeat_s = 0.3
    response = await _open(api, name, follow="true", status="failed,timeout")
    try:
        lines = Lines(response)
        for n, fail in ((1, False), (2, True), (3, False), (4, True)):
            await api.ok("POST", f"/v1/functions/{name}/invoke", {"n": n, "fail": fail})
        got = [await lines.next(), await lines.next()]
        assert [g["error"]["message"] for g in got] == ["bad 2", "bad 4"]
        assert all(g["status"] == "failed" for g in got)
        deadline = time.monotonic() + 10
        while lines.heartbeats < 2 and time.monotonic() < deadline:
            try:
                extra = await lines.next(timeout=0.5)
                raise AssertionError(f"unexpected line {extra}")
            except asyncio.TimeoutError:
                pass
        assert lines.heartbeats >= 2
    finally:
        streams.heartbeat_s = old
        response.close()


@pytest.mark.integration
async def test_logs_errors(api: Api, unique: str) -> None:
    status, body = await api.call("GET", f"/v1/functions/nope-{unique}/logs", params={"follow": "true"})
    assert status == 404 and "no function" in body["error"]
    await api.put_function(f"e-{unique}", PRINTER)
    for params, message in (({"follow": "maybe"}, "follow must be true or false"),
                            ({"since": "last week"}, "since must be an ISO 8601 time"),
                            ({"limit": "5000"}, "limit must be")):
        status, body = await api.call("GET", f"/v1/functions/e-{unique}/logs", params=params)
        assert status == 400 and message in body["error"], body


@pytest.mark.integration
async def test_hub_stop_ends_follow_streams_quickly(servers: dict[str, Any], tmp_path: Path) -> None:
    hub = Hub(make_settings(servers, tmp_path / "data", f"logs_stop_{uuid.uuid4().hex[:8]}"))
    await hub.start()
    stopped = False
    try:
        async with aiohttp.ClientSession() as session:
            api = Api(session, hub.url)
            await api.put_function("stopper", PRINTER)
            responses = [await _open(api, "stopper", follow="true") for _ in range(3)]
            await eventually(lambda: _async(hub.web[LOG_STREAMS].live == 3), timeout=10)
            await hub.stop()
            stopped = True
            assert hub.web[LOG_STREAMS].live == 0
            # Ended by the hub, not cut off: a stop that waited on the streams would end them only
            # when the runner's shutdown wait ran out and cancelled them, mid-body.
            for response in responses:  # each stream ended cleanly (the chunked body is complete)
                assert (await asyncio.wait_for(response.read(), 5)).strip() == b""
                response.close()
    finally:
        if not stopped:
            await hub.stop()


# --------------------------------------------------------------------------- the CLI


@pytest.mark.integration
async def test_cli_logs_follow_prints_new_invocations(hub: Hub, api: Api, unique: str) -> None:
    name = f"clilog-{unique}"
    await api.put_function(name, "import time\ndef handler(event, context):\n"
                                 "    print('hello', event['data']['n'])\n"
                                 "    if event['data'].get('hang'):\n        time.sleep(30)\n"
                                 "    return 1\n", timeout_s=1)
    await api.ok("POST", f"/v1/functions/{name}/invoke", {"n": 0})
    env = {**os.environ, "HUB_URL": hub.url, "HUB_API_TOKEN": API_TOKEN}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "hub", "logs", name, "--follow",
                                                stdout=asyncio.subprocess.PIPE, env=env)
    seen = ""

    async def until(text: str) -> None:
        nonlocal seen
        assert proc.stdout is not None
        while text not in seen:
            seen += (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()

    try:
        await until("    hello 0")
        await api.ok("POST", f"/v1/functions/{name}/invoke", {"n": 1})
        await until("    hello 1")
        await api.ok("POST", f"/v1/functions/{name}/invoke", {"n": 2, "hang": True})
        await until("    hello 2")
        await until("Timeout: Task timed out")
        assert "timeout" in seen and "(invoke)" in seen and "warm" in seen
    finally:
        proc.kill()
        await proc.wait()


@pytest.mark.integration
async def test_cli_logs_json_and_paging(hub: Hub, api: Api, unique: str) -> None:
    name = f"clijson-{unique}"
    await api.put_function(name, PRINTER)
    ids = await _invoke_n(api, name, 3)
    env = {**os.environ, "HUB_URL": hub.url, "HUB_API_TOKEN": API_TOKEN}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "hub", "--json", "logs", name,
                                                "--limit", "2", "--since", "1h",
                                                stdout=asyncio.subprocess.PIPE, env=env)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0
    recs = [json.loads(line) for line in out.decode().splitlines()]
    assert [r["invocation_id"] for r in recs] == ids[1:] and recs[-1]["stdout"] == "run 2\n"
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "hub", "logs", f"none-{unique}",
                                                "--follow", stderr=asyncio.subprocess.PIPE, env=env)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1 and b"no function" in err
