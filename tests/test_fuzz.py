"""API fuzz test: schemathesis drives every operation in ``GET /v1/openapi.json`` against a live hub.

Each operation gets bounded positive and negative examples (valid and schema-violating input) from
a fixed seed, and every response must be documented: no 5xx, a status code the operation lists,
the content type it lists, and a body that matches the response schema. The hub is this module's
own (own database), so purging every dead letter or making odd triggers touches no other test.

Half of the cases (chosen from each example's own content, so the run is repeatable) are aimed at
things that exist: a function, an invocation, a dead letter, the webhook token. Invokes then run
real code, trigger writes get past "unknown function" into the source checks, and the response
schemas are checked against real records, not only against 404s.
"""

from __future__ import annotations

import asyncio
import time
import uuid
import zlib
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_schema_conformance,
    status_code_conformance,
)

from hub.app import Hub
from hub.web.logstream import parse_bool
from hub.web.openapi import openapi_spec
from tests.hubfixtures import API_TOKEN, WEBHOOK_TOKEN, Api, eventually, make_settings

pytestmark = pytest.mark.integration

EXAMPLES = {GenerationMode.POSITIVE: 40, GenerationMode.NEGATIVE: 20}
# ignored_auth: an operation that needs a token answers 401 when sent without one or with a wrong one
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          ignored_auth]
ECHO = "def handler(event, context):\n    return {'data': event['data']}\n"
FAIL = "def handler(event, context):\n    raise ValueError('always fails')\n"


def _operations() -> list[tuple[str, str]]:
    """Every documented operation; deletions last, so they do not remove what the others aim at."""
    methods = ("get", "put", "post", "delete")
    ops = [(path, m.upper()) for path, item in openapi_spec()["paths"].items() for m in methods if m in item]
    return sorted(ops, key=lambda op: op[1] == "DELETE")


@pytest.fixture(scope="module")
async def fuzz_hub(servers: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
                   ) -> AsyncIterator[tuple[Hub, dict[str, str]]]:
    settings_ = make_settings(servers, tmp_path_factory.mktemp("fuzz-data"), f"fuzz_{uuid.uuid4().hex[:8]}")
    hub = Hub(settings_)
    await hub.start()
    hub.settings.public_url = hub.url
    async with aiohttp.ClientSession() as session:
        api = Api(session, hub.url)
        await api.ok("PUT", "/v1/secrets/fuzz-secret", {"value": "fuzz-secret-value"})
        await api.put_function("fuzz-echo", ECHO, env={"FUZZ_SECRET": {"secret": "fuzz-secret"}})
        await api.put_function("fuzz-fail", FAIL)
        ran = await api.ok("POST", "/v1/functions/fuzz-echo/invoke", {"seed": 1})
        await api.ok("POST", "/v1/functions/fuzz-fail/invoke?mode=async", {"seed": 2})

        async def dead_letter() -> Any:
            letters = (await api.ok("GET", "/v1/dead-letters"))["dead_letters"]
            return letters[0]["id"] if letters else None

        targets = {"function": "fuzz-echo", "invocation": ran["invocation_id"],
                   "dead_letter": await eventually(dead_letter, timeout=60)}
    yield hub, targets
    await hub.stop()


def _aim(case: Any, targets: dict[str, str], headers: dict[str, str]) -> dict[str, str]:
    """Point half of the cases at what exists; returns the headers to send."""
    if case.path.endswith("/logs") and isinstance(case.query, dict) and _follows(case.query.get("follow")):
        case.query["follow"] = "false"  # a follow stream never ends by itself (tests/test_logs.py)
    if zlib.crc32(repr((case.path_parameters, case.query, case.body)).encode()) % 2:
        return headers
    params = case.path_parameters or {}
    if case.path.startswith("/v1/functions/") and case.method not in ("PUT", "DELETE"):
        params["name"] = targets["function"]  # never replaced or deleted: the other cases need it
    elif case.path.startswith("/v1/secrets/"):
        params["name"] = "fuzz-secret"  # used by fuzz-echo: its DELETE is a 409
    elif case.path.startswith("/v1/invocations/"):
        params["id"] = targets["invocation"]
    elif case.path.startswith("/v1/dead-letters/"):
        params["id"] = targets["dead_letter"]
    elif case.path == "/v1/sources/s3/events":
        headers = {"Authorization": f"Bearer {WEBHOOK_TOKEN}"}
    if isinstance(case.body, dict) and "function" in case.body:
        case.body["function"] = targets["function"]
    return headers


def _follows(value: Any) -> bool:
    try:
        return parse_bool(str(value), "follow")
    except ValueError:
        return False


def _fuzz(base_url: str, targets: dict[str, str], path: str, method: str) -> Counter[int]:
    """Run one operation's examples (in a thread: the hub serves on the test's event loop)."""
    operation = schemathesis.openapi.from_dict(openapi_spec())[path][method]
    session = requests.Session()
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    statuses: Counter[int] = Counter()
    for mode, examples in EXAMPLES.items():

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=examples, derandomize=True, deadline=None, database=None,
                  phases=[Phase.explicit, Phase.generate, Phase.shrink],
                  suppress_health_check=list(HealthCheck))
        def run(case: Any) -> None:
            response = case.call_and_validate(base_url=base_url, session=session,
                                              headers=_aim(case, targets, headers), checks=CHECKS, timeout=30)
            statuses[response.status_code] += 1

        try:
            run()
        except Unsatisfiable:
            # nothing to make invalid (no parameters, no body): only positive examples exist
            assert mode is GenerationMode.NEGATIVE, (path, method)
    return statuses


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("path", "method"), _operations(), ids=lambda v: str(v))
async def test_fuzz_operation(fuzz_hub: tuple[Hub, dict[str, str]], path: str, method: str) -> None:
    hub, targets = fuzz_hub
    started = time.monotonic()
    statuses = await asyncio.to_thread(_fuzz, hub.url, targets, path, method)
    assert statuses
    print(f"{method} {path}: {sum(statuses.values())} requests in {time.monotonic() - started:.1f}s, "
          f"statuses {dict(sorted(statuses.items()))}")
