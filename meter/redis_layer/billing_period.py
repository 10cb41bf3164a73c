"""Billing periods as Redis stores them: the suffix of the enterprise usage counters."""

from __future__ import annotations

import time


def billing_period(now_s: float) -> str:
    """The enterprise billing period (calendar month, UTC) as ``YYYYMM``."""
    t = time.gmtime(now_s)
    return f"{t.tm_year:04d}{t.tm_mon:02d}"
