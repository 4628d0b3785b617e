"""The record writer's posted records (no future: a function URL's answer never waits for its
record) and its linger, which ends once enough records wait. Against the real MongoDB."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
import structlog

from hub.delivery import records
from hub.delivery.records import RecordWriter
from hub.store import Store
from tests.test_dispatch import store  # noqa: F401

pytestmark = pytest.mark.integration


def _doc(**extra: Any) -> dict[str, Any]:
    return {"_id": uuid.uuid4().hex, "function": "fn", "status": "succeeded", **extra}


async def _until(condition: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def test_posted_records_are_written_and_metered(store: Store) -> None:
    landed: list[dict[str, Any]] = []
    writer = RecordWriter(store.db, on_written=landed.extend)
    writer.start()
    try:
        docs = [_doc() for _ in range(5)]
        for d in docs:
            writer.post(d)
        await _until(lambda: len(landed) == 5)
    finally:
        await writer.close()
    found = await store.db.invocations.find({"_id": {"$in": [d["_id"] for d in docs]}}).to_list(None)
    assert len(found) == 5 and {d["_id"] for d in landed} == {d["_id"] for d in docs}


async def test_the_linger_ends_once_enough_records_wait(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(records, "LINGER_AFTER_S", 3600.0)  # a steady flow however slow the machine
    writer = RecordWriter(store.db, linger_s=60.0, linger_under=4)
    writer.start()
    try:
        await writer.submit(_doc())  # an idle writer's first record goes at once
        # a steady flow: the next write would linger a minute, unless 4 records are waiting
        first = [writer.submit(_doc()) for _ in range(3)]
        await asyncio.sleep(0.05)
        assert not any(f.done() for f in first)  # lingering: 3 are fewer than 4
        writer.post(_doc())
        await asyncio.wait_for(asyncio.gather(*first), 10)
        assert writer.writes == 2 and writer.records == 5
    finally:
        await writer.close()


async def test_close_writes_what_lingers(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(records, "LINGER_AFTER_S", 3600.0)
    writer = RecordWriter(store.db, linger_s=60.0, linger_under=1000)
    writer.start()
    await writer.submit(_doc())
    docs = [_doc() for _ in range(3)]
    for d in docs:
        writer.post(d)
    await asyncio.sleep(0.05)
    assert writer.writes == 1  # lingering
    await asyncio.wait_for(writer.close(), 10)  # not a minute
    assert await store.db.invocations.count_documents({"_id": {"$in": [d["_id"] for d in docs]}}) == 3


async def test_a_posted_record_that_cannot_be_written_is_logged(store: Store) -> None:
    writer = RecordWriter(store.db)
    writer.start()
    good = _doc()
    try:
        with structlog.testing.capture_logs() as logs:
            writer.post({"_id": [1, 2], "function": "fn"})  # MongoDB refuses an array _id
            writer.post(good)
            await _until(lambda: writer.records >= 1 and any(e["event"] == "records not written" for e in logs))
    finally:
        await writer.close()
    line = next(e for e in logs if e["event"] == "records not written")
    assert line["records"] == 1 and line["log_level"] == "warning"
    assert await store.db.invocations.count_documents({"_id": good["_id"]}) == 1


async def test_a_record_posted_after_close_is_logged(store: Store) -> None:
    writer = RecordWriter(store.db)
    writer.start()
    await writer.close()
    with structlog.testing.capture_logs() as logs:
        writer.post(_doc())
    assert [e["event"] for e in logs] == ["record not written: the record writer is closed"]
