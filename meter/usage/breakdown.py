"""Usage broken down for the console's charts: one series per app, channel or refusal
reason, every period of the range present (zeros included), live buckets merged.

One function computes what a chart shows, so its CSV is exactly the chart's numbers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Collection
from dataclasses import dataclass
from typing import Literal

from meter.redis_layer.client import RedisClient
from meter.store import Store, UsagePoint
from meter.store.periods import next_period, period_start
from meter.usage.series import merge_points, usage, with_live_rows

Metric = Literal["sessions", "requests", "notifications", "messages", "amount", "refused"]
By = Literal["total", "app", "channel"]
METRICS: tuple[str, ...] = ("sessions", "requests", "notifications", "messages", "amount",
                            "refused")  # fmt: skip
MAX_SERIES = 8  # more apps or channels than this: the smallest are summed as OTHER
# The key (and label) of that sum: in parentheses, so no channel (keys.CHANNEL_RE) or app
# id can be named so; a channel named "other" is a series of its own.
OTHER = "(others)"


@dataclass(frozen=True, slots=True)
class Breakdown:
    periods: list[int]  # period starts, ms
    series: dict[str, list[int]]  # label -> value per period (amounts in micro-dollars)
    live: bool


def value(p: UsagePoint, metric: str) -> int:
    if metric == "amount":
        return p.amount
    if metric == "refused":
        return sum(p.refused.values())
    if metric == "messages":
        return p.messages
    return {"sessions": p.sessions, "requests": p.requests, "notifications": p.notifications}[
        metric
    ]


def periods_of(from_ms: int, to_ms: int, granularity: str) -> list[int]:
    out, start = [], period_start(from_ms, granularity)
    while start < to_ms:
        out.append(start)
        start = next_period(start, granularity)
    return out


def _by_reason(points: list[UsagePoint], periods: list[int], live: bool) -> Breakdown:
    reasons: dict[str, dict[int, int]] = {}
    for p in points:
        for reason, n in p.refused.items():
            reasons.setdefault(reason, {})[p.start] = n
    series = {r: [v.get(s, 0) for s in periods] for r, v in sorted(reasons.items())}
    return Breakdown(periods, series, live)


async def breakdown(
    store: Store,
    redis: RedisClient | None,
    ws: str,
    from_ms: int,
    to_ms: int,
    granularity: str,
    metric: str,
    by: str,
    *,
    app_id: str | None = None,
    app_ids: Collection[str] | None = None,
    channel: str | None = None,
) -> Breakdown:
    """The series a usage chart draws. ``redis=None`` (or Redis failing, caught by the
    caller) gives stored usage only."""
    periods = periods_of(from_ms, to_ms, granularity)
    by_key: dict[str, dict[int, UsagePoint]]
    if by == "total":
        points = await usage(store, redis, ws, from_ms, to_ms, granularity, app_id, channel,
                             include_live=redis is not None, app_ids=app_ids)  # fmt: skip
        if metric == "refused":  # refusals stacked by reason
            return _by_reason(points, periods, redis is not None)
        by_key = {"total": {p.start: p for p in points}}
    else:

        def read() -> Awaitable[dict[str, dict[int, UsagePoint]]]:
            return store.usage_breakdown(
                ws, from_ms, to_ms, granularity, by, app_id=app_id, app_ids=app_ids,
                channel=channel,
            )  # fmt: skip

        if redis is None:
            by_key = await read()
        else:
            by_key, live = await with_live_rows(
                store, redis, ws, from_ms, to_ms, read, app_id=app_id, app_ids=app_ids,
                channel=channel,
            )  # fmt: skip
            for bucket_ms, (app, ch, _product, unit), counters in live:
                key = app if by == "app" else ch
                start = period_start(bucket_ms, granularity)
                series = by_key.setdefault(key, {})
                series[start] = merge_points(series.get(start, UsagePoint(start)), counters, unit)
    values = {k: [value(v[s], metric) if s in v else 0 for s in periods]
              for k, v in by_key.items()}  # fmt: skip
    values = {k: v for k, v in values.items() if any(v)} or (
        {"total": [0] * len(periods)} if by == "total" else {}
    )
    ranked = sorted(values, key=lambda k: (-sum(values[k]), k))
    if len(ranked) > MAX_SERIES:
        keep, rest = ranked[: MAX_SERIES - 1], ranked[MAX_SERIES - 1 :]
        other = [sum(values[k][i] for k in rest) for i in range(len(periods))]
        values = {**{k: values[k] for k in keep}, OTHER: other}
        ranked = [*keep, OTHER]
    return Breakdown(periods, {k: values[k] for k in ranked}, redis is not None)
