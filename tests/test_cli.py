"""The trigger-hub CLI end to end against a real hub (real servers, real sandbox)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from dataclasses import dataclass

import pytest

from hub.app import Hub
from tests.hubfixtures import API_TOKEN, Api, eventually
from tests.test_sources import produce


@dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


async def cli(hub: Hub, *args: str) -> Result:
    """Run ``python -m hub ARGS`` as a user would, against the test hub."""
    env = {**os.environ, "HUB_URL": hub.url, "HUB_API_TOKEN": API_TOKEN}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "hub", *args, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


def write_function(directory: Path, code: str, manifest: str = "") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "main.py").write_text(code)
    if manifest:
        (directory / "function.toml").write_text(manifest)
    return directory


ECHO = "def handler(event, context):\n    print('got', event['data'])\n    return {'echo': event['data']}\n"


@pytest.mark.integration
async def test_deploy_plans_then_applies_then_is_idempotent(hub: Hub, api: Api, tmp_path: Path, unique: str) -> None:
    topic = f"cli-{unique}"
    d = write_function(tmp_path / f"fn-{unique}", ECHO, f'''
timeout_s = 5
[env]
GREETING = "hi"
[[triggers]]
name = "t-{unique}"
source = {{ type = "kafka", topic = "{topic}" }}
retry = {{ max_attempts = 2 }}
''')
    dry = await cli(hub, "deploy", str(d), "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert f"function fn-{unique}: create" in dry.output and f"trigger t-{unique}: create (kafka)" in dry.output
    assert (await api.call("GET", f"/v1/functions/fn-{unique}"))[0] == 404  # a dry run changes nothing
    done = await cli(hub, "--json", "deploy", str(d))
    assert done.exit_code == 0, done.output
    shown = json.loads(done.stdout)
    fn = await api.ok("GET", f"/v1/functions/fn-{unique}")
    assert shown["version"] == fn["version"] and fn["env"] == {"GREETING": "hi"} and fn["timeout_s"] == 5
    assert (await api.ok("GET", f"/v1/triggers/t-{unique}"))["retry"]["max_attempts"] == 2
    again = await cli(hub, "deploy", str(d), "--dry-run")
    assert "nothing to change" in again.output
    (d / "main.py").write_text(ECHO.replace("'echo'", "'echoed'"))
    changed = await cli(hub, "deploy", str(d), "--dry-run")
    assert "new version" in changed.output and "trigger" not in changed.output
    # the trigger works: a message runs the deployed code
    await produce(hub.settings.kafka_bootstrap, topic, [(None, b'{"n": 1}')])
    (inv,) = await api.wait_invocations(1, trigger=f"t-{unique}")
    assert inv["result"]["echo"]["value"] == {"n": 1}


@pytest.mark.integration
async def test_deploy_without_manifest_uses_the_directory_name(hub: Hub, api: Api, tmp_path: Path, unique: str) -> None:
    d = write_function(tmp_path / f"plain-{unique}", ECHO)
    (d / "helper.bin").write_bytes(bytes(range(256)))  # binary files travel too
    (d / "__pycache__").mkdir()
    (d / "__pycache__" / "x.pyc").write_bytes(b"junk")
    out = await cli(hub, "deploy", str(d))
    assert out.exit_code == 0, out.output
    fn = await api.ok("GET", f"/v1/functions/plain-{unique}")
    assert fn["handler"] == "main.handler"


@pytest.mark.integration
async def test_invoke_prints_the_result_or_the_error(hub: Hub, api: Api, tmp_path: Path, unique: str) -> None:
    await api.put_function(f"echo-{unique}", ECHO)
    ok = await cli(hub, "invoke", f"echo-{unique}", "--data", '{"x": 1}')
    assert ok.exit_code == 0 and json.loads(ok.stdout.split("\n", 1)[1]) == {"echo": {"x": 1}}
    assert ok.stdout.startswith("got {'x': 1}")
    payload = tmp_path / "event.json"
    payload.write_text('{"from": "file"}')
    from_file = await cli(hub, "--json", "invoke", f"echo-{unique}", "--data", f"@{payload}")
    assert json.loads(from_file.stdout)["result"] == {"echo": {"from": "file"}}
    await api.put_function(f"boom-{unique}", "def handler(e, c):\n    raise KeyError('missing')\n")
    bad = await cli(hub, "invoke", f"boom-{unique}")
    assert bad.exit_code == 1 and "KeyError" in bad.output and "Traceback" in bad.output
    queued = await cli(hub, "invoke", f"echo-{unique}", "--async", "--data", "{}")
    assert queued.exit_code == 0 and len(queued.output.strip()) >= 16
    missing = await cli(hub, "invoke", f"nope-{unique}")
    assert missing.exit_code == 1 and "no function" in missing.output
    not_json = await cli(hub, "invoke", f"echo-{unique}", "--data", "{nope")
    assert not_json.exit_code == 2
    no_file = await cli(hub, "invoke", f"echo-{unique}", "--data", f"@{tmp_path / 'absent.json'}")
    assert no_file.exit_code == 2 and "absent.json" in no_file.output and "Traceback" not in no_file.output
    spaced = await cli(hub, "functions", "a b")  # the hub refuses the name; no traceback
    assert spaced.exit_code == 2 and "bad name" in spaced.output, spaced.output


@pytest.mark.integration
async def test_logs_show_runs_and_follow_new_ones(hub: Hub, api: Api, tmp_path: Path, unique: str) -> None:
    await api.put_function(f"log-{unique}", ECHO)
    await api.ok("POST", f"/v1/functions/log-{unique}/invoke", {"first": 1})
    out = await cli(hub, "logs", f"log-{unique}")
    assert out.exit_code == 0 and "succeeded" in out.output and "got {'first': 1}" in out.output
    env = {**os.environ, "HUB_URL": hub.url, "HUB_API_TOKEN": API_TOKEN}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "hub", "logs", f"log-{unique}", "--follow",
                                                "--since", "1h", stdout=asyncio.subprocess.PIPE, env=env)
    try:
        assert proc.stdout is not None
        seen = ""
        while "first" not in seen:
            seen += (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        await api.ok("POST", f"/v1/functions/log-{unique}/invoke", {"second": 2})
        while "second" not in seen:
            seen += (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
    finally:
        proc.kill()
        await proc.wait()


@pytest.mark.integration
async def test_lists_and_dead_letter_replay(hub: Hub, api: Api, servers: dict[str, Any], unique: str) -> None:
    topic = f"dlq-{unique}"
    await api.put_function(f"flaky-{unique}", "def handler(e, c):\n    raise RuntimeError('not yet')\n")
    await api.put_trigger(f"t-{unique}", f"flaky-{unique}", {"type": "kafka", "topic": topic},
                          retry={"max_attempts": 1})
    await produce(servers["kafka"].bootstrap, topic, [(None, b'{"n": 1}')])

    async def dead() -> Any:
        out = await cli(hub, "--json", "dead-letters", "--function", f"flaky-{unique}")
        return json.loads(out.stdout) or None

    (dl,) = await eventually(dead)
    table = await cli(hub, "dead-letters", "--function", f"flaky-{unique}")
    assert dl["id"] in table.output and "not yet" in table.output
    for args in (["functions"], ["triggers"], ["versions", f"flaky-{unique}"], ["invocations", "--function",
                                                                                 f"flaky-{unique}"]):
        listed = await cli(hub, *args)
        assert listed.exit_code == 0 and (f"flaky-{unique}" in listed.output or "*" in listed.output), listed.output
    await api.put_function(f"flaky-{unique}", "def handler(e, c):\n    return 'fixed'\n")
    replay = await cli(hub, "dead-letters", "replay", "--all", "--function", f"flaky-{unique}")
    assert replay.exit_code == 0 and "1 dead letter" in replay.output

    async def fixed() -> bool:
        return any(i["result"] == "fixed" for i in await api.invocations(trigger=f"t-{unique}"))

    await eventually(fixed)
    await eventually(lambda: _no_dead_letters(hub, unique))
    off = await cli(hub, "triggers", "disable", f"t-{unique}")
    assert off.exit_code == 0 and (await api.ok("GET", f"/v1/triggers/t-{unique}"))["enabled"] is False
    await cli(hub, "triggers", "enable", f"t-{unique}")
    assert (await api.ok("GET", f"/v1/triggers/t-{unique}"))["enabled"] is True
    usage = await cli(hub, "dead-letters", "replay")
    assert usage.exit_code == 2


async def _no_dead_letters(hub: Hub, unique: str) -> bool:
    out = await cli(hub, "--json", "dead-letters", "--function", f"flaky-{unique}")
    return json.loads(out.stdout) == []


async def test_unreachable_hub_exits_3(tmp_path: Path) -> None:
    env = {**os.environ, "HUB_URL": "http://127.0.0.1:9", "HUB_API_TOKEN": "x"}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "hub", "functions", env=env, cwd=tmp_path,
                                                stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    assert proc.returncode == 3 and b"cannot reach the hub" in err


@pytest.mark.integration
async def test_deploy_a_directory_with_a_dependency_and_roll_back_through_an_alias(
    hub: Hub, api: Api, tmp_path: Path, unique: str, local_wheels: Path
) -> None:
    """The workflow end to end: a directory with requirements.txt and a trigger, an alias on the
    first version, a second deploy, and a rollback by moving the alias."""
    topic = f"deps-{unique}"
    d = write_function(tmp_path / f"dep-{unique}",
                       "import six\n\ndef handler(event, context):\n    return {'six': six.__version__, 'v': 1}\n",
                       f'[[triggers]]\nsource = {{ type = "kafka", topic = "{topic}" }}\n')
    (d / "requirements.txt").write_text("six==1.16.0\n")
    first = await cli(hub, "--json", "deploy", str(d))
    assert first.exit_code == 0, first.output
    v1 = json.loads(first.stdout)["version"]
    assert (await api.ok("GET", f"/v1/functions/dep-{unique}"))["deps"]["packages"]
    await produce(hub.settings.kafka_bootstrap, topic, [(None, b'{"n": 1}')])
    (inv,) = await api.wait_invocations(1, trigger=f"dep-{unique}")
    assert inv["result"] == {"six": "1.16.0", "v": 1}
    pinned = await cli(hub, "alias", "set", f"dep-{unique}", "prod", v1)
    assert pinned.exit_code == 0, pinned.output
    (d / "main.py").write_text("import six\n\ndef handler(event, context):\n    return {'six': six.__version__, 'v': 2}\n")
    second = await cli(hub, "--json", "deploy", str(d))
    v2 = json.loads(second.stdout)["version"]
    assert v2 != v1
    latest = await cli(hub, "--json", "invoke", f"dep-{unique}")
    assert json.loads(latest.stdout)["result"]["v"] == 2
    prod = await cli(hub, "--json", "invoke", f"dep-{unique}", "--alias", "prod")
    assert json.loads(prod.stdout)["result"]["v"] == 1
    # roll forward, then back: moving the alias is the whole rollback
    await cli(hub, "alias", "set", f"dep-{unique}", "prod", v2)
    assert json.loads((await cli(hub, "--json", "invoke", f"dep-{unique}", "--alias", "prod")).stdout)["result"]["v"] == 2
    await cli(hub, "alias", "set", f"dep-{unique}", "prod", v1)
    assert json.loads((await cli(hub, "--json", "invoke", f"dep-{unique}", "--alias", "prod")).stdout)["result"]["v"] == 1
    old = await cli(hub, "--json", "invoke", f"dep-{unique}", "--version", v1)
    assert json.loads(old.stdout)["result"]["v"] == 1
