"""``event_format: "aws"`` end to end on the real servers: the event, the Lambda context and
environment, Lambda's partial batch responses and error documents (no third-party code here;
tests/test_aws_thirdparty.py runs Powertools, Mangum, boto3 and the aws CLI)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from tests.hubfixtures import Api, eventually
from tests.test_batches import _produce
from tests.test_kafka_connector import create_topic

pytestmark = pytest.mark.integration

CONTEXT = """
import os

def handler(event, context):
    if isinstance(event, dict) and event.get("boom"):
        raise ValueError("boom: " + str(event["boom"]))
    return {
        "event": event,
        "ctx": {k: getattr(context, k) for k in (
            "function_name", "function_version", "invoked_function_arn", "memory_limit_in_mb",
            "aws_request_id", "log_group_name", "log_stream_name", "client_context")},
        "identity": [context.identity.cognito_identity_id, context.identity.cognito_identity_pool_id],
        "remaining": context.get_remaining_time_in_millis(),
        "env": {k: os.environ.get(k) for k in (
            "AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_FUNCTION_VERSION", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
            "AWS_REGION", "_HANDLER", "LAMBDA_TASK_ROOT", "AWS_LAMBDA_LOG_STREAM_NAME")},
    }
"""


async def test_invoke_hands_the_body_and_a_lambda_context(api: Api, unique: str) -> None:
    name = f"ctx-{unique}"
    fn = await api.put_function(name, CONTEXT, memory_mb=128, timeout_s=20, event_format="aws")
    assert fn["event_format"] == "aws"
    await api.ok("PUT", f"/v1/functions/{name}/aliases/live", {"version": fn["version"]})
    out = await api.ok("POST", f"/v1/functions/{name}/invoke", {"order": 7}, params={"alias": "live"})
    assert out["status"] == "succeeded", out
    res = out["result"]
    assert res["event"] == {"order": 7}  # the body itself, no envelope
    ctx = res["ctx"]
    assert ctx["function_name"] == name and ctx["function_version"] == fn["version"]
    assert ctx["invoked_function_arn"] == f"arn:aws:lambda:us-east-1:000000000000:function:{name}:live"
    assert ctx["memory_limit_in_mb"] == "128"  # a string, as Lambda's Python runtime has it
    assert ctx["aws_request_id"] == out["invocation_id"]
    assert ctx["log_group_name"] == f"/aws/lambda/{name}"
    assert ctx["log_stream_name"].endswith("]" + ctx["log_stream_name"].split("]")[-1])
    assert f"[{fn['version']}]" in ctx["log_stream_name"] and ctx["client_context"] is None
    assert res["identity"] == [None, None]
    assert 0 < res["remaining"] <= 20_000
    env = res["env"]
    assert env["AWS_LAMBDA_FUNCTION_NAME"] == name and env["AWS_LAMBDA_FUNCTION_VERSION"] == fn["version"]
    assert env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "128" and env["AWS_REGION"] == "us-east-1"
    assert env["_HANDLER"] == "main.handler" and env["LAMBDA_TASK_ROOT"]
    assert env["AWS_LAMBDA_LOG_STREAM_NAME"] == ctx["log_stream_name"]
    # the record keeps what the handler got
    rec = await api.ok("GET", f"/v1/invocations/{out['invocation_id']}")
    assert rec["event_format"] == "aws" and rec["aws_event"] == {"order": 7}


async def test_unhandled_error_is_lambdas_error_document(api: Api, unique: str) -> None:
    name = f"err-{unique}"
    await api.put_function(name, CONTEXT, event_format="aws")
    out = await api.ok("POST", f"/v1/functions/{name}/invoke", {"boom": 1})
    assert out["status"] == "failed"
    err = out["error"]
    assert err["errorType"] == "ValueError" and err["errorMessage"] == "boom: 1"
    assert err["type"] == "ValueError" and err["message"] == "boom: 1"  # the hub's fields stay
    assert any("main.py" in line and "in handler" in line for line in err["stackTrace"]), err


async def test_cloudevents_stays_the_default(api: Api, unique: str) -> None:
    name = f"ce-{unique}"
    fn = await api.put_function(name, "def handler(event, context):\n    return event\n")
    assert fn["event_format"] == "cloudevents"
    out = await api.ok("POST", f"/v1/functions/{name}/invoke", {"a": 1})
    assert out["result"]["specversion"] == "1.0" and out["result"]["data"] == {"a": 1}
    assert "aws_event" not in await api.ok("GET", f"/v1/invocations/{out['invocation_id']}")


KAFKA_PARTIAL = """
import base64, json

def handler(event, context):
    assert event["eventSource"] == "SelfManagedKafka"
    failures, seen = [], []
    for tp, records in event["records"].items():
        for r in records:
            value = json.loads(base64.b64decode(r["value"]))
            seen.append(value["n"])
            if value.get("poison"):
                failures.append({"itemIdentifier": {"partition": tp, "offset": r["offset"]}})
    return {"batchItemFailures": failures, "seen": seen}
"""


async def test_kafka_partial_batch_in_lambdas_form(api: Api, servers: dict[str, Any], unique: str) -> None:
    topic = f"awsk-{unique}"
    await create_topic(servers["kafka"].bootstrap, topic, 1)
    await api.put_function(f"k-{unique}", KAFKA_PARTIAL, event_format="aws")
    await api.put_trigger(f"k-{unique}", f"k-{unique}", {"type": "kafka", "topic": topic},
                          batch={"size": 10, "window_ms": 500},
                          retry={"max_attempts": 2, "backoff_s": 0.05, "max_backoff_s": 0.1})
    await _produce(servers["kafka"].bootstrap, topic, [(0, b"k", {"n": n, "poison": n == 2}) for n in range(5)])

    async def dead() -> list[dict[str, Any]] | None:
        dls = (await api.ok("GET", "/v1/dead-letters", params={"trigger": f"k-{unique}"}))["dead_letters"]
        invs = await api.invocations(trigger=f"k-{unique}")
        return dls if dls and any(i["status"] == "succeeded" for i in invs) else None

    dls = await eventually(dead)
    assert [d["event"]["data"]["value"]["n"] for d in dls] == [2]
    # in the order they were made: one hub's invocation ids count up (started_at is
    # finished_at less the duration, in ms: two quick runs in a row can tie or cross)
    invs = sorted(await api.invocations(trigger=f"k-{unique}"), key=lambda i: i["invocation_id"])
    # 0-1 finished first; 2 (poison) and what followed came again; then 3-4 alone
    assert [i["result"]["seen"] for i in invs] == [[0, 1, 2, 3, 4], [2, 3, 4], [3, 4]]
    assert [i["status"] for i in invs] == ["partial", "partial", "succeeded"]
    first = await api.ok("GET", f"/v1/invocations/{invs[0]['invocation_id']}")
    handed = first["aws_event"]
    assert handed["eventSource"] == "SelfManagedKafka" and list(handed["records"]) == [f"{topic}-0"]
    recs = handed["records"][f"{topic}-0"]
    assert [json.loads(base64.b64decode(r["value"]))["n"] for r in recs] == [0, 1, 2, 3, 4]
    assert base64.b64decode(recs[0]["key"]) == b"k" and recs[0]["timestampType"] == "CREATE_TIME"
    assert first["event_ids"][0].startswith("kafka:")  # the hub's ids, as always
