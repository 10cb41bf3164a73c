"""Billing periods as Redis stores them: the suffix of the enterprise usage counters."""

from __future__ import annotations

import calendar
import time


def billing_period(now_s: float) -> str:
    """The enterprise billing period (calendar month, UTC) as ``YYYYMM``."""
    t = time.gmtime(now_s)
    return f"{t.tm_year:04d}{t.tm_mon:02d}"


def period_bounds(now_s: float) -> tuple[float, float]:
    """The first second of ``now_s``'s billing period and of the next one (epoch s)."""
    t = time.gmtime(now_s)
    year, month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
    start = calendar.timegm((t.tm_year, t.tm_mon, 1, 0, 0, 0))
    return float(start), float(calendar.timegm((year, month, 1, 0, 0, 0)))


class PeriodCache:
    """:func:`billing_period` for a caller that asks on every call: recomputed only
    when ``now`` leaves the period it last computed (in either direction)."""

    __slots__ = ("_end", "_start", "_value")

    def __init__(self) -> None:
        self._start = self._end = 0.0
        self._value = ""

    def __call__(self, now_s: float) -> str:
        if not self._start <= now_s < self._end:
            self._start, self._end = period_bounds(now_s)
            self._value = billing_period(now_s)
        return self._value
