"""Group commit: concurrent callers' writes made as one MongoDB round trip, each caller answered
only once its own part is done.

Why: a webhook POST carries one S3 notification, and each costs a few MongoDB round trips (the
scan's dedup claim, the trigger check, the inbox insert). At thousands of POSTs per second those
round trips, not the work in them, are the hub's CPU: the socket write and wake-up per command
cost far more than one more document in a bulk write. So the POSTs that arrive while a batch is
being written wait for the next one, which takes them all (a batch forms by itself under load;
alone, a caller waits for nothing but its own write).

Under a steady flow a batch also waits (``linger_s`` at most) for the callers the last batch
answered: they are the same senders, coming back with their next item. Without that, N senders
with one POST each in flight split into two groups that take turns (one written while the other's
senders send again), and every batch costs its round trips for N/2 items instead of N (measured:
~8 notifications per batch at 16 POSTs in flight, issue 21). A caller alone (the last batch
answered one, nobody else waiting) or after a pause waits for nothing.

A caller's result comes from the batch that wrote its items, never earlier: a webhook still
answers 2xx only once its notification is durable. A failed batch fails every caller in it (each
is answered an error and its sender retries, as it would have alone). A caller that goes away
(its request was cancelled) does not cancel the batch: a task inside a PyMongo call is never
cancelled, and its items may be written already.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    """``submit(items)`` runs ``run`` on the items of every caller waiting at the time, one batch
    at a time (``parallel`` at most), and returns this caller's slice of the results."""

    def __init__(self, run: Callable[[list[T]], Awaitable[list[R]]], *, max_items: int = 1000,
                 parallel: int = 1, name: str = "group-commit", linger_s: float = 0.0) -> None:
        self.run = run
        self.max_items = max_items
        self.parallel = parallel
        self.name = name
        self.linger_s = linger_s
        self._waiting: list[tuple[list[T], asyncio.Future[list[R]]]] = []
        self._running: set[asyncio.Task[None]] = set()
        # callers in flight under a steady flow: those the last batch answered and those waiting
        # when it ended (loop time of that end); a batch lingers until that many are waiting
        self._expected = 0
        self._ended = -1.0
        self._gathered: asyncio.Event | None = None
        self.batches = 0  # batches written (for tests and the curious)
        self.callers = 0  # callers those batches answered

    async def submit(self, items: Sequence[T]) -> list[R]:
        fut: asyncio.Future[list[R]] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(_retrieved)  # a caller that went away must not leave it unread
        self._waiting.append((list(items), fut))
        if self._gathered is not None and len(self._waiting) >= self._expected:
            self._gathered.set()
        self._kick()
        # shielded: a cancelled caller leaves its batch alone (see the module docstring)
        return await asyncio.shield(fut)

    async def drain(self) -> None:
        """Until every batch taken so far has been written (at shutdown)."""
        while self._running:
            await asyncio.wait(set(self._running))

    def _kick(self) -> None:
        if self._waiting and len(self._running) < self.parallel:
            task = asyncio.create_task(self._flush(), name=self.name)
            self._running.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._kick()  # what arrived meanwhile is the next batch

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        # (one batch at a time only: with several in flight "the last batch" means nothing)
        if (self.linger_s > 0 and self.parallel == 1 and self._gathered is None
                and len(self._waiting) < self._expected and loop.time() - self._ended < self.linger_s
                and sum(len(items) for items, _ in self._waiting) < self.max_items):  # not a full batch already
            # a steady flow: the senders the last batch answered are on their way back
            self._gathered = asyncio.Event()
            try:
                await asyncio.wait_for(self._gathered.wait(), self.linger_s)
            except TimeoutError:
                pass
            finally:
                self._gathered = None
        batch: list[tuple[list[T], asyncio.Future[list[R]]]] = []
        count = 0
        while self._waiting and (not batch or count + len(self._waiting[0][0]) <= self.max_items):
            entry = self._waiting.pop(0)
            batch.append(entry)
            count += len(entry[0])
        flat = [item for items, _ in batch for item in items]
        self.batches += 1
        self.callers += len(batch)
        try:
            results = await self.run(flat)
        except BaseException as exc:
            self._ended = -1.0  # no linger after a failure
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        if len(results) != len(flat):  # a bug in ``run``: nobody may be told "done" wrongly
            error = RuntimeError(f"{self.name}: {len(results)} results for {len(flat)} items")
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(error)
            return
        at = 0
        for items, fut in batch:
            if not fut.done():
                fut.set_result(results[at:at + len(items)])
            at += len(items)
        self._expected, self._ended = len(batch) + len(self._waiting), asyncio.get_running_loop().time()


def _retrieved(fut: "asyncio.Future[Any]") -> None:
    if not fut.cancelled():
        fut.exception()


__all__ = ["GroupCommit"]
