"""Store plus unflushed Redis usage while a flusher commits between and during the reads.

Two buckets are closed and unflushed: ``b0`` live, ``b1`` claimed by a flusher that has
not committed it yet. Flusher A (another store connection, as another process would be)
commits and acks ``b0`` just before the store is first read; flusher B commits and acks
``b1`` just after the store was read. Either order of the two reads meets one of them:
every unit must still be counted exactly once (reconcile, the usage series).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient
from meter.store import LedgerEntry, Store, open_store
from meter.usage import reconcile as rec
from meter.usage import series
from meter.usage.claims import ClaimCode, Claims
from meter.usage.flusher import Flusher
from tests.support.clock import Clock
from tests.support.flushkit import USD, opened_store, seed_ws, store_url
from tests.support.metering import admitter
from tests.support.settings import make_settings

pytestmark = pytest.mark.parametrize("backend", ["sqlite", "postgres"])


@dataclass
class Race:
    store: Store
    ws: str
    charged: int  # micro-dollars, all from the shared pool
    messages: int
    flusher_a: Flusher  # flushes b0 (b1's lease is B's)
    flusher_b: Flusher  # owns b1's claim: re-takes and commits it

    async def before_first_read(self) -> None:
        res = await self.flusher_a.flush_once()
        assert (res.batches, res.busy) == (1, 1)

    async def after_store_read(self) -> None:
        res = await self.flusher_b.flush_once()
        assert res.batches == 1

    def hooks(
        self, monkeypatch: pytest.MonkeyPatch, first: str, owner: Any, name: str
    ) -> list[str]:
        """Run :meth:`before_first_read` before the first call of ``store.<first>`` and
        :meth:`after_store_read` after the first call of ``owner.<name>``."""
        fired: list[str] = []
        read = getattr(self.store, first)

        def before(*a: Any, **k: Any) -> Any:
            if "a" in fired:
                return read(*a, **k)

            async def go() -> Any:
                fired.append("a")
                await self.before_first_read()
                return await read(*a, **k)

            return go()

        async def after(*a: Any, **k: Any) -> Any:
            out = await call(*a, **k)
            if "b" not in fired:
                fired.append("b")
                await self.after_store_read()
            return out

        monkeypatch.setattr(self.store, first, before)
        call = getattr(owner, name)  # the wrapper above when it is the same method
        monkeypatch.setattr(owner, name, after)
        return fired


@pytest.fixture
async def race(
    request: pytest.FixtureRequest, tmp_path: Path, rclient: RedisClient, backend: str
) -> AsyncIterator[Race]:
    url = store_url(backend, request, tmp_path)
    cfg = make_settings(
        fast_flush=True, store_url=url, redis_url=request.getfixturevalue("redis_url")
    )
    clock = Clock.past()
    async for store in opened_store(url):
        other_a, other_b = open_store(url), open_store(url)
        w = await seed_ws(rclient, store, cfg, clock, products=["agent"], pool=100 * USD)
        adm = admitter(rclient, cfg, clock)
        charged = messages = 0
        for n in (5, 7):  # b0, then b1
            for i in range(n):
                d = await adm.admit(w.apps[0], "web", f"u{messages}-{i}")
                assert d.admitted
                charged += d.pool
            messages += n
            clock.advance(10)
        clock.advance(3600)
        b0, b1 = (int(b) for b in await rclient.zrange(keys.agg_index_key(w.ws), 0, -1))
        flusher_b = Flusher(rclient, other_b, cfg, clock=clock, owner="flusher-b")
        code, _ = await Claims(rclient, "flusher-b", 600_000).claim(w.ws, "ag", b1)
        assert code is ClaimCode.CLAIMED
        assert b0 < b1
        flusher_a = Flusher(rclient, other_a, cfg, clock=clock, owner="flusher-a")
        try:
            yield Race(store, w.ws, charged, messages, flusher_a, flusher_b)
        finally:
            await other_a.close()
            await other_b.close()


async def test_reconcile_apply_counts_a_bucket_flushed_between_or_during_the_reads(
    race: Race,
    rclient: RedisClient,
    monkeypatch: pytest.MonkeyPatch,
    redis_url: str,
) -> None:
    cfg = make_settings(redis_url=redis_url)
    wk = keys.ws_key(race.ws)
    assert race.charged > 0
    assert int(await rclient.hget(wk, "pool") or 0) == 100 * USD - race.charged
    fired = race.hooks(monkeypatch, "ledger_entries", rec, "store_values")

    (rep,) = await rec.reconcile(race.store, rclient, cfg, workspace=race.ws, apply=True)

    assert fired == ["a", "b"]
    assert rep.mismatches == []
    assert int(await rclient.hget(wk, "pool") or 0) == 100 * USD - race.charged
    monkeypatch.undo()
    (clean,) = await rec.reconcile(race.store, rclient, cfg, workspace=race.ws)
    assert clean.differences == []  # all flushed now: Redis equals ledger minus usage
    assert (await race.store.usage_spent(race.ws)).shared == race.charged


async def test_usage_series_counts_a_bucket_flushed_between_or_during_the_reads(
    race: Race, rclient: RedisClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    fired = race.hooks(monkeypatch, "usage_series", race.store, "usage_series")
    (point,) = await series.usage(race.store, rclient, race.ws, 0, 2**52, "month")
    assert fired == ["a", "b"]
    assert (point.messages, point.amount_pool) == (race.messages, race.charged)


@pytest.mark.parametrize("always", [False, True], ids=["once", "always"])
async def test_reconcile_apply_with_balances_moving_while_comparing(
    race: Race,
    rclient: RedisClient,
    monkeypatch: pytest.MonkeyPatch,
    redis_url: str,
    always: bool,
) -> None:
    """A top-up in the ledger Redis never got, and admissions while reconcile compares
    (after its first read of Redis' balances, or after every one): the correction adds
    exactly the top-up, or is not made at all; never the admissions' charges back."""
    cfg = make_settings(redis_url=redis_url)
    wk = keys.ws_key(race.ws)
    app = f"{race.ws}_app0000"
    await race.store.add_ledger_entry(LedgerEntry(race.ws, "topup", USD, "late", 1))
    pool = int(await rclient.hget(wk, "pool") or 0)
    adm = admitter(rclient, cfg, Clock.past(1))
    extra: list[int] = []
    values = rec.redis_values

    async def traffic(*a: Any, **k: Any) -> Any:
        out = await values(*a, **k)
        if always or not extra:
            d = await adm.admit(app, "web", f"while-comparing-{len(extra)}")
            assert d.admitted
            assert d.pool > 0
            extra.append(d.pool)
        return out

    monkeypatch.setattr(rec, "redis_values", traffic)
    (rep,) = await rec.reconcile(race.store, rclient, cfg, workspace=race.ws, apply=True)
    monkeypatch.undo()
    after = int(await rclient.hget(wk, "pool") or 0)
    if always:
        assert after == pool - sum(extra)  # untouched
        assert not rep.applied
        assert rep.unsettled
        (rep,) = await rec.reconcile(race.store, rclient, cfg, workspace=race.ws, apply=True)
        after = int(await rclient.hget(wk, "pool") or 0)
    assert after == pool - sum(extra) + USD
    assert rep.applied
    assert not rep.unsettled
