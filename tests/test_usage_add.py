"""Usage.add folds records into per-(function, version, UTC hour) increments: the hour it keeps
from the previous record must never put a record in the wrong hour (edges, other time zones,
naive times), and every counter must add up. No MongoDB: the increments are read before a flush."""

from __future__ import annotations

import datetime as dt
from typing import Any

from hub.delivery.usage import HIST_KEYS, Usage, hist_bucket
from hub.metrics import Metrics

UTC = dt.timezone.utc


class _Db:
    usage = None


def _rec(started: dt.datetime, status: str = "succeeded", **extra: Any) -> dict[str, Any]:
    return {"function": "f", "version": "v1", "started_at": started, "status": status, "billed_ms": 3,
            "memory_mb": 128, "duration_ms": 2.5, "cold_start": False, "max_memory_mb": 10, **extra}


async def test_each_record_lands_in_its_own_utc_hour() -> None:
    usage = Usage(_Db(), Metrics())  # type: ignore[arg-type]
    h12 = dt.datetime(2026, 5, 1, 12, tzinfo=UTC)
    records = [
        _rec(h12 + dt.timedelta(minutes=5)),
        _rec(h12 + dt.timedelta(minutes=59, seconds=59, microseconds=999_999)),  # the hour's last instant
        _rec(h12 + dt.timedelta(hours=1)),  # the next hour's first
        _rec(dt.datetime(2026, 5, 1, 14, 30, tzinfo=dt.timezone(dt.timedelta(hours=2)))),  # 12:30 UTC
        _rec(dt.datetime(2026, 5, 1, 13, 10)),  # naive: UTC
        _rec(h12 + dt.timedelta(minutes=7), "failed", cold_start=True, duration_ms=1000.0, max_memory_mb=50),
        _rec(h12 + dt.timedelta(minutes=8), "throttled", billed_ms=0, duration_ms=0),
        _rec(h12 + dt.timedelta(minutes=9), "partial", version=None),
        {"function": 7, "started_at": h12},  # not a record of a function: skipped
    ]
    usage.add(records)
    assert usage._pending_records == 8
    twelve = usage._pending[("f", "v1", h12)]
    assert twelve.inc == {
        "invocations": 4, "failures": 1, "cold_starts": 1, "throttles": 1,
        "duration_ms": 2.5 * 3 + 1000.0, HIST_KEYS[hist_bucket(2.5)]: 3, HIST_KEYS[hist_bucket(1000.0)]: 1,
        "billed_ms": 12, "mb_ms": 12 * 128,
    }
    assert (twelve.duration_min, twelve.duration_max, twelve.max_memory) == (2.5, 1000.0, 50)
    thirteen = usage._pending[("f", "v1", h12 + dt.timedelta(hours=1))]
    assert thirteen.inc["invocations"] == 2 and thirteen.inc["billed_ms"] == 6
    partial = usage._pending[("f", None, h12)]
    assert partial.inc["invocations"] == 1 and partial.inc["partial"] == 1
    assert set(usage._pending) == {("f", "v1", h12), ("f", "v1", h12 + dt.timedelta(hours=1)), ("f", None, h12)}
    # a later write, back in an earlier hour (records land out of order across writers)
    usage.add([_rec(h12 - dt.timedelta(minutes=1))])
    assert usage._pending[("f", "v1", h12 - dt.timedelta(hours=1))].inc["invocations"] == 1
