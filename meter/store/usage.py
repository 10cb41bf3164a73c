"""Reading usage back: series by calendar period, totals, breakdowns, exports.

Ranges are half-open ``[from_ms, to_ms)`` on the flush bucket start (billing sessions:
:mod:`meter.store.sessions`). Exports are async iterators paging by key, so a large
export neither holds a transaction nor loads everything in memory.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Collection
from contextlib import aclosing
from typing import Any

from meter.store.db import Row, StoreCore
from meter.store.flush_merge import USAGE_COLUMNS, USAGE_COUNTERS, USAGE_KEY
from meter.store.models import GRANULARITIES, REFUSAL_REASONS, PoolTotals
from meter.store.periods import next_period, period_start, sql_step
from meter.store.usage_rows import UsagePoint, UsageRow

_SUMS = ", ".join(f"CAST(SUM({c}) AS BIGINT) AS {c}" for c in USAGE_COUNTERS)
PAGE = 1000


def filters(
    workspace_id: str | None,
    from_ms: int | None,
    to_ms: int | None,
    time_col: str,
    app_id: str | None,
    app_ids: Collection[str] | None,
    channel: str | None,
    product: str | None = None,
) -> tuple[list[str], list[Any]]:
    """The WHERE clauses (``1 = 1`` for none) and their arguments of a range read."""
    where: list[str] = []
    args: list[Any] = []
    for clause, value in (
        ("workspace_id = ?", workspace_id),
        (f"{time_col} >= ?", from_ms),
        (f"{time_col} < ?", to_ms),
        ("app_id = ?", app_id),
        ("channel = ?", channel),
        ("product = ?", product),
    ):
        if value is not None:
            where.append(clause)
            args.append(value)
    if app_ids is not None:
        ids = sorted(set(app_ids))
        where.append(f"app_id IN ({', '.join('?' for _ in ids)})" if ids else "1 = 0")
        args.extend(ids)
    return where or ["1 = 1"], args


class _Acc:
    """Mutable sums of one period."""

    __slots__ = ("counters", "units")

    def __init__(self) -> None:
        self.units: dict[str, int] = {}
        self.counters = [0] * (len(USAGE_COUNTERS) - 1)  # everything after ``units``

    def add(self, r: Row) -> None:
        unit = r["unit"]
        self.units[unit] = self.units.get(unit, 0) + int(r["units"] or 0)
        for i, col in enumerate(USAGE_COUNTERS[1:]):
            self.counters[i] += int(r[col] or 0)

    def point(self, start: int) -> UsagePoint:
        messages, free, app, pool, invoiced, *refused = self.counters
        return UsagePoint(
            start=start,
            units={u: n for u, n in self.units.items() if n},
            messages=messages,
            amount_free=free,
            amount_app=app,
            amount_pool=pool,
            amount_invoiced=invoiced,
            refused={r: n for r, n in zip(REFUSAL_REASONS, refused, strict=True) if n},
        )


def _usage_row(r: Row) -> UsageRow:
    row = {c: r[c] for c in USAGE_COLUMNS}
    refused = {reason: n for reason in REFUSAL_REASONS if (n := row.pop(f"refused_{reason}"))}
    return UsageRow(**row, refused=refused)


class Usage(StoreCore):
    async def usage_series(
        self,
        workspace_id: str,
        from_ms: int,
        to_ms: int,
        granularity: str,
        *,
        app_id: str | None = None,
        app_ids: Collection[str] | None = None,
        channel: str | None = None,
        product: str | None = None,
        fill: bool = False,
    ) -> list[UsagePoint]:
        """Usage per UTC period (``hour``, ``day``, ISO ``week`` from Monday, calendar
        ``month``), oldest first. Only periods with data unless ``fill``, which returns
        every period overlapping ``[from_ms, to_ms)`` (zeros where nothing was used).
        ``app_ids`` restricts to a set of apps (an app owner's view)."""
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}")
        step = sql_step(granularity)
        where, args = filters(
            workspace_id, from_ms, to_ms, "bucket_start", app_id, app_ids, channel, product
        )
        sql = (
            f"SELECT (bucket_start / ?) * ? AS t, unit, {_SUMS} FROM usage_buckets "
            f"WHERE {' AND '.join(where)} GROUP BY 1, 2"
        )
        async with self.connection() as c:
            rows = await c.fetch(sql, step, step, *args)
        periods: dict[int, _Acc] = {}
        for r in rows:
            start = period_start(int(r["t"]), granularity)
            periods.setdefault(start, _Acc()).add(r)
        if fill and from_ms < to_ms:
            start = period_start(from_ms, granularity)
            while start < to_ms:
                periods.setdefault(start, _Acc())
                start = next_period(start, granularity)
        return [periods[s].point(s) for s in sorted(periods)]

    async def usage_totals(
        self,
        workspace_id: str | None = None,
        *,
        from_ms: int | None = None,
        to_ms: int | None = None,
        app_id: str | None = None,
        channel: str | None = None,
    ) -> UsagePoint:
        """Sums over everything matching (all workspaces when ``workspace_id`` is None)."""
        where, args = filters(workspace_id, from_ms, to_ms, "bucket_start", app_id, None, channel)
        async with self.connection() as c:
            rows = await c.fetch(
                f"SELECT unit, {_SUMS} FROM usage_buckets WHERE {' AND '.join(where)} "
                "GROUP BY unit",
                *args,
            )
        acc = _Acc()
        for r in rows:
            acc.add(r)
        return acc.point(from_ms or 0)

    async def usage_spent(self, workspace_id: str) -> PoolTotals:
        """What usage took from each pool (free, shared paid, per-app paid), all time."""
        async with self.connection() as c:
            rows = await c.fetch(
                "SELECT app_id, CAST(SUM(amount_free) AS BIGINT) AS f, "
                "CAST(SUM(amount_pool) AS BIGINT) AS p, CAST(SUM(amount_app) AS BIGINT) AS a "
                "FROM usage_buckets WHERE workspace_id = ? GROUP BY app_id",
                workspace_id,
            )
        free = sum(int(r["f"]) for r in rows)
        shared = sum(int(r["p"]) for r in rows)
        apps = {r["app_id"]: int(r["a"]) for r in rows if int(r["a"])}
        return PoolTotals(free=free, shared=shared, apps=apps)

    async def iter_usage(
        self,
        workspace_id: str | None,
        from_ms: int,
        to_ms: int,
        *,
        app_id: str | None = None,
        app_ids: Collection[str] | None = None,
        channel: str | None = None,
        page: int = PAGE,
    ) -> AsyncGenerator[UsageRow, None]:
        """Raw usage rows in key order (all workspaces when ``workspace_id`` is None)."""
        where, args = filters(
            workspace_id, from_ms, to_ms, "bucket_start", app_id, app_ids, channel
        )
        select = f"SELECT {', '.join(USAGE_COLUMNS)} FROM usage_buckets WHERE "
        rows = self.keyset(select + " AND ".join(where), args, USAGE_KEY, page)
        async with aclosing(rows):
            async for r in rows:
                yield _usage_row(r)

    async def usage_breakdown(
        self,
        workspace_id: str,
        from_ms: int,
        to_ms: int,
        granularity: str,
        by: str,
        *,
        app_id: str | None = None,
        app_ids: Collection[str] | None = None,
        channel: str | None = None,
    ) -> dict[str, dict[int, UsagePoint]]:
        """Like :meth:`usage_series`, one series per app (``by="app"``) or per channel."""
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}")
        col = {"app": "app_id", "channel": "channel"}[by]
        step = sql_step(granularity)
        where, args = filters(
            workspace_id, from_ms, to_ms, "bucket_start", app_id, app_ids, channel
        )
        sql = (
            f"SELECT (bucket_start / ?) * ? AS t, {col} AS k, unit, {_SUMS} FROM usage_buckets "
            f"WHERE {' AND '.join(where)} GROUP BY 1, 2, 3"
        )
        async with self.connection() as c:
            rows = await c.fetch(sql, step, step, *args)
        acc: dict[str, dict[int, _Acc]] = {}
        for r in rows:
            start = period_start(int(r["t"]), granularity)
            acc.setdefault(str(r["k"]), {}).setdefault(start, _Acc()).add(r)
        return {k: {s: a.point(s) for s, a in v.items()} for k, v in acc.items()}
