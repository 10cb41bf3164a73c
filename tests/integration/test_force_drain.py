"""``creditgate flush --once --force`` (``Flusher.drain(force=True)``) with a billing
session still open: its bucket is copied once (it stays live for the admissions still
reading it), not once per pass until the drain's time runs out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient
from meter.store import Store
from meter.usage.flusher import Flusher
from tests.support.clock import Clock
from tests.support.flushkit import USD, opened_store, seed_ws, store_url
from tests.support.metering import admitter
from tests.support.settings import make_settings


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async for s in opened_store(store_url(request.param, request, tmp_path)):
        yield s


async def session_batches(store: Store, ws: str) -> int:
    async with store.connection() as c:
        rows = await c.fetch(
            "SELECT COUNT(*) AS n FROM flush_batches WHERE workspace_id = ? AND kind = 'sr'", ws
        )
    return int(rows[0]["n"])


async def test_a_forced_drain_copies_an_open_session_once(
    rclient: RedisClient, store: Store
) -> None:
    cfg, clock = make_settings(fast_flush=True), Clock.past()
    w = await seed_ws(rclient, store, cfg, clock, products=["automation"], pool=100 * USD)
    adm = admitter(rclient, cfg, clock)
    first = await adm.admit(w.apps[0], "web", "erin")
    flusher = Flusher(rclient, store, cfg, clock=clock)
    res = await flusher.drain(force=True)
    assert (res.busy, res.failed) == (0, 0)
    assert await session_batches(store, w.ws) == 1
    [row] = await store.sessions(w.ws, 0, 2**62)
    assert (row.id, row.messages, row.amount) == (first.bsid, 1, first.charged)
    assert await rclient.zcard(keys.sessions_index_key(w.ws)) == 1  # still live

    clock.advance(20)  # the same 60-second block
    assert (await adm.admit(w.apps[0], "web", "erin")).bsid == first.bsid
    await flusher.drain(force=True)  # a later drain copies it again, once
    assert await session_batches(store, w.ws) == 2
    [row] = await store.sessions(w.ws, 0, 2**62)
    assert (row.messages, row.amount) == (2, first.charged)
