"""What every connector hands to the hub: ordered chunks of events, and an await that means
"finished, ack them".

A connector calls ``settle = await sink(events)`` with a chunk of events in source order. When
that returns, the chunk's handlers have run (so the next chunk may start: order holds); when
``settle`` (if not None) completes too, every event has succeeded or been dead-lettered *and
that is durable*, and the connector may ack the chunk (commit the offset, persist the resume
token, delete the inbox items). Splitting the two lets one chunk's records be written while the
next chunk runs. If only a prefix finished, either await raises :class:`Unfinished` saying how
many: the connector acks those and delivers the rest again. Any other exception means nothing
was finished.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import structlog

from hub.events import Event

Sink = Callable[[list[Event]], Awaitable[Awaitable[None] | None]]


class Unfinished(Exception):
    """Only the first ``finished`` events of a chunk are finished; ``cause`` says why not the rest."""

    def __init__(self, finished: int, cause: BaseException) -> None:
        super().__init__(f"{finished} event(s) finished, then: {type(cause).__name__}: {cause}")
        self.finished = finished
        self.cause = cause


class LeaseLost(Exception):
    """This instance no longer holds the source's lease: it must stop reading at once (another
    instance has taken over, and a cursor save carrying our fencing token was refused)."""


class Subscription(Protocol):
    state: str  # "starting", "running", "stopped" or "error: <reason>"
    state_since: float  # time.monotonic() of the last state change

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def progress(self) -> dict[str, object]:
        """Where the subscription stands (positions, buffered events), for /readyz."""
        ...


class SupervisedLoop:
    """Runs ``run_once`` forever, restarting it with capped backoff after any error.

    Connector failures (server outage, sink error) must never kill the subscription or lose an
    event; restarting from the last acked position is always safe.
    """

    # How long stop() lets run_once wind down by itself (it watches ``stopping``) before it
    # cancels it: a cancel can land inside a database driver call, which not every driver survives.
    stop_grace_s = 15.0

    def __init__(self, name: str) -> None:
        self.name = name
        self._state = "starting"
        self.state_since = time.monotonic()
        self.log = structlog.get_logger("connectors").bind(subscription=name)
        self.stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def state(self) -> str:
        return self._state

    @state.setter
    def state(self, value: str) -> None:
        if value != self._state:
            self._state = value
            self.state_since = time.monotonic()

    async def run_once(self) -> None:
        raise NotImplementedError

    def progress(self) -> dict[str, object]:
        return {}

    async def start(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name=f"subscription:{self.name}")

    async def stop(self) -> None:
        self.stopping.set()
        if self._task is not None:
            await asyncio.wait([self._task], timeout=self.stop_grace_s)
            if not self._task.done():
                self.log.warning("subscription did not stop in time; cancelling it", grace_s=self.stop_grace_s)
                self._task.cancel()
                await asyncio.wait([self._task])
            self._task = None
        self.state = "stopped"

    async def _supervise(self) -> None:
        delay = 0.5
        while not self.stopping.is_set():
            try:
                await self.run_once()
                delay = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.state = f"error: {type(exc).__name__}: {exc}"
                self.log.warning("subscription failed; restarting", error=str(exc), retry_in_s=delay,
                                 exc_info=True)
                await self.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def sleep(self, seconds: float) -> bool:
        """Sleep, but wake at once when stopping; True if stopping."""
        try:
            await asyncio.wait_for(self.stopping.wait(), seconds)
        except TimeoutError:
            pass
        return self.stopping.is_set()
