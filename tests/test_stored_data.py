"""What the hub reads back from MongoDB is checked again before it touches the host (issue 16 §6).

Someone who can write the hub's database (a leaked credential, a compromised instance) must not
turn that into a file written outside the data dir or an option handed to pip: code paths and
version ids are checked as if they came in a request, and recorded dependency pins again before
a rebuild gives them to pip.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from hub.app import Hub
from hub.catalog.code import CodeUnavailable, write_tree
from hub.spec.requirements import check_pin
from tests.hubfixtures import Api

OK = "def handler(event, context):\n    return 'ran'\n"


# -- pure checks -------------------------------------------------------------------------------
@pytest.mark.parametrize("name,version,sha", [
    ("requests", "2.32.3", None),
    ("typing-extensions", "4.12.2", "a" * 64),
])
def test_good_pins_pass(name: str, version: str, sha: str | None) -> None:
    assert check_pin(name, version, sha) == (name, version, sha)


@pytest.mark.parametrize("name,version,sha", [
    ("--index-url", "1.0", None),              # an option
    ("requests", "1.0 --extra-index-url", None),  # an option after the version
    ("requests", "1.0; os_name=='nt'", None),  # a marker smuggled in
    ("Requests", "1.0", None),                 # not canonical
    ("requests", "01.0", None),                # not the normal spelling
    ("requests", "1.0", "zz"),                 # not a sha256
    ("requests", 1.0, None),                   # not even a string
    ("../x", "1.0", None),
])
def test_bad_stored_pins_are_refused(name: Any, version: Any, sha: Any) -> None:
    with pytest.raises(ValueError):
        check_pin(name, version, sha)


@pytest.mark.parametrize("path", ["../escape.py", "a/../../escape.py", "/etc/passwd", "a\x00b.py", ".."])
def test_write_tree_refuses_paths_that_leave_the_version(tmp_path: Path, path: str) -> None:
    target = tmp_path / "code" / "fn" / "v"
    with pytest.raises(CodeUnavailable, match="stored code is not usable"):
        write_tree(target, {"main.py": b"x = 1\n", path: b"bad"})
    assert not target.exists()
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == []  # nothing anywhere, no temp left


# -- against the real hub and MongoDB ---------------------------------------------------------
@pytest.mark.integration
async def test_a_rewritten_code_path_never_leaves_the_data_dir(hub: Hub, api: Api, unique: str,
                                                               servers: dict[str, Any]) -> None:
    name = f"stored-{unique}"
    head = await api.put_function(name, OK)
    version = head["version"]
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(servers["mongo"].admin_url)
    try:
        coll = client[hub.settings.mongo_db].function_versions
        await coll.update_one({"_id": f"{name}:{version}"},
                              {"$push": {"code": {"path": "../../../escape.py", "data": b"pwned"}}})
        # this host has to lay the version out again from what MongoDB says
        shutil.rmtree(hub.registry.code_root / name, ignore_errors=True)
        hub.registry.invalidate(name)
        status, out = await api.call("POST", f"/v1/functions/{name}/invoke", {})
        assert status == 503 and "stored code is not usable" in out["error"] and "escape.py" in out["error"], out
        assert not list(hub.settings.data_dir.parent.rglob("escape.py"))
    finally:
        await client.close()


@pytest.mark.integration
async def test_a_rewritten_version_id_is_refused(hub: Hub, api: Api, unique: str, servers: dict[str, Any]) -> None:
    name = f"verid-{unique}"
    await api.put_function(name, OK)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(servers["mongo"].admin_url)
    try:
        await client[hub.settings.mongo_db].functions.update_one({"_id": name}, {"$set": {"version": "../../x"}})
        hub.registry.invalidate(name)
        status, out = await api.call("POST", f"/v1/functions/{name}/invoke", {})
        assert status == 503 and "stored version id that is not valid" in out["error"], out
        assert not (hub.settings.data_dir / "x").exists()
    finally:
        await client.close()


@pytest.mark.integration
async def test_a_rewritten_dependency_pin_never_reaches_pip(hub: Hub, unique: str, servers: dict[str, Any]) -> None:
    from hub.catalog.deps import DepsUnavailable

    key = (unique * 4)[:32]  # a set key this host does not have
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(servers["mongo"].admin_url)
    try:
        await client[hub.settings.mongo_db].deps.insert_one({
            "_id": key, "env": hub.registry.deps.env,
            "packages": [{"name": "six", "version": "1.16.0 --index-url http://127.0.0.1:9/", "sha256": None}]})
        with pytest.raises(DepsUnavailable, match="recorded dependencies are not usable"):
            await hub.registry.deps.ensure({"hash": key, "packages": ["six==1.16.0"]})
        assert not (hub.registry.deps.root / key).exists()
    finally:
        await client.close()
