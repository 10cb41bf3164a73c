"""The console chart's series (meter.usage.breakdown) over live, unflushed buckets: every
split and every filter sees Redis's rows, and only the rows asked for."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from meter.redis_layer.client import RedisClient
from meter.store import Store
from meter.usage.breakdown import breakdown
from tests.support.clock import Clock
from tests.support.flushkit import USD, opened_store, seed_ws
from tests.support.metering import admitter
from tests.support.settings import make_settings

HOUR_MS = 3_600_000


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async for st in opened_store(f"sqlite:///{tmp_path / 'b.db'}"):
        yield st


async def test_live_usage_is_split_and_filtered_like_stored_usage(
    rclient: RedisClient, store: Store
) -> None:
    client = rclient
    cfg, clock = make_settings(), Clock.past()
    w = await seed_ws(client, store, cfg, clock, products=["agent", "agent"], pool=10 * USD)
    adm = admitter(client, cfg, clock)
    start_ms = int(clock.now * 1000)
    sent = {(w.apps[0], "web"): 3, (w.apps[0], "slack"): 2, (w.apps[1], "web"): 4}
    for (app, channel), n in sent.items():
        for i in range(n):
            assert (await adm.admit(app, channel, f"{channel}-u{i}")).admitted

    async def series(by: str, **only: Any) -> dict[str, int]:
        got = await breakdown(
            store, client, w.ws, start_ms, start_ms + HOUR_MS, "hour", "requests", by, **only
        )
        assert got.live
        return {k: sum(v) for k, v in got.series.items()}

    a0, a1 = w.apps
    assert await series("total") == {"total": 9}
    assert await series("total", app_id=a0) == {"total": 5}
    assert await series("app") == {a0: 5, a1: 4}
    assert await series("channel") == {"web": 7, "slack": 2}
    assert await series("channel", app_id=a0) == {"web": 3, "slack": 2}
    assert await series("channel", app_ids=[a1]) == {"web": 4}
    assert await series("app", channel="slack") == {a0: 2}
    assert await series("app", app_ids=[]) == {}
