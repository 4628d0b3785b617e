"""The dev/test servers are real and do what the hub needs from them.

mongod: change streams and resume tokens that survive a server restart. Tansu: consumer groups
with commits that a second consumer resumes from. Ceph RGW: S3 through the minio client, and
bucket notifications POSTed to an HTTP endpoint with the token in the URL. And the
``python -m devstack`` command: starts, writes its env file, and leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import OffsetAndMetadata
from minio import Minio
from pymongo import AsyncMongoClient, MongoClient
from pymongo.errors import OperationFailure

from devstack import CephRGW, MongoServer, TansuServer, free_port
from devstack.binaries import port_open

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent


# -- MongoDB -----------------------------------------------------------------------------------
def _mongo(url: str) -> MongoClient[dict[str, Any]]:
    return MongoClient(url, serverSelectionTimeoutMS=10000)


@pytest.mark.timeout(60)
async def test_mongo_change_stream_sees_insert(mongo_server: MongoServer) -> None:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_server.url)
    try:
        coll = client.devstack_test[f"c_{uuid.uuid4().hex[:8]}"]
        async with await coll.watch(full_document="updateLookup") as stream:
            await coll.insert_one({"n": 1})
            change = await asyncio.wait_for(stream.next(), 20)
        assert change["operationType"] == "insert"
        assert change["fullDocument"]["n"] == 1
        assert stream.resume_token is not None
    finally:
        await client.close()


@pytest.mark.timeout(120)
def test_mongo_resume_after_survives_restart(tmp_path: Path) -> None:
    server = MongoServer(tmp_path / "mongo")
    with server:
        with _mongo(server.url) as client:
            coll = client.devstack_test.events
            with coll.watch() as stream:
                coll.insert_one({"n": 1})
                assert stream.next()["fullDocument"]["n"] == 1
                token = stream.resume_token
            coll.insert_one({"n": 2})  # happens while nobody watches

    # Same dbpath, same port: no re-initiate, PRIMARY again, the oplog still holds the token.
    with server:
        with _mongo(server.url) as client:
            coll = client.devstack_test.events
            with coll.watch(resume_after=token) as stream:
                assert stream.next()["fullDocument"]["n"] == 2
                coll.insert_one({"n": 3})
                assert stream.next()["fullDocument"]["n"] == 3

    # Same dbpath on another port: the replica-set member address is re-pointed.
    with MongoServer(tmp_path / "mongo") as moved:
        assert moved.port != server.port
        with _mongo(moved.url) as client:
            assert client.devstack_test.events.count_documents({}) == 3
            with client.devstack_test.events.watch(resume_after=token) as stream:
                assert stream.next()["fullDocument"]["n"] == 2


# -- Kafka (Tansu) -----------------------------------------------------------------------------
def _consumer(bootstrap: str, topic: str, group: str) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=3000,
        heartbeat_interval_ms=500,
    )


@pytest.mark.timeout(90)
async def test_kafka_consumer_group_commit_and_resume(kafka_server: TansuServer) -> None:
    topic = f"devstack-{uuid.uuid4().hex[:8]}"
    group = f"group-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_server.bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()

    producer = AIOKafkaProducer(bootstrap_servers=kafka_server.bootstrap, enable_idempotence=False, acks="all")
    await producer.start()
    try:
        for i in range(6):
            await producer.send_and_wait(topic, f"m{i}".encode(), key=b"k", headers=[("h", b"v")])
    finally:
        await producer.stop()

    tp = TopicPartition(topic, 0)
    first = _consumer(kafka_server.bootstrap, topic, group)
    await first.start()
    try:
        got = [await asyncio.wait_for(first.getone(), 30) for _ in range(3)]
        assert [m.value for m in got] == [b"m0", b"m1", b"m2"]
        assert got[0].key == b"k" and got[0].headers == (("h", b"v"),)
        await first.commit({tp: OffsetAndMetadata(got[-1].offset + 1, "")})
        assert await first.committed(tp) == got[-1].offset + 1
    finally:
        await first.stop()

    second = _consumer(kafka_server.bootstrap, topic, group)
    await second.start()
    try:
        resumed = await asyncio.wait_for(second.getone(), 30)
        assert resumed.value == b"m3"
        assert resumed.offset == got[-1].offset + 1
    finally:
        await second.stop()


# -- S3 (Ceph RGW) -----------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_rgw_minio_client_put_get(rgw_server: CephRGW) -> None:
    client = Minio(
        rgw_server.endpoint.removeprefix("http://"),
        access_key=rgw_server.access_key,
        secret_key=rgw_server.secret_key,
        secure=False,
        region=rgw_server.region,
    )
    bucket = f"minio-{uuid.uuid4().hex[:8]}"
    body = b"hello from devstack\n" * 100
    client.make_bucket(bucket)
    client.put_object(bucket, "dir/hello.txt", io.BytesIO(body), len(body), content_type="text/plain")
    resp = client.get_object(bucket, "dir/hello.txt")
    try:
        assert resp.read() == body
    finally:
        resp.close()
        resp.release_conn()
    assert client.stat_object(bucket, "dir/hello.txt").size == len(body)
    assert [o.object_name for o in client.list_objects(bucket, recursive=True)] == ["dir/hello.txt"]
    client.remove_object(bucket, "dir/hello.txt")
    client.remove_bucket(bucket)


@pytest.mark.timeout(90)
async def test_rgw_bucket_notification_posts_to_webhook(rgw_server: CephRGW) -> None:
    token = secrets.token_urlsafe(16)
    posts: asyncio.Queue[tuple[dict[str, str], dict[str, str], bytes]] = asyncio.Queue()

    async def hook(request: web.Request) -> web.Response:
        await posts.put((dict(request.query), dict(request.headers), await request.read()))
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]

    creds = {
        "endpoint_url": rgw_server.endpoint,
        "region_name": rgw_server.region,
        "aws_access_key_id": rgw_server.access_key,
        "aws_secret_access_key": rgw_server.secret_key,
    }
    sns = boto3.client("sns", **creds)
    s3 = rgw_server.s3_client()
    bucket = f"notify-{uuid.uuid4().hex[:8]}"
    topic_arn = ""
    key = "in/hello world.txt"
    try:
        # RGW cannot send headers to the endpoint: the token travels in the URL.
        topic_arn = sns.create_topic(
            Name=f"hub-{uuid.uuid4().hex[:8]}",
            Attributes={"push-endpoint": f"http://127.0.0.1:{port}/hook?token={token}", "persistent": "false"},
        )["TopicArn"]
        s3.create_bucket(Bucket=bucket)
        s3.put_bucket_notification_configuration(
            Bucket=bucket,
            NotificationConfiguration={
                "TopicConfigurations": [
                    {"Id": "hub", "TopicArn": topic_arn, "Events": ["s3:ObjectCreated:*"]}
                ]
            },
        )
        config = s3.get_bucket_notification_configuration(Bucket=bucket)
        assert config["TopicConfigurations"][0]["TopicArn"] == topic_arn

        # A non-persistent topic POSTs during the PUT, so the PUT must not block this event loop.
        await asyncio.to_thread(s3.put_object, Bucket=bucket, Key=key, Body=b"hi")
        query, headers, body = await asyncio.wait_for(posts.get(), 30)

        assert query == {"token": token}
        assert "Authorization" not in headers
        record = json.loads(body)["Records"][0]
        assert record["eventName"] == "ObjectCreated:Put"
        assert record["eventSource"] == "ceph:s3"
        assert record["s3"]["bucket"]["name"] == bucket
        assert record["s3"]["object"]["key"] == key
        assert record["s3"]["object"]["size"] == 2
        assert record["s3"]["object"]["sequencer"]
        assert record["eventId"]
    finally:
        await runner.cleanup()
        for call in (
            lambda: s3.delete_object(Bucket=bucket, Key=key),
            lambda: s3.delete_bucket(Bucket=bucket),
            lambda: sns.delete_topic(TopicArn=topic_arn),
        ):
            try:
                await asyncio.to_thread(call)
            except Exception:  # noqa: BLE001 - best-effort cleanup on a per-session server
                pass


# -- python -m devstack ------------------------------------------------------------------------
SERVER_NAMES = {"mongod", "tansu", "ceph-mon", "ceph-osd", "radosgw"}


def _children(pid: int) -> dict[int, str]:
    """pid -> command name of the direct children of pid."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        if ppid == pid:
            found[int(entry.name)] = comm
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _procs_mentioning(text: str) -> list[str]:
    hits = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline and _alive(int(entry.name)):
                hits.append(f"{entry.name}: {cmdline}")
    return hits


def _sourced(env_file: Path) -> dict[str, str]:
    """What ``set -a; . dev.env`` gives a shell (the README's way to use the file), as a dict."""
    names = [line.split("=", 1)[0] for line in env_file.read_text().splitlines() if line]
    script = f'set -a; . "{env_file}"; set +a; for n in {" ".join(names)}; do printf "%s=%s\\0" "$n" "${{!n}}"; done'
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True, env={}).stdout
    return dict(item.split("=", 1) for item in out.split("\0") if item)


def _run_devstack(data_dir: Path, env_file: Path, ports: dict[str, int], stop_signal: int) -> dict[str, Any]:
    """Run ``python -m devstack --no-hub`` until it is up, stop it with stop_signal, check it is gone."""
    env_file.unlink(missing_ok=True)
    log_path = data_dir.parent / "devstack.stderr"
    argv = [sys.executable, "-m", "devstack", "--no-hub", "--data-dir", str(data_dir), "--env-file", str(env_file)]
    for name, port in ports.items():
        argv += [f"--{name}-port", str(port)]
    started = time.monotonic()
    with log_path.open("w") as log:
        proc = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = started + 240
        while not env_file.exists():
            if proc.poll() is not None:
                pytest.fail(f"devstack exited with {proc.returncode}:\n{log_path.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"devstack not up after 240 s:\n{log_path.read_text()}")
            time.sleep(0.2)
        up_after = time.monotonic() - started
        env = _sourced(env_file)
        for line in env_file.read_text().splitlines():  # the CLI's reader (hub.cli.client) agrees
            key, _, value = line.partition("=")
            assert value.strip("'\"") == env[key], key
        children = _children(proc.pid)
        assert SERVER_NAMES <= set(children.values()), children

        with _mongo(env["HUB_MONGO_URL"]) as client:
            assert client.admin.command("hello")["isWritablePrimary"]
            client[env["HUB_MONGO_DB"]].probe.insert_one({})  # authenticated: the hub can write its db
        anonymous = env["HUB_MONGO_URL"].split("@", 1)[1]
        with (_mongo(f"mongodb://{anonymous}".replace("&authSource=admin", "")) as client,
              pytest.raises(OperationFailure, match="requires authentication")):
            client[env["HUB_MONGO_DB"]].probe.find_one()
        kafka_host, kafka_port = env["HUB_KAFKA_BOOTSTRAP"].split(":")
        assert port_open(int(kafka_port), kafka_host)
        with urllib.request.urlopen(env["HUB_S3_ENDPOINT"] + "/", timeout=10) as resp:
            assert resp.status == 200
    finally:
        if proc.poll() is None:
            proc.send_signal(stop_signal)
        try:
            code = proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code == 0, log_path.read_text()
    left = {pid: name for pid, name in children.items() if _alive(pid)}
    assert not left, f"still running after devstack exited: {left}"
    assert not _procs_mentioning(str(data_dir)), _procs_mentioning(str(data_dir))
    return {"env": env, "up_after": up_after, "log": log_path.read_text()}


@pytest.mark.timeout(600)
def test_devstack_command_starts_servers_and_stops_them_all(tmp_path: Path) -> None:
    data_dir = tmp_path / "hub"
    env_file = tmp_path / "dev.env"
    ports = {"mongo": free_port(), "kafka": free_port(), "rgw": free_port(), "mon": free_port(), "hub": free_port(),
             "fn": free_port()}

    first = _run_devstack(data_dir, env_file, ports, signal.SIGINT)
    env = first["env"]
    for key in ("HUB_URL", "HUB_API_TOKEN", "HUB_MONGO_URL", "HUB_KAFKA_BOOTSTRAP", "HUB_S3_ENDPOINT",
                "HUB_S3_ACCESS_KEY", "HUB_S3_SECRET_KEY", "HUB_WEBHOOK_TOKEN"):
        assert env.get(key), key
    assert env["HUB_URL"] == f"http://127.0.0.1:{ports['hub']}"
    assert env["HUB_FN_URL"] == f"http://127.0.0.1:{ports['fn']}"  # function URLs: their own origin
    # authenticated: the hub user (least privilege on its database) and a root URL for the user
    assert env["HUB_MONGO_URL"].startswith("mongodb://hub:")
    assert env["HUB_MONGO_URL"].endswith(f"@127.0.0.1:{ports['mongo']}/?replicaSet=rs0&authSource=admin")
    assert env["MONGO_ADMIN_URL"].startswith("mongodb://admin:")
    assert env["HUB_MONGO_DB"] == "trigger_hub"
    assert env_file.stat().st_mode & 0o077 == 0  # holds secrets
    assert "SIGINT received" in first["log"]

    # A second run reuses the data dir: same tokens, no cluster build.
    second = _run_devstack(data_dir, env_file, ports, signal.SIGTERM)
    assert second["env"] == env
    assert "restart" in second["log"]
    assert "first run: building the cluster" in first["log"]
    assert "first run" not in second["log"], second["log"]
