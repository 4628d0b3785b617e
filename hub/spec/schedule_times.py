"""When a schedule trigger fires: cron expressions (croniter) in an IANA time zone, or a rate.

Pure functions over aware datetimes, so the scheduler and the API agree and tests need no clock.
A rate ticks at ``anchor + k * period`` (the anchor is when the trigger was first written), so
every hub instance computes the same ticks without talking to the others.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo

from croniter import croniter

UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


def zone(name: str) -> zoneinfo.ZoneInfo:
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, IsADirectoryError):
        raise ValueError(f"unknown time zone {name!r} (use an IANA name such as 'UTC' or 'Europe/Paris')") from None


def rate_seconds(rate: str) -> int:
    count, unit = rate.split()
    return int(count) * UNITS[unit.rstrip("s")]


def check(cron: str | None, rate: str | None, timezone: str) -> None:
    """Raise ValueError saying what is wrong with a schedule."""
    zone(timezone)
    if cron is not None:
        fields = cron.split()
        if len(fields) not in (5, 6) or not croniter.is_valid(cron):
            raise ValueError(f"cron {cron!r} is not a valid expression (5 fields, or 6 with seconds last)")
        # it must ever fire (e.g. "0 0 30 2 *" never does)
        try:
            croniter(cron, dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc)).get_next(dt.datetime)
        except Exception:
            raise ValueError(f"cron {cron!r} never fires") from None
    if rate is not None and rate_seconds(rate) < 1:
        raise ValueError("a rate must be at least 1 second")


def next_tick(cron: str | None, rate: str | None, timezone: str, anchor: dt.datetime,
              after: dt.datetime) -> dt.datetime:
    """The first tick strictly after ``after`` (UTC, aware)."""
    if rate is not None:
        period = rate_seconds(rate)
        elapsed = (after - anchor).total_seconds()
        k = max(1, int(elapsed // period) + 1)
        tick = anchor + dt.timedelta(seconds=k * period)
        while tick <= after:  # float rounding
            tick += dt.timedelta(seconds=period)
        return tick
    assert cron is not None
    local = after.astimezone(zone(timezone))
    nxt: dt.datetime = croniter(cron, local).get_next(dt.datetime)
    return nxt.astimezone(dt.timezone.utc)


def last_tick(cron: str | None, rate: str | None, timezone: str, anchor: dt.datetime,
              at_or_before: dt.datetime) -> dt.datetime | None:
    """The latest tick at or before ``at_or_before`` and after ``anchor`` (None: none yet)."""
    if rate is not None:
        period = rate_seconds(rate)
        k = int((at_or_before - anchor).total_seconds() // period)
        return anchor + dt.timedelta(seconds=k * period) if k >= 1 else None
    assert cron is not None
    local = (at_or_before + dt.timedelta(microseconds=1)).astimezone(zone(timezone))
    prev: dt.datetime = croniter(cron, local).get_prev(dt.datetime)
    prev = prev.astimezone(dt.timezone.utc)
    return prev if prev > anchor else None
