"""What the S3 admission writes, made cheaper without changing a byte: the event of an inbox item
or a dedup claim is encoded once (``hub.store.storable_bson``) and embedded as raw BSON (what
MongoDB gets is what ``storable`` gave before, hostile payloads included), and a dedup claim's id
(``Observation.doc_id``) is the one stored before."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import random
from typing import Any

import bson
import pytest

from hub.events import Event
from hub.intake.s3_seen import Observation
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


def test_an_observations_id_is_the_one_stored_before() -> None:
    """``Observation.doc_id`` keys ``s3_seen``: written out by hand now, it must stay the hash of
    ``json.dumps([bucket, key, etag], ensure_ascii=False)``, odd characters included."""
    rnd = random.Random(21)
    alphabet = ['a', '"', '\\', '\n', '\x00', '\x1f', 'é', '\u2028', '😀', ' ', '/', '\t', '\x7f']
    at = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    event = Event(id="x", source="s3://b", type="s3:ObjectCreated:Put", data={})
    for _ in range(2000):
        bucket, key, etag = (''.join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 8))) for _ in range(3))
        before = hashlib.sha256(json.dumps([bucket, key, etag], ensure_ascii=False).encode("utf-8")).hexdigest()[:32]
        assert Observation(bucket, key, etag, at, event).doc_id == before
