"""Usage series for the API: the durable store merged with what Redis has not flushed yet.

Flushed buckets come from ``Store.usage_series``; live buckets (still in ``P:ag:*``) and
claimed-but-unacked ones are read in one atomic ``peek.lua`` call. A claim whose batch
the store already committed (a flusher died before its ack) is skipped, so nothing is
counted twice. The store is read first: a bucket flushed between the two reads could
only be missed if claim, commit and ack all happened in that gap.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient
from meter.redis_layer.scripts import register
from meter.store import Store, UsagePoint
from meter.store.models import GRANULARITIES
from meter.store.periods import period_start
from meter.usage.batches import fold_aggregates


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


async def live_rows(
    store: Store,
    client: RedisClient,
    ws: str,
    from_ms: int,
    to_ms: int,
    *,
    app_id: str | None = None,
    app_ids: Collection[str] | None = None,
    channel: str | None = None,
) -> list[tuple[int, tuple[str, str, str, str], dict[str, Any]]]:
    """Unflushed aggregate rows ``(bucket_start_ms, (app, channel, product, unit), counters)``
    of the app (or apps) and channel asked for, every one when not asked."""
    lo, hi = from_ms // 1000, (to_ms - 1) // 1000
    snapshot: list[Any] = await register(client, "peek")(keys=[keys.ws_prefix(ws)], args=[lo, hi])
    out = []
    for bucket, gen, items in snapshot:
        bucket_ms = int(bucket) * 1000
        if not from_ms <= bucket_ms < to_ms:
            continue
        if int(gen) and await store.get_flush_batch(f"{ws}:ag:{int(bucket)}:{int(gen)}"):
            continue  # committed; only its ack is missing
        for key, counters in fold_aggregates(items).items():
            if _wanted(key, app_id, app_ids, channel):
                out.append((bucket_ms, key, counters))
    return out


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
    points = {
        p.start: p
        for p in await store.usage_series(
            ws, from_ms, to_ms, granularity, app_id=app_id, app_ids=app_ids, channel=channel,
            fill=fill,
        )
    }  # fmt: skip
    if include_live and redis is not None:
        live = await live_rows(
            store, redis, ws, from_ms, to_ms, app_id=app_id, app_ids=app_ids, channel=channel
        )
        for bucket_ms, (_app, _ch, _product, unit), counters in live:
            start = period_start(bucket_ms, granularity)
            points[start] = merge_points(points.get(start, UsagePoint(start)), counters, unit)
    return [points[s] for s in sorted(points)]
