"""Calendar periods of usage series, in UTC: hours, days, ISO weeks, months.

All values are epoch milliseconds. ISO weeks start on Monday 00:00 UTC; months on the
first day at 00:00 UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime

HOUR_MS = 3_600_000
DAY_MS = 86_400_000
WEEK_MS = 7 * DAY_MS
# 1970-01-01 was a Thursday: day 0 is weekday 3 counting Monday as 0.
_EPOCH_WEEKDAY = 3


def period_start(ms: int, granularity: str) -> int:
    """Start of the period containing ``ms``."""
    if granularity == "hour":
        return ms - ms % HOUR_MS
    if granularity == "day":
        return ms - ms % DAY_MS
    if granularity == "week":
        day = ms // DAY_MS
        return (day - (day + _EPOCH_WEEKDAY) % 7) * DAY_MS
    if granularity == "month":
        dt = datetime.fromtimestamp(ms // 1000, UTC)
        return int(datetime(dt.year, dt.month, 1, tzinfo=UTC).timestamp()) * 1000
    raise ValueError(f"unknown granularity {granularity!r}")


def next_period(start: int, granularity: str) -> int:
    """Start of the period after the one starting at ``start``."""
    if granularity == "hour":
        return start + HOUR_MS
    if granularity == "day":
        return start + DAY_MS
    if granularity == "week":
        return start + WEEK_MS
    if granularity == "month":
        dt = datetime.fromtimestamp(start // 1000, UTC)
        year, month = (dt.year + 1, 1) if dt.month == 12 else (dt.year, dt.month + 1)
        return int(datetime(year, month, 1, tzinfo=UTC).timestamp()) * 1000
    raise ValueError(f"unknown granularity {granularity!r}")


def sql_step(granularity: str) -> int:
    """Bucket width the database pre-aggregates by before periods are folded in Python.

    Hours and days are fixed widths from the epoch; weeks and months are folded from days.
    """
    return HOUR_MS if granularity == "hour" else DAY_MS
