"""Secrets against the real servers: CRUD and 409, the worker's environment, masking, rotation
reaching warm workers (on this instance and another), and the places a value must never be:
MongoDB documents, the hub's log, invocation records, API answers."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from hub import logs
from hub.app import Hub
from hub.catalog.secrets import Secrets, SecretUnavailable, load_key, mask, mask_values
from tests.hubfixtures import Api, eventually, make_settings

pytestmark = pytest.mark.integration

PRINTS = '''import os
def handler(event, context):
    value = os.environ["DB_PASSWORD"]
    print("password is", value)
    print("repr", repr(value))
    if (event.get("data") or {}).get("fail"):
        raise ValueError("could not log in with " + value)
    return {"echo": value, "sha": __import__("hashlib").sha256(value.encode()).hexdigest(),
            "pid": os.getpid()}
'''
SNOOP = '''import os
def handler(event, context):
    return {"env": dict(os.environ)}
'''


def _sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _value() -> str:
    return f"pw-{uuid.uuid4().hex}-'\"quoted\""


async def test_secret_crud_and_conflict(api: Api, unique: str) -> None:
    name = f"db-{unique}"
    value = _value()
    status, body = await api.call("PUT", f"/v1/secrets/{name}", {"value": value})
    assert status == 201 and body["version"] == 1 and body["used_by"] == []
    assert value not in str(body)
    status, body = await api.call("PUT", f"/v1/secrets/{name}", {"value": value})  # the same: no change
    assert status == 200 and body["version"] == 1
    status, body = await api.call("PUT", f"/v1/secrets/{name}", {"value": value + "2"})
    assert status == 200 and body["version"] == 2
    fn = f"uses-{unique}"
    await api.put_function(fn, PRINTS, env={"DB_PASSWORD": {"secret": name}, "PLAIN": "x"})
    got = await api.ok("GET", f"/v1/functions/{fn}")
    assert got["env"] == {"DB_PASSWORD": {"secret": name}, "PLAIN": "x"}
    one = await api.ok("GET", f"/v1/secrets/{name}")
    assert [u["function"] for u in one["used_by"]] == [fn]
    listed = await api.ok("GET", "/v1/secrets")
    assert any(s["name"] == name for s in listed["secrets"])
    assert value not in str(listed) and value not in str(one)
    status, body = await api.call("DELETE", f"/v1/secrets/{name}")
    assert status == 409 and fn in body["error"] and body["details"][0]["function"] == fn
    # unknown secret at PUT: a readable 400 naming it
    status, body = await api.call("PUT", f"/v1/functions/{fn}-2", {
        "handler": "main.handler", "code": {"files": {"main.py": PRINTS}},
        "env": {"DB_PASSWORD": {"secret": f"nope-{unique}"}}})
    assert status == 400 and f"nope-{unique}" in body["error"] and "PUT /v1/secrets" in body["error"]
    for bad in ({"secret": "../etc"}, {"secret": 5}, {"secrets": "x"}, 7):
        status, body = await api.call("PUT", f"/v1/functions/{fn}-3", {
            "handler": "main.handler", "code": {"files": {"main.py": PRINTS}}, "env": {"X": bad}})
        assert status == 400, (bad, body)
        assert "env X" in body["error"]
    await api.ok("DELETE", f"/v1/functions/{fn}")
    assert (await api.ok("DELETE", f"/v1/secrets/{name}"))["deleted"] == name
    assert (await api.call("GET", f"/v1/secrets/{name}"))[0] == 404
    assert (await api.call("DELETE", f"/v1/secrets/{name}"))[0] == 404


@pytest.mark.parametrize("body", [{}, {"value": ""}, {"value": 5}, {"value": "a\u0000b"},
                                  {"value": "x" * 4097}, {"value": "é" * 2049}, {"value": "x", "extra": 1}])
async def test_secret_value_bounds(api: Api, unique: str, body: dict[str, Any]) -> None:
    status, answer = await api.call("PUT", f"/v1/secrets/bad-{unique}", body)
    assert status == 400, answer


@pytest.mark.parametrize("path", ["/v1/secrets/..", "/v1/secrets/.hidden", "/v1/secrets/a%2Fb",
                                  "/v1/secrets/a%00b", "/v1/secrets/" + "a" * 64, "/v1/secrets/-x"])
async def test_secret_names_with_path_tricks(api: Api, http: aiohttp.ClientSession, path: str) -> None:
    async with http.put(api.base + path, json={"value": "v"}, headers=api.headers) as r:
        assert r.status in (400, 404, 405), (path, r.status)
    listed = await api.ok("GET", "/v1/secrets")
    assert not any(s["name"] in ("..", ".hidden", "a/b", "-x") for s in listed["secrets"])


def _scan(value: Any, needles: list[bytes]) -> bool:
    if isinstance(value, dict):
        return any(_scan(k, needles) or _scan(v, needles) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(_scan(v, needles) for v in value)
    if isinstance(value, str):
        return any(n in value.encode() for n in needles)
    if isinstance(value, (bytes, bytearray)):
        return any(n in bytes(value) for n in needles)
    return False


async def test_worker_sees_it_and_nothing_else_does(hub: Hub, api: Api, unique: str) -> None:
    name, value = f"leak-{unique}", _value()
    sink = io.StringIO()
    logs.configure("json", "debug", stream=sink)
    try:
        await api.ok("PUT", f"/v1/secrets/{name}", {"value": value})
        fn = f"printer-{unique}"
        await api.put_function(fn, PRINTS, env={"DB_PASSWORD": {"secret": name}})
        ok = await api.ok("POST", f"/v1/functions/{fn}/invoke", {})
        assert ok["status"] == "succeeded", ok
        assert ok["result"]["sha"] == _sha(value)  # the worker had the value
        assert ok["result"]["echo"] == "***"  # the answer and record do not
        failed = await api.ok("POST", f"/v1/functions/{fn}/invoke", {"fail": True})
        assert failed["status"] == "failed"
        assert "***" in failed["error"]["message"] and value not in str(failed)
        for inv_id in (ok["invocation_id"], failed["invocation_id"]):
            record = await api.ok("GET", f"/v1/invocations/{inv_id}")
            assert "password is ***" in record["stdout"]
            assert "repr '***'" in record["stdout"], record["stdout"]
            assert value not in str(record)
        # another function, without the reference, does not get it
        snoop = f"snoop-{unique}"
        await api.put_function(snoop, SNOOP)
        seen = await api.ok("POST", f"/v1/functions/{snoop}/invoke", {})
        assert value not in str(seen["result"]) and "DB_PASSWORD" not in seen["result"]["env"]
        # the function's documents and every other document of the hub's database
        needles = [value.encode(), base64.b64encode(value.encode())]
        db = hub.store.db
        for coll in await db.list_collection_names():
            async for doc in db[coll].find():
                assert not _scan(doc, needles), (coll, doc.get("_id"))
        assert value not in str(await api.ok("GET", f"/v1/functions/{fn}"))
        assert value not in str(await api.ok("GET", "/v1/invocations", params={"function": fn,
                                                                               "include": "output"}))
    finally:
        logs.configure("json", "info")
    assert sink.getvalue()  # the hub did log meanwhile
    assert value not in sink.getvalue()


async def test_rotation_reaches_a_warm_worker(api: Api, unique: str) -> None:
    name, fn = f"rot-{unique}", f"rot-{unique}"
    first, second = _value(), _value()
    await api.ok("PUT", f"/v1/secrets/{name}", {"value": first})
    await api.put_function(fn, PRINTS, env={"DB_PASSWORD": {"secret": name}})
    one = await api.ok("POST", f"/v1/functions/{fn}/invoke", {})
    warm = await api.ok("POST", f"/v1/functions/{fn}/invoke", {})
    assert one["result"]["sha"] == warm["result"]["sha"] == _sha(first)
    assert warm["cold_start"] is False and warm["result"]["pid"] == one["result"]["pid"]
    await api.ok("PUT", f"/v1/secrets/{name}", {"value": second})
    after = await api.ok("POST", f"/v1/functions/{fn}/invoke", {})
    assert after["result"]["sha"] == _sha(second) and after["cold_start"] is True
    # the old value is masked no more, the new one is
    assert after["result"]["echo"] == "***"


@pytest.fixture
async def pair(servers: dict[str, Any], tmp_path: Path) -> AsyncIterator[tuple[Api, Api, Hub, Hub]]:
    db = f"sec_{uuid.uuid4().hex[:8]}"
    key = base64.b64encode(os.urandom(32)).decode()
    a = Hub(make_settings(servers, tmp_path / "a", db, secrets_key=key, trigger_sync_interval_s=3600))
    b = Hub(make_settings(servers, tmp_path / "b", db, secrets_key=key, trigger_sync_interval_s=3600))
    await a.start()
    await b.start()
    try:
        await eventually(lambda: _ready(a, b))
        async with aiohttp.ClientSession() as session:
            yield Api(session, a.url), Api(session, b.url), a, b
    finally:
        await a.stop()
        await b.stop()


async def _ready(a: Hub, b: Hub) -> bool:
    return a.registry.cache_enabled and b.registry.cache_enabled and a.tokens.cache_enabled and b.tokens.cache_enabled


async def test_rotation_reaches_warm_workers_on_another_instance(pair: tuple[Api, Api, Hub, Hub], unique: str) -> None:
    api_a, api_b, _, _ = pair
    name, fn = f"rot2-{unique}", f"rot2-{unique}"
    first, second = _value(), _value()
    await api_a.ok("PUT", f"/v1/secrets/{name}", {"value": first})
    await api_a.put_function(fn, PRINTS, env={"DB_PASSWORD": {"secret": name}})
    for _ in range(2):
        warm = await api_b.ok("POST", f"/v1/functions/{fn}/invoke", {})
    assert warm["result"]["sha"] == _sha(first) and warm["cold_start"] is False
    await api_a.ok("PUT", f"/v1/secrets/{name}", {"value": second})

    async def rotated() -> Any:
        got = await api_b.ok("POST", f"/v1/functions/{fn}/invoke", {})
        return got if got["result"]["sha"] == _sha(second) else None

    got = await eventually(rotated, timeout=10)
    assert got["cold_start"] is True


async def test_another_key_is_refused_clearly(servers: dict[str, Any], tmp_path: Path, hub: Hub, api: Api,
                                              unique: str) -> None:
    """An instance with another key cannot decrypt, and says why (the invocation records it)."""
    name = f"otherkey-{unique}"
    await api.ok("PUT", f"/v1/secrets/{name}", {"value": "v1-value"})
    other = Secrets(hub.store.db, lambda: os.urandom(32))
    with pytest.raises(SecretUnavailable, match="another key"):
        await other.resolve({"X": {"secret": name}})
    # a ciphertext moved onto another secret's document does not decrypt there (name bound as AD)
    await api.ok("PUT", f"/v1/secrets/{name}-b", {"value": "v2-value"})
    doc = await hub.store.db.secrets.find_one({"_id": name})
    assert doc is not None
    await hub.store.db.secrets.update_one({"_id": f"{name}-b"}, {"$set": {
        "nonce": doc["nonce"], "ciphertext": doc["ciphertext"], "version": doc["version"]}})
    with pytest.raises(SecretUnavailable, match="altered"):
        await hub.secrets.resolve({"X": {"secret": f"{name}-b"}})


def test_key_file_is_private_and_stable(tmp_path: Path) -> None:
    key = load_key("", tmp_path)
    assert len(key) == 32 and (tmp_path / "secrets.key").stat().st_mode & 0o777 == 0o600
    assert load_key("", tmp_path) == key
    with pytest.raises(ValueError, match="32 bytes"):
        load_key(base64.b64encode(b"short").decode(), tmp_path)
    with pytest.raises(ValueError, match="not base64"):
        load_key("not base64!", tmp_path)


def test_mask_covers_every_form() -> None:
    values = mask_values(["s3c'r\"et\n", "s3c"])
    text = f"{'s3c' + chr(39) + 'r' + chr(34) + 'et' + chr(10)} and {repr(chr(10))} {repr('s3c' + chr(39) + 'r')}"
    masked = mask({"out": text, "list": ["xs3cx"], "s3c": 1}, values)
    assert "s3c" not in str(masked)


async def test_cli_secrets_put_list_delete(api: Api, unique: str, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from hub.cli.commands import main
    from tests.hubfixtures import API_TOKEN

    base = ["--url", api.base, "--token", API_TOKEN]
    runner = CliRunner()

    def run(*args: str, stdin: str | None = None) -> Any:
        return runner.invoke(main, [*base, *args], input=stdin)

    name = f"cli-{unique}"
    put = await asyncio.to_thread(run, "secrets", "put", name, stdin="from-stdin\n")
    assert put.exit_code == 0, put.output
    assert "version 1" in put.output and "from-stdin" not in put.output
    path = tmp_path / "value"
    path.write_text("from-file\n")
    again = await asyncio.to_thread(run, "secrets", "put", name, "--from-file", str(path))
    assert again.exit_code == 0 and "version 2" in again.output
    fn = f"cli-fn-{unique}"
    await api.put_function(fn, PRINTS, env={"DB_PASSWORD": {"secret": name}})
    got = await api.ok("POST", f"/v1/functions/{fn}/invoke", {})
    assert got["result"]["sha"] == _sha("from-file")  # the trailing newline is not part of it
    listed = await asyncio.to_thread(run, "secrets", "list")
    assert name in listed.output and fn in listed.output
    refused = await asyncio.to_thread(run, "secrets", "delete", name)
    assert refused.exit_code == 2 and fn in refused.output
    await api.ok("DELETE", f"/v1/functions/{fn}")
    deleted = await asyncio.to_thread(run, "secrets", "delete", name)
    assert deleted.exit_code == 0
    usage = await asyncio.to_thread(run, "secrets", "put", name, "the-value-as-an-argument")
    assert usage.exit_code == 2  # no value as an argument
    empty = await asyncio.to_thread(run, "secrets", "put", name, stdin="")
    assert empty.exit_code == 2
