"""MongoDB source: a change stream per trigger, resumed from a persisted token.

Events are handled one at a time in oplog order; the resume token is saved after each finished
event (and, while idle, the stream's post-batch token, so filtered-out history is not re-read).
A restart resumes after the last finished event, so writes made while the hub was down still run.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from bson import json_util
from bson.json_util import RELAXED_JSON_OPTIONS
from pymongo import AsyncMongoClient
from pymongo.errors import OperationFailure

from connectors.base import Sink, SupervisedLoop
from hub.events import Event

# Server error codes meaning "the resume point is gone from the oplog".
HISTORY_LOST = {136, 286}  # CappedPositionLost, ChangeStreamHistoryLost
STREAM_ENDERS = {"invalidate", "drop", "dropDatabase", "rename"}

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

    async def run_once(self) -> None:
        position = await self.load_position() or {}
        kwargs: dict[str, Any] = {}
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
        async with stream:
            self.state = "running"
            self.log.info("change stream running", database=self.database, collection=self.collection)
            saved = position.get("resume_token")
            while stream.alive:
                try:
                    change = await stream.try_next()
                except OperationFailure as exc:
                    if exc.code in HISTORY_LOST:
                        await self._history_lost(exc)
                        return
                    raise
                if change is None:
                    idle_token = stream.resume_token
                    if idle_token is not None and idle_token != saved:
                        await self.save_position({"resume_token": idle_token, "start_after": None})
                        saved = idle_token
                    continue
                op = change["operationType"]
                if op in STREAM_ENDERS:
                    # The stream ends after these. Start again *after* the invalidating event, so
                    # a re-created collection is watched again without replaying old history.
                    self.log.warning("change stream invalidated; restarting after it", operation=op,
                                     database=self.database, collection=self.collection)
                    await self.save_position({"resume_token": None, "start_after": change["_id"]})
                    return
                await self.sink(change_event(change, self.database, self.collection))
                await self.save_position({"resume_token": change["_id"], "start_after": None})
                saved = change["_id"]

    async def _history_lost(self, exc: OperationFailure) -> None:
        self.log.error(
            "change stream history lost: the saved resume point is no longer in the oplog; "
            "changes made since then cannot be replayed. Restarting from now.",
            database=self.database, collection=self.collection, code=exc.code, error=str(exc),
        )
        await self.save_position({"resume_token": None, "start_after": None, "start_at_operation_time": None,
                                  "history_lost_at": json_util.dumps(exc.details)})
