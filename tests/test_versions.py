"""Versions and aliases against a real hub (real MongoDB, Kafka and sandbox): every version stays
invocable, aliases move (a rollback), triggers on NAME:ALIAS follow the alias from their next event,
versions in use cannot be deleted, the code zip is what was deployed, and the pool keeps two live
versions warm side by side."""

from __future__ import annotations

import base64
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from hub.app import Hub
from tests.hubfixtures import Api, eventually, watching_pair
from tests.test_cli import cli
from tests.test_sources import produce

pytestmark = pytest.mark.integration

VERSIONED = "def handler(event, context):\n    return {'v': %r, 'data': event.get('data')}\n"
DAY = {"type": "schedule", "rate": "1 day"}  # a trigger that exists and does not fire during a test


async def two_versions(api: Api, name: str) -> tuple[str, str]:
    v1 = (await api.put_function(name, VERSIONED % "one"))["version"]
    v2 = (await api.put_function(name, VERSIONED % "two"))["version"]
    assert v1 != v2
    return v1, v2


async def test_every_version_stays_invocable(api: Api, unique: str) -> None:
    name = f"ver-{unique}"
    v1, v2 = await two_versions(api, name)
    latest = await api.ok("POST", f"/v1/functions/{name}/invoke", {"n": 1})
    assert latest["result"]["v"] == "two" and latest["version"] == v2 and latest["qualifier"] == "latest"
    old = await api.ok("POST", f"/v1/functions/{name}/invoke?version={v1}", {"n": 2})
    assert old["result"] == {"v": "one", "data": {"n": 2}}
    assert old["version"] == v1 and old["qualifier"] == v1
    record = await api.ok("GET", f"/v1/invocations/{old['invocation_id']}")
    assert record["version"] == v1 and record["qualifier"] == v1 and record["function"] == name
    by_alias = await api.ok("POST", f"/v1/functions/{name}/invoke?alias=latest", {})
    assert by_alias["version"] == v2
    # async invokes run the version asked for too
    status, queued = await api.call("POST", f"/v1/functions/{name}/invoke?mode=async&version={v1}", {"n": 3})
    assert status == 202

    async def ran() -> Any:
        rec = await api.ok("GET", f"/v1/invocations/{queued['invocation_id']}")
        return rec if rec["status"] == "succeeded" else None

    rec = await eventually(ran)
    assert rec["version"] == v1 and rec["result"]["v"] == "one" and rec["qualifier"] == v1
    fn = await api.ok("GET", f"/v1/functions/{name}")
    rows = {v["version"]: v for v in fn["versions"]}
    assert list(rows) == [v2, v1] and rows[v2]["latest"] and not rows[v1]["latest"]
    assert all(r["code_size"] > 0 and r["created_at"] for r in rows.values())
    assert fn["aliases"] == [] and "rev" not in fn
    listed = await api.ok("GET", f"/v1/functions/{name}/versions")
    assert [v["version"] for v in listed["versions"]] == [v2, v1]


async def test_aliases_create_move_delete(api: Api, unique: str) -> None:
    name = f"al-{unique}"
    v1, v2 = await two_versions(api, name)
    status, made = await api.call("PUT", f"/v1/functions/{name}/aliases/prod",
                                  {"version": v1, "description": "production"})
    assert status == 201 and made["version"] == v1 and made["previous_version"] is None
    status, same = await api.call("PUT", f"/v1/functions/{name}/aliases/prod",
                                  {"version": v1, "description": "production"})
    assert status == 200 and same["version"] == v1
    run = await api.ok("POST", f"/v1/functions/{name}/invoke?alias=prod", {})
    assert run["result"]["v"] == "one" and run["version"] == v1 and run["qualifier"] == "prod"
    status, moved = await api.call("PUT", f"/v1/functions/{name}/aliases/prod", {"version": v2})
    assert status == 200 and moved["previous_version"] == v1 and moved["version"] == v2
    assert (await api.ok("POST", f"/v1/functions/{name}/invoke?alias=prod", {}))["result"]["v"] == "two"
    # rolling back is moving it again
    await api.ok("PUT", f"/v1/functions/{name}/aliases/prod", {"version": v1})
    assert (await api.ok("POST", f"/v1/functions/{name}/invoke?alias=prod", {}))["result"]["v"] == "one"
    listed = await api.ok("GET", f"/v1/functions/{name}/aliases")
    assert listed["latest"] == v2 and [(a["name"], a["version"]) for a in listed["aliases"]] == [("prod", v1)]
    assert (await api.ok("GET", f"/v1/functions/{name}/aliases/prod"))["version"] == v1
    assert (await api.ok("GET", f"/v1/functions/{name}/aliases/latest"))["version"] == v2
    fn = await api.ok("GET", f"/v1/functions/{name}")
    assert [a["name"] for a in fn["aliases"]] == ["prod"]
    assert {v["version"]: v["aliases"] for v in fn["versions"]} == {v1: ["prod"], v2: []}
    # a new deployment leaves the alias where it was
    v3 = (await api.put_function(name, VERSIONED % "three"))["version"]
    assert (await api.ok("GET", f"/v1/functions/{name}/aliases/prod"))["version"] == v1
    assert (await api.ok("POST", f"/v1/functions/{name}/invoke", {}))["version"] == v3
    deleted = await api.ok("DELETE", f"/v1/functions/{name}/aliases/prod")
    assert deleted == {"deleted": "prod", "version": v1}
    status, body = await api.call("GET", f"/v1/functions/{name}/aliases/prod")
    assert status == 404 and "prod" in body["error"]
    status, body = await api.call("POST", f"/v1/functions/{name}/invoke?alias=prod", {})
    assert status == 404 and "'prod'" in body["error"]


async def test_trigger_on_an_alias_runs_what_it_points_at_now(hub: Hub, api: Api, unique: str) -> None:
    name, topic = f"kt-{unique}", f"alias-{unique}"
    v1, v2 = await two_versions(api, name)
    await api.ok("PUT", f"/v1/functions/{name}/aliases/prod", {"version": v1})
    trigger = await api.put_trigger(f"t-{unique}", f"{name}:prod", {"type": "kafka", "topic": topic})
    assert trigger["function"] == f"{name}:prod"
    await produce(hub.settings.kafka_bootstrap, topic, [(None, b'{"n": 1}')])
    (first,) = await api.wait_invocations(1, trigger=f"t-{unique}")
    assert first["version"] == v1 and first["qualifier"] == "prod" and first["result"]["v"] == "one"
    assert first["function"] == name  # records name the function; qualifier says what was asked for
    await api.ok("PUT", f"/v1/functions/{name}/aliases/prod", {"version": v2})
    await produce(hub.settings.kafka_bootstrap, topic, [(None, b'{"n": 2}')])
    second = (await api.wait_invocations(2, trigger=f"t-{unique}"))[0]
    assert second["version"] == v2 and second["result"]["v"] == "two"
    assert (await api.invocations(function=name, trigger=f"t-{unique}"))  # found by the bare name
    # the function's triggers include those on a qualifier, and deleting it is refused
    assert f"t-{unique}" in (await api.ok("GET", f"/v1/functions/{name}"))["triggers"]
    assert [t["name"] for t in (await api.ok("GET", "/v1/triggers", params={"function": name}))["triggers"]] \
        == [f"t-{unique}"]
    status, body = await api.call("DELETE", f"/v1/functions/{name}")
    assert status == 409 and f"t-{unique}" in body["error"]
    await api.ok("DELETE", f"/v1/triggers/t-{unique}")


async def test_moving_an_alias_reaches_every_instance(servers: dict[str, Any], tmp_path: Path,
                                                      http: aiohttp.ClientSession, unique: str) -> None:
    async with watching_pair(servers, tmp_path, f"alias_{unique}") as (a, b):
        api_a, api_b = Api(http, a.url), Api(http, b.url)
        v1, v2 = await two_versions(api_a, "fn")
        await api_a.ok("PUT", "/v1/functions/fn/aliases/prod", {"version": v1})

        async def served_from_cache() -> bool:
            # (B's watch may hand on A's earlier writes after B's first read: each empties B's
            # entry for fn, and the next read caches it again)
            assert (await api_b.ok("POST", "/v1/functions/fn/invoke?alias=prod", {}))["version"] == v1
            return "prod" in b.registry._cache.get("fn", {})

        await eventually(served_from_cache, timeout=10)  # B serves it from its cache now
        await api_a.ok("PUT", "/v1/functions/fn/aliases/prod", {"version": v2})
        await eventually(lambda: _true("fn" not in b.registry._cache), timeout=10)
        assert (await api_b.ok("POST", "/v1/functions/fn/invoke?alias=prod", {}))["version"] == v2


async def _true(value: bool) -> bool:
    return value


async def test_two_live_versions_stay_warm_side_by_side(hub: Hub, api: Api, unique: str) -> None:
    name = f"warm-{unique}"
    v1, v2 = await two_versions(api, name)
    await api.ok("PUT", f"/v1/functions/{name}/aliases/prod", {"version": v1})
    runs = []
    for _ in range(3):
        for query in ("alias=prod", "alias=latest"):
            runs.append(await api.ok("POST", f"/v1/functions/{name}/invoke?{query}", {}))
    assert [(r["version"], r["cold_start"]) for r in runs] == [
        (v1, True), (v2, True), (v1, False), (v2, False), (v1, False), (v2, False)]
    row = hub.pool.stats()["functions"][name]
    assert row["versions"][v1]["warm"] == 1 and row["versions"][v2]["warm"] == 1 and row["warm"] == 2
    assert row["cold_starts_total"] == 2 and row["invocations_total"] == 6
    # a deploy: the previous head (v2) is live no more and loses its idle worker; prod's stays warm
    v3 = (await api.put_function(name, VERSIONED % "three"))["version"]
    assert (await api.ok("POST", f"/v1/functions/{name}/invoke", {}))["cold_start"] is True
    row = hub.pool.stats()["functions"][name]
    assert v2 not in row["versions"] and row["versions"][v1]["warm"] == 1 and row["versions"][v3]["warm"] == 1
    again = await api.ok("POST", f"/v1/functions/{name}/invoke?alias=prod", {})
    assert again["version"] == v1 and again["cold_start"] is False


async def test_versions_in_use_cannot_be_deleted(hub: Hub, api: Api, unique: str) -> None:
    name = f"del-{unique}"
    v1, v2 = await two_versions(api, name)
    await api.ok("PUT", f"/v1/functions/{name}/aliases/prod", {"version": v1})
    await api.put_trigger(f"pin-{unique}", f"{name}:{v1}", DAY)
    status, body = await api.call("DELETE", f"/v1/functions/{name}/versions/{v2}")
    assert status == 409 and "current version" in body["error"] and body["details"] == [
        {"kind": "latest", "name": "latest"}]
    status, body = await api.call("DELETE", f"/v1/functions/{name}/versions/{v1}")
    assert status == 409 and "'prod'" in body["error"] and f"pin-{unique}" in body["error"]
    assert {(d["kind"], d["name"]) for d in body["details"]} == {("alias", "prod"), ("trigger", f"pin-{unique}")}
    # an alias a trigger uses cannot go either
    await api.put_trigger(f"on-prod-{unique}", f"{name}:prod", DAY)
    status, body = await api.call("DELETE", f"/v1/functions/{name}/aliases/prod")
    assert status == 409 and f"on-prod-{unique}" in body["error"]
    # the refusals left everything as it was: v1 still runs
    assert (await api.ok("POST", f"/v1/functions/{name}/invoke?version={v1}", {}))["result"]["v"] == "one"
    for t in (f"pin-{unique}", f"on-prod-{unique}"):
        await api.ok("DELETE", f"/v1/triggers/{t}")
    await api.ok("DELETE", f"/v1/functions/{name}/aliases/prod")
    assert await api.ok("DELETE", f"/v1/functions/{name}/versions/{v1}") == {"deleted": v1}
    assert [v["version"] for v in (await api.ok("GET", f"/v1/functions/{name}"))["versions"]] == [v2]
    status, body = await api.call("POST", f"/v1/functions/{name}/invoke?version={v1}", {})
    assert status == 404 and v1 in body["error"]
    status, _ = await api.call("DELETE", f"/v1/functions/{name}/versions/{v1}")
    assert status == 404
    status, body = await api.call("PUT", f"/v1/functions/{name}/aliases/prod", {"version": v1})
    assert status == 404 and v1 in body["error"]
    # deploying the deleted code again makes the version again
    again = await api.put_function(name, VERSIONED % "one")
    assert again["version"] == v1 and again["new_version"] is True


async def test_code_zip_is_what_was_deployed(api: Api, unique: str) -> None:
    name = f"zip-{unique}"
    files = {
        "main.py": b"from pkg.util import shout\n\ndef handler(event, context):\n    return shout('hi')\n",
        "pkg/__init__.py": b"",
        "pkg/util.py": b"def shout(s):\n    return s.upper()\n",
        "data/blob.bin": bytes(range(256)) * 3,
        "requirements.txt": b"# nothing needed yet\n",
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path, data in files.items():
            zf.writestr(path, data)
    v1 = (await api.ok("PUT", f"/v1/functions/{name}", {
        "handler": "main.handler", "code": {"zip_base64": base64.b64encode(buf.getvalue()).decode()}}))["version"]
    await api.put_function(name, "def handler(e, c):\n    return 2\n")
    url = f"{api.base}/v1/functions/{name}/versions/{v1}/code"
    async with api.session.get(url, headers=api.headers) as r:
        assert r.status == 200 and r.content_type == "application/zip"
        assert f"{name}-{v1}.zip" in r.headers["Content-Disposition"]
        body = await r.read()
    with zipfile.ZipFile(io.BytesIO(body)) as zf:
        assert {i.filename: zf.read(i) for i in zf.infolist()} == files
    async with api.session.get(url, headers=api.headers) as r:
        assert await r.read() == body  # the same bytes every time
    status, err = await api.call("GET", f"/v1/functions/{name}/versions/{'0' * 16}/code")
    assert status == 404 and "0" * 16 in err["error"]


async def test_cli_versions_and_aliases(hub: Hub, api: Api, tmp_path: Path, unique: str) -> None:
    name = f"cli-{unique}"
    v1, v2 = await two_versions(api, name)
    old = await cli(hub, "invoke", name, "--version", v1, "--data", '{"x": 1}')
    assert old.exit_code == 0 and json.loads(old.stdout)["v"] == "one", old.output
    made = await cli(hub, "alias", "set", name, "prod", v1, "--description", "live")
    assert made.exit_code == 0 and f"{name}:prod -> {v1} (created)" in made.output, made.output
    listed = await cli(hub, "aliases", name)
    assert listed.exit_code == 0 and "prod" in listed.output and v1 in listed.output and f"latest -> {v2}" \
        in listed.output
    as_json = json.loads((await cli(hub, "--json", "aliases", name)).stdout)
    assert as_json["aliases"][0]["name"] == "prod" and as_json["aliases"][0]["description"] == "live"
    run = await cli(hub, "--json", "invoke", name, "--alias", "prod")
    assert json.loads(run.stdout)["version"] == v1
    moved = await cli(hub, "alias", "set", name, "prod", "latest")  # pins the current version
    assert moved.exit_code == 0 and f"-> {v2} (was {v1})" in moved.output, moved.output
    assert json.loads((await cli(hub, "invoke", name, "--alias", "prod")).stdout)["v"] == "two"
    versions = await cli(hub, "versions", name)
    assert versions.exit_code == 0 and v1 in versions.output and "prod" in versions.output
    out = tmp_path / "code.zip"
    saved = await cli(hub, "version", "code", name, v1, "-o", str(out))
    assert saved.exit_code == 0 and "def handler" in zipfile.ZipFile(out).read("main.py").decode()
    in_use = await cli(hub, "version", "delete", name, v2)
    assert in_use.exit_code == 2 and "in use" in in_use.output
    gone = await cli(hub, "alias", "delete", name, "prod")
    assert gone.exit_code == 0 and "deleted alias" in gone.output
    missing = await cli(hub, "invoke", name, "--alias", "prod")
    assert missing.exit_code == 1 and "prod" in missing.output
    assert (await cli(hub, "version", "delete", name, v1)).exit_code == 0
    both = await cli(hub, "invoke", name, "--alias", "a", "--version", v1)
    assert both.exit_code == 2


async def test_bad_versions_and_aliases_are_refused(api: Api, unique: str) -> None:
    name = f"bad-{unique}"
    v1, _ = await two_versions(api, name)
    unknown = "0123456789abcdef"
    cases = [
        ("POST", f"/v1/functions/{name}/invoke?version={unknown}", None, 404, unknown),
        ("POST", f"/v1/functions/{name}/invoke?alias=nope", None, 404, "nope"),
        ("POST", f"/v1/functions/{name}/invoke?version={v1}&alias=prod", None, 400, "not both"),
        ("POST", f"/v1/functions/{name}/invoke?version=zzz", None, 400, "16 hex digits"),
        ("POST", f"/v1/functions/nope-{unique}/invoke?version={v1}", None, 404, "no function"),
        ("PUT", f"/v1/functions/{name}/aliases/latest", {"version": v1}, 400, "reserved"),
        ("PUT", f"/v1/functions/{name}/aliases/{unknown}", {"version": v1}, 400, "look like a version"),
        ("PUT", f"/v1/functions/{name}/aliases/prod", {"version": unknown}, 404, unknown),
        ("PUT", f"/v1/functions/{name}/aliases/prod", {"version": "latest"}, 400, "version"),
        ("PUT", f"/v1/functions/{name}/aliases/prod", {"version": v1, "extra": 1}, 400, "extra"),
        ("PUT", f"/v1/functions/nope-{unique}/aliases/prod", {"version": v1}, 404, "no function"),
        ("DELETE", f"/v1/functions/{name}/aliases/latest", None, 400, "reserved"),
        ("DELETE", f"/v1/functions/{name}/aliases/prod", None, 404, "prod"),
        ("DELETE", f"/v1/functions/{name}/versions/{unknown}", None, 404, unknown),
        ("DELETE", f"/v1/functions/{name}/versions/v1", None, 400, "16 hex digits"),
        ("GET", f"/v1/functions/nope-{unique}/aliases", None, 404, "no function"),
        ("PUT", f"/v1/triggers/t-{unique}", {"function": f"{name}:nope", "source": DAY}, 400, "no alias 'nope'"),
        ("PUT", f"/v1/triggers/t-{unique}", {"function": f"{name}:{unknown}", "source": DAY}, 400, unknown),
        ("PUT", f"/v1/triggers/t-{unique}", {"function": f"{name}:a:b", "source": DAY}, 400, "function"),
    ]
    for method, path, body, want, text in cases:
        status, answer = await api.call(method, path, body)
        assert status == want and text in answer["error"], (method, path, status, answer)
    # a qualifier that exists is fine: latest, a version, an alias
    await api.ok("PUT", f"/v1/functions/{name}/aliases/prod", {"version": v1})
    for ref in (f"{name}:latest", f"{name}:{v1}", f"{name}:prod"):
        await api.put_trigger(f"t-{unique}", ref, DAY)
    await api.ok("DELETE", f"/v1/triggers/t-{unique}")


async def test_replaying_a_direct_invoke_runs_the_same_version(api: Api, unique: str) -> None:
    name = f"dl-{unique}"
    v1 = (await api.put_function(name, "def handler(e, c):\n    raise ValueError('old code')\n"))["version"]
    await api.put_function(name, VERSIONED % "fixed")
    status, _ = await api.call("POST", f"/v1/functions/{name}/invoke?mode=async&version={v1}", {})
    assert status == 202

    async def dead_letter() -> Any:
        letters = (await api.ok("GET", "/v1/dead-letters", params={"function": name}))["dead_letters"]
        return letters[0] if letters else None

    dl = await eventually(dead_letter)
    assert dl["function"] == name and dl["qualifier"] == v1
    await api.ok("POST", f"/v1/dead-letters/{dl['id']}/replay")

    async def ran_again() -> bool:
        return len([i for i in await api.invocations(function=name) if i["version"] == v1]) > 3

    await eventually(ran_again)
    assert all(i["status"] == "failed" for i in await api.invocations(function=name))  # never the fixed head
