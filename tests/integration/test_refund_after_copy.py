"""A billing session refunded after a forced flush copied it into the store.

``creditgate flush --once --force`` copies an open session bucket (it stays live); the
store then holds the session's charge. A refund of its opener afterwards must end with
the stored row refunded (amount 0), once; a session opened after the copy, or refunded
without any copy, leaves no row at all.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from config import Settings
from meter.redis_layer.client import RedisClient
from meter.store import SessionRow, Store
from meter.usage.flusher import Flusher
from tests.support.clock import Clock
from tests.support.flushkit import USD, opened_store, seed_ws, store_url
from tests.support.metering import admitter
from tests.support.settings import make_settings


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async for s in opened_store(store_url(request.param, request, tmp_path)):
        yield s


async def closed_and_flushed(flusher: Flusher, cfg: Settings, clock: Clock) -> None:
    clock.advance(3 * cfg.session_block_s + cfg.session_idle_s + 5)
    await flusher.drain(force=False)


def by_user(rows: list[SessionRow]) -> dict[str, tuple[str, int]]:
    return {r.channel_user: (r.id, r.amount) for r in rows}


async def test_a_session_refunded_after_a_forced_flush_ends_refunded(
    rclient: RedisClient, store: Store
) -> None:
    cfg, clock = make_settings(fast_flush=True), Clock.past()
    w = await seed_ws(rclient, store, cfg, clock, products=["automation"], pool=100 * USD)
    adm = admitter(rclient, cfg, clock)
    bob = await adm.admit(w.apps[0], "web", "bob")
    alice = await adm.admit(w.apps[0], "web", "alice")
    assert (alice.new_session, alice.charged) == (True, 200_000)
    flusher = Flusher(rclient, store, cfg, clock=clock)
    await flusher.drain(force=True)  # copies both open sessions
    assert by_user(await store.sessions(w.ws, 0, 2**62))["alice"] == (alice.bsid, 200_000)

    clock.advance(0.2)
    assert await adm.refund(w.apps[0], alice)  # the bot failed alice's message
    carol = await adm.admit(w.apps[0], "web", "carol")  # opened after the copy
    assert await adm.refund(w.apps[0], carol)
    await closed_and_flushed(flusher, cfg, clock)
    await flusher.drain(force=True)  # nothing left to copy: no second snapshot
    assert by_user(await store.sessions(w.ws, 0, 2**62)) == {
        "bob": (bob.bsid, 200_000),
        "alice": (alice.bsid, 0),  # refunded, as usage says
    }
    tot = await store.usage_totals(w.ws)
    assert (tot.total_units, tot.amount) == (1, 200_000)


async def test_a_refund_without_a_copy_leaves_no_row(rclient: RedisClient, store: Store) -> None:
    cfg, clock = make_settings(fast_flush=True), Clock.past()
    w = await seed_ws(rclient, store, cfg, clock, products=["automation"], pool=100 * USD)
    adm = admitter(rclient, cfg, clock)
    alice = await adm.admit(w.apps[0], "web", "alice")
    assert await adm.refund(w.apps[0], alice)
    await closed_and_flushed(Flusher(rclient, store, cfg, clock=clock), cfg, clock)
    assert await store.sessions(w.ws, 0, 2**62) == []
    assert (await store.usage_totals(w.ws)).amount == 0
