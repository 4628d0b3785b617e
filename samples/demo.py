"""Exercise the samples against the running stack and print their invocations.

    set -a; . .hub/dev.env; set +a; .venv/bin/python -m samples.demo
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import time
import uuid
from typing import Any

from aiokafka import AIOKafkaProducer
from minio import Minio
from pymongo import AsyncMongoClient

from hub.cli.client import Client, dev_env

HUB = Client()
# function URLs have a listener (an origin) of their own; the run command writes it to .hub/dev.env
FN = Client(url={**dev_env(), **os.environ}.get("HUB_FN_URL") or "http://127.0.0.1:8081", token="")


def call(method: str, path: str, query: dict[str, Any] | None = None) -> Any:
    return HUB.call(method, path, query=query)


async def upload() -> str:
    endpoint = os.environ["HUB_S3_ENDPOINT"]
    client = Minio(endpoint.split("://", 1)[1], access_key=os.environ["HUB_S3_ACCESS_KEY"],
                   secret_key=os.environ["HUB_S3_SECRET_KEY"], secure=False, region="us-east-1")
    key = f"incoming/report-{uuid.uuid4().hex[:6]}.csv"
    body = b"city,sales\nOslo,12\nLima,7\n"
    await asyncio.to_thread(client.put_object, "uploads", key, io.BytesIO(body), len(body))
    return key


async def write_order() -> Any:
    # the hub user may only read the databases it watches: write the order as the admin
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(os.environ.get("MONGO_ADMIN_URL") or os.environ["HUB_MONGO_URL"])
    try:
        orders = client.shop.orders
        res = await orders.insert_one({"status": "new", "items": [{"sku": "kb-1", "price": 49.5, "qty": 2}]})
        await orders.update_one({"_id": res.inserted_id}, {"$set": {"status": "paid"}})
        return res.inserted_id
    finally:
        await client.close()


async def produce_clicks() -> None:
    producer = AIOKafkaProducer(bootstrap_servers=os.environ["HUB_KAFKA_BOOTSTRAP"], enable_idempotence=False)
    await producer.start()
    try:
        clicks = [{"page": "/"}, {"page": "/pricing"}, {"page": "/"}]
        await producer.send_and_wait("clicks", json.dumps(clicks).encode(), key=b"session-1")
    finally:
        await producer.stop()


def wait_for(trigger: str, since: float, count: int, timeout: float = 60) -> list[dict[str, Any]]:
    deadline = time.time() + timeout
    while True:
        invs = call("GET", "/v1/invocations", {"trigger": trigger, "limit": 20})["invocations"]
        fresh = [i for i in invs if _ts(i["started_at"]) >= since]
        if len(fresh) >= count or time.time() > deadline:
            return fresh
        time.sleep(0.3)


def _ts(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


async def main() -> None:
    since = time.time() - 1
    key = await upload()
    order_id = await write_order()
    await produce_clicks()
    hello = await asyncio.to_thread(FN.call, "GET", "/fn/hello/demo")  # the function URL (auth none)
    print(f"uploaded uploads/{key}; wrote order {order_id} (insert + update); produced 1 message to clicks; "
          f"GET /fn/hello/demo -> {hello}\n")
    for trigger, count in (("s3-upload-report", 1), ("order-audit", 2), ("click-counter", 1), ("hello-http", 1)):
        invs = await asyncio.to_thread(wait_for, trigger, since, count)
        print(f"{trigger}: {len(invs)} invocation(s)")
        for inv in invs:
            print(f"  {inv['status']:<10} {inv['duration_ms']:7.1f} ms  cold={inv['cold_start']!s:<5} "
                  f"result={json.dumps(inv['result'])}")
        if len(invs) < count:
            raise SystemExit(f"{trigger}: expected {count} invocation(s), saw {len(invs)}")


if __name__ == "__main__":
    asyncio.run(main())
