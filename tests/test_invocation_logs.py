"""A success costs no log line unless the operator asks (HUB_LOG_INVOCATIONS=all): the record is
the log. Failures are always logged. Against the real MongoDB (the records are written for real)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import structlog

from hub.delivery.dispatch import Dispatcher, Target
from hub.delivery.records import Completions, RecordWriter
from hub.metrics import Metrics
from hub.sandbox.base import Status
from hub.settings import Settings
from hub.store import Store
from tests.test_dispatch import FAST, ScriptedPool, _dispatcher, _event, _one, store, writer  # noqa: F401

pytestmark = pytest.mark.integration


def test_the_default_is_failures_only() -> None:
    assert Settings(api_token="x" * 24, webhook_token="y" * 24).log_invocations == "failures"


@pytest.mark.parametrize("log_successes", [False, True])
async def test_successes_are_logged_only_when_asked(store: Store, tmp_path: Path, writer: RecordWriter,
                                                    log_successes: bool) -> None:
    pool = ScriptedPool([Status.succeeded, Status.failed])
    d = await _dispatcher(store, tmp_path, pool, writer)
    d = Dispatcher(store, d.registry, pool, Metrics(), writer, Completions(store.db),  # type: ignore[arg-type]
                   log_successes=log_successes)
    target = Target("fn", "t", FAST.model_copy(update={"max_attempts": 1}))
    old = logging.getLogger().level
    logging.getLogger().setLevel(logging.INFO)
    try:
        with structlog.testing.capture_logs() as logs:
            assert await _one(d, target, _event()) == "succeeded"
            assert await _one(d, target, _event()) == "dead_lettered"
    finally:
        logging.getLogger().setLevel(old)
    events: list[Any] = [entry["event"] for entry in logs]
    assert ("invocation finished" in events) is log_successes
    assert "invocation failed" in events  # a failure is always a line
