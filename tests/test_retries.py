"""A failing function is retried per policy, then dead-lettered; the source moves on; DLQ API."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from hub.app import Hub
from hub.events import Event
from hub.delivery.records import dead_letter_id
from tests.hubfixtures import Api, eventually
from tests.test_sources import produce

pytestmark = pytest.mark.integration

FLAKY = """
def handler(event, context):
    value = event["data"]["value"]
    if not value.get("ok"):
        raise RuntimeError(f"cannot handle {value['n']} (attempt {context.attempt})")
    return value["n"]
"""
FIXED = "def handler(event, context):\n    return 'fixed'\n"


async def test_retry_then_dead_letter_then_move_on(api: Api, servers: dict[str, Any], unique: str) -> None:
    topic, trig, fn = f"flaky-{unique}", f"flaky-{unique}", f"flaky-{unique}"
    await api.put_function(fn, FLAKY)
    await api.put_trigger(trig, fn, {"type": "kafka", "topic": topic},
                          retry={"max_attempts": 3, "backoff_s": 0.05, "max_backoff_s": 0.2})
    await produce(servers["kafka"].bootstrap, topic, [(b"a", b'{"n": 1}'), (b"b", b'{"n": 2, "ok": true}')])

    # the good message behind the bad one runs: the partition is not stuck
    invs = await api.wait_invocations(4, trigger=trig)
    failed = sorted((i for i in invs if i["status"] == "failed"), key=lambda i: i["attempt"])
    assert [i["attempt"] for i in failed] == [1, 2, 3]
    assert "cannot handle 1 (attempt 3)" in failed[-1]["error"]["message"]
    assert [i["result"] for i in invs if i["status"] == "succeeded"] == [2]

    dls = (await api.ok("GET", "/v1/dead-letters", params={"trigger": trig}))["dead_letters"]
    assert len(dls) == 1
    dl = dls[0]
    assert dl["function"] == fn and dl["event"]["data"]["value"] == {"n": 1}
    assert [a["attempt"] for a in dl["attempts"]] == [1, 2, 3]
    assert all(a["error"]["type"] == "RuntimeError" for a in dl["attempts"])
    assert (await api.ok("GET", f"/v1/dead-letters/{dl['id']}"))["id"] == dl["id"]

    # fix the function, replay: it runs again, succeeds, and the dead letter is gone
    await api.put_function(fn, FIXED)
    status, _ = await api.call("POST", f"/v1/dead-letters/{dl['id']}/replay")
    assert status == 202

    async def replayed() -> bool:
        return any(i["result"] == "fixed" for i in await api.invocations(trigger=trig))

    await eventually(replayed)
    await eventually(lambda: _gone(api, dl["id"]))


async def _gone(api: Api, dl_id: str) -> bool:
    status, _ = await api.call("GET", f"/v1/dead-letters/{dl_id}")
    return status == 404


async def test_dead_letter_delete_and_purge(api: Api, unique: str) -> None:
    fn = f"fails-{unique}"
    await api.put_function(fn, "def handler(e, c):\n    raise KeyError('x')\n")
    for _ in range(2):
        status, body = await api.call("POST", f"/v1/functions/{fn}/invoke?mode=async", {"a": 1})
        assert status == 202

    async def two() -> Any:
        dls = (await api.ok("GET", "/v1/dead-letters", params={"function": fn}))["dead_letters"]
        return dls if len(dls) == 2 else None

    dls = await eventually(two, timeout=60)
    assert all(len(d["attempts"]) == 3 and d["trigger"] is None for d in dls)
    await api.ok("DELETE", f"/v1/dead-letters/{dls[0]['id']}")
    status, _ = await api.call("DELETE", f"/v1/dead-letters/{dls[0]['id']}")
    assert status == 404
    status, body = await api.call("DELETE", "/v1/dead-letters")
    assert status == 400 and "say which" in body["error"]
    assert (await api.ok("DELETE", "/v1/dead-letters", params={"function": fn}))["deleted"] == 1


async def test_replay_every_dead_letter_of_a_trigger(api: Api, hub: Hub, unique: str) -> None:
    """More dead letters than a listing shows (1,000): one POST queues them all, they run and go."""
    fn, trig = f"fixed-{unique}", f"many-{unique}"
    await api.put_function(fn, FIXED, max_concurrency=8)
    await api.put_trigger(trig, fn, {"type": "kafka", "topic": f"many-{unique}"})
    now = dt.datetime.now(dt.timezone.utc)

    def letter(trigger: str, n: int) -> dict[str, Any]:
        event = Event(id=f"{trigger}:{n}", source="kafka://many/0", type="kafka.message", data={"n": n})
        return {"_id": dead_letter_id(trigger, event.id), "trigger": trigger, "function": fn,
                "event": event.to_cloudevent(), "attempts": [], "last_status": "failed", "created_at": now}

    await hub.store.db.dead_letters.insert_many([letter(trig, n) for n in range(1100)])
    await hub.store.db.dead_letters.insert_many([letter(f"gone-{unique}", n) for n in range(3)])
    status, body = await api.call("POST", "/v1/dead-letters/replay")
    assert status == 400 and "trigger" in body["error"]
    assert await api.ok("POST", "/v1/dead-letters/replay", params={"trigger": f"gone-{unique}"}) == {
        "queued": 0, "skipped": 3}
    assert await api.ok("POST", "/v1/dead-letters/replay", params={"trigger": trig}) == {"queued": 1100, "skipped": 0}

    async def all_gone() -> bool:
        return await hub.store.db.dead_letters.count_documents({"trigger": trig}) == 0

    await eventually(all_gone, timeout=180, interval=1.0)
    ran = await hub.store.db.invocations.count_documents({"trigger": trig, "status": "succeeded"})
    assert ran == 1100
