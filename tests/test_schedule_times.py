"""When schedules fire (pure: no clock, no server)."""

from __future__ import annotations

import datetime as dt

import pytest

from hub.spec import schedule_times as st

UTC = dt.timezone.utc
ANCHOR = dt.datetime(2026, 3, 28, 12, 0, 0, 250000, tzinfo=UTC)


def test_rate_ticks_count_from_the_anchor() -> None:
    t = st.next_tick(None, "30 seconds", "UTC", ANCHOR, ANCHOR)
    assert t == ANCHOR + dt.timedelta(seconds=30)
    assert st.next_tick(None, "30 seconds", "UTC", ANCHOR, t) == ANCHOR + dt.timedelta(seconds=60)
    # from any instant: the next multiple of the period after it
    assert st.next_tick(None, "1 minute", "UTC", ANCHOR, ANCHOR + dt.timedelta(seconds=61)) == \
        ANCHOR + dt.timedelta(minutes=2)
    assert st.last_tick(None, "1 minute", "UTC", ANCHOR, ANCHOR + dt.timedelta(seconds=59)) is None
    assert st.last_tick(None, "1 minute", "UTC", ANCHOR, ANCHOR + dt.timedelta(seconds=130)) == \
        ANCHOR + dt.timedelta(minutes=2)


def test_cron_follows_the_time_zone_across_a_dst_change() -> None:
    # 09:00 in Paris is 08:00 UTC before 2026-03-29 and 07:00 UTC after (summer time)
    first = st.next_tick("0 9 * * *", None, "Europe/Paris", ANCHOR, ANCHOR)
    second = st.next_tick("0 9 * * *", None, "Europe/Paris", ANCHOR, first)
    assert (first, second) == (dt.datetime(2026, 3, 29, 7, 0, tzinfo=UTC), dt.datetime(2026, 3, 30, 7, 0, tzinfo=UTC))
    kolkata = st.next_tick("0 9 * * *", None, "Asia/Kolkata", ANCHOR, ANCHOR)
    assert kolkata == dt.datetime(2026, 3, 29, 3, 30, tzinfo=UTC)
    assert st.last_tick("0 9 * * *", None, "Europe/Paris", ANCHOR, second) == second


def test_six_fields_put_seconds_last() -> None:
    t = st.next_tick("* * * * * */15", None, "UTC", ANCHOR, ANCHOR)
    assert t == dt.datetime(2026, 3, 28, 12, 0, 15, tzinfo=UTC)


@pytest.mark.parametrize("cron, rate, tz, message", [
    ("61 * * * *", None, "UTC", "not a valid expression"),
    ("* * *", None, "UTC", "not a valid expression"),
    ("0 0 30 2 *", None, "UTC", "never fires"),
    (None, "1 minute", "Nowhere/Land", "unknown time zone"),
])
def test_bad_schedules(cron: str | None, rate: str | None, tz: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        st.check(cron, rate, tz)
