"""More channels than a chart draws: the smallest are summed under a key no channel can
have, so a channel named ``other`` keeps its own series and every amount is drawn once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from meter.redis_layer import keys
from meter.store import Store, UsageRow
from meter.usage.breakdown import MAX_SERIES, OTHER, breakdown
from tests.support.flushkit import opened_store

T0 = 1_793_491_200_000  # 2026-11-01T00:00Z
DAY_MS = 86_400_000


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async for st in opened_store(f"sqlite:///{tmp_path / 'b.db'}"):
        yield st


async def test_a_channel_named_other_is_not_the_sum_of_the_rest(store: Store) -> None:
    chans = {"other": 100, **{f"c{i}": 10 - i for i in range(9)}}  # 10 channels
    rows = [UsageRow("w1", T0, "a1", ch, "agent", "request", units=n, messages=n,
                     amount_pool=n * 20_000) for ch, n in chans.items()]  # fmt: skip
    await store.write_flush_batch("w1:ag:1:1", "w1", "ag", T0, usage_rows=rows)
    b = await breakdown(store, None, "w1", T0, T0 + DAY_MS, "day", "amount", "channel")
    assert len(b.series) == MAX_SERIES
    assert b.series["other"] == [100 * 20_000]
    assert b.series[OTHER] == [(4 + 3 + 2) * 20_000]  # c6, c7 and c8
    assert sum(v[0] for v in b.series.values()) == sum(chans.values()) * 20_000
    assert not keys.CHANNEL_RE.fullmatch(OTHER)
