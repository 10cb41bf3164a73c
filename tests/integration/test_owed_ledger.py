"""A fail-open settlement the balances cannot pay, as the store and the ledger see it.

The ledger (``GET .../transactions``) lists credit movements: grants, lapses, top-ups,
reversals. Usage, the owed part of a settlement included, is in the flushed usage rows
(its full price in ``amount_pool``), so ledger minus usage is the live balance below
zero, and ``creditgate reconcile`` finds nothing to correct. Real redis-server, SQLite
and PostgreSQL.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from meter.accounts import projection
from meter.redis_layer.client import RedisClient
from meter.usage.flusher import Flusher
from meter.usage.reconcile import reconcile
from tests.support.clock import Clock
from tests.support.flushkit import opened_store, seed_ws, store_url
from tests.support.metering import admitter
from tests.support.settings import make_settings

PRICE = 20_000  # the agent product's request price


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_an_owed_settlement_reconciles_as_ledger_minus_usage(
    request: pytest.FixtureRequest, tmp_path: Path, rclient: RedisClient, backend: str
) -> None:
    url = store_url(backend, request, tmp_path)
    redis_url: str = request.getfixturevalue("redis_url")
    cfg = make_settings(fast_flush=True, store_url=url, redis_url=redis_url)
    clock = Clock.past()
    async for store in opened_store(url):
        w = await seed_ws(rclient, store, cfg, clock, products=["agent"], pool=30_000)
        adm = admitter(rclient, cfg, clock)
        ds = [
            await adm.settle(w.apps[0], "web", "u", "", kind="m", token=f"t{i}", at=clock.now)
            for i in range(3)
        ]
        assert [(d.pool, d.owed) for d in ds] == [(PRICE, 0), (PRICE, 10_000), (PRICE, PRICE)]
        clock.advance(3600)
        await Flusher(rclient, store, cfg, clock=clock).drain(force=False)

        pool = (await projection.read_balances(rclient, w.ws)).pool
        assert pool == 30_000 - 3 * PRICE
        ledger, spent = await store.ledger_balance(w.ws), await store.usage_spent(w.ws)
        assert (ledger.shared, spent.shared) == (30_000, 3 * PRICE)
        assert ledger.shared - spent.shared == pool
        assert [e.amount for e in await store.ledger_entries(w.ws)] == [30_000]
        (rep,) = await reconcile(store, rclient, cfg, workspace=w.ws)
        assert rep.differences == []
