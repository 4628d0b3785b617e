"""What every connector hands to the hub: events, and an await that means "finished, ack it".

A connector calls ``await sink(event)``; when that returns, the event has succeeded or been
dead-lettered and the connector may ack it (commit the offset, persist the resume token). If the
sink raises, the connector must not ack: it backs off and the event is delivered again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol

import structlog

from hub.events import Event

Sink = Callable[[Event], Awaitable[None]]


class Subscription(Protocol):
    state: str  # "starting", "running", or "error: <reason>"

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class SupervisedLoop:
    """Runs ``run_once`` forever, restarting it with capped backoff after any error.

    Connector failures (server outage, sink error) must never kill the subscription or lose an
    event; restarting from the last acked position is always safe.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.state = "starting"
        self.log = structlog.get_logger("connectors").bind(subscription=name)
        self._task: asyncio.Task[None] | None = None

    async def run_once(self) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name=f"subscription:{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        self.state = "stopped"

    async def _supervise(self) -> None:
        delay = 0.5
        while True:
            try:
                await self.run_once()
                delay = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.state = f"error: {type(exc).__name__}: {exc}"
                self.log.warning("subscription failed; restarting", error=str(exc), retry_in_s=delay,
                                 exc_info=True)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
