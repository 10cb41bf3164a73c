"""Billing periods: the calendar month in UTC, and the cache admission calls use."""

from __future__ import annotations

import calendar

import pytest

from meter.redis_layer.billing_period import PeriodCache, billing_period, period_bounds


def ts(*ymdhms: int) -> float:
    return float(calendar.timegm((*ymdhms, 0, 0, 0)[:6]))


@pytest.mark.parametrize(
    ("at", "period", "start", "end"),
    [
        (ts(2026, 12, 31, 23, 59, 59), "202612", ts(2026, 12, 1), ts(2027, 1, 1)),
        (ts(2027, 1, 1), "202701", ts(2027, 1, 1), ts(2027, 2, 1)),
        (ts(2028, 2, 29, 12), "202802", ts(2028, 2, 1), ts(2028, 3, 1)),
    ],
)
def test_periods_are_utc_calendar_months(at: float, period: str, start: float, end: float) -> None:
    assert billing_period(at) == period
    assert period_bounds(at) == (start, end)


def test_the_cache_follows_the_clock_across_month_ends_both_ways() -> None:
    cached = PeriodCache()
    last_second = ts(2026, 11, 30, 23, 59, 59) + 0.999
    # Forward over the boundary, then back (a clock stepped back by NTP), then forward.
    for at in (last_second, last_second + 0.001, last_second, ts(2027, 3, 5), ts(2026, 1, 1)):
        assert cached(at) == billing_period(at), at
