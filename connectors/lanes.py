"""Lanes: how a connector feeds the hub its events in order, in chunks, and acks what finished.

A lane holds one ordered stream (a Kafka partition, a change stream). The connector ``put``s
items as it reads them; the lane hands them to the sink in chunks (a batch closes at
``batch_size`` items or ``window_s`` after its first item, whichever comes first; with a batch
size of 1 a chunk is whatever is waiting, up to ``max_chunk``, and the hub runs it one event at
a time but records it in bulk) and, once a chunk (or a prefix of it) is finished, acks the
position of its last finished item. A chunk that fails stays at the head of the lane and is
offered again after a growing pause, so order holds and nothing is skipped: an ack never
passes an unfinished item.

With ``by_key`` items with different keys may run at the same time (up to ``parallelism``
chunks), items with the same key stay in order, and the ack still only moves over a finished
prefix of the lane. A lane is bounded (``capacity``): the connector stops reading while it is
full.

Markers (items without an event) carry only a position, e.g. a change stream's resume token
while nothing matches: they are acked once everything before them is finished.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from connectors.base import Sink, Unfinished
from hub.events import Event

Ack = Callable[[Any], Awaitable[None]]

MIN_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0


@dataclass(eq=False, slots=True)  # slots: a lane holds thousands; a __dict__ each was ~250 bytes
class Item:
    event: Event | None  # None: a position marker
    position: Any  # acked once this item and everything before it is finished
    key: str | None = None
    arrived: float = field(default_factory=time.monotonic)
    done: bool = False


class Lane:
    def __init__(
        self,
        name: str,
        sink: Sink,
        ack: Ack,
        *,
        batch_size: int = 1,
        window_s: float = 0.0,
        max_chunk: int = 500,
        capacity: int = 2000,
        by_key: bool = False,
        parallelism: int = 1,
        max_unsettled: int = 3,
        on_room: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.sink = sink
        self.ack = ack
        self.batch_size = batch_size
        self.window_s = window_s
        # A chunk holds several whole batches when a backlog is waiting: one duplicate check and
        # one wait for the records cover them all, while each handler call still gets one batch.
        self.chunk_limit = max(batch_size, max_chunk - max_chunk % batch_size)
        self.capacity = capacity
        self.by_key = by_key
        self.parallelism = max(1, parallelism)
        self.max_unsettled = max(1, max_unsettled)  # chunks that ran but are not yet durable
        self.on_room = on_room  # told whenever finished items leave the lane
        self.log = structlog.get_logger("connectors.lanes").bind(lane=name)
        self.acked: Any = None  # the last position acked
        self.last_error: str | None = None
        self._order: deque[Item] = deque()  # every buffered item, in arrival order
        self._waiting: dict[str | None, deque[Item]] = {}  # by key: not yet handed to the sink
        self._running: dict[str | None, asyncio.Task[None]] = {}  # by key: handlers running
        self._chunks: set[asyncio.Task[None]] = set()  # running or settling
        self._blocked_until: dict[str | None, float] = {}
        self._backoff: dict[str | None, float] = {}
        self._changed = asyncio.Event()  # wakes the lane: items came, a chunk ended, closing
        self._room = asyncio.Event()  # wakes a reader waiting for room
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    # -- feeding ----------------------------------------------------------------------------
    def put(self, items: list[Item]) -> None:
        if not items:
            return
        self._order.extend(items)
        if not self.by_key and all(item.event is not None for item in items):
            # the usual fetch (one stream in order, no markers): one extend, not a call per item
            self._waiting.setdefault(None, deque()).extend(items)
        else:
            for item in items:
                if item.event is None:
                    item.done = True  # a marker is finished once everything before it is
                else:
                    self._waiting.setdefault(item.key if self.by_key else None, deque()).append(item)
        self._changed.set()

    @property
    def buffered(self) -> int:
        return len(self._order)

    @property
    def busy(self) -> bool:
        """A chunk is with the sink right now."""
        return bool(self._chunks)

    def room(self) -> int:
        return max(0, self.capacity - len(self._order))

    async def wait_room(self, timeout: float | None = None) -> bool:
        """Wait until the lane can take more (or ``timeout``); True if it can."""
        while self.room() == 0 and not self._closing:
            self._room.clear()
            try:
                await asyncio.wait_for(self._room.wait(), timeout)
            except TimeoutError:
                break
        return self.room() > 0

    async def wait_drained(self, timeout: float | None = None) -> bool:
        """Wait until everything put so far is finished and acked (or ``timeout``)."""
        while self._order and not self._closing:
            self._room.clear()
            try:
                await asyncio.wait_for(self._room.wait(), timeout)
            except TimeoutError:
                break
        return not self._order

    def progress(self) -> dict[str, Any]:
        return {"buffered": len(self._order), "running": len(self._running), "acked": _show(self.acked),
                "last_error": self.last_error}

    # -- running ----------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"lane:{self.name}")

    async def close(self, grace_s: float) -> None:
        """Stop handing out chunks; let the ones running finish (and be acked) for up to
        ``grace_s``, then cancel them. Whatever was not finished is dropped here and comes
        back from the source (which was not acked past it)."""
        self._closing = True
        self._changed.set()
        self._room.set()
        if self._task is not None:
            await asyncio.wait([self._task])  # it ends by itself: it may be inside an ack
        running = list(self._chunks)
        if running:
            await asyncio.wait(running, timeout=grace_s)
            for task in running:
                if not task.done():
                    self.log.warning("chunk still running at close; cancelling it", grace_s=grace_s)
                    task.cancel()
            await asyncio.wait(running)
        await self._ack_finished_prefix()
        self._order.clear()
        self._waiting.clear()
        self._room.set()

    async def _run(self) -> None:
        while not self._closing:
            self._changed.clear()
            wake_at = self._start_chunks()
            await self._ack_finished_prefix()
            if self._changed.is_set():
                continue
            timeout = None if wake_at is None else max(0.0, wake_at - time.monotonic())
            try:
                await asyncio.wait_for(self._changed.wait(), timeout)
            except TimeoutError:
                pass

    def _start_chunks(self) -> float | None:
        """Start a chunk for every key that has items, is idle and is due; returns when to look
        again for keys that are not due yet (a batch window or a backoff)."""
        now = time.monotonic()
        wake_at: float | None = None
        for key, waiting in list(self._waiting.items()):
            if not waiting:
                if key not in self._running:
                    del self._waiting[key]  # many keys come and go; keep only live ones
                continue
            if key in self._running or len(self._running) >= self.parallelism:
                continue
            if len(self._chunks) - len(self._running) >= self.max_unsettled:
                break
            due = max(self._blocked_until.get(key, 0.0), self._window_end(waiting))
            if due > now:
                wake_at = due if wake_at is None else min(wake_at, due)
                continue
            chunk = self._take_chunk(waiting)
            task = self._running[key] = asyncio.create_task(self._deliver(key, chunk), name=f"chunk:{self.name}")
            self._chunks.add(task)
            task.add_done_callback(self._chunks.discard)
        return wake_at

    def _window_end(self, waiting: deque[Item]) -> float:
        if self.batch_size <= 1 or self.window_s <= 0 or len(waiting) >= self.batch_size:
            return 0.0
        return waiting[0].arrived + self.window_s

    def _take_chunk(self, waiting: deque[Item]) -> list[Item]:
        n = min(len(waiting), self.chunk_limit)
        rest = n % self.batch_size if self.batch_size > 1 and n > self.batch_size else 0
        if rest and time.monotonic() < waiting[n - rest].arrived + self.window_s:
            n -= rest  # the unfilled last batch may still fill up within its window
        return [waiting.popleft() for _ in range(n)]

    async def _deliver(self, key: str | None, chunk: list[Item]) -> None:
        events = [i.event for i in chunk if i.event is not None]
        finished, error = len(chunk), None
        try:
            try:
                settle = await self.sink(events)
            finally:
                # These events ran: the next chunk of this key may start while they settle.
                self._running.pop(key, None)
                self._changed.set()
            if settle is not None:
                await settle
        except Unfinished as exc:
            finished, error = exc.finished, exc.cause
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            finished, error = 0, exc
        finally:
            self._changed.set()
        for item in chunk[:finished]:
            item.done = True
        if error is None:
            self._backoff.pop(key, None)
            self._blocked_until.pop(key, None)
            self.last_error = None
            return
        # The unfinished rest goes back to the head of its queue and is offered again later.
        rest = chunk[finished:]
        self._waiting.setdefault(key, deque()).extendleft(reversed(rest))
        delay = self._backoff.get(key, MIN_BACKOFF_S)
        self._backoff[key] = min(delay * 2, MAX_BACKOFF_S)
        self._blocked_until[key] = time.monotonic() + delay
        self.last_error = f"{type(error).__name__}: {error}"
        self.log.warning("events not finished; offering them again", finished=finished,
                         unfinished=len(rest), retry_in_s=delay, error=self.last_error)

    async def _ack_finished_prefix(self) -> None:
        # A marker between finished items is acked with them: its position lies between theirs.
        last: Item | None = None
        while self._order and self._order[0].done:
            last = self._order.popleft()
        if last is None:
            return
        self._room.set()
        if self.on_room is not None:
            self.on_room()
        try:
            await self.ack(last.position)
            self.acked = last.position
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a later ack covers this one; a crash meanwhile only redelivers
            self.log.warning("ack failed; a later one will cover it", error=f"{type(exc).__name__}: {exc}")


def _show(position: Any) -> Any:
    if position is None or isinstance(position, (int, str)):
        return position
    return "set"
