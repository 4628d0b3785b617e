"""The HTTP API against a real hub (real MongoDB, real sandbox): auth, validation, CRUD, invoke."""

from __future__ import annotations

import asyncio
import base64
import io
import zipfile
from typing import Any

import pytest

from tests.hubfixtures import Api, eventually

pytestmark = pytest.mark.integration

ECHO = "def handler(event, context):\n    return {'data': event['data'], 'fn': context.function_name}\n"


async def test_admin_calls_need_the_token(api: Api) -> None:
    for token in (None, "wrong"):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with api.session.get(api.base + "/v1/functions", headers=headers) as r:
            assert r.status == 401
            assert "API token" in (await r.json())["error"]
    async with api.session.get(api.base + "/healthz") as r:
        assert r.status == 200


async def test_function_versions_are_immutable_and_idempotent(api: Api, unique: str) -> None:
    name = f"fn-{unique}"
    first = await api.put_function(name, ECHO)
    assert first["new_version"] is True
    again = await api.put_function(name, ECHO)
    assert again["version"] == first["version"] and again["new_version"] is False
    changed = await api.put_function(name, ECHO.replace("'fn'", "'name'"))
    assert changed["version"] != first["version"]
    body = await api.ok("GET", f"/v1/functions/{name}")
    assert [v["version"] for v in body["versions"]] == [changed["version"], first["version"]]
    listed = await api.ok("GET", "/v1/functions")
    assert name in [f["name"] for f in listed["functions"]]


async def test_sync_invoke_returns_result_and_error(api: Api, unique: str) -> None:
    await api.put_function(f"echo-{unique}", ECHO)
    out = await api.ok("POST", f"/v1/functions/echo-{unique}/invoke", {"x": 1})
    assert out["status"] == "succeeded"
    assert out["result"] == {"data": {"x": 1}, "fn": f"echo-{unique}"}
    assert out["duration_ms"] > 0 and out["billed_ms"] >= 1
    await api.put_function(f"boom-{unique}", "def handler(event, context):\n    raise ValueError('no good')\n")
    out = await api.ok("POST", f"/v1/functions/boom-{unique}/invoke", {})
    assert out["status"] == "failed"
    assert out["error"]["type"] == "ValueError" and "no good" in out["error"]["message"]
    assert "Traceback" in out["error"]["traceback"]
    record = await api.ok("GET", f"/v1/invocations/{out['invocation_id']}")
    assert record["status"] == "failed" and record["function"] == f"boom-{unique}"


async def test_async_invoke_is_queued_then_runs(api: Api, unique: str) -> None:
    await api.put_function(f"echo-{unique}", ECHO)
    status, body = await api.call("POST", f"/v1/functions/echo-{unique}/invoke?mode=async", {"n": 7})
    assert status == 202
    inv_id = body["invocation_id"]

    async def done() -> Any:
        rec = await api.ok("GET", f"/v1/invocations/{inv_id}")
        return rec if rec["status"] == "succeeded" else None

    rec = await eventually(done)
    assert rec["result"]["data"] == {"n": 7}


async def test_zip_code(api: Api, unique: str) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("pkg/__init__.py", "")
        zf.writestr("pkg/util.py", "def double(x):\n    return 2 * x\n")
        zf.writestr("app.py", "from pkg.util import double\n\ndef run(event, context):\n    return double(event['data'])\n")
    body = {"handler": "app.run", "code": {"zip_base64": base64.b64encode(buf.getvalue()).decode()}}
    await api.ok("PUT", f"/v1/functions/zip-{unique}", body)
    out = await api.ok("POST", f"/v1/functions/zip-{unique}/invoke", 21)
    assert out["result"] == 42, out


async def test_function_validation_errors(api: Api, unique: str) -> None:
    cases: list[tuple[Any, str]] = [
        ({"handler": "main.handler", "code": {"files": {"main.py": "def handler(e, c):\n  return (\n"}}},
         "syntax error in main.py, line"),
        ({"handler": "main.handler", "code": {"files": {"main.py": "def other(e, c): pass\n"}}},
         "defines no top-level 'handler'"),
        ({"handler": "nope.handler", "code": {"files": {"main.py": "def handler(e, c): pass\n"}}},
         "no file nope.py"),
        ({"handler": "main.handler", "code": {"zip_base64": "!!!"}}, "not valid base64"),
        ({"handler": "main.handler", "code": {"zip_base64": base64.b64encode(b"not a zip").decode()}},
         "not a zip file"),
        ({"handler": "main.handler", "code": {"files": {"../evil.py": "x = 1\n"}}}, "bad file path"),
        ({"handler": "main.handler"}, "code: Field required"),
        ({"handler": "main.handler", "code": {"files": {"main.py": "x=1"}}, "memory_mb": 1}, "memory_mb"),
        ({"handler": "main.handler", "code": {"files": {"main.py": "x=1"}}, "bogus": 1}, "bogus"),
        # NUL would split the sandbox's NUL-separated arguments: never accepted
        ({"handler": "main.handler", "code": {"files": {"main.py": "x=1"}},
          "env": {"X": "a\x00--ro-bind\x00/\x00/tmp"}}, "cannot contain NUL"),
        ({"handler": "main.handler", "code": {"files": {"main.py": "x=1"}}, "env": {"X\n": "a"}},
         "not a valid variable name"),
    ]
    for body, message in cases:
        status, reply = await api.call("PUT", f"/v1/functions/bad-{unique}", body)
        assert status == 400, (body, reply)
        assert message in reply["error"], (message, reply)
    status, reply = await api.call("PUT", f"/v1/functions/bad-{unique}", data=b"{not json",
                                   headers={"Content-Type": "application/json"})
    assert status == 400 and "not valid JSON" in reply["error"]
    status, reply = await api.call("PUT", "/v1/functions/bad name!", {"handler": "main.handler"})
    assert status == 400 and "bad name" in reply["error"]
    # nothing half-written
    status, _ = await api.call("GET", f"/v1/functions/bad-{unique}")
    assert status == 404


async def test_trigger_validation_errors(api: Api, unique: str) -> None:
    await api.put_function(f"fn-{unique}", ECHO)
    cases: list[tuple[Any, int, str]] = [
        ({"function": "missing-fn", "source": {"type": "kafka", "topic": "t"}}, 400, "unknown function"),
        ({"function": f"fn-{unique}", "source": {"type": "ftp"}}, 400, "'ftp' is not a source type; the types are s3"),
        ({"function": f"fn-{unique}", "source": {"type": "kafka"}}, 400, "source.kafka.topic"),
        ({"function": f"fn-{unique}", "source": {"type": "kafka", "topic": "t"}, "filter": {"data": "x"}},
         400, "filter"),
        ({"function": f"fn-{unique}", "source": {"type": "s3", "bucket": f"no-such-bucket-{unique}"}},
         400, "does not exist"),
        ({"function": f"fn-{unique}", "source": {"type": "mongodb", "database": "d", "collection": "c",
                                                 "operations": ["upsert"]}}, 400, "operations"),
    ]
    for body, code, message in cases:
        status, reply = await api.call("PUT", f"/v1/triggers/bad-{unique}", body)
        assert status == code, (body, reply)
        assert message in reply["error"], (message, reply)
    status, _ = await api.call("GET", f"/v1/triggers/bad-{unique}")
    assert status == 404


async def test_function_in_use_cannot_be_deleted(api: Api, unique: str) -> None:
    await api.put_function(f"fn-{unique}", ECHO)
    await api.put_trigger(f"t-{unique}", f"fn-{unique}", {"type": "kafka", "topic": f"topic-{unique}"})
    status, reply = await api.call("DELETE", f"/v1/functions/fn-{unique}")
    assert status == 409 and f"t-{unique}" in reply["error"]
    await api.ok("DELETE", f"/v1/triggers/t-{unique}")
    await api.ok("DELETE", f"/v1/functions/fn-{unique}")
    status, _ = await api.call("GET", f"/v1/functions/fn-{unique}")
    assert status == 404
    status, _ = await api.call("DELETE", f"/v1/triggers/t-{unique}")
    assert status == 404


async def test_health_metrics_openapi(api: Api) -> None:
    ready = await api.ok("GET", "/readyz")
    assert ready["checks"]["mongodb"] == "ok"
    assert ready["sandbox"]["isolation"] == "bwrap"  # the fixtures ask for it: never a silent fallback
    async with api.session.get(api.base + "/metrics", headers=api.headers) as r:  # a read token at least
        assert r.status == 200
        assert "hub_invocations_total" in await r.text()
    spec = await api.ok("GET", "/v1/openapi.json")
    assert "/v1/triggers/{name}" in spec["paths"] and "FunctionSpec" in spec["components"]["schemas"]


def _encrypted_zip() -> bytes:
    """A zip whose member claims to be encrypted (stdlib cannot write real ZipCrypto)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("main.py", "def handler(e, c):\n    return 1\n")
    data = bytearray(buf.getvalue())
    for sig, flag_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        pos = data.find(sig)
        data[pos + flag_at] |= 1
    return bytes(data)


async def test_input_that_cannot_be_stored_is_a_clear_4xx(api: Api, unique: str) -> None:
    status, reply = await api.call("PUT", f"/v1/functions/enc-{unique}", {
        "handler": "main.handler", "code": {"zip_base64": base64.b64encode(_encrypted_zip()).decode()}})
    assert status == 400 and "cannot be unpacked" in reply["error"], reply
    surrogate = b'{"handler": "main.handler", "code": {"files": {"main.py": "x = \'\\ud800\'\\ndef handler(e, c): pass\\n"}}}'
    status, reply = await api.call("PUT", f"/v1/functions/sur-{unique}", data=surrogate,
                                   headers={"Content-Type": "application/json"})
    assert status == 400 and "not valid unicode" in reply["error"], reply

    await api.put_function(f"echo-{unique}", ECHO)
    status, reply = await api.call("POST", f"/v1/functions/echo-{unique}/invoke?mode=async",
                                   data=b'{"n": 123456789012345678901234567890}')
    assert status == 400 and "cannot be queued" in reply["error"], reply
    status, reply = await api.call("POST", f"/v1/functions/echo-{unique}/invoke?mode=async",
                                   data=b'"' + b"x" * (2 * 1024 * 1024) + b'"')
    assert status == 413, reply


async def test_result_mongodb_cannot_hold_is_recorded_as_text(api: Api, unique: str) -> None:
    await api.put_function(f"big-{unique}", "def handler(e, c):\n    return {'id': 2 ** 70}\n")
    out = await api.ok("POST", f"/v1/functions/big-{unique}/invoke", {})
    assert out["status"] == "succeeded"
    record = await api.ok("GET", f"/v1/invocations/{out['invocation_id']}")
    assert record["result"] == {"id": str(2**70)}


async def test_huge_code_is_checked_without_stalling_the_hub(api: Api, unique: str) -> None:
    # the largest .py file allowed (1 MB), in the shape that is slowest to compile
    big = "x = [" + "1," * 520_000 + "]\n\ndef handler(e, c):\n    return len(x)\n"
    task = asyncio.create_task(api.call("PUT", f"/v1/functions/huge-{unique}",
                                        {"handler": "main.handler", "code": {"files": {"main.py": big}}}))
    # while the code is being compiled, the hub still answers
    while not task.done():
        async with api.session.get(api.base + "/healthz") as r:
            assert r.status == 200
        await asyncio.sleep(0.05)
    status, reply = await task
    assert status == 201, reply


async def test_full_document_required_needs_post_images(api: Api, unique: str) -> None:
    await api.put_function(f"fn-{unique}", ECHO)
    status, reply = await api.call("PUT", f"/v1/triggers/req-{unique}", {
        "function": f"fn-{unique}",
        "source": {"type": "mongodb", "database": f"db_{unique}", "collection": "c", "full_document": "required"}})
    assert status == 400 and "changeStreamPreAndPostImages" in reply["error"]
