"""Usage series for the API: the durable store merged with what Redis has not flushed yet.

Flushed buckets come from ``Store.usage_series``; live buckets (still in ``P:ag:*``) and
claimed-but-unacked ones from one atomic ``peek.lua`` call. Both are read as of one
moment (:mod:`meter.usage.unflushed`: Redis first, then the store in one snapshot that
also says which claims it already holds), so a bucket a flusher moves meanwhile is
counted once: never missed, never twice.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from typing import Any, TypeVar

from meter.redis_layer.client import RedisClient
from meter.store import Store, UsagePoint
from meter.store.models import GRANULARITIES
from meter.store.periods import period_start
from meter.usage.unflushed import read_with_unflushed

T = TypeVar("T")


def merge_points(a: UsagePoint, counters: dict[str, Any], unit: str) -> UsagePoint:
    """``a`` plus one aggregate row's counters (as folded by :func:`fold_aggregates`)."""
    units = dict(a.units)
    n = int(counters.get("units", 0))
    if n:
        units[unit] = units.get(unit, 0) + n
    refused = dict(a.refused)
    for reason, count in counters.get("refused", {}).items():
        refused[reason] = refused.get(reason, 0) + int(count)
    return UsagePoint(
        start=a.start,
        units={u: v for u, v in units.items() if v},
        messages=a.messages + int(counters.get("messages", 0)),
        amount_free=a.amount_free + int(counters.get("amount_free", 0)),
        amount_app=a.amount_app + int(counters.get("amount_app", 0)),
        amount_pool=a.amount_pool + int(counters.get("amount_pool", 0)),
        amount_invoiced=a.amount_invoiced + int(counters.get("amount_invoiced", 0)),
        refused={r: v for r, v in refused.items() if v},
    )


def _wanted(
    key: tuple[str, str, str, str],
    app_id: str | None,
    app_ids: Collection[str] | None,
    channel: str | None,
) -> bool:
    app, ch = key[0], key[1]
    return (
        (app_id is None or app == app_id)
        and (app_ids is None or app in app_ids)
        and (channel is None or ch == channel)
    )


async def with_live_rows(
    store: Store,
    client: RedisClient,
    ws: str,
    from_ms: int,
    to_ms: int,
    read: Callable[[], Awaitable[T]],
    *,
    app_id: str | None = None,
    app_ids: Collection[str] | None = None,
    channel: str | None = None,
) -> tuple[T, list[tuple[int, tuple[str, str, str, str], dict[str, Any]]]]:
    """``read()`` of the store, and the unflushed aggregate rows ``(bucket_start_ms, (app,
    channel, product, unit), counters)`` of the app (or apps) and channel asked for (every
    one when not asked), as of one moment. ``read`` must only read, through ``store``."""
    lo, hi = from_ms // 1000, (to_ms - 1) // 1000
    stored, rows = await read_with_unflushed(store, client, ws, lo, hi, read)
    out = []
    for bucket, folded in rows:
        bucket_ms = bucket * 1000
        if not from_ms <= bucket_ms < to_ms:
            continue
        for key, counters in folded.items():
            if _wanted(key, app_id, app_ids, channel):
                out.append((bucket_ms, key, counters))
    return stored, out


async def usage(
    store: Store,
    redis: RedisClient | None,
    ws: str,
    from_ms: int,
    to_ms: int,
    granularity: str,
    app_id: str | None = None,
    channel: str | None = None,
    include_live: bool = True,
    *,
    app_ids: Collection[str] | None = None,
    fill: bool = False,
) -> list[UsagePoint]:
    """Usage per period over ``[from_ms, to_ms)``, oldest first, live buckets included.

    ``app_ids`` restricts to a set of apps (an app owner's view); ``fill`` returns every
    period of the range, zeros included.
    """
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}")

    def read() -> Awaitable[list[UsagePoint]]:
        return store.usage_series(
            ws, from_ms, to_ms, granularity, app_id=app_id, app_ids=app_ids, channel=channel,
            fill=fill,
        )  # fmt: skip

    if include_live and redis is not None:
        stored, live = await with_live_rows(
            store, redis, ws, from_ms, to_ms, read, app_id=app_id, app_ids=app_ids,
            channel=channel,
        )  # fmt: skip
    else:
        stored, live = await read(), []
    points = {p.start: p for p in stored}
    for bucket_ms, (_app, _ch, _product, unit), counters in live:
        start = period_start(bucket_ms, granularity)
        points[start] = merge_points(points.get(start, UsagePoint(start)), counters, unit)
    return [points[s] for s in sorted(points)]
