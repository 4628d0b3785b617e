"""The invocation's context on every line logged while it runs (hub.logs.INVOCATION, set by the
dispatcher): ours and the libraries' (stdlib) lines, a line's own keys winning, nothing after it."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from pathlib import Path
from typing import Any

import structlog

from hub import logs
from hub.delivery.dispatch import Dispatcher, Target
from hub.events import Event
from hub.metrics import Metrics
from hub.sandbox.base import FunctionRuntime, InvocationReport, InvokeContext, Status
from hub.spec.models import RetryPolicy

FN = FunctionRuntime(name="talker", version="v1", handler="main.handler", code_dir=Path("/nonexistent"))


class _Registry:
    aws = None

    async def runtime(self, ref: str) -> FunctionRuntime:
        return FN


class _TalkingPool:
    """Logs from inside the invocation, as the pool does (a worker's exit, say), and from a task
    it starts (a task copies the context it was created in)."""

    isolation = "process"

    async def invoke(self, fn: FunctionRuntime, event: dict[str, Any], ctx: InvokeContext) -> InvocationReport:
        structlog.get_logger("hub.sandbox.test").warning("ours", pid=7)
        structlog.get_logger("hub.sandbox.test").warning("own key wins", function="explicit")
        logging.getLogger("aiohttp.test").warning("a library's line")

        async def later() -> None:
            structlog.get_logger("hub.sandbox.test").warning("from a task")

        await asyncio.create_task(later())
        return InvocationReport(status=Status.succeeded, duration_ms=1.0, billed_ms=1)


class _Writer:
    def submit(self, doc: dict[str, Any]) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


async def test_lines_logged_during_an_invocation_carry_it() -> None:
    sink = io.StringIO()
    logs.configure("json", "info", stream=sink)
    try:
        dispatcher = Dispatcher(None, _Registry(), _TalkingPool(), Metrics(), _Writer(), None)  # type: ignore[arg-type]
        target = Target("talker", "orders", RetryPolicy(max_attempts=1))
        record = await dispatcher.run_once(target, Event(id="e1", source="s", type="t", data={}), "inv-1", "req-1", 1)
        assert record["status"] == "succeeded"
        structlog.get_logger("hub.test").warning("after")
    finally:
        logs.configure("json", "info")
    lines = {line["event"]: line for line in map(json.loads, sink.getvalue().splitlines())}
    for event in ("ours", "a library's line", "from a task"):
        line = lines[event]
        assert (line["invocation_id"], line["function"], line["trigger"]) == ("inv-1", "talker", "orders"), line
    assert lines["ours"]["pid"] == 7
    assert lines["own key wins"]["function"] == "explicit" and lines["own key wins"]["invocation_id"] == "inv-1"
    assert "invocation_id" not in lines["after"] and "function" not in lines["after"]
    assert logs.INVOCATION.get() is None


def test_enabled_follows_the_configured_level() -> None:
    """``logs.enabled`` (what the pool and dispatcher ask per invocation instead of a structlog
    proxy) answers as structlog's own filter does, after each configure."""
    try:
        for level, name in ((logging.WARNING, "warning"), (logging.DEBUG, "debug"), (logging.INFO, "info")):
            logs.configure("json", name, stream=io.StringIO())
            proxy = structlog.get_logger("hub.test")
            for asked in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR):
                assert logs.enabled(asked) is (asked >= level) is proxy.is_enabled_for(asked), (name, asked)
    finally:
        logs.configure("json", "info")
