"""MongoDB source: a change stream per trigger, resumed from a persisted token.

A reader takes changes off the stream in oplog order and puts them into a lane
(:mod:`connectors.lanes`), which hands them to the hub in chunks (batches) and saves the resume
token once per finished chunk, not per event. While nothing matches, the stream's post-batch
token is put into the lane as a marker, so filtered-out history is not re-read after a restart
yet the token never passes an event that is still running. A restart resumes after the last
finished chunk, so writes made while the hub was down still run, and the hub's completion
markers keep the events of a chunk that was running at a crash from running twice.

The reader is never cancelled inside a driver call: stopping is a flag it sees within one
``max_await_ms``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from bson import json_util
from bson.json_util import RELAXED_JSON_OPTIONS
import pymongo
from pymongo import AsyncMongoClient
from pymongo.errors import OperationFailure

from connectors.base import LeaseLost, Sink, SupervisedLoop
from connectors.lanes import Item, Lane
from hub.events import Event
from hub.driver import shielded

# Server error codes meaning "the resume point is gone from the oplog".
HISTORY_LOST = {136, 286}  # CappedPositionLost, ChangeStreamHistoryLost
STREAM_ENDERS = {"invalidate", "drop", "dropDatabase", "rename"}
SAVE_TIMEOUT_S = 5.0

LoadPosition = Callable[[], Awaitable[dict[str, Any] | None]]
SavePosition = Callable[[dict[str, Any]], Awaitable[None]]


def to_json(value: Any) -> Any:
    """BSON -> plain JSON (relaxed Extended JSON: ObjectId as {"$oid"}, dates as {"$date"})."""
    return json.loads(json_util.dumps(value, json_options=RELAXED_JSON_OPTIONS))


def change_event(change: dict[str, Any], database: str, collection: str) -> Event:
    op = change["operationType"]
    token = change["_id"]["_data"]
    data = to_json({k: v for k, v in change.items() if k != "_id"})
    data["resume_token"] = token
    wall = change.get("wallTime") or change["clusterTime"].as_datetime()
    return Event(
        id=f"mongodb:{token}",  # the resume token names exactly one change, stable on redelivery
        source=f"mongodb://{database}/{collection}",
        type=f"mongodb.{op}",
        subject=json.dumps(to_json(change.get("documentKey")), sort_keys=True),
        time=wall.isoformat().replace("+00:00", "Z"),
        data=data,
    )


class ChangeStreamSubscription(SupervisedLoop):
    def __init__(
        self,
        *,
        name: str,
        client: AsyncMongoClient[dict[str, Any]],
        database: str,
        collection: str,
        operations: list[str],
        full_document: str,
        sink: Sink,
        load_position: LoadPosition,
        save_position: SavePosition,
        batch_size: int = 1,
        batch_window_s: float = 0.0,
        max_chunk: int = 500,
        lane_capacity: int = 2000,
        max_await_ms: int = 1000,
        shutdown_grace_s: float = 10.0,
        lease_ok: Callable[[], bool] | None = None,
    ) -> None:
        super().__init__(name)
        self.client = client
        self.database = database
        self.collection = collection
        self.operations = operations
        self.full_document = full_document
        self.sink = sink
        self.load_position = load_position
        self.save_position = save_position
        self.batch_size = batch_size
        self.batch_window_s = batch_window_s
        self.max_chunk = max_chunk
        self.lane_capacity = max(lane_capacity, batch_size)
        self.max_await_ms = max_await_ms
        self.shutdown_grace_s = shutdown_grace_s
        # the reader notices the flag within max_await_ms (or a server-selection timeout while
        # MongoDB is away), then the lane's grace, then its last (bounded) token save
        self.stop_grace_s = shutdown_grace_s + max_await_ms / 1000 + 2 * SAVE_TIMEOUT_S + 5.0
        self.lane: Lane | None = None
        self.started_from: dict[str, Any] | None = None  # the saved position the stream resumed from
        # True while this instance's lease on the stream is surely still valid (renewed recently
        # enough): no chunk starts without it, so a holder that stalled past its lease stops
        # running events even before its next (fenced) cursor save is refused.
        self.lease_ok = lease_ok

    def progress(self) -> dict[str, object]:
        return self.lane.progress() if self.lane else {}

    def cursor(self) -> dict[str, Any] | None:
        """The position this reader last saved (resume_token, start_after or
        start_at_operation_time), or the one it resumed from when it has saved none yet; None
        before it has loaded one. Read-only, no server call."""
        acked = self.lane.acked if self.lane is not None else None
        position = acked if isinstance(acked, dict) else self.started_from
        return dict(position) if position is not None else None

    async def run_once(self) -> None:
        position = await shielded(self.load_position()) or {}
        self.started_from = position
        kwargs: dict[str, Any] = {"max_await_time_ms": self.max_await_ms}
        if self.full_document != "default":
            kwargs["full_document"] = self.full_document
        if position.get("start_after"):
            kwargs["start_after"] = position["start_after"]
        elif position.get("resume_token"):
            kwargs["resume_after"] = position["resume_token"]
        elif position.get("start_at_operation_time"):
            kwargs["start_at_operation_time"] = position["start_at_operation_time"]
        pipeline = [{"$match": {"operationType": {"$in": [*self.operations, *STREAM_ENDERS]}}}]
        coll = self.client[self.database][self.collection]
        try:
            stream = await coll.watch(pipeline, **kwargs)
        except OperationFailure as exc:
            if exc.code in HISTORY_LOST:
                await self._history_lost(exc)
                return
            raise
        lane = self.lane = Lane(
            self.name, self._fenced_sink, self._save, batch_size=self.batch_size,
            window_s=self.batch_window_s, max_chunk=self.max_chunk, capacity=self.lane_capacity,
        )
        lane.start()
        try:
            async with stream:
                self.state = "running"
                self.log.info("change stream running", database=self.database, collection=self.collection)
                await self._read(stream, lane, position.get("resume_token"))
        finally:
            await lane.close(self.shutdown_grace_s)

    async def _read(self, stream: Any, lane: Lane, saved: Any) -> None:
        marked = saved
        while stream.alive and not self.stopping.is_set():
            if not await lane.wait_room(timeout=1.0):
                continue
            try:
                change = await stream.try_next()
            except OperationFailure as exc:
                if exc.code in HISTORY_LOST:
                    if await self._drained(lane):
                        await self._history_lost(exc)
                    return
                raise
            if change is None:
                idle_token = stream.resume_token
                if idle_token is not None and idle_token != marked:
                    lane.put([Item(None, {"resume_token": idle_token, "start_after": None})])
                    marked = idle_token
                continue
            op = change["operationType"]
            if op in STREAM_ENDERS:
                # The stream ends after these. Start again *after* the invalidating event, so
                # a re-created collection is watched again without replaying old history.
                self.log.warning("change stream invalidated; restarting after it", operation=op,
                                 database=self.database, collection=self.collection)
                lane.put([Item(None, {"resume_token": None, "start_after": change["_id"]})])
                await self._drained(lane)
                return
            lane.put([Item(change_event(change, self.database, self.collection),
                           {"resume_token": change["_id"], "start_after": None})])
            marked = change["_id"]

    async def _fenced_sink(self, events: list[Event]) -> Any:
        if self.lease_ok is not None and not self.lease_ok():
            self._lost("the stream's lease was not renewed in time")
            raise LeaseLost("lease not renewed in time")
        return await self.sink(events)

    async def _save(self, position: dict[str, Any]) -> None:
        """Save a position: shielded (never cancelled inside the driver) and bounded by
        PyMongo's own timeout, so a stop during an outage does not wait for ever."""
        try:
            with pymongo.timeout(SAVE_TIMEOUT_S):
                await shielded(self.save_position(position))
        except LeaseLost:
            self._lost("a newer lease holder has moved the cursor")
            raise

    def _lost(self, why: str) -> None:
        """Stop for good (the supervisor must not restart us): another instance reads now."""
        if not self.stopping.is_set():
            self.log.error("change stream lease lost; this instance stops reading it", reason=why)
            self.state = "error: lease lost"
            self.stopping.set()

    async def _drained(self, lane: Lane) -> bool:
        """Wait until every change read so far is finished (False: stopping first)."""
        while not await lane.wait_drained(timeout=1.0):
            if self.stopping.is_set():
                return False
        return True

    async def _history_lost(self, exc: OperationFailure) -> None:
        self.log.error(
            "change stream history lost: the saved resume point is no longer in the oplog; "
            "changes made since then cannot be replayed. Restarting from now.",
            database=self.database, collection=self.collection, code=exc.code, error=str(exc),
        )
        await self._save({"resume_token": None, "start_after": None, "start_at_operation_time": None,
                          "history_lost_at": json_util.dumps(exc.details)})
