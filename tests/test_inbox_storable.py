"""The event of an inbox item or a dedup claim is encoded once (``hub.store.storable_bson``) and
embedded as raw BSON in the writes: what MongoDB gets is what ``storable`` gave before, byte for
byte, hostile payloads included, and an item read back is the same document."""

from __future__ import annotations

from typing import Any

import bson
import pytest

from hub.events import Event
from hub.store import storable, storable_bson

USUAL = Event(id="s3:b/k", source="s3://b", type="s3:ObjectCreated:Put", subject="k",
              data={"bucket": "b", "key": "k", "size": 3, "raw": {"s3": {"object": {"key": "k"}}}}).to_cloudevent()


@pytest.mark.parametrize("data", [
    {"n": 2 ** 64},  # beyond int64
    {"s": "\ud800"},  # a lone surrogate
    {"a\x00b": 1},  # NUL in a key
    {"deep": [[{"x": -(2 ** 70)}]]},
    USUAL["data"],
])
def test_the_raw_event_is_what_storable_gave(data: Any) -> None:
    doc = {**USUAL, "data": data}
    item = {"kind": "s3", "triggers": ["t"]}
    before = bson.encode({**item, "event": storable(doc)})
    after = bson.encode({**item, "event": storable_bson(doc)})
    assert after == before
    assert bson.decode(after)["event"] == storable(doc)
