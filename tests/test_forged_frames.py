"""A function that writes a forged result frame to its worker's protocol socket must never get a
``succeeded`` invocation record holding the forged result, through the whole hub (API, dispatch,
records) in the real sandbox. The pool-level cases are in test_hostile.py."""

from __future__ import annotations

import pytest

from tests.hubfixtures import Api

pytestmark = pytest.mark.integration

CODE = """
import os, time, __main__

def handler(event, context):
    data = event.get("data") or {}
    if data.get("forge"):
        body = b'{"op":"result","ok":true,"result":"FORGED"}'
        os.write(__main__._fd, len(body).to_bytes(4, "big") + body)
    time.sleep(data.get("work_s", 0))  # the real work goes on after the forged answer
    return data["tag"]
"""


async def test_a_forged_frame_never_becomes_a_succeeded_record(api: Api, unique: str) -> None:
    fn = f"forge-{unique}"
    await api.put_function(fn, CODE, timeout_s=10)
    await api.ok("POST", f"/v1/functions/{fn}/invoke", {"forge": True, "work_s": 0.5, "tag": "real"})
    await api.ok("POST", f"/v1/functions/{fn}/invoke?mode=async", {"forge": True, "work_s": 0.5, "tag": "real"})
    records = await api.wait_invocations(2, function=fn)
    for record in records:
        assert not (record["status"] == "succeeded" and record["result"] == "FORGED"), record
        if record["status"] == "succeeded":
            assert record["result"] == "real" and record["billed_ms"] >= 500, record

    # and the worker never answers a later invocation with an earlier one's result
    await api.ok("POST", f"/v1/functions/{fn}/invoke", {"forge": True, "work_s": 0.5, "tag": "one"})
    for tag in ("two", "three"):
        out = await api.ok("POST", f"/v1/functions/{fn}/invoke", {"tag": tag})
        assert out["status"] != "succeeded" or out["result"] == tag, (tag, out)
