"""Bad input gets a clear 4xx, never a 5xx (issue 6, items 7-13), against a real hub.

Each test here failed before the fix it names: MongoDB names, colliding code paths, deep JSON,
code size, strict and bounded fields, the new batch/ordering fields, long URLs, 405s, the OpenAPI
document and stdlib logging.
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from hub.catalog import code as hubcode
from hub.catalog import registry as registry_module
from hub.app import Hub
from hub.spec.filters import MAX_PATTERN_DEPTH, PatternError, validate_pattern
from tests.hubfixtures import WEBHOOK_TOKEN, Api

ECHO = "def handler(event, context):\n    return event['data']\n"
JSON = {"Content-Type": "application/json"}


def _deep(levels: int, inner: str = "1") -> bytes:
    return ("[" * levels + inner + "]" * levels).encode()


def _fn(**over: Any) -> dict[str, Any]:
    return {"handler": "main.handler", "code": {"files": {"main.py": ECHO}}, **over}


def _zip(entries: dict[str, str]) -> str:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path, text in entries.items():
            zf.writestr(path, text)
    return base64.b64encode(buf.getvalue()).decode()


async def _expect(api: Api, method: str, path: str, status: int, message: str, body: Any = None,
                  **kw: Any) -> dict[str, Any]:
    got, reply = await api.call(method, path, body, **kw)
    assert got == status, (method, path, got, reply)
    assert isinstance(reply, dict) and message in reply["error"], (message, reply)
    return reply


# -- 7. MongoDB names -------------------------------------------------------------------------
@pytest.mark.integration
async def test_mongodb_source_names_follow_mongodb_rules(api: Api, unique: str) -> None:
    await api.put_function(f"fn-{unique}", ECHO)

    def trigger(database: str, collection: str, **source: Any) -> dict[str, Any]:
        return {"function": f"fn-{unique}",
                "source": {"type": "mongodb", "database": database, "collection": collection, **source}}

    bad: list[tuple[dict[str, Any], str]] = [
        (trigger("d\x00b", "c"), "source.mongodb.database"),
        (trigger("a.b", "c"), "cannot contain '.'"),
        (trigger("a/b", "c"), "cannot contain '/'"),
        (trigger("a b", "c"), "cannot contain ' '"),
        (trigger("a$", "c"), "cannot contain '$'"),
        (trigger("d" * 64, "c"), "at most 63"),
        (trigger("é" * 32, "c"), "64 bytes"),  # 32 characters, 64 bytes
        (trigger("local", "c"), "cannot watch"),
        (trigger("d", "system.views"), "system.*"),
        (trigger("d", "a$b"), "'$'"),
        (trigger("d", "c\x00"), "NUL"),
        (trigger("d", ""), "source.mongodb.collection"),
        (trigger("d" * 10, "c" * 250), "namespace"),
        # MongoDB internals used to come back as a 500 here
        (trigger("a.b", "c", full_document="required"), "cannot contain '.'"),
    ]
    for body, message in bad:
        await _expect(api, "PUT", f"/v1/triggers/bad-{unique}", 400, message, body)
    for database, collection in (("x\\ud800", "c"), ("d", "x\\udc80")):  # lone surrogates: not UTF-8
        raw = ('{"function": "fn-%s", "source": {"type": "mongodb", "database": "%s", "collection": "%s"}}'
               % (unique, database, collection))
        field = "database" if database != "d" else "collection"
        await _expect(api, "PUT", f"/v1/triggers/bad-{unique}", 400, f"source.mongodb.{field}",
                      data=raw.encode(), headers=JSON)
    status, _ = await api.call("GET", f"/v1/triggers/bad-{unique}")
    assert status == 404
    # the limits are bytes of "database.collection": this one is exactly 255
    ok = await api.put_trigger(f"ok-{unique}", f"fn-{unique}",
                               {"type": "mongodb", "database": "dé" + "d" * 60, "collection": "c" * 191})
    assert ok["source"]["database"].startswith("dé")
    await api.ok("DELETE", f"/v1/triggers/ok-{unique}")


# -- 8. colliding paths, no host paths ------------------------------------------------------------
@pytest.mark.integration
async def test_code_paths_that_collide_are_refused(api: Api, hub: Hub, unique: str) -> None:
    handler = "def handler(e, c):\n    return 1\n"
    cases: list[tuple[dict[str, Any], list[str]]] = [
        ({"files": {"main.py": handler, "x": "data", "x/y.py": "z = 1\n"}}, ["'x'", "'x/y.py'", "collide"]),
        ({"files": {"main.py": handler, "a/b": "1", "a/b/c/d.txt": "2"}}, ["'a/b'", "'a/b/c/d.txt'"]),
        ({"zip_base64": _zip({"main.py": handler, "x": "data", "x/y.py": "z = 1\n"})}, ["'x'", "'x/y.py'"]),
        ({"files": {"main.py": handler, "a/b.py": "1", "a//b.py": "2"}}, ["name the same file"]),
        ({"files": {"main.py": handler, "n" * 256 + ".py": "1"}}, ["longer than 255 bytes"]),
        ({"files": {"main.py": handler, "a/" * 600 + "b.py": "1"}}, ["longer than 1024 bytes"]),
    ]
    data_dir = str(hub.settings.data_dir.resolve())
    for code, messages in cases:
        reply = await _expect(api, "PUT", f"/v1/functions/col-{unique}", 400, "invalid code",
                              {"handler": "main.handler", "code": code})
        for message in messages:
            assert message in reply["error"], (message, reply)
        assert data_dir not in reply["error"] and "/tmp" not in reply["error"]
    status, _ = await api.call("GET", f"/v1/functions/col-{unique}")
    assert status == 404


def test_writing_code_fails_without_host_paths_or_leftovers(tmp_path: Path) -> None:
    """Versions stored before the PUT check (or a full disk) must not leak the data dir or leave
    ``.tmp-*`` directories behind at every invoke."""
    code_dir = tmp_path / "code" / "fn" / "v1"
    with pytest.raises(hubcode.CodeUnavailable) as info:
        hubcode.write_tree(code_dir, {"x": b"1", "x/y.py": b"2"})
    assert str(tmp_path) not in str(info.value) and "x/y.py" in str(info.value)
    assert not code_dir.exists() and list(code_dir.parent.iterdir()) == []
    hubcode.write_tree(code_dir, {"main.py": b"x = 1\n", "pkg/a.py": b""})
    assert (code_dir / "pkg" / "a.py").is_file()


@pytest.mark.integration
async def test_internal_errors_do_not_leak_details(api: Api, hub: Hub, monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(*_: Any, **__: Any) -> Any:
        raise OSError(2, "No such file or directory", "/srv/hub-data/secret/path")

    monkeypatch.setattr(hub.store, "list_functions", broken)
    status, reply = await api.call("GET", "/v1/functions")
    assert status == 500, reply
    assert "/srv" not in reply["error"] and "error id" in reply["error"]


# -- 9. deep JSON -------------------------------------------------------------------------------
@pytest.mark.integration
async def test_deeply_nested_json_is_a_400_on_every_endpoint_with_a_body(api: Api, unique: str) -> None:
    await api.put_function(f"echo-{unique}", ECHO)
    deep = _deep(100_000)
    webhook = {"Authorization": f"Bearer {WEBHOOK_TOKEN}", **JSON}
    for method, path, headers in [
        ("PUT", f"/v1/functions/deep-{unique}", JSON),
        ("PUT", f"/v1/triggers/deep-{unique}", JSON),
        ("POST", f"/v1/functions/echo-{unique}/invoke", JSON),
        ("POST", f"/v1/functions/echo-{unique}/invoke?mode=async", JSON),
        ("POST", "/v1/sources/s3/events", webhook),
    ]:
        await _expect(api, method, path, 400, "nested too deeply", data=deep, headers=headers)
    # an SNS envelope carries the S3 document as JSON inside a string
    sns = {"Type": "Notification", "Message": _deep(100_000).decode()}
    await _expect(api, "POST", "/v1/sources/s3/events", 400, "nested too deeply",
                  data=json.dumps(sns).encode(), headers=webhook)
    # the bound: 64 levels are queued (and stored: MongoDB allows 100), 65 are not
    await _expect(api, "POST", f"/v1/functions/echo-{unique}/invoke?mode=async", 400, "at most 64 levels",
                  data=_deep(65), headers=JSON)
    status, body = await api.call("POST", f"/v1/functions/echo-{unique}/invoke?mode=async",
                                  data=_deep(64), headers=JSON)
    assert status == 202, body
    out = await api.ok("POST", f"/v1/functions/echo-{unique}/invoke", data=_deep(64), headers=JSON)
    assert out["status"] == "succeeded", out


@pytest.mark.integration
async def test_filters_are_bounded_in_depth(api: Api, unique: str) -> None:
    pattern: dict[str, Any] = {"x": ["v"]}
    for _ in range(899):
        pattern = {"a": pattern}
    with pytest.raises(PatternError, match="nested too deeply"):
        validate_pattern(pattern)  # used to pass, then fail in MongoDB
    await api.put_function(f"fn-{unique}", ECHO)
    source = {"type": "kafka", "topic": f"t-{unique}"}
    await _expect(api, "PUT", f"/v1/triggers/f-{unique}", 400, "nested too deeply",
                  {"function": f"fn-{unique}", "source": source, "filter": pattern})
    pattern = {"x": ["v"]}
    for _ in range(MAX_PATTERN_DEPTH):  # one level over the bound, well inside the body's
        pattern = {"a": pattern}
    await _expect(api, "PUT", f"/v1/triggers/f-{unique}", 400, f"at most {MAX_PATTERN_DEPTH} levels",
                  {"function": f"fn-{unique}", "source": source, "filter": pattern})


@pytest.mark.integration
async def test_bodies_are_bounded_in_size(api: Api, unique: str) -> None:
    big = {"function": "f", "source": {"type": "kafka", "topic": "t"}, "description": "x" * 300_000}
    await _expect(api, "PUT", f"/v1/triggers/big-{unique}", 413, "larger than", big)
    await _expect(api, "POST", "/v1/sources/s3/events", 413, "larger than", data=b" " * (1024 * 1024 + 1),
                  headers={"Authorization": f"Bearer {WEBHOOK_TOKEN}"})


# -- 10. code size --------------------------------------------------------------------------------
@pytest.mark.integration
async def test_big_code_is_refused_fast(api: Api, unique: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # before: the checker compiled this for ~5-21 s of CPU before answering 400. Fast means the
    # sizes are judged first: the code checker (a compiler in a child process) never starts.
    checked: list[str] = []
    real_check = registry_module.check_code

    async def counting_check(files: dict[str, bytes], handler: str) -> None:
        checked.append(handler)
        await real_check(files, handler)

    monkeypatch.setattr(registry_module, "check_code", counting_check)
    big = "x = [" + "1," * 3_500_000 + "]\n\ndef handler(e, c):\n    return len(x)\n"
    await _expect(api, "PUT", f"/v1/functions/big-{unique}", 413, "at most 1048576 bytes",
                  _fn(code={"files": {"main.py": big}}))
    part = "y = [" + "1," * 450_000 + "]\n"  # 0.9 MB each: fine alone, too much together
    files = {"main.py": ECHO, **{f"m{i}.py": part for i in range(5)}}
    await _expect(api, "PUT", f"/v1/functions/big-{unique}", 413, ".py files hold more than",
                  _fn(code={"files": files}))
    # a zip is judged by its declared sizes before anything is inflated
    await _expect(api, "PUT", f"/v1/functions/big-{unique}", 413, "at most 1048576 bytes",
                  _fn(code={"zip_base64": _zip({"main.py": big})}))
    assert checked == [], "the code checker ran on code refused for its size"
    await api.ok("PUT", f"/v1/functions/big-{unique}", _fn())  # a fair one is checked
    assert checked == ["main.handler"]


# -- 11. strict, bounded fields -------------------------------------------------------------------
@pytest.mark.integration
async def test_fields_are_strict_and_bounded(api: Api, unique: str) -> None:
    await api.put_function(f"fn-{unique}", ECHO)
    kafka = {"type": "kafka", "topic": f"t-{unique}"}

    def trig(**over: Any) -> dict[str, Any]:
        return {"function": f"fn-{unique}", "source": kafka, **over}

    fn_cases: list[tuple[dict[str, Any], str]] = [
        (_fn(description="d" * 257), "description"),
        (_fn(timeout_s=5e-324), "timeout_s"),
        (_fn(timeout_s=0.05), "greater than or equal to 0.1"),
        (_fn(memory_mb=True), "memory_mb"),
        (_fn(memory_mb="128"), "memory_mb"),
        (_fn(memory_mb=128.0), "memory_mb"),
        (_fn(network="yes"), "network"),
        (_fn(handler="main." + "h" * 200), "handler"),
        (_fn(env={"A": "v" * 5000}), "env"),
    ]
    for body, field in fn_cases:
        await _expect(api, "PUT", f"/v1/functions/b-{unique}", 400, field, body)
    await _expect(api, "PUT", f"/v1/functions/b-{unique}", 413, "larger than",
                  _fn(description="d" * (17 * 1024 * 1024)))
    trigger_cases: list[tuple[dict[str, Any], str]] = [
        (trig(retry={"max_attempts": True}), "retry.max_attempts"),
        (trig(retry={"max_attempts": "3"}), "retry.max_attempts"),
        (trig(retry={"backoff_s": 10, "max_backoff_s": 5}), "smaller than backoff_s"),
        (trig(retry={"max_event_age_s": 1e-300}), "retry.max_event_age_s"),
        (trig(enabled=1), "enabled"),
        (trig(description="d" * 257), "description"),
        (trig(source={"type": "s3", "bucket": "abc", "prefix": "p" * 1025}), "prefix"),
        (trig(source={"type": "s3", "bucket": "abc", "suffix": "é" * 600}), "1024 bytes"),
        (trig(source={"type": "s3", "bucket": "abc", "events": ["s3:ObjectCreated:*"] * 33}), "events"),
    ]
    for body, field in trigger_cases:
        await _expect(api, "PUT", f"/v1/triggers/b-{unique}", 400, field, body)
    for constant in (b"Infinity", b"-Infinity", b"NaN"):
        raw = b'{"handler": "main.handler", "code": {"files": {"main.py": "x = 1"}}, "timeout_s": ' + constant + b"}"
        await _expect(api, "PUT", f"/v1/functions/b-{unique}", 400, "not valid JSON", data=raw, headers=JSON)
    # a larger backoff_s without max_backoff_s raises the cap instead of failing
    doc = await api.put_trigger(f"b-{unique}", f"fn-{unique}", kafka, retry={"backoff_s": 120})
    assert doc["retry"]["max_backoff_s"] == 120
    await api.ok("DELETE", f"/v1/triggers/b-{unique}")


@pytest.mark.integration
async def test_batch_ordering_and_bisect_fields(api: Api, unique: str) -> None:
    await api.put_function(f"fn-{unique}", ECHO)
    kafka = {"type": "kafka", "topic": f"t-{unique}"}
    s3 = {"type": "s3", "bucket": f"no-such-{unique}"}
    mongo = {"type": "mongodb", "database": f"db_{unique}", "collection": "c"}
    bad: list[tuple[dict[str, Any], str]] = [
        ({"source": kafka, "batch": 10}, "batch"),
        ({"source": kafka, "batch": {"size": 0}}, "batch.size"),
        ({"source": kafka, "batch": {"size": 10_001}}, "batch.size"),
        ({"source": kafka, "batch": {"size": "5"}}, "batch.size"),
        ({"source": kafka, "batch": {"window_ms": 300_001}}, "batch.window_ms"),
        ({"source": kafka, "batch": {"size": 2, "extra": 1}}, "batch.extra"),
        ({"source": kafka, "ordering": "random"}, "ordering"),
        ({"source": s3, "ordering": "key"}, "only for kafka"),
        ({"source": mongo, "ordering": "key"}, "only for kafka"),
        ({"source": kafka, "retry": {"bisect_on_error": "yes"}}, "retry.bisect_on_error"),
    ]
    for body, message in bad:
        await _expect(api, "PUT", f"/v1/triggers/b-{unique}", 400, message, {"function": f"fn-{unique}", **body})
    plain = await api.put_trigger(f"p-{unique}", f"fn-{unique}", kafka)
    assert plain["batch"] == {"size": 1, "window_ms": 0}
    assert plain["ordering"] == "partition" and plain["retry"]["bisect_on_error"] is False
    keyed = await api.put_trigger(f"k-{unique}", f"fn-{unique}", kafka, ordering="key",
                                  batch={"size": 100, "window_ms": 250}, retry={"bisect_on_error": True})
    assert keyed["batch"] == {"size": 100, "window_ms": 250} and keyed["ordering"] == "key"
    assert keyed["retry"]["bisect_on_error"] is True
    for name in (f"p-{unique}", f"k-{unique}"):
        await api.ok("DELETE", f"/v1/triggers/{name}")


# -- 12. URLs, 405, the OpenAPI document ----------------------------------------------------------
@pytest.mark.integration
async def test_long_urls_get_a_json_414(api: Api) -> None:
    for size in (9_000, 60_000):
        async with api.session.get(api.base + "/v1/functions?x=" + "a" * size, headers=api.headers) as r:
            assert r.status == 414 and r.content_type == "application/json", (size, r.status)
            assert "longer than 8192 bytes" in (await r.json())["error"]
    async with api.session.get(api.base + "/v1/functions/" + "a" * 9_000) as r:
        assert r.status == 414 and r.content_type == "application/json"


@pytest.mark.integration
async def test_405_keeps_the_allow_header(api: Api) -> None:
    async with api.session.patch(api.base + "/v1/functions/x", headers=api.headers) as r:
        assert r.status == 405 and r.content_type == "application/json"
        assert {"GET", "PUT", "DELETE"} <= {m.strip() for m in r.headers["Allow"].split(",")}
        assert (await r.json())["error"] == "Method Not Allowed"


@pytest.mark.integration
async def test_openapi_documents_codes_schemas_and_bounds(api: Api) -> None:
    spec = await api.ok("GET", "/v1/openapi.json")
    paths, schemas = spec["paths"], spec["components"]["schemas"]
    put_fn = paths["/v1/functions/{name}"]["put"]["responses"]
    assert {"200", "201", "400", "401", "413", "414", "503"} <= set(put_fn)
    # function URLs: every answer the hub (not the function) gives on the fn port
    fn_post = paths["/fn/{path}"]["post"]["responses"]
    assert {"401", "403", "404", "405", "408", "413", "414", "417", "429", "500", "502", "503", "504"} <= set(fn_post)
    assert put_fn["201"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Function"}
    assert {"200", "202", "404"} <= set(paths["/v1/functions/{name}/invoke"]["post"]["responses"])
    assert "202" in paths["/v1/dead-letters/{id}/replay"]["post"]["responses"]
    assert "503" in paths["/readyz"]["get"]["responses"]
    name = paths["/v1/functions/{name}"]["parameters"][0]["schema"]
    assert name["pattern"].startswith("^[A-Za-z0-9]") and name["maxLength"] == 63
    params = {p["name"]: p["schema"] for p in paths["/v1/invocations"]["parameters"]}
    assert params["limit"] == {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}
    assert {"event_id", "request_id", "function", "trigger", "status"} <= set(params)
    mode = paths["/v1/functions/{name}/invoke"]["parameters"][1]["schema"]
    assert mode["enum"] == ["sync", "async"]
    assert schemas["FunctionSpec"]["properties"]["description"]["maxLength"] == 256
    assert schemas["FunctionSpec"]["properties"]["timeout_s"]["minimum"] == 0.1
    assert schemas["S3Source"]["properties"]["prefix"]["maxLength"] == 1024
    assert schemas["BatchSpec"]["properties"]["size"]["maximum"] == 10000
    assert schemas["TriggerSpec"]["properties"]["ordering"]["enum"] == ["partition", "key"]
    assert "bisect_on_error" in schemas["RetryPolicy"]["properties"]
    for model in ("Function", "Trigger", "Invocation", "DeadLetter", "Error", "InvocationList"):
        assert model in schemas


# -- 13. stdlib logging through structlog ---------------------------------------------------------
def test_library_logs_are_structured_and_kafka_noise_is_one_warning() -> None:
    script = """
import logging, structlog
from hub import logs
logs.configure("json", "info")
structlog.get_logger("hub.test").info("ours", n=1)
group = logging.getLogger("aiokafka.consumer.group_coordinator")
for _ in range(72):
    group.warning("Heartbeat failed: local member_id was not recognized; resetting and re-joining group")
    group.error("OffsetCommit failed for group %s due to group error (%s), will rejoin", "g", "UnknownMemberIdError")
logging.getLogger("pymongo.serverSelection").warning("waiting for %s", "rs0")
logging.getLogger("aiokafka").info("chatter that stays out")
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    lines = [json.loads(line) for line in out.stderr.splitlines() if line.strip()]
    assert [(x["logger"], x["level"]) for x in lines] == [
        ("hub.test", "info"),
        ("aiokafka.consumer.group_coordinator", "warning"),
        ("pymongo.serverSelection", "warning"),
    ], out.stderr
    assert lines[0]["n"] == 1 and lines[2]["event"] == "waiting for rs0" and "timestamp" in lines[2]
    assert "member_id was not recognized" in lines[1]["detail"]
