"""Reconcile counts what Redis did that the store has not got: free credits lapsed in
Redis whose ``lapse`` the flusher has not written yet (live, claimed, committed but not
acked), and usage of quarantined batches (dead letters). Neither is a mismatch, and
``--apply`` never gives either back: a lapse given back was lapsed again under a new key
(the ledger lapsing more than was granted), quarantined usage was handed to the customer.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import pytest

from config import Settings
from gateway import cli_commands
from meter.accounts import projection
from meter.accounts.rebuild import store_values
from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient
from meter.redis_layer.clock import redis_time
from meter.store import DeadLetter, Store
from meter.usage.batches import build, raw_content
from meter.usage.claims import Claims
from meter.usage.flusher import Flusher
from meter.usage.reconcile import reconcile
from meter.usage.replay import replay_all
from tests.support.clock import Clock
from tests.support.flushkit import USD, Seeded, opened_store, seed_ws, store_url
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


async def spend_and_quarantine(
    rclient: RedisClient, store: Store, cfg: Settings, clock: Clock, *, unreadable: bool
) -> tuple[Seeded, int]:
    """50 paid messages whose bucket is quarantined; the workspace and what they took."""
    w = await seed_ws(rclient, store, cfg, clock, products=["agent"], pool=10 * USD)
    adm = admitter(rclient, cfg, clock)
    spent = 0
    for i in range(50):
        d = await adm.admit(w.apps[0], "web", f"u{i}")
        assert d.admitted
        spent += d.pool
    assert spent > 0
    (b,) = [int(x) for x in await rclient.zrange(keys.agg_index_key(w.ws), 0, -1)]
    clock.advance(3600)
    if unreadable:  # one field this version cannot read quarantines the whole bucket
        await rclient.hset(keys.agg_key(w.ws, b), "future\tfield\twith\ttoo\tmany\tparts", "1")
        res = await Flusher(rclient, store, cfg, clock=clock).drain(force=False)
        assert res.quarantined == 1
    else:  # readable, refused by the store: quarantined as the batch writer does
        claims = Claims(rclient, "t", 60_000, clock=lambda: clock.now)
        _, claim = await claims.claim(w.ws, "ag", b)
        assert claim is not None
        now = int(clock.now * 1000)
        dead = DeadLetter(
            claim.batch_id, w.ws, "ag", b * 1000, raw_content(claim), "Rejected: x", 1, now, now
        )
        assert await store.quarantine_flush_batch(dead)
        assert await claims.ack(claim)
    assert [u async for u in store.iter_usage(w.ws, 0, 2**52)] == []
    assert (await projection.read_balances(rclient, w.ws)).pool == 10 * USD - spent
    return w, spent


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_unreadable_quarantined_usage_is_spent_and_never_corrected(
    request: pytest.FixtureRequest, tmp_path: Path, rclient: RedisClient, backend: str
) -> None:
    url = store_url(backend, request, tmp_path)
    redis_url: str = request.getfixturevalue("redis_url")
    cfg = make_settings(fast_flush=True, store_url=url, redis_url=redis_url)
    clock = Clock.past()
    async for store in opened_store(url):
        w, spent = await spend_and_quarantine(rclient, store, cfg, clock, unreadable=True)
        (rep,) = await reconcile(store, rclient, cfg, workspace=w.ws)
        assert rep.mismatches == []
        (d,) = rep.differences
        assert (d.field, d.quarantined, d.explained) == ("pool", -spent, True)
        (q,) = rep.quarantined
        assert q.counted == {"pool": -spent}
        assert q.unreadable
        assert rep.held
        assert await asyncio.to_thread(run_cli, cfg, w.ws, False) == 1
        assert await asyncio.to_thread(run_cli, cfg, w.ws, True) == 1
        (applied,) = await reconcile(store, rclient, cfg, workspace=w.ws, apply=True)
        assert not applied.applied
        assert (await projection.read_balances(rclient, w.ws)).pool == 10 * USD - spent


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_readable_quarantined_usage_is_spent_until_replayed(
    request: pytest.FixtureRequest, tmp_path: Path, rclient: RedisClient, backend: str
) -> None:
    url = store_url(backend, request, tmp_path)
    redis_url: str = request.getfixturevalue("redis_url")
    cfg = make_settings(fast_flush=True, store_url=url, redis_url=redis_url)
    clock = Clock.past()
    async for store in opened_store(url):
        w, spent = await spend_and_quarantine(rclient, store, cfg, clock, unreadable=False)
        (rep,) = await reconcile(store, rclient, cfg, workspace=w.ws)
        assert rep.mismatches == []
        assert [(q.counted, q.unreadable) for q in rep.quarantined] == [({"pool": -spent}, "")]
        assert not rep.held
        assert await asyncio.to_thread(run_cli, cfg, w.ws, False) == 1  # until replayed
        assert await asyncio.to_thread(run_cli, cfg, w.ws, True) == 1
        assert (await projection.read_balances(rclient, w.ws)).pool == 10 * USD - spent

        # Redis lost: re-provisioned with the quarantined usage spent, not given back.
        await rclient.flushall()
        (lost,) = await reconcile(store, rclient, cfg, workspace=w.ws, apply=True)
        assert lost.reprovisioned
        assert lost.applied
        assert (await projection.read_balances(rclient, w.ws)).pool == 10 * USD - spent

        report = await replay_all(store, int(cfg.session_block_s * 1000))
        assert len(report.replayed) == 1
        assert (await store.usage_spent(w.ws)).shared == spent
        (clean,) = await reconcile(store, rclient, cfg, workspace=w.ws)
        assert (clean.differences, clean.quarantined) == ([], [])
        assert await asyncio.to_thread(run_cli, cfg, w.ws, True) == 0
        assert (await projection.read_balances(rclient, w.ws)).pool == 10 * USD - spent
