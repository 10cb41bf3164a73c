"""An export whose range begins or ends inside a period: each row says which part of its
period it sums (``covered_from``/``covered_to``), so a partial sum is never taken for the
period's whole and two runs that meet mid-period label their halves apart."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from meter.store import Store, UsageRow
from meter.usage.export import export_stream
from tests.support.flushkit import opened_store, store_url

DAY = 1_793_491_200_000  # 2026-11-01T00:00Z
HOUR = 3_600_000


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async for s in opened_store(store_url(request.param, request, tmp_path)):
        yield s


async def export(store: Store, lo: int, hi: int, bucket_s: int = 60) -> list[dict[str, Any]]:
    out = b""
    async for chunk in export_stream(store, kind="usage", fmt="ndjson", from_ms=lo, to_ms=hi,
                                     granularity="day", workspace="w1",
                                     bucket_s=bucket_s):  # fmt: skip
        out += chunk
    return [orjson.loads(x) for x in out.splitlines() if x]


async def test_rows_of_a_range_cut_mid_period_say_what_they_cover(store: Store) -> None:
    for h in (-11, 1, 13, 25):  # Oct 31 13:00, Nov 1 01:00 and 13:00, Nov 2 01:00
        t = DAY + h * HOUR
        row = UsageRow("w1", t, "a1", "web", "agent", "request", units=1, messages=1,
                       amount_pool=20_000)  # fmt: skip
        await store.write_flush_batch(f"w1:ag:{t}:1", "w1", "ag", t, usage_rows=[row])
    noon = DAY + 12 * HOUR
    first = await export(store, noon - 24 * HOUR, noon)  # "the last 24 h", run at noon
    second = await export(store, noon, noon + 24 * HOUR)  # the next run
    got = [(r["period_start"], r["covered_from"], r["covered_to"], r["units"])
           for r in first + second]  # fmt: skip
    assert got == [
        ("2026-10-31T00:00:00Z", "2026-10-31T12:00:00Z", "2026-11-01T00:00:00Z", 1),
        ("2026-11-01T00:00:00Z", "2026-11-01T00:00:00Z", "2026-11-01T12:00:00Z", 1),
        ("2026-11-01T00:00:00Z", "2026-11-01T12:00:00Z", "2026-11-02T00:00:00Z", 1),
        ("2026-11-02T00:00:00Z", "2026-11-02T00:00:00Z", "2026-11-02T12:00:00Z", 1),
    ]
    assert {r["period_end"] for r in first + second} == {
        "2026-11-01T00:00:00Z", "2026-11-02T00:00:00Z", "2026-11-03T00:00:00Z"
    }  # fmt: skip
    [whole] = await export(store, DAY, DAY + 24 * HOUR)  # a whole day: covers the period
    assert (whole["covered_from"], whole["covered_to"], whole["units"]) == (
        whole["period_start"], whole["period_end"], 2
    )  # fmt: skip


async def test_an_edge_inside_a_flush_bucket_is_labelled_with_the_bucket_taken(
    store: Store,
) -> None:
    """Rows are whole flush buckets: a range takes those that start in it. ``covered_*``
    names the time of the buckets taken, not the range's edge inside one."""
    minute = 60_000
    for t in (DAY + 24 * HOUR - minute, DAY + 12 * HOUR):
        row = UsageRow("w1", t, "a1", "web", "agent", "request", units=1, messages=1,
                       amount_pool=20_000)  # fmt: skip
        await store.write_flush_batch(f"w1:ag:{t}:1", "w1", "ag", t, usage_rows=[row])
    # to 23:59:30 takes the 60 s bucket of 23:59, whole: it covers to midnight
    [late] = await export(store, DAY + 23 * HOUR, DAY + 24 * HOUR - minute // 2)
    assert (late["covered_from"], late["covered_to"], late["units"]) == (
        "2026-11-01T23:00:00Z", "2026-11-02T00:00:00Z", 1
    )  # fmt: skip
    # from 23:59:30 leaves it out: nothing covered before midnight
    assert await export(store, DAY + 24 * HOUR - minute // 2, DAY + 24 * HOUR) == []
    # 11:30 to 12:30 with hour buckets takes the bucket of 12:00 to 13:00
    [noon] = await export(store, DAY + 11 * HOUR + 30 * minute, DAY + 12 * HOUR + 30 * minute,
                          bucket_s=3600)  # fmt: skip
    assert (noon["covered_from"], noon["covered_to"], noon["units"]) == (
        "2026-11-01T12:00:00Z", "2026-11-01T13:00:00Z", 1
    )  # fmt: skip
