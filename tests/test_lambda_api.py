"""The Lambda API against a real hub, called by code nobody here wrote: unmodified boto3 (``invoke``
in every invocation type, Tail logs, qualifiers, a function error, ``get_function``,
``list_functions``) and the aws CLI's ``lambda invoke``, with access key pairs the hub issued.

And the hostile side of Signature V4: a wrong secret, an unknown key, a revoked key on a second
instance, a request replayed outside the 15-minute window, a signature over another body or
another path, a key of one hub on another, unsigned or repeated ``X-Amz-*`` headers, header
injection, bearer tokens where a signature is needed and the other way round.

boto3 is synchronous and the hub serves on the test's event loop: every boto3 call runs in a
thread (``asyncio.to_thread``)."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from unittest import mock

import aiohttp
import boto3
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from hub.app import Hub
from hub.web.openapi import openapi_spec
from tests.hubfixtures import API_TOKEN, Api, eventually, make_settings

pytestmark = pytest.mark.integration

REGION = "us-east-1"  # HUB_AWS_REGION's default
ECHO = """
import sys

def handler(event, context):
    print("hello from", context.function_name)
    print("to stderr", file=sys.stderr)
    if isinstance(event, dict) and event.get("boom"):
        raise ValueError("boom: %s" % event["boom"])
    return {"event": event, "version": context.function_version, "arn": context.invoked_function_arn,
            "tag": TAG}
"""


def _code(tag: str) -> str:
    return ECHO + f"\nTAG = {tag!r}\n"


def lambda_client(url: str, key: dict[str, str], region: str = REGION) -> Any:
    # no retries: a refusal must be seen as it is, not after botocore's back-off
    return boto3.client("lambda", endpoint_url=url, region_name=region, aws_access_key_id=key["access_key_id"],
                        aws_secret_access_key=key["secret_access_key"], config=Config(retries={"max_attempts": 1}))


@pytest.fixture(scope="module")
async def key(api: Api) -> dict[str, str]:
    made = await api.ok("POST", "/v1/access-keys", {"name": f"lam-{uuid.uuid4().hex[:6]}"})
    return dict(made)


@pytest.fixture(scope="module")
async def aws_fn(api: Api) -> str:
    name = f"lam-{uuid.uuid4().hex[:6]}"
    await api.put_function(name, _code("one"), event_format="aws")
    return name


def _code_of(exc: ClientError) -> str:
    return str(exc.response["Error"]["Code"])


async def _refused(call: Any) -> ClientError:
    with pytest.raises(ClientError) as caught:
        await asyncio.to_thread(call)
    return caught.value


# -- boto3, as users call it --------------------------------------------------------------
async def test_invoke_request_response_and_tail(hub: Hub, api: Api, key: dict[str, str], aws_fn: str) -> None:
    client = lambda_client(hub.url, key)
    out = await asyncio.to_thread(client.invoke, FunctionName=aws_fn, Payload=json.dumps({"order": 7}),
                                  LogType="Tail")
    assert out["StatusCode"] == 200 and "FunctionError" not in out
    got = json.loads(out["Payload"].read())
    head = await api.ok("GET", f"/v1/functions/{aws_fn}")
    assert got["event"] == {"order": 7}  # event_format aws: the payload itself
    assert got["arn"] == f"arn:aws:lambda:{REGION}:000000000000:function:{aws_fn}"
    assert out["ExecutedVersion"] == head["version"] == got["version"]
    logs = base64.b64decode(out["LogResult"]).decode()
    assert f"hello from {aws_fn}" in logs and "to stderr" in logs
    assert out["ResponseMetadata"]["RequestId"]
    # no payload: Lambda hands {}
    bare = await asyncio.to_thread(client.invoke, FunctionName=aws_fn)
    assert json.loads(bare["Payload"].read())["event"] == {} and "LogResult" not in bare


async def test_log_tail_is_the_last_4_kb(hub: Hub, api: Api, key: dict[str, str], unique: str) -> None:
    name = f"loud-{unique}"
    await api.put_function(name, "def handler(event, context):\n    print('x' * 10000)\n    print('THE END')\n",
                           event_format="aws")
    out = await asyncio.to_thread(lambda_client(hub.url, key).invoke, FunctionName=name, LogType="Tail")
    logs = base64.b64decode(out["LogResult"])
    assert len(logs) == 4096 and logs.endswith(b"THE END\n")
    assert json.loads(out["Payload"].read()) is None  # the handler returned None: "null", as Lambda


async def test_cloudevents_function_gets_its_envelope(hub: Hub, api: Api, key: dict[str, str], unique: str) -> None:
    name = f"ce-{unique}"
    await api.put_function(name, "def handler(event, context):\n    return event\n")
    out = await asyncio.to_thread(lambda_client(hub.url, key).invoke, FunctionName=name, Payload=b'{"a": 1}')
    got = json.loads(out["Payload"].read())
    assert got["specversion"] == "1.0" and got["type"] == "hub.invoke" and got["data"] == {"a": 1}


async def test_invoke_event_is_queued_and_runs(hub: Hub, api: Api, key: dict[str, str], unique: str) -> None:
    name = f"ev-{unique}"
    await api.put_function(name, _code("event"), event_format="aws")
    out = await asyncio.to_thread(lambda_client(hub.url, key).invoke, FunctionName=name,
                                  InvocationType="Event", Payload=json.dumps({"later": unique}))
    assert out["StatusCode"] == 202 and out["Payload"].read() == b""
    request_id = out["ResponseMetadata"]["HTTPHeaders"]["x-hub-request-id"]
    runs = await api.wait_invocations(1, function=name)
    assert runs[0]["status"] == "succeeded" and runs[0]["result"]["event"] == {"later": unique}
    assert runs[0]["request_id"] == request_id


async def test_dry_run(hub: Hub, api: Api, key: dict[str, str], aws_fn: str) -> None:
    client = lambda_client(hub.url, key)
    before = len(await api.invocations(function=aws_fn))
    out = await asyncio.to_thread(client.invoke, FunctionName=aws_fn, InvocationType="DryRun")
    assert out["StatusCode"] == 204
    assert len(await api.invocations(function=aws_fn)) == before  # nothing ran
    err = await _refused(lambda: client.invoke(FunctionName=f"{aws_fn}-nope", InvocationType="DryRun"))
    assert _code_of(err) == "ResourceNotFoundException"


async def test_qualifiers_alias_version_and_arns(hub: Hub, api: Api, key: dict[str, str], unique: str) -> None:
    name = f"q-{unique}"
    v1 = (await api.put_function(name, _code("v1"), event_format="aws"))["version"]
    await api.ok("PUT", f"/v1/functions/{name}/aliases/live", {"version": v1})
    v2 = (await api.put_function(name, _code("v2"), event_format="aws"))["version"]
    client = lambda_client(hub.url, key)

    async def run(**kw: Any) -> tuple[str, dict[str, Any]]:
        out = await asyncio.to_thread(client.invoke, **kw)
        return out["ExecutedVersion"], json.loads(out["Payload"].read())

    version, got = await run(FunctionName=name, Qualifier="live")
    assert version == v1 and got["tag"] == "v1"
    assert got["arn"] == f"arn:aws:lambda:{REGION}:000000000000:function:{name}:live"
    assert (await run(FunctionName=name, Qualifier=v2))[1]["tag"] == "v2"
    assert (await run(FunctionName=name, Qualifier="$LATEST"))[0] == v2
    assert (await run(FunctionName=f"{name}:live"))[0] == v1
    arn = f"arn:aws:lambda:{REGION}:000000000000:function:{name}"
    assert (await run(FunctionName=arn))[0] == v2
    assert (await run(FunctionName=f"{arn}:live"))[0] == v1
    assert (await run(FunctionName=f"000000000000:function:{name}", Qualifier=v1))[0] == v1
    for bad in ({"FunctionName": name, "Qualifier": "nope"}, {"FunctionName": f"{name}:0123456789abcdef"},
                {"FunctionName": f"arn:aws:lambda:eu-west-1:000000000000:function:{name}"},
                {"FunctionName": f"arn:aws:lambda:{REGION}:111111111111:function:{name}"}):
        assert _code_of(await _refused(lambda: client.invoke(**bad))) == "ResourceNotFoundException", bad
    err = await _refused(lambda: client.invoke(FunctionName=f"{name}:live", Qualifier=v2))
    assert _code_of(err) == "InvalidParameterValueException"
    # get_function with a qualifier: that version's configuration
    conf = (await asyncio.to_thread(client.get_function, FunctionName=name, Qualifier="live"))["Configuration"]
    assert conf["Version"] == v1 and conf["FunctionArn"].endswith(f":{name}:live")


async def test_function_error_is_unhandled(hub: Hub, key: dict[str, str], aws_fn: str) -> None:
    out = await asyncio.to_thread(lambda_client(hub.url, key).invoke, FunctionName=aws_fn,
                                  Payload=json.dumps({"boom": 3}))
    assert out["StatusCode"] == 200 and out["FunctionError"] == "Unhandled"
    doc = json.loads(out["Payload"].read())
    assert set(doc) == {"errorMessage", "errorType", "stackTrace"}
    assert doc["errorType"] == "ValueError" and doc["errorMessage"] == "boom: 3"
    assert any("in handler" in line for line in doc["stackTrace"]), doc


async def test_bad_payload_and_unknown_function(hub: Hub, key: dict[str, str], aws_fn: str) -> None:
    client = lambda_client(hub.url, key)
    err = await _refused(lambda: client.invoke(FunctionName=aws_fn, Payload=b"{not json"))
    assert _code_of(err) == "InvalidRequestContentException"
    err = await _refused(lambda: client.invoke(FunctionName=f"no-such-{uuid.uuid4().hex[:6]}"))
    assert _code_of(err) == "ResourceNotFoundException"
    assert err.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    assert "Function not found: arn:aws:lambda:" in err.response["Error"]["Message"]
    assert isinstance(err, client.exceptions.ResourceNotFoundException)  # botocore's modeled error


async def test_get_function_and_list_functions(hub: Hub, api: Api, key: dict[str, str], unique: str) -> None:
    await api.ok("PUT", f"/v1/secrets/lam-{unique}", {"value": f"do-not-show-{unique}"})
    name = f"conf-{unique}"
    made = await api.put_function(name, _code("conf"), event_format="aws", timeout_s=7, memory_mb=256,
                                  description="for boto3",
                                  env={"PLAIN": "visible", "HIDDEN": {"secret": f"lam-{unique}"}})
    client = lambda_client(hub.url, key)
    got = await asyncio.to_thread(client.get_function, FunctionName=name)
    conf = got["Configuration"]
    assert conf["FunctionName"] == name and conf["Runtime"] == "python3.11" and conf["Handler"] == "main.handler"
    assert conf["FunctionArn"] == f"arn:aws:lambda:{REGION}:000000000000:function:{name}"
    assert conf["Timeout"] == 7 and conf["MemorySize"] == 256 and conf["Version"] == made["version"]
    assert conf["Description"] == "for boto3" and conf["State"] == "Active" and conf["LastModified"]
    assert conf["Environment"] == {"Variables": {"PLAIN": "visible"}}  # the secret-backed one is left out
    assert f"do-not-show-{unique}" not in json.dumps(got, default=str)
    assert got["Code"]["Location"] == f"{hub.url}/v1/functions/{name}/versions/{made['version']}/code"
    async with api.session.get(got["Code"]["Location"], headers=api.headers) as r:  # with a read token
        assert r.status == 200 and r.content_type == "application/zip"
    # every function, through botocore's paginator (50 a page)
    for i in range(3):
        await api.put_function(f"page-{unique}-{i}", _code("p"))
    pages = await asyncio.to_thread(lambda: list(client.get_paginator("list_functions").paginate(
        PaginationConfig={"PageSize": 2})))
    names = [f["FunctionName"] for page in pages for f in page["Functions"]]
    assert len(names) == len(set(names)) and names == sorted(names)
    assert {name, *(f"page-{unique}-{i}" for i in range(3))} <= set(names) and len(pages) > 2
    assert all(f"do-not-show-{unique}" not in json.dumps(p, default=str) for p in pages)
    err = await _refused(lambda: client.get_function(FunctionName=f"nope-{unique}"))
    assert _code_of(err) == "ResourceNotFoundException"


async def test_aws_cli_lambda_invoke(hub: Hub, key: dict[str, str], aws_fn: str, tmp_path: Path) -> None:
    """awscli (pinned in the dev extras) as a subprocess, its credentials in its environment."""
    out = tmp_path / "out.json"
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "AWS_ACCESS_KEY_ID": key["access_key_id"],
           "AWS_SECRET_ACCESS_KEY": key["secret_access_key"], "AWS_DEFAULT_REGION": REGION,
           "AWS_CONFIG_FILE": str(tmp_path / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "aws"), "lambda", "invoke", "--endpoint-url", hub.url,
        "--function-name", aws_fn, "--payload", '{"from": "cli"}', "--log-type", "Tail", str(out),
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await proc.communicate()
    assert proc.returncode == 0, stderr.decode()
    answer = json.loads(stdout)
    assert answer["StatusCode"] == 200 and "FunctionError" not in answer
    assert "hello from" in base64.b64decode(answer["LogResult"]).decode()
    assert json.loads(out.read_text())["event"] == {"from": "cli"}


# -- refusals -----------------------------------------------------------------------------
async def test_wrong_secret_unknown_key_other_region(hub: Hub, key: dict[str, str], aws_fn: str) -> None:
    wrong = {**key, "secret_access_key": key["secret_access_key"][:-1] + ("A" if key["secret_access_key"][-1] != "A"
                                                                           else "B")}
    for bad, code in ((wrong, "InvalidSignatureException"),
                      ({**key, "access_key_id": "AKTH" + "A" * 16}, "UnrecognizedClientException"),
                      ({**key, "access_key_id": "AKIAIOSFODNN7EXAMPLE"}, "UnrecognizedClientException")):
        client = lambda_client(hub.url, bad)
        for call in (lambda: client.invoke(FunctionName=aws_fn), lambda: client.get_function(FunctionName=aws_fn),
                     lambda: client.list_functions()):
            err = await _refused(call)
            assert _code_of(err) == code and err.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    err = await _refused(lambda: lambda_client(hub.url, key, region="eu-west-1").invoke(FunctionName=aws_fn))
    assert _code_of(err) == "InvalidSignatureException" and "region" in err.response["Error"]["Message"]


def _sign(method: str, url: str, body: bytes, key: dict[str, str], *, headers: dict[str, str] | None = None,
          when: dt.datetime | None = None, region: str = REGION, service: str = "lambda") -> dict[str, str]:
    """The headers botocore signs a request with, at ``when`` (default now)."""
    request = AWSRequest(method=method, url=url, data=body, headers=headers or {})
    with mock.patch("botocore.auth.get_current_datetime", return_value=when or dt.datetime.now(dt.UTC)):
        SigV4Auth(Credentials(key["access_key_id"], key["secret_access_key"]), service, region).add_auth(request)
    return dict(request.headers.items())


async def _send(http: aiohttp.ClientSession, method: str, url: str, body: bytes,
                headers: dict[str, str]) -> tuple[int, str | None, Any, dict[str, str]]:
    async with http.request(method, url, data=body, headers=headers) as r:
        data = await r.json(content_type=None) if r.content_type == "application/json" else await r.read()
        return r.status, r.headers.get("x-amzn-ErrorType"), data, dict(r.headers)


async def test_replay_outside_the_window_and_a_future_date(hub: Hub, http: aiohttp.ClientSession,
                                                           key: dict[str, str], aws_fn: str) -> None:
    url = f"{hub.url}/2015-03-31/functions/{aws_fn}/invocations"
    now = dt.datetime.now(dt.UTC)
    inside = _sign("POST", url, b"{}", key, when=now - dt.timedelta(minutes=14))
    assert (await _send(http, "POST", url, b"{}", inside))[0] == 200  # 14 minutes old: still accepted
    for when in (now - dt.timedelta(minutes=16), now + dt.timedelta(minutes=16), now - dt.timedelta(days=1)):
        status, code, body, _ = await _send(http, "POST", url, b"{}", _sign("POST", url, b"{}", key, when=when))
        assert (status, code) == (403, "InvalidSignatureException"), (when, body)
        assert "Signature expired" in body["message"] or "not yet current" in body["message"]


async def test_signature_binds_body_path_query_and_headers(hub: Hub, api: Api, http: aiohttp.ClientSession,
                                                           key: dict[str, str], aws_fn: str, unique: str) -> None:
    other = f"other-{unique}"
    await api.put_function(other, _code("other"), event_format="aws")
    base = f"{hub.url}/2015-03-31/functions"
    url = f"{base}/{aws_fn}/invocations"
    before = len(await api.invocations(function=other))
    signed = _sign("POST", url, b'{"amount": 1}', key)
    # a signature over one body, another body sent (with and without the body hash header)
    assert (await _send(http, "POST", url, b'{"amount": 1000}', signed))[:2] == (403, "InvalidSignatureException")
    with_hash = _sign("POST", url, b'{"amount": 1}', key,
                      headers={"X-Amz-Content-SHA256": "0b6cb8c3bbca4a8a8e4e1a5bf5a3b6ee7b4c7fa1e54dbd28a0e4e25b1f9ce2b3"})
    assert (await _send(http, "POST", url, b'{"amount": 1}', with_hash))[:2] == (403, "InvalidSignatureException")
    # the same signed headers replayed on another path, another function, another query
    for target in (f"{base}/{other}/invocations", f"{url}?Qualifier=live", f"{base}/{aws_fn}"):
        method = "GET" if target.endswith(aws_fn) else "POST"
        status, code, _, _ = await _send(http, method, target, b'{"amount": 1}' if method == "POST" else b"", signed)
        assert (status, code) == (403, "InvalidSignatureException"), target
    # an X-Amz-* header added after signing (turning a DryRun into a run), or one left unsigned
    dry = _sign("POST", f"{base}/{other}/invocations", b"{}", key, headers={"X-Amz-Invocation-Type": "DryRun"})
    assert (await _send(http, "POST", f"{base}/{other}/invocations", b"{}", dry))[0] == 204
    swapped = {**dry, "X-Amz-Invocation-Type": "RequestResponse"}
    assert (await _send(http, "POST", f"{base}/{other}/invocations", b"{}", swapped))[:2] == \
        (403, "InvalidSignatureException")
    unsigned = {**_sign("POST", f"{base}/{other}/invocations", b"{}", key), "X-Amz-Log-Type": "Tail"}
    status, code, body, _ = await _send(http, "POST", f"{base}/{other}/invocations", b"{}", unsigned)
    assert (status, code) == (403, "InvalidSignatureException") and "x-amz-log-type" in body["message"]
    assert len(await api.invocations(function=other)) == before  # none of these ran it
    # the scope must be this hub's region and Lambda
    for region, service in (("eu-west-1", "lambda"), (REGION, "s3"), (REGION, "execute-api")):
        headers = _sign("POST", url, b"{}", key, region=region, service=service)
        assert (await _send(http, "POST", url, b"{}", headers))[:2] == (403, "InvalidSignatureException")


async def test_header_injection_and_repeated_headers(hub: Hub, api: Api, http: aiohttp.ClientSession,
                                                     key: dict[str, str], aws_fn: str) -> None:
    url = f"{hub.url}/2015-03-31/functions/{aws_fn}/invocations"
    for value in ("Event, RequestResponse", "Event\tDryRun", "requestresponse", "X" * 5000):
        headers = _sign("POST", url, b"{}", key, headers={"X-Amz-Invocation-Type": value})
        status, code, body, _ = await _send(http, "POST", url, b"{}", headers)
        assert (status, code) == (400, "InvalidParameterValueException") and value not in body["message"]
    # a signed header repeated (the canonical value joins both): refused, not the first one taken
    request = AWSRequest(method="POST", url=url, data=b"{}")
    request.headers["X-Amz-Invocation-Type"] = "DryRun"
    request.headers["X-Amz-Invocation-Type"] = "Event"  # botocore's HTTPHeaders appends
    with mock.patch("botocore.auth.get_current_datetime", return_value=dt.datetime.now(dt.UTC)):
        SigV4Auth(Credentials(key["access_key_id"], key["secret_access_key"]), "lambda", REGION).add_auth(request)
    pairs = list(request.headers.items())
    assert sum(1 for k, _ in pairs if k == "X-Amz-Invocation-Type") == 2
    async with http.post(url, data=b"{}", headers=pairs) as r:
        assert r.status == 400 and r.headers["x-amzn-ErrorType"] == "InvalidParameterValueException"
    # CR LF in a function name (percent-encoded in the path) or a qualifier: never a response header
    for target in (f"{hub.url}/2015-03-31/functions/x%0D%0ASet-Cookie:%20a=b/invocations",
                   f"{url}?Qualifier=live%0D%0ASet-Cookie:%20a=b"):
        headers = _sign("POST", target, b"{}", key)
        status, code, _, response_headers = await _send(http, "POST", target, b"{}", headers)
        assert status in (400, 404) and "Set-Cookie" not in response_headers, (target, status, code)
    # a header line smuggled with a bare LF, over a raw socket: refused before anything runs
    host, port = hub.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    signed = _sign("POST", url, b"{}", key)
    lines = "".join(f"{k}: {v}\r\n" for k, v in signed.items())
    writer.write((f"POST /2015-03-31/functions/{aws_fn}/invocations HTTP/1.1\r\nHost: {host}:{port}\r\n{lines}"
                  f"X-Amz-Log-Type: None\nX-Amz-Invocation-Type: Event\r\nContent-Length: 2\r\n\r\n{{}}").encode())
    await writer.drain()
    status_line = (await reader.readline()).decode()
    writer.close()
    assert status_line.split()[1] in ("400", "403"), status_line


async def test_tokens_and_signatures_do_not_mix(hub: Hub, api: Api, http: aiohttp.ClientSession,
                                                key: dict[str, str], aws_fn: str) -> None:
    url = f"{hub.url}/2015-03-31/functions/{aws_fn}/invocations"
    # the admin bearer token is no signature
    status, code, _, _ = await _send(http, "POST", url, b"{}", {"Authorization": f"Bearer {API_TOKEN}"})
    assert (status, code) == (403, "IncompleteSignatureException")
    assert (await _send(http, "POST", url, b"{}", {}))[:2] == (403, "MissingAuthenticationTokenException")
    # a signed request is no token for the hub's own API (a key pair acts only in the Lambda API)
    for method, path in (("GET", "/v1/functions"), ("GET", "/v1/access-keys"), ("POST", "/v1/access-keys")):
        headers = _sign(method, hub.url + path, b"", key)
        assert (await _send(http, method, hub.url + path, b"", headers))[0] == 401, path
    # the secret is stored encrypted and never listed
    doc = await hub.store.db.access_keys.find_one({"access_key_id": key["access_key_id"]})
    assert doc is not None
    assert key["secret_access_key"] not in str(doc) and key["secret_access_key"].encode() not in bytes(doc["ciphertext"])
    listed = await api.ok("GET", "/v1/access-keys")
    mine = [k for k in listed["access_keys"] if k["access_key_id"] == key["access_key_id"]]
    assert len(mine) == 1 and "secret_access_key" not in mine[0] and key["secret_access_key"] not in json.dumps(listed)
    await eventually(lambda: _last_used(api, key["access_key_id"]), timeout=10)
    # names: taken once, validated; deleting an unknown one is a 404
    assert (await api.call("POST", "/v1/access-keys", {"name": key["name"]}))[0] == 409
    for bad in ({"name": "../x"}, {"name": ""}, {}, {"name": "x", "secret_access_key": "mine"}):
        assert (await api.call("POST", "/v1/access-keys", bad))[0] == 400, bad
    assert (await api.call("DELETE", "/v1/access-keys/no-such-key"))[0] == 404


async def _last_used(api: Api, key_id: str) -> bool:
    listed = (await api.ok("GET", "/v1/access-keys"))["access_keys"]
    return any(k["access_key_id"] == key_id and k["last_used_at"] for k in listed)


def test_sigv4_operations_are_documented_as_such() -> None:
    """The /2015-03-31 operations are public to the bearer check (x-required-scope null, so the
    token sweep in tests/test_tokens.py leaves them to this file) and declare the sigv4 scheme."""
    doc = openapi_spec()
    assert doc["components"]["securitySchemes"]["sigv4"]["x-amazon-apigateway-authtype"] == "awsSigv4"
    ops = [(p, m, op) for p, item in doc["paths"].items() if p.startswith("/2015-03-31/")
           for m, op in item.items() if m != "parameters"]
    assert len(ops) == 4
    for _, _, op in ops:
        assert op["x-required-scope"] is None and op["security"] == [{"sigv4": []}]
        assert "403" in op["responses"] and "401" not in op["responses"]


@pytest.mark.parametrize("path", ["/2015-03-31/functions/x/invocations", "/2015-03-31/functions/x",
                                  "/2015-03-31/functions", "/2015-03-31/functions/"])
async def test_sigv4_sweep(hub: Hub, http: aiohttp.ClientSession, key: dict[str, str], path: str) -> None:
    """Every SigV4 operation, without a valid signature: 403 in AWS's form, never an answer."""
    method = "POST" if path.endswith("invocations") else "GET"
    url = hub.url + path
    wrong = {**key, "secret_access_key": "x" * 40}
    for headers in ({}, {"Authorization": f"Bearer {API_TOKEN}"}, {"Authorization": "AWS4-HMAC-SHA256 garbage"},
                    _sign(method, url, b"", wrong), _sign(method, url, b"", {**key, "access_key_id": "AKTH" + "B" * 16}),
                    _sign(method, url, b"", key, when=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))):
        status, code, body, _ = await _send(http, method, url, b"", headers)
        assert status == 403 and code and code.endswith("Exception") and body["message"], (headers, body)


# -- several hubs -------------------------------------------------------------------------
@pytest.fixture
async def pair(servers: dict[str, Any], tmp_path: Path) -> AsyncIterator[tuple[Hub, Hub]]:
    """Two instances on one database with one HUB_SECRETS_KEY (as a deployment must have)."""
    db = f"lam_{uuid.uuid4().hex[:8]}"
    secrets_key = base64.b64encode(os.urandom(32)).decode()
    a = Hub(make_settings(servers, tmp_path / "a", db, trigger_sync_interval_s=3600, secrets_key=secrets_key))
    b = Hub(make_settings(servers, tmp_path / "b", db, trigger_sync_interval_s=3600, secrets_key=secrets_key))
    await a.start()
    await b.start()
    try:
        await eventually(lambda: _following(a, b))
        yield a, b
    finally:
        await a.stop()
        await b.stop()


async def _following(a: Hub, b: Hub) -> bool:
    return a.access_keys.cache_enabled and b.access_keys.cache_enabled


async def test_revoked_key_is_refused_on_another_instance(pair: tuple[Hub, Hub], hub: Hub) -> None:
    a, b = pair
    async with aiohttp.ClientSession() as http:
        api_a = Api(http, a.url)
        await api_a.put_function("rev", _code("rev"), event_format="aws")
        for round_ in range(2):
            made = await api_a.ok("POST", "/v1/access-keys", {"name": f"rev-{round_}"})
            on_b = lambda_client(b.url, made)
            for _ in range(3):  # cached on b now
                out = await asyncio.to_thread(on_b.invoke, FunctionName="rev")
                assert json.loads(out["Payload"].read())["tag"] == "rev"
            deleted = await api_a.ok("DELETE", f"/v1/access-keys/rev-{round_}")
            assert deleted["access_key_id"] == made["access_key_id"]
            err = await _refused(lambda: on_b.invoke(FunctionName="rev"))  # the very next request
            assert _code_of(err) == "UnrecognizedClientException"
        # a key of this database is nothing to a hub on another one (the session's hub)
        other = await api_a.ok("POST", "/v1/access-keys", {"name": "elsewhere"})
        err = await _refused(lambda: lambda_client(hub.url, other).list_functions())
        assert _code_of(err) == "UnrecognizedClientException"


async def test_a_hub_with_another_secrets_key_cannot_use_the_keys(servers: dict[str, Any], tmp_path: Path) -> None:
    """Same database, another HUB_SECRETS_KEY: the stored secret does not decrypt, the key is
    refused (and the log says why), nothing is answered with a wrong secret."""
    db = f"lam_{uuid.uuid4().hex[:8]}"
    a = Hub(make_settings(servers, tmp_path / "a", db, trigger_sync_interval_s=3600))
    b = Hub(make_settings(servers, tmp_path / "b", db, trigger_sync_interval_s=3600))  # its own generated key
    await a.start()
    await b.start()
    try:
        async with aiohttp.ClientSession() as http:
            made = await Api(http, a.url).ok("POST", "/v1/access-keys", {"name": "mine"})
            assert (await asyncio.to_thread(lambda_client(a.url, made).list_functions))["Functions"] == []
            err = await _refused(lambda: lambda_client(b.url, made).list_functions())
            assert _code_of(err) == "UnrecognizedClientException"
    finally:
        await a.stop()
        await b.stop()
