"""The flusher in-process: claim -> write -> ack, late writes, sessions, events, metrics."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from redis.crc import key_slot

from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient, connect
from meter.store import Store, open_store
from meter.usage.flush_stats import PassResult
from meter.usage.flusher import Flusher
from tests.support.bot import eventually
from tests.support.clock import Clock
from tests.support.flushkit import USD, Expected, opened_store, seed_ws, store_url
from tests.support.metering import admitter
from tests.support.servers import RedisCluster
from tests.support.settings import make_settings


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async for s in opened_store(store_url(request.param, request, tmp_path)):
        yield s


async def test_closed_buckets_flush_exactly_once(rclient: RedisClient, store: Store) -> None:
    cfg, clock = make_settings(fast_flush=True), Clock.past()
    w = await seed_ws(
        rclient, store, cfg, clock, products=["contact_center", "agent"], pool=100 * USD
    )
    adm = admitter(rclient, cfg, clock)
    exp = Expected()
    for i in range(200):
        exp.add(await adm.admit(w.apps[i % 2], "web", f"u{i % 7}"))
        clock.advance(0.05)
    flusher = Flusher(rclient, store, cfg, clock=clock)
    res = await flusher.flush_once()
    assert res.batches > 0
    assert res.failed == 0
    # The current bucket and the one in grace stay live until forced.
    assert await rclient.zcard(keys.agg_index_key(w.ws)) >= 1
    await flusher.drain(force=True)
    # Forced claims of open buckets keep them indexed (late writes must be found) until
    # they close and a pass finds nothing left.
    clock.advance(cfg.flush_bucket_s + cfg.flush_grace_s)
    await flusher.flush_once()
    assert await rclient.zcard(keys.agg_index_key(w.ws)) == 0
    assert await rclient.hlen(keys.claims_key(w.ws)) == 0
    tot = await store.usage_totals(w.ws)
    assert (tot.total_units, tot.messages, tot.amount_pool) == (exp.units, exp.messages, exp.pool)
    assert tot.requests == 200
    assert flusher.stats.rows["usage"] > 0
    # A second pass finds nothing.
    again = await flusher.drain(force=True)
    assert again.batches == 0


async def test_billing_sessions_flush_with_late_writes(rclient: RedisClient, store: Store) -> None:
    """Session records close after block + idle; forced early claims snapshot, not move."""
    cfg, clock = make_settings(fast_flush=True), Clock.past()
    w = await seed_ws(rclient, store, cfg, clock, products=["automation"], pool=100 * USD)
    adm = admitter(rclient, cfg, clock)
    flusher = Flusher(rclient, store, cfg, clock=clock)
    per_session: dict[str, list[int]] = {}
    for step in range(300):  # 150 s: several 60 s blocks per user
        d = await adm.admit(w.apps[0], "slack", f"U{step % 4}")
        assert d.admitted
        acc = per_session.setdefault(d.bsid, [0, 0])
        acc[0] += 1
        acc[1] += d.charged
        clock.advance(0.5)
        if step % 40 == 39:
            await flusher.flush_once(force=step % 80 == 79)
    # A session bucket closes once its last block ended and that conversation idled out.
    clock.advance(2 * cfg.session_block_s + cfg.session_idle_s + cfg.flush_grace_s + 1)
    await flusher.drain(force=False)
    assert await rclient.zcard(keys.sessions_index_key(w.ws)) == 0
    assert not [k async for k in rclient.scan_iter(match=f"{keys.ws_prefix(w.ws)}:sr:*")]
    rows = await store.sessions(w.ws, 0, 2**62)
    got = {r.id: [r.messages, r.amount] for r in rows}
    assert got == per_session
    assert {r.channel_user for r in rows} == {"U0", "U1", "U2", "U3"}
    assert all(r.end_ms >= r.start_ms for r in rows)
    tot = await store.usage_totals(w.ws)
    assert tot.sessions == len(per_session)
    assert tot.amount == sum(a for _, a in per_session.values())


async def test_events_become_outbox_and_lapse_ledger(rclient: RedisClient, store: Store) -> None:
    cfg, clock = make_settings(fast_flush=True, free_credit_validity_s=10.0), Clock.past()
    w = await seed_ws(rclient, store, cfg, clock, products=["agent"], free=5 * USD)
    adm = admitter(rclient, cfg, clock)
    await adm.admit(w.apps[0], "web", "u1")  # $0.02 of free credits
    clock.advance(11)
    refused = await adm.admit(w.apps[0], "web", "u1")  # free credits lapsed: nothing usable
    assert refused.reason == "free_credits_expired"
    flusher = Flusher(rclient, store, cfg, clock=clock)
    await flusher.drain(force=True)
    lapses = await store.ledger_entries(w.ws, kind="lapse")
    assert [e.amount for e in lapses] == [-(5 * USD - 20_000)]
    ref = lapses[0].reference
    assert ref.startswith(f"{w.ws}:e")
    ev = await store.get_event(ref)
    assert ev is not None
    assert ev.event_type == "free_credits.expired"
    assert ev.payload["amount"] == 5 * USD - 20_000
    types = {e.event_type for e in await store.list_events(w.ws)}
    assert {"free_credits.expired", "app.inactive"} <= types
    assert (await store.ledger_balance(w.ws)).free == 20_000
    assert await rclient.exists(keys.events_key(w.ws)) == 0
    assert flusher.stats.rows["events"] == len(types) + 1  # the outbox events + one lapse


async def test_crash_between_commit_and_ack_is_a_noop_retake(
    rclient: RedisClient, store: Store
) -> None:
    cfg, clock = make_settings(fast_flush=True), Clock.past()
    w = await seed_ws(rclient, store, cfg, clock, products=["agent"], pool=10 * USD)
    adm = admitter(rclient, cfg, clock)
    for _ in range(10):
        await adm.admit(w.apps[0], "web", "u")
    bucket = int(clock.now) // cfg.flush_bucket_s * cfg.flush_bucket_s
    clock.advance(5)
    # A flusher that claims and commits, then dies before its ack.
    dead = Flusher(rclient, store, cfg, clock=clock, lease_s=600)
    code, claim = await dead._claims.claim(w.ws, "ag", bucket)
    assert claim is not None
    assert code == 0
    from meter.usage.batches import build

    b = build(claim)
    assert await store.write_flush_batch(
        claim.batch_id, w.ws, "ag", bucket * 1000, usage_rows=b.usage
    )
    # While its lease runs, others leave the claim alone.
    other = Flusher(rclient, store, cfg, clock=clock, lease_s=600)
    assert (await other.flush_once()).busy == 1
    # Its lease runs out (Redis expires it; done here at once, not on a timer).
    assert await rclient.delete(keys.lease_key(w.ws, "ag", bucket)) == 1
    res = await other.flush_once()
    assert (res.duplicates, res.batches, other.stats.retaken) == (1, 0, 1)
    assert await rclient.hlen(keys.claims_key(w.ws)) == 0
    assert (await store.usage_totals(w.ws)).requests == 10


async def test_store_outage_keeps_claim_and_retries(rclient: RedisClient, tmp_path: Path) -> None:
    """SQLite locked by another connection: the flusher backs off, keeps the claim, then writes."""
    cfg, clock = make_settings(fast_flush=True), Clock.past()
    url = f"sqlite:///{tmp_path / 'locked.db'}"
    async for store in opened_store(url):
        w = await seed_ws(rclient, None, cfg, clock, products=["agent"], pool=10 * USD)
        adm = admitter(rclient, cfg, clock)
        for _ in range(5):
            await adm.admit(w.apps[0], "web", "u")
        clock.advance(5)
        locked = open_store(url, busy_timeout_s=0.05)
        flusher = Flusher(rclient, locked, cfg, clock=clock, backoff_cap_s=0.2)
        lock = sqlite3.connect(str(tmp_path / "locked.db"), isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        task = asyncio.create_task(flusher.flush_once())
        # Three failed writes observed, not counted in 1 s (each waits 0.05 s for the lock,
        # then backs off up to 0.2 s: a busy machine can fit fewer in a second).
        assert await eventually(lambda f=flusher: f.stats.write_errors >= 3)
        assert not task.done()
        assert await rclient.hlen(keys.claims_key(w.ws)) == 1  # the claim is kept
        assert await flusher.measure_lag() > 0  # read from Redis while the pass is stuck
        lock.execute("COMMIT")
        lock.close()
        res = await asyncio.wait_for(task, 60)  # a bound for a hang only
        assert res.batches >= 1
        assert res.failed == 0
        assert await rclient.hlen(keys.claims_key(w.ws)) == 0
        assert (await store.usage_totals(w.ws)).requests == 5
        assert flusher.stats.lag_seconds > 0
        assert await flusher.measure_lag() == 0.0
        await locked.close()


async def test_stop_flushes_closed_buckets_then_returns(rclient: RedisClient, store: Store) -> None:
    cfg, clock = make_settings(fast_flush=True, flush_interval_s=30.0), Clock.past()
    w = await seed_ws(rclient, store, cfg, clock, products=["agent"], pool=10 * USD)
    adm = admitter(rclient, cfg, clock)
    flusher = Flusher(rclient, store, cfg, clock=clock)
    passes: list[bool] = []  # each pass's force, once it ended
    flush_once = flusher.flush_once

    async def counted(force: bool = False) -> PassResult:
        result = await flush_once(force)
        passes.append(force)
        return result

    flusher.flush_once = counted  # type: ignore[method-assign]
    stop = asyncio.Event()
    task = asyncio.create_task(flusher.run(stop))
    # The first pass ran (seen, not slept for: 0.2 s could pass before it did, and the
    # buckets were then flushed by a pass other than the final one); the next is 30 s away.
    assert await eventually(lambda: len(passes) == 1)
    for _ in range(7):
        await adm.admit(w.apps[0], "web", "u")
    clock.advance(3)
    stop.set()
    await asyncio.wait_for(task, 60)  # a bound for a hang only
    assert len(passes) == 2  # the first pass and the final one
    assert (await store.usage_totals(w.ws)).requests == 7


@pytest.mark.cluster
async def test_racing_flushers_on_redis_cluster(
    redis_cluster: RedisCluster, tmp_path: Path
) -> None:
    """Workspaces spread over the 3 masters; two flushers race; every unit lands once."""
    cfg, clock = make_settings(fast_flush=True), Clock.past()
    c = connect(redis_cluster.url)
    try:
        async for store in opened_store(f"sqlite:///{tmp_path / 'cluster.db'}"):
            spaces = [
                await seed_ws(c, store, cfg, clock, products=["agent", "automation"], pool=50 * USD)
                for _ in range(6)
            ]
            adm = admitter(c, cfg, clock)
            exp = Expected()
            a, b = (Flusher(c, store, cfg, clock=clock) for _ in range(2))
            for step in range(60):
                # One workspace at a time: the Admitter's multi-workspace pipeline uses
                # EVALSHA in a cluster pipeline, which redis-py refuses (reported).
                for w in spaces:
                    for d in await asyncio.gather(
                        *(adm.admit(w.apps[i % 2], "web", f"u{i}") for i in range(10))
                    ):
                        exp.add(d)
                clock.advance(0.5)
                if step % 10 == 9:
                    await asyncio.gather(a.flush_once(), b.flush_once())
            clock.advance(cfg.session_block_s + 5)
            assert await a.measure_lag() > 0  # read across the masters in one pipeline
            await asyncio.gather(a.drain(), b.drain())
            assert await a.measure_lag() == 0.0
            units = amount = 0
            for w in spaces:
                t = await store.usage_totals(w.ws)
                units += t.total_units
                amount += t.amount
                assert await c.hlen(keys.claims_key(w.ws)) == 0
                assert await c.zcard(keys.agg_index_key(w.ws)) == 0
            assert (units, amount) == (exp.units, exp.amount)
            assert a.stats.batches > 0
            assert b.stats.batches > 0
    finally:
        await c.aclose()


def _aggregates_of(ws: str) -> Callable[[str], bool]:
    """Whether a key is one of ``ws``'s aggregate hashes (``P:ag:<bucket>``)."""
    prefix = f"{keys.ws_prefix(ws)}:ag:"
    return lambda key: key.startswith(prefix)


@pytest.mark.cluster
async def test_a_moving_slot_is_flushed_once_it_has_moved(
    redis_cluster: RedisCluster, tmp_path: Path
) -> None:
    """A workspace's slot moves to another master and is held with its aggregates behind
    and everything else (their index among it) moved: no claim runs meanwhile (the slot
    guard, keys.ws_keys), and once the slot has moved every unit reaches the store once."""
    cfg, clock = make_settings(fast_flush=True), Clock.past()
    c = connect(redis_cluster.url)
    try:
        async for store in opened_store(f"sqlite:///{tmp_path / 'moving.db'}"):
            w = await seed_ws(c, store, cfg, clock, products=["agent"], pool=50 * USD)
            adm = admitter(c, cfg, clock)
            exp = Expected()
            for i in range(40):
                exp.add(await adm.admit(w.apps[0], "web", f"u{i % 5}"))
                clock.advance(0.5)
            clock.advance(cfg.flush_bucket_s + cfg.flush_grace_s + 1)  # the buckets closed
            slot = key_slot(keys.ws_prefix(w.ws).encode())
            src = redis_cluster.slot_owner(slot)
            dst = next(p for p in redis_cluster.master_ports() if p != src)
            moved = await asyncio.to_thread(
                redis_cluster.move_keys, slot, src, dst, _aggregates_of(w.ws)
            )
            assert moved > 0
            try:
                res = await Flusher(c, store, cfg, clock=clock).flush_once()
                assert res.batches == 0, res
                assert (await store.usage_totals(w.ws)).requests == 0
            finally:
                await asyncio.to_thread(redis_cluster.finish_move, slot, src, dst)
            assert redis_cluster.slot_owner(slot) == dst
            await Flusher(c, store, cfg, clock=clock).drain()
            t = await store.usage_totals(w.ws)
            assert (t.requests, t.total_units, t.amount) == (40, exp.units, exp.amount)
            assert await c.zcard(keys.agg_index_key(w.ws)) == 0
    finally:
        await c.aclose()


async def test_cli_migrate_and_flush_once(
    rclient: RedisClient, redis_url: str, tmp_path: Path
) -> None:
    import argparse

    from gateway import cli_commands

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    cfg = make_settings(fast_flush=True, redis_url=redis_url, store_url=url)
    assert await asyncio.to_thread(cli_commands.migrate, cfg, argparse.Namespace()) == 0
    clock = Clock.past()
    w = await seed_ws(rclient, None, cfg, clock, products=["agent"], pool=10 * USD)
    adm = admitter(rclient, cfg, clock)
    for _ in range(9):
        await adm.admit(w.apps[0], "web", "u")
    args = argparse.Namespace(once=True, force=True, lease=1.0)
    assert await asyncio.to_thread(cli_commands.flush, cfg, args) == 0
    async for store in opened_store(url):
        assert (await store.usage_totals(w.ws)).requests == 9
    parser = argparse.ArgumentParser()
    cli_commands.add_arguments(parser.add_subparsers(dest="cmd"))
    ns = parser.parse_args(["export", "--from", "2026-11-01", "--sessions", "--format", "ndjson"])
    assert (ns.from_, ns.sessions, ns.format, ns.granularity) == (
        "2026-11-01",
        True,
        "ndjson",
        "day",
    )
