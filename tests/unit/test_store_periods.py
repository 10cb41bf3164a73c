"""UTC period alignment of usage series, checked against ``datetime`` arithmetic."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meter.store.periods import next_period, period_start

# 1970 .. 2200, in ms.
stamps = st.integers(min_value=0, max_value=7_258_118_400_000)


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def _reference(ms: int, granularity: str) -> datetime:
    d = _dt(ms - ms % 1000)
    if granularity == "hour":
        return d.replace(minute=0, second=0, microsecond=0)
    day = d.replace(hour=0, minute=0, second=0, microsecond=0)
    if granularity == "day":
        return day
    if granularity == "week":
        return day - timedelta(days=day.isoweekday() - 1)
    return day.replace(day=1)


@pytest.mark.parametrize("granularity", ["hour", "day", "week", "month"])
@given(ms=stamps)
def test_period_start_matches_calendar(granularity: str, ms: int) -> None:
    start = period_start(ms, granularity)
    assert _dt(start) == _reference(ms, granularity)
    assert start <= ms < next_period(start, granularity)
    assert period_start(next_period(start, granularity), granularity) == next_period(
        start, granularity
    )


def test_iso_week_starts_monday_across_year_end() -> None:
    # Thursday 2026-01-01 belongs to the ISO week starting Monday 2025-12-29.
    jan1 = int(datetime(2026, 1, 1, 12, tzinfo=UTC).timestamp() * 1000)
    assert _dt(period_start(jan1, "week")) == datetime(2025, 12, 29, tzinfo=UTC)
    dec = int(datetime(2025, 12, 15, tzinfo=UTC).timestamp() * 1000)
    assert _dt(next_period(period_start(dec, "month"), "month")) == datetime(2026, 1, 1, tzinfo=UTC)


def test_unknown_granularity() -> None:
    with pytest.raises(ValueError, match="unknown granularity"):
        period_start(0, "year")
    with pytest.raises(ValueError, match="unknown granularity"):
        next_period(0, "fortnight")
