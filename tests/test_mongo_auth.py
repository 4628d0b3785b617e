"""MongoDB is the control plane: it refuses clients without credentials, and the hub's own user can
do what the hub needs and little else (devstack/mongo.py says which privileges and why).

The rest of the suite runs against the same authenticated server (``mongo_server.url`` is the hub
user's URL), which proves the hub works with credentials; this file proves the locks hold.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient, MongoClient
from pymongo.errors import OperationFailure

from devstack import MongoServer, ServerError
from hub.store import Store

pytestmark = pytest.mark.integration


def _client(url: str) -> MongoClient[dict[str, Any]]:
    return MongoClient(url, serverSelectionTimeoutMS=10000)


def _anonymous(server: MongoServer) -> MongoClient[dict[str, Any]]:
    return _client(f"mongodb://{server.host}/?replicaSet={server.replica_set}")


@pytest.mark.timeout(60)
def test_a_client_without_credentials_is_refused(mongo_server: MongoServer) -> None:
    assert "authSource=admin" in mongo_server.url and "@" in mongo_server.url
    assert mongo_server.credentials.hub_password not in repr(mongo_server)
    with _anonymous(mongo_server) as client:
        assert client.admin.command("hello")["isWritablePrimary"]  # the handshake is all it gets
        for attempt in (lambda: client.trigger_hub.functions.find_one(),
                        lambda: client.trigger_hub.functions.insert_one({"_id": "evil", "code": "x"}),
                        lambda: client.list_database_names(),
                        lambda: client.local["oplog.rs"].find_one()):
            with pytest.raises(OperationFailure, match="requires authentication"):
                attempt()
    wrong = mongo_server.url.replace(mongo_server.credentials.hub_password, "not-the-password")
    refused: MongoClient[dict[str, Any]] = MongoClient(wrong, serverSelectionTimeoutMS=10000)
    with refused, pytest.raises(OperationFailure, match="Authentication failed"):
        refused.trigger_hub.functions.find_one()


@pytest.mark.timeout(120)
async def test_the_hub_user_has_what_the_hub_needs_and_no_more(tmp_path: Path) -> None:
    server = MongoServer(tmp_path / "mongo", hub_db="hubdb")  # the narrow role ./scripts/run uses
    await asyncio.to_thread(server.start)
    hub: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(server.url, serverSelectionTimeoutMS=10000)
    admin: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(server.admin_url, serverSelectionTimeoutMS=10000)
    store = Store(server.url, "hubdb")
    try:
        assert server.keyfile.stat().st_mode & 0o777 == 0o400
        assert server.credentials_path.stat().st_mode & 0o777 == 0o600

        # the hub's own database: indexes (and a changed TTL through collMod), documents, its streams
        await store.init()
        await store.ping()
        await hub.hubdb.instances.drop_index("last_seen_1")
        await hub.hubdb.instances.create_index("last_seen", expireAfterSeconds=60)
        await store.init()  # IndexOptionsConflict, then collMod
        async with await hub.hubdb.watch() as stream:
            await hub.hubdb.inbox.insert_one({"state": "ready"})
            assert (await asyncio.wait_for(stream.next(), 20))["operationType"] == "insert"

        # a MongoDB trigger on someone else's database: list, watch with updateLookup, never write
        coll = f"orders_{uuid.uuid4().hex[:6]}"
        await admin.shop.create_collection(coll)
        infos = await (await hub.shop.list_collections(filter={"name": coll})).to_list(1)
        assert infos and infos[0]["name"] == coll
        async with await hub.shop[coll].watch(full_document="updateLookup") as stream:
            res = await admin.shop[coll].insert_one({"n": 1})
            await admin.shop[coll].update_one({"_id": res.inserted_id}, {"$set": {"n": 2}})
            assert (await asyncio.wait_for(stream.next(), 20))["fullDocument"]["n"] == 1
            assert (await asyncio.wait_for(stream.next(), 20))["fullDocument"]["n"] == 2
        assert await hub.local["oplog.rs"].find_one({}, {"ts": 1}, sort=[("$natural", 1)])

        refused = [
            lambda: hub.shop[coll].insert_one({"n": 3}),
            lambda: hub.shop[coll].delete_many({}),
            lambda: hub.drop_database("shop"),
            lambda: hub.admin.command("createUser", "evil", pwd="evil-password", roles=["root"]),
            lambda: hub.admin.command("grantRolesToUser", "hub", roles=["root"]),
            lambda: hub.admin["system.users"].find_one(),
            lambda: hub.config.settings.insert_one({"x": 1}),
            lambda: hub.admin.command("shutdown"),
        ]
        for attempt in refused:
            with pytest.raises(OperationFailure, match="not authorized"):
                await attempt()
    finally:
        await store.close()
        await hub.close()
        await admin.close()
        await asyncio.to_thread(server.stop)


@pytest.mark.timeout(120)
def test_restart_keeps_the_users_and_refuses_lost_credentials(tmp_path: Path) -> None:
    server = MongoServer(tmp_path / "mongo", hub_db="hubdb")
    with server:
        first = server.credentials
        with _client(server.url) as client:
            client.hubdb.functions.insert_one({"_id": "f"})
    with MongoServer(tmp_path / "mongo", hub_db="hubdb") as again:  # reads the same credentials
        assert again.credentials == first
        with _client(again.url) as client:
            assert client.hubdb.functions.find_one({"_id": "f"}) == {"_id": "f"}

    server.credentials_path.unlink()  # new passwords would not match the stored users
    with pytest.raises(ServerError, match="do not match"):
        MongoServer(tmp_path / "mongo").start()
