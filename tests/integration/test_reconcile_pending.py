"""Reconcile counts what Redis did that the store has not got: free credits lapsed in
Redis whose ``lapse`` the flusher has not written yet (live, claimed, committed but not
acked). That is no mismatch, and ``--apply`` never gives it back: a lapse given back was
lapsed again under a new key (the ledger lapsing more than was granted).
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import pytest

from config import Settings
from gateway import cli_commands
from meter.accounts.rebuild import store_values
from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient
from meter.redis_layer.clock import redis_time
from meter.store import Store
from meter.usage.batches import build
from meter.usage.claims import Claims
from meter.usage.flusher import Flusher
from meter.usage.reconcile import reconcile
from tests.support.clock import Clock
from tests.support.flushkit import USD, opened_store, seed_ws, store_url
from tests.support.metering import admitter
from tests.support.settings import make_settings


def run_cli(cfg: Settings, ws: str, apply: bool) -> int:
    return cli_commands.reconcile(cfg, argparse.Namespace(workspace=ws, apply=apply))


async def free_lapsed(rclient: RedisClient, ws: str) -> list[int]:
    return [int(v or 0) for v in await rclient.hmget(keys.ws_key(ws), ["free", "lapsed"])]


async def settled(store: Store, rclient: RedisClient, cfg: Settings, ws: str) -> None:
    """Neither a difference nor a correction: the CLI exits 0 with and without --apply,
    Redis unchanged."""
    (rep,) = await reconcile(store, rclient, cfg, workspace=ws)
    assert rep.mismatches == [], [d.line() for d in rep.mismatches]
    before = await free_lapsed(rclient, ws)
    assert await asyncio.to_thread(run_cli, cfg, ws, False) == 0
    assert await asyncio.to_thread(run_cli, cfg, ws, True) == 0
    assert await free_lapsed(rclient, ws) == before


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_a_lapse_not_flushed_yet_is_counted_once_and_never_given_back(
    request: pytest.FixtureRequest, tmp_path: Path, rclient: RedisClient, backend: str
) -> None:
    url = store_url(backend, request, tmp_path)
    redis_url: str = request.getfixturevalue("redis_url")
    cfg = make_settings(
        fast_flush=True, store_url=url, redis_url=redis_url, free_credit_validity_s=10.0
    )
    clock = Clock.past()
    async for store in opened_store(url):
        w = await seed_ws(rclient, store, cfg, clock, products=["agent"], free=5 * USD)
        adm = admitter(rclient, cfg, clock)
        d = await adm.admit(w.apps[0], "web", "u1")
        assert d.free > 0
        clock.advance(3600)
        await Flusher(rclient, store, cfg, clock=clock).drain(force=False)
        left = 5 * USD - d.free
        assert (await adm.admit(w.apps[0], "web", "u2")).reason == "free_credits_expired"
        assert await free_lapsed(rclient, w.ws) == [0, left]

        # Live in P:ev: explained by the unflushed lapse.
        assert await rclient.llen(keys.events_key(w.ws)) > 0
        (rep,) = await reconcile(store, rclient, cfg, workspace=w.ws)
        got = {d.field: (d.unflushed, d.explained) for d in rep.differences}
        assert got == {"free": (-left, True), "lapsed": (left, True)}
        await settled(store, rclient, cfg, w.ws)

        # Claimed by a flusher, not written yet.
        claims = Claims(rclient, "t", 60_000, clock=lambda: clock.now)
        _, claim = await claims.claim(w.ws, "ev", 0)
        assert claim is not None
        assert not await rclient.exists(keys.events_key(w.ws))
        await settled(store, rclient, cfg, w.ws)

        # Written, not acked: in the store only, counted once.
        batch = build(claim)
        assert [e.kind for e in batch.ledger] == ["lapse"]
        assert await store.write_flush_batch(
            claim.batch_id, w.ws, "ev", 0, ledger_entries=batch.ledger,
            outbox_events=batch.events,
        )  # fmt: skip
        await settled(store, rclient, cfg, w.ws)
        assert await claims.ack(claim)

        # The same lapse made again (a Redis that lost its ack): the store has its key.
        await rclient.rpush(keys.events_key(w.ws), *claim.items)
        await settled(store, rclient, cfg, w.ws)

        # Flushed, and the credits stay lapsed: one lapse, one event, balances exact.
        clock.advance(1)
        await Flusher(rclient, store, cfg, clock=clock).drain(force=False)
        assert (await adm.admit(w.apps[0], "web", "u3")).reason == "free_credits_expired"
        clock.advance(3600)
        await Flusher(rclient, store, cfg, clock=clock).drain(force=False)
        lapses = [e.amount for e in await store.ledger_entries(w.ws, kind="lapse")]
        assert lapses == [-left]
        assert -sum(lapses) <= 5 * USD  # never more lapsed than granted
        expired = await store.many(
            lambda r: r["event_id"],
            "SELECT event_id FROM outbox WHERE workspace_id = ? "
            "AND event_type = 'free_credits.expired'",
            w.ws,
        )
        assert len(expired) == 1
        values = await store_values(store, w.ws, await redis_time(rclient))
        assert (values["free"], values["lapsed"], values["free_granted"]) == (0, left, 5 * USD)
        assert await free_lapsed(rclient, w.ws) == [0, left]
        (rep,) = await reconcile(store, rclient, cfg, workspace=w.ws)
        assert rep.differences == []


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_an_unreadable_event_not_flushed_yet_leaves_the_workspace_uncorrected(
    request: pytest.FixtureRequest, tmp_path: Path, rclient: RedisClient, backend: str
) -> None:
    url = store_url(backend, request, tmp_path)
    redis_url: str = request.getfixturevalue("redis_url")
    cfg = make_settings(fast_flush=True, store_url=url, redis_url=redis_url)
    clock = Clock.past()
    async for store in opened_store(url):
        w = await seed_ws(rclient, store, cfg, clock, products=["agent"], free=5 * USD)
        await rclient.hincrby(keys.ws_key(w.ws), "free", -USD)  # whatever it did: unknown
        await rclient.rpush(keys.events_key(w.ws), b"\xff not an event")
        (rep,) = await reconcile(store, rclient, cfg, workspace=w.ws)
        assert rep.held
        assert [d.field for d in rep.mismatches] == ["free"]
        assert await asyncio.to_thread(run_cli, cfg, w.ws, True) == 1
        (applied,) = await reconcile(store, rclient, cfg, workspace=w.ws, apply=True)
        assert not applied.applied
        assert await free_lapsed(rclient, w.ws) == [4 * USD, 0]
