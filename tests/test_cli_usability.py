"""What a new user meets first (issue 17): the CLI's client asks for the URL it means, global
options work after the subcommand, validation errors speak plainly, a redeploy of old code says
so, the log stream can be bounded, and ``trigger-hub doctor`` checks a setup end to end.

The first tests need no server (a stub answers the CLI where one is needed); the integration ones
run against the suite's real hub.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar, cast

import aiohttp
import pytest
from click.testing import CliRunner

from hub.app import Hub
from hub.cli import deploy as deploy_mod
from hub.cli.client import Client, request_target
from hub.cli.commands import main
from hub.spec.models import FunctionSpec, TriggerSpec
from hub.web.logstream import LogQueryError, parse_max_s
from hub.web.openapi import openapi_spec
from hub.web.wire import ApiError, validate
from tests.hubfixtures import API_TOKEN, Api
from tests.test_cli import cli, write_function

ECHO = "def handler(event, context):\n    print('got', event['data'])\n    return {'echo': event['data']}\n"


# -- the client's URLs ---------------------------------------------------------------------------
def test_request_target_quotes_path_segments_only() -> None:
    # the demo's call: the query is a query, not part of the path (it was a 404)
    assert (request_target("/v1/invocations?trigger=s3-upload-report&limit=20")
            == "/v1/invocations?trigger=s3-upload-report&limit=20")
    assert request_target("/v1/invocations", {"trigger": "a&b=c", "limit": 5, "cursor": None}) == \
        "/v1/invocations?trigger=a%26b%3Dc&limit=5"
    assert request_target("/v1/x?a=1", {"b": "2"}) == "/v1/x?a=1&b=2"
    # a name with a space or a percent sign reaches the hub as that name, for it to refuse
    assert request_target("/v1/functions/a b/invoke") == "/v1/functions/a%20b/invoke"
    assert request_target("/v1/functions/100%") == "/v1/functions/100%25"
    assert request_target("/v1/functions/hello:prod") == "/v1/functions/hello:prod"


# -- global options anywhere (a stub hub) --------------------------------------------------------
class _Stub(BaseHTTPRequestHandler):
    seen: ClassVar[list[tuple[str, str | None]]] = []

    def do_GET(self) -> None:  # http.server's name for it
        _Stub.seen.append((self.path, self.headers.get("Authorization")))
        path = self.path.split("?", 1)[0]
        rec = {"invocation_id": "i1", "function": "hello", "status": "succeeded", "started_at": "2025-05-01T00:00:00Z",
               "finished_at": "2025-05-01T00:00:01Z", "duration_ms": 1.0, "event_ids": ["e1"], "stdout": "hi\n"}
        body: Any = {
            "/v1/functions": {"functions": [{"name": "hello", "version": "3f2a9c0d1b4e5f60"}]},
            "/v1/functions/hello": {"name": "hello", "version": "3f2a9c0d1b4e5f60", "versions": []},
            "/v1/invocations": {"invocations": [rec], "next_cursor": None},
        }.get(path)
        data = json.dumps(body if body is not None else {"error": "not found"}).encode()
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def stub_hub() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Stub.seen.clear()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_global_options_after_the_subcommand(stub_hub: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no .hub/dev.env to find
    for var in ("HUB_URL", "HUB_API_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    runner = CliRunner()
    # the README's form: trigger-hub logs NAME --json, with --url and --token after it too
    after = runner.invoke(main, ["logs", "hello", "--json", "--url", stub_hub, "--token", "tok-after"])
    assert after.exit_code == 0, after.output
    lines = [json.loads(line) for line in after.output.splitlines() if line.strip()]
    assert lines and lines[0]["invocation_id"] == "i1"
    assert ("/v1/functions/hello", "Bearer tok-after") in _Stub.seen
    # before the subcommand, as always
    before = runner.invoke(main, ["--json", "--url", stub_hub, "functions"])
    assert before.exit_code == 0 and json.loads(before.output)[0]["name"] == "hello"
    # without --json: a table, not JSON
    table = runner.invoke(main, ["functions", "--url", stub_hub])
    assert table.exit_code == 0 and table.output.startswith("NAME"), table.output
    # in a subgroup's command too, and the last --url given wins
    nested = runner.invoke(main, ["--url", "http://127.0.0.1:9", "triggers", "show", "x", "--url", stub_hub, "--json"])
    assert "cannot reach" not in nested.output and nested.exit_code == 1  # the stub has no trigger x: 404
    assert "--json" in runner.invoke(main, ["logs", "--help"]).output


def test_a_name_that_would_change_the_url_is_refused_locally() -> None:
    out = CliRunner().invoke(main, ["--url", "http://127.0.0.1:9", "functions", "a?b"])
    assert out.exit_code == 2 and "bad name 'a?b'" in out.output and "cannot reach" not in out.output


# -- messages a person reads ---------------------------------------------------------------------
def _message(model: Any, body: dict[str, Any]) -> str:
    with pytest.raises(ApiError) as caught:
        validate(model, body)
    assert caught.value.status == 400
    return caught.value.message


@pytest.mark.parametrize(("model", "body", "says"), [
    (TriggerSpec, {"function": "f", "source": {"type": "schedule", "rate": "0 seconds"}},
     ["source.schedule.rate", "'0 seconds'", "whole number from 1", '"30 seconds"']),
    (FunctionSpec, {"handler": "main", "code": {"files": {"main.py": "x = 1\n"}}},
     ["handler", "'main'", "module.function", '"main.handler"']),
    (TriggerSpec, {"function": "f", "source": {"type": "http", "path": "/orders/{id"}},
     ["source.http.path", "'/orders/{id'", "{name}", '"/orders/{id}"']),
    (TriggerSpec, {"function": "f", "source": {"type": "ftp"}},
     ["'ftp' is not a source type", "s3, mongodb, kafka, http, schedule", '{"type": "kafka"']),
    (TriggerSpec, {"function": "f", "source": {"topic": "t"}}, ['a source needs a "type"', '{"type": "kafka"']),
    (TriggerSpec, {"function": "f:", "source": {"type": "s3", "bucket": "Up_Loads"}},
     ["NAME:ALIAS", '"hello:prod"', "'Up_Loads'", "lower-case", '"uploads"']),
    (TriggerSpec, {"function": "f", "source": {"type": "kafka", "topic": "a b"}, "colour": 1},
     ["'a b'", '"clicks"', "colour: is not a field here"]),
])
def test_validation_errors_speak_plainly(model: Any, body: dict[str, Any], says: list[str]) -> None:
    message = _message(model, body)
    for text in says:
        assert text in message, message
    for internal in ("should match pattern", "^[", "Input tag", "discriminator", "Value error", "Extra inputs"):
        assert internal not in message, message


def test_deploy_errors_use_the_same_words(tmp_path: Path) -> None:
    d = write_function(tmp_path / "badhandler", ECHO, 'handler = "main"\n')

    class NoHub:
        def get_or_none(self, path: str) -> Any:
            raise AssertionError("a local error is found before the hub is asked")

    with pytest.raises(deploy_mod.DeployError) as caught:
        deploy_mod.plan(cast(Client, NoHub()), d)
    assert "'main' is not valid: a handler is module.function" in str(caught.value)


# -- redeploying old code ------------------------------------------------------------------------
def test_deploy_plan_names_an_existing_version_as_such(tmp_path: Path) -> None:
    d = write_function(tmp_path / "again", ECHO)
    version = deploy_mod.plan(cast(Client, _FakeClient(None)), d).version
    assert version is not None
    head = {"name": "again", "version": "aaaaaaaaaaaaaaaa",
            "versions": [{"version": "aaaaaaaaaaaaaaaa"}, {"version": version, "created_at": "2025-05-01T00:00:00Z"}]}
    (line,) = deploy_mod.plan(cast(Client, _FakeClient(head)), d).changes
    assert line.startswith(f"function again: back to existing version {version}") and "new version" not in line, line
    fresh = {**head, "versions": [{"version": "aaaaaaaaaaaaaaaa"}]}
    (line,) = deploy_mod.plan(cast(Client, _FakeClient(fresh)), d).changes
    assert line == f"function again: new version {version} (was aaaaaaaaaaaaaaaa)"


class _FakeClient:
    def __init__(self, head: dict[str, Any] | None) -> None:
        self.head = head

    def get_or_none(self, path: str) -> Any:
        return self.head if path.startswith("/v1/functions/") else None


# -- the follow stream, bounded ------------------------------------------------------------------
def test_max_s_is_checked() -> None:
    assert parse_max_s(None) is None and parse_max_s("2.5") == 2.5
    for bad in ("0", "-1", "nan", "inf", "1e9", "soon"):
        with pytest.raises(LogQueryError, match="max_s must be a number of seconds"):
            parse_max_s(bad)


def test_openapi_marks_the_follow_stream() -> None:
    logs = openapi_spec()["paths"]["/v1/functions/{name}/logs"]
    mark = logs["get"]["x-hub-stream"]
    assert mark["endless_when"] == {"follow": True} and mark["bounded_by"] == "max_s"
    (max_s,) = [p for p in logs["parameters"] if p["name"] == "max_s"]
    assert max_s["in"] == "query" and max_s["schema"]["maximum"] == 86400


@pytest.mark.integration
async def test_a_follow_stream_ends_at_max_s(hub: Hub, api: Api, unique: str) -> None:
    await api.put_function(f"bounded-{unique}", ECHO)
    await api.ok("POST", f"/v1/functions/bounded-{unique}/invoke", {"n": 1})
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    async with aiohttp.ClientSession() as session:
        url = f"{hub.url}/v1/functions/bounded-{unique}/logs"
        async with session.get(url, params={"follow": "true", "max_s": "1"}, headers=headers) as resp:
            assert resp.status == 200
            body = await asyncio.wait_for(resp.read(), 30)  # ends by itself: the test does not cut it
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        assert [rec["status"] for rec in lines] == ["succeeded"]
        async with session.get(url, params={"follow": "true", "max_s": "0"}, headers=headers) as resp:
            assert resp.status == 400 and "max_s must be" in (await resp.json())["error"]


@pytest.mark.integration
async def test_logs_follow_timeout_returns_and_json_comes_after(hub: Hub, api: Api, unique: str) -> None:
    await api.put_function(f"tail-{unique}", ECHO)
    await api.ok("POST", f"/v1/functions/tail-{unique}/invoke", {"n": 7})
    out = await cli(hub, "logs", f"tail-{unique}", "--follow", "--timeout", "2", "--json")
    assert out.exit_code == 0, out.output
    (rec,) = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    assert rec["result"] == {"echo": {"n": 7}} and "reconnecting" not in out.stderr
    usage = await cli(hub, "logs", f"tail-{unique}", "--timeout", "2")
    assert usage.exit_code == 2 and "--timeout bounds --follow" in usage.output


@pytest.mark.integration
async def test_redeploying_old_code_says_it_is_an_existing_version(hub: Hub, api: Api, tmp_path: Path,
                                                                   unique: str) -> None:
    d = write_function(tmp_path / f"redeploy-{unique}", "def handler(e, c):\n    return 1\n")
    first = await cli(hub, "deploy", str(d))
    assert first.exit_code == 0 and "create (version" in first.output, first.output
    (d / "main.py").write_text("def handler(e, c):\n    return 2\n")
    second = await cli(hub, "deploy", str(d))
    assert "new version" in second.output, second.output
    (d / "main.py").write_text("def handler(e, c):\n    return 1\n")
    again = await cli(hub, "--json", "deploy", str(d))
    shown = json.loads(again.stdout)
    assert again.exit_code == 0 and shown["new_version"] is False, again.output
    assert any("back to existing version" in c for c in shown["changes"]), shown
    assert not any("new version" in c for c in shown["changes"]), shown


# -- doctor --------------------------------------------------------------------------------------
@pytest.mark.integration
async def test_doctor_checks_the_real_hub_and_cleans_up(hub: Hub, api: Api, tmp_path: Path) -> None:
    before = {f["name"] for f in (await api.ok("GET", "/v1/functions"))["functions"]}
    started = time.monotonic()
    out = await cli(hub, "doctor", "--json")
    took = time.monotonic() - started
    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout)
    states = {ch["check"]: ch["state"] for ch in report["checks"]}
    assert report["ok"] is True and states["hub"] == states["token"] == states["mongodb"] == "ok", report
    assert states["invoke"] == "ok" and states["sandbox"] in ("ok", "warn"), report
    after = {f["name"] for f in (await api.ok("GET", "/v1/functions"))["functions"]}
    assert not {n for n in after - before if n.startswith("doctor-")}, "the test function was left behind"
    print(f"doctor took {took:.1f} s")  # reported, not asserted (a shared 2-core machine)

    human = await cli(hub, "doctor")
    assert human.exit_code == 0 and "ok    invoke: a test function deployed" in human.stdout, human.output

    env = {**os.environ, "HUB_URL": hub.url, "HUB_API_TOKEN": "not-the-token-" + "x" * 20}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "hub", "doctor", env=env, cwd=tmp_path,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1 and b"fail  token: refused (401)" in stdout and b"fix: " in stdout, stdout

    env["HUB_URL"] = "http://127.0.0.1:9"
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "hub", "doctor", env=env, cwd=tmp_path,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 3 and b"fail  hub: cannot reach the hub" in stdout, stdout
