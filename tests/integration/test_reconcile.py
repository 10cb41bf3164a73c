"""Reconcile: Redis balances against ledger minus flushed usage; rebuilding after FLUSHALL."""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import RedisCluster as Cluster

from gateway import cli_commands
from meter.accounts import projection
from meter.accounts.rebuild import SEQ_FLOOR_PER_MS
from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient
from meter.redis_layer.clock import redis_time
from meter.store import LedgerEntry
from meter.store.periods import DAY_MS
from meter.store.reversals import Reversal
from meter.usage import reconcile as rec
from meter.usage.flusher import Flusher
from meter.usage.reconcile import reconcile
from tests.support.clock import Clock
from tests.support.flushkit import USD, opened_store, seed_ws, store_url
from tests.support.metering import admitter
from tests.support.settings import make_settings


def balances_of(b: projection.Balances) -> dict[str, int]:
    return {"free": b.free, "pool": b.pool, **{f"app:{a}": v for a, v in b.app.items()}}


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_flushall_then_apply_restores_ledger_minus_flushed_usage(
    request: pytest.FixtureRequest, tmp_path: Path, rclient: RedisClient, backend: str
) -> None:
    url = store_url(backend, request, tmp_path)
    redis_url: str = request.getfixturevalue("redis_url")
    cfg = make_settings(fast_flush=True, store_url=url, redis_url=redis_url)
    clock = Clock.past()
    async for store in opened_store(url):
        w = await seed_ws(
            rclient, store, cfg, clock, products=["agent", "contact_center"],
            free=2 * USD, pool=5 * USD, app_funds=1 * USD,
        )  # fmt: skip
        adm = admitter(rclient, cfg, clock)
        for i in range(400):
            assert (await adm.admit(w.apps[i % 2], "web", f"u{i}")).admitted
            clock.advance(0.05)
        # Flush what closed; the last second or so stays live in Redis (the window at risk).
        await Flusher(rclient, store, cfg, clock=clock).flush_once()
        live = {"free": 0, "pool": 0, **{f"app:{a}": 0 for a in w.apps}}
        for b in await rclient.zrange(keys.agg_index_key(w.ws), 0, -1):
            for f, v in (await rclient.hgetall(keys.agg_key(w.ws, int(b)))).items():
                app, _, _, _, metric = keys.agg_field_parts(f)
                name = {"f": "free", "p": "pool", "a": f"app:{app}"}.get(metric)
                if name:
                    live[name] += int(v)
        assert sum(live.values()) > 0, "nothing left unflushed: the test proves nothing"

        # Redis intact: every difference is exactly the unflushed usage.
        (rep,) = await reconcile(store, rclient, cfg, workspace=w.ws)
        assert rep.mismatches == []
        gaps = {d.field: d.store - d.redis for d in rep.differences if d.redis is not None}
        assert {k: v for k, v in gaps.items() if k in live} == {k: v for k, v in live.items() if v}
        before = balances_of(await projection.read_balances(rclient, w.ws))

        # Redis loses everything.
        await rclient.flushall()
        (lost,) = await reconcile(store, rclient, cfg, workspace=w.ws)
        assert {d.field for d in lost.mismatches} >= {"free", "pool", *(f"app:{a}" for a in w.apps)}
        assert all(d.redis is None for d in lost.mismatches)
        args = argparse.Namespace(workspace=w.ws, apply=False)
        assert await asyncio.to_thread(cli_commands.reconcile, cfg, args) == 1
        args.apply = True
        assert await asyncio.to_thread(cli_commands.reconcile, cfg, args) == 0

        ledger = await store.ledger_balance(w.ws)
        spent = await store.usage_spent(w.ws)
        after = balances_of(await projection.read_balances(rclient, w.ws))
        assert after == {
            "free": ledger.free - spent.free,
            "pool": ledger.shared - spent.shared,
            **{f"app:{a}": ledger.apps.get(a, 0) - spent.apps.get(a, 0) for a in w.apps},
        }
        # The lost window: restored balances are higher by exactly the unflushed usage.
        assert {k: after[k] - before[k] for k in after} == live
        (clean,) = await reconcile(store, rclient, cfg, workspace=w.ws)
        assert clean.differences == []

        # The projection works again: grants stay idempotent, admission charges, new ids
        # do not collide with flushed ones.
        assert not await projection.grant(
            rclient, w.ws, reference="pool", kind="funds", amount=USD, low_threshold=0
        )
        adm2 = admitter(rclient, cfg, clock)
        d = await adm2.admit(w.apps[0], "web", "again")
        assert d.admitted
        assert d.units == 1
        seq = int(await rclient.hget(keys.ws_key(w.ws), "seq") or 0)
        assert seq > 10**15


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_a_free_charge_refunded_after_its_credits_lapsed_is_a_ledger_lapse_too(
    request: pytest.FixtureRequest, tmp_path: Path, rclient: RedisClient, backend: str
) -> None:
    """The refund gives the charge back as lapsed (not spendable): the ledger records that
    lapse as well, so it equals Redis exactly and a rebuild brings no free credit back."""
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
        clock.advance(11)
        assert (await adm.admit(w.apps[0], "web", "u2")).reason == "free_credits_expired"
        assert await adm.refund(w.apps[0], d)  # the bot failed on the first
        clock.advance(3600)
        await Flusher(rclient, store, cfg, clock=clock).drain(force=False)

        wk = keys.ws_key(w.ws)
        assert [int(v or 0) for v in await rclient.hmget(wk, ["free", "lapsed"])] == [0, 5 * USD]
        lapses = sorted(e.amount for e in await store.ledger_entries(w.ws, kind="lapse"))
        assert lapses == sorted([-(5 * USD - d.free), -d.free])
        (rep,) = await reconcile(store, rclient, cfg, workspace=w.ws)
        assert rep.differences == []

        await rclient.flushall()  # rebuilt from the store alone
        (rebuilt,) = await reconcile(store, rclient, cfg, workspace=w.ws, apply=True)
        assert rebuilt.applied
        assert [int(v or 0) for v in await rclient.hmget(wk, ["free", "lapsed"])] == [0, 5 * USD]


async def test_usage_outside_its_index_is_indexed_then_billed_not_given_back(
    request: pytest.FixtureRequest, tmp_path: Path, client: RedisClient
) -> None:
    """The indexes deleted by hand: the flusher no longer finds the live buckets, and
    their usage counts in no unflushed total. Reconcile lists them (SCAN: of every
    master on a cluster); --apply indexes them, so the next flush bills them, instead of
    giving back the balance they took."""
    rclient = client
    url = store_url("sqlite", request, tmp_path)
    where = "redis_cluster" if isinstance(client, Cluster) else "redis_server"
    redis_url: str = request.getfixturevalue(where).url
    cfg = make_settings(fast_flush=True, store_url=url, redis_url=redis_url)
    clock = Clock.past()
    async for store in opened_store(url):
        w = await seed_ws(rclient, store, cfg, clock, products=["automation"], free=20 * USD)
        adm = admitter(rclient, cfg, clock)
        for i in range(30):  # 10 users, 10 billing sessions
            assert (await adm.admit(w.apps[0], "web", f"u{i % 10}")).admitted
            clock.advance(0.05)
        before = balances_of(await projection.read_balances(rclient, w.ws))
        assert before["free"] < 20 * USD, "nothing charged: the test proves nothing"
        ag = sorted(int(b) for b in await rclient.zrange(keys.agg_index_key(w.ws), 0, -1))
        sr = sorted(int(b) for b in await rclient.zrange(keys.sessions_index_key(w.ws), 0, -1))
        assert ag
        assert sr
        await rclient.delete(keys.agg_index_key(w.ws), keys.sessions_index_key(w.ws))

        (rep,) = await reconcile(store, rclient, cfg, workspace=w.ws)
        assert rep.stranded == {"ag": ag, "sr": sr}
        assert rep.mismatches  # the usage is explained by nothing
        args = argparse.Namespace(workspace=w.ws, apply=False)
        assert await asyncio.to_thread(cli_commands.reconcile, cfg, args) == 1
        args.apply = True
        assert await asyncio.to_thread(cli_commands.reconcile, cfg, args) == 0
        assert balances_of(await projection.read_balances(rclient, w.ws)) == before

        clock.advance(3600)  # every bucket closed
        await Flusher(rclient, store, cfg, clock=clock).flush_once()
        assert (await store.usage_spent(w.ws)).free == 20 * USD - before["free"]
        (after,) = await reconcile(store, rclient, cfg, workspace=w.ws)
        assert (after.differences, after.stranded) == ([], {})


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_reconcile_lists_refunds_kept_for_a_day(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    rclient: RedisClient,
    backend: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A refund of a payment intent no credit here claims stays kept (``awaiting_payment``):
    harmless for a payment never made here, money the payer keeps for one credited by
    hand under another name. Reconcile lists those kept a day or more (not counted as
    mismatches); one just received may still be in flight, and is not listed."""
    url = store_url(backend, request, tmp_path)
    redis_url: str = request.getfixturevalue("redis_url")
    cfg = make_settings(fast_flush=True, store_url=url, redis_url=redis_url)
    async for store in opened_store(url):
        now = int(time.time() * 1000)
        for pi, at in (("pi_old", now - DAY_MS - 60_000), ("pi_new", now)):
            rev = Reversal(pi, "refund", "ch_" + pi[3:], 40 * USD)
            assert (await store.reverse_payment(rev, at)).result == "awaiting_payment"
        capsys.readouterr()
        args = argparse.Namespace(workspace=None, apply=False)
        assert await asyncio.to_thread(cli_commands.reconcile, cfg, args) == 0
        lines = [ln for ln in capsys.readouterr().out.splitlines() if "pending_reversals" in ln]
        assert len(lines) == 1, lines
        assert "refund:ch_old:4000 of pi_old" in lines[0]


async def test_a_rebuilt_id_counter_starts_past_redis_clock_not_a_host_clock_behind(
    tmp_path: Path, redis_url: str, rclient: RedisClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis lost a workspace; reconcile --apply runs on a host whose clock is an hour
    behind Redis's. Admissions took ids of at least Redis's now_ms x 1000, so the counter
    must start past that: it started at the host's, below ids already given."""
    url = f"sqlite:///{tmp_path / 'creditgate.db'}"
    cfg = make_settings(store_url=url, redis_url=redis_url)
    async for store in opened_store(url):
        w = await seed_ws(rclient, store, cfg, Clock.wall(), products=["agent"], pool=5 * USD)
        given = int(await redis_time(rclient) * 1000) * SEQ_FLOOR_PER_MS  # ids up to now
        await rclient.delete(keys.ws_key(w.ws))
        monkeypatch.setattr(time, "time", lambda host=time.time: host() - 3600)
        (rep,) = await reconcile(store, rclient, cfg, workspace=w.ws, apply=True)
        monkeypatch.undo()
        assert rep.reprovisioned
        assert int(await rclient.hget(keys.ws_key(w.ws), "seq") or 0) >= given


async def test_apply_reports_the_corrections_it_wrote_not_a_mismatch_gone_by_the_recheck(
    tmp_path: Path,
    redis_url: str,
    rclient: RedisClient,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``reconcile --apply`` under traffic: the first comparison sees the pool off by one
    (a balance moving), the two before the correction no longer do. Nothing is written
    and nothing is reported applied (it printed "applied 1 corrections" and the first
    comparison's MISMATCH); a top-up Redis never got is corrected and reported, once."""
    cfg = make_settings(store_url=f"sqlite:///{tmp_path / 'c.db'}", redis_url=redis_url)
    values, seen = rec.redis_values, []

    async def moving_once(*a: Any, **k: Any) -> dict[str, int | None]:
        out = await values(*a, **k)
        seen.append(out)
        if len(seen) == 1:  # the first comparison only: gone by the re-check
            out["pool"] = (out["pool"] or 0) + 1
        return out

    monkeypatch.setattr(rec, "redis_values", moving_once)
    async for store in opened_store(cfg.store_url):
        w = await seed_ws(rclient, store, cfg, Clock.past(), products=["agent"], pool=5 * USD)
        pool = await rclient.hget(keys.ws_key(w.ws), "pool")
        (rep,) = await rec.reconcile(store, rclient, cfg, workspace=w.ws, apply=True)
        assert (rep.applied, rep.mismatches) == (True, [])  # was the first comparison's
        assert rep.corrected == 0
        assert await rclient.hget(keys.ws_key(w.ws), "pool") == pool  # nothing written
        seen.clear()
        capsys.readouterr()
        args = argparse.Namespace(workspace=w.ws, apply=True)
        assert await asyncio.to_thread(cli_commands.reconcile, cfg, args) == 0
        out = capsys.readouterr()
        assert len(seen) == 3  # the first comparison did see the pool off
        assert "applied" not in out.out
        assert "MISMATCH" not in out.out
        assert "0 mismatches corrected" in out.err
        assert await rclient.hget(keys.ws_key(w.ws), "pool") == pool

        await store.add_ledger_entry(LedgerEntry(w.ws, "topup", USD, "late", 1))
        seen.clear()
        assert await asyncio.to_thread(cli_commands.reconcile, cfg, args) == 0
        out = capsys.readouterr()
        assert f"{w.ws}: applied 1 corrections" in out.out
        assert "1 mismatches corrected" in out.err
        assert int(await rclient.hget(keys.ws_key(w.ws), "pool") or 0) == int(pool or 0) + USD
