"""One bucket the store rejects never stalls the flusher: it is quarantined, the rest flows.

A poison bucket is written into Redis directly in the layout admission uses (the edge
refuses such input, but a flusher must survive whatever Redis holds): a billing-session
record whose channel user contains NUL (PostgreSQL rejects it: ``invalid byte sequence``),
or an aggregate counter beyond 64 bits (both stores reject it). Real admissions fill
another workspace (and the poisoned one's other buckets). Then:

1. the store is taken away (PostgreSQL stopped; SQLite held under an EXCLUSIVE lock): a
   transient outage, so nothing is quarantined, and the flush lag, read from Redis,
   keeps growing while nothing flushes;
2. the store comes back: the poison bucket is quarantined after the configured number
   of attempts (raw content, error, attempts, times in ``flush_dead_letters``), every
   other bucket lands in the store exactly once, Redis is empty and the lag is 0.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import orjson
import pytest

from config import Settings
from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient, connect
from meter.store import Store, open_store
from meter.usage.flusher import Flusher
from tests.support.adminkit import admin_server
from tests.support.clock import Clock
from tests.support.flushkit import USD, Expected, Seeded, seed_ws
from tests.support.metering import admitter
from tests.support.servers import PostgresServer
from tests.support.settings import make_settings

ATTEMPTS = 3
NUL_USER = "ev\x00il"


async def until(
    check: Callable[[], Awaitable[bool] | bool], what: str, deadline_s: float = 120
) -> None:
    """Poll ``check`` until true; fail naming ``what`` after a generous deadline."""
    end = time.monotonic() + deadline_s
    while True:
        got = check()
        if got if isinstance(got, bool) else await got:
            return
        assert time.monotonic() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def poison(rclient: RedisClient, cfg: Settings, w: Seeded, kind: str, at: float) -> int:
    """Write one poison bucket of workspace ``w`` at time ``at``; returns its start (s)."""
    app = w.apps[0]
    if kind == "nul":
        width = max(1, int(cfg.session_block_s))
        bucket = int(at) // width * width
        record = f"{bucket * 1000},1000,1,bpoison{bucket},3,200000,automation"
        await rclient.hset(keys.sessions_key(w.ws, bucket), f"{app}\tweb\t{NUL_USER}", record)
        await rclient.zadd(keys.sessions_index_key(w.ws), {str(bucket): bucket})
        return bucket
    bucket = int(at)
    field = keys.agg_field(app, "web", "agent", "request", "n")
    await rclient.hset(keys.agg_key(w.ws, bucket), field, "9" * 25)  # beyond BIGINT
    await rclient.zadd(keys.agg_index_key(w.ws), {str(bucket): bucket})
    return bucket


async def admit(rclient: RedisClient, cfg: Settings, clock: Clock, w: Seeded, n: int) -> Expected:
    adm = admitter(rclient, cfg, clock)
    exp = Expected()
    for i in range(n):
        exp.add(await adm.admit(w.apps[i % len(w.apps)], "web", f"u{i % 5}"))
        clock.advance(0.5)
    await adm.close()
    return exp


async def redis_empty(rclient: RedisClient, ws: str) -> bool:
    left = 0
    for key in (keys.agg_index_key(ws), keys.sessions_index_key(ws)):
        left += await rclient.zcard(key)
    left += await rclient.hlen(keys.claims_key(ws))
    return left == 0


@asynccontextmanager
async def outage(request: pytest.FixtureRequest, backend: str, url: str) -> AsyncIterator[None]:
    """The store unavailable (not rejecting anything) for the duration of the block."""
    if backend == "postgres":
        pg: PostgresServer = request.getfixturevalue("postgres_server")
        await asyncio.to_thread(pg.stop)
        try:
            yield
        finally:
            await asyncio.to_thread(pg.start)
        return
    lock = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        lock.execute("COMMIT")
        lock.close()


@asynccontextmanager
async def migrated(
    request: pytest.FixtureRequest, backend: str, tmp_path: Path
) -> AsyncIterator[tuple[Store, str]]:
    """A migrated store; SQLite waits 0.2 s for a lock (the outage is a lock)."""
    if backend == "postgres":
        url = str(request.getfixturevalue("pg_dsn"))
        store = open_store(url)
    else:
        url = f"sqlite:///{tmp_path / 'creditgate.db'}"
        store = open_store(url, busy_timeout_s=0.2)
    await store.migrate()
    try:
        yield store, url
    finally:
        await store.close()


CASES = [("postgres", "nul"), ("postgres", "overflow"), ("sqlite", "overflow")]


@pytest.mark.parametrize(("backend", "kind"), CASES)
async def test_poison_bucket_is_quarantined_while_other_workspaces_flush(
    request: pytest.FixtureRequest, tmp_path: Path, rclient: RedisClient, backend: str, kind: str
) -> None:
    cfg = make_settings(fast_flush=True, flush_quarantine_attempts=ATTEMPTS)
    clock = Clock.past()
    async with migrated(request, backend, tmp_path) as (store, url):
        products = ["automation"] if kind == "nul" else ["agent"]
        bad = await seed_ws(rclient, store, cfg, clock, products=products, pool=100 * USD)
        good = await seed_ws(rclient, store, cfg, clock, products=["agent"], pool=100 * USD)
        bucket = await poison(rclient, cfg, bad, kind, clock.now - 3600)
        exp_bad = await admit(rclient, cfg, clock, bad, 40)
        exp_good = await admit(rclient, cfg, clock, good, 120)
        flusher = Flusher(rclient, store, cfg, backoff_cap_s=0.2)
        lag0 = await flusher.measure_lag()
        assert lag0 > 3600  # buckets closed hours ago are waiting

        stop = asyncio.Event()
        async with outage(request, backend, url):
            task = asyncio.create_task(flusher.run(stop))
            await until(lambda: flusher.stats.write_errors >= 2 * ATTEMPTS, "write errors")
            await until(lambda: lag_above(flusher, lag0 + 1), "the lag to grow")
            # An outage is not the data's fault: nothing was quarantined.
            assert flusher.stats.quarantined == 0
        try:
            await until(lambda: flusher.stats.quarantined == 1, "the quarantine")
            await until(lambda: redis_empty(rclient, good.ws), "the good workspace to flush")
            await until(lambda: redis_empty(rclient, bad.ws), "the bad workspace to flush")
        finally:
            stop.set()
            await asyncio.wait_for(task, 60)

        # Everything else landed exactly once.
        again = await flusher.drain(force=False)
        assert again.batches == 0
        assert again.quarantined == 0
        for w, exp in ((good, exp_good), (bad, exp_bad)):
            tot = await store.usage_totals(w.ws)
            assert (tot.total_units, tot.messages, tot.amount_pool) == (
                exp.units,
                exp.messages,
                exp.pool,
            )
        # The poison batch, kept whole for an operator.
        dead = await store.dead_letters()
        assert [d.workspace_id for d in dead] == [bad.ws]
        d = dead[0]
        assert d.kind == ("sr" if kind == "nul" else "ag")
        assert d.bucket_start == bucket * 1000
        assert d.attempts == ATTEMPTS
        assert d.first_failed_at <= d.last_failed_at
        assert "\x00" not in d.error
        assert d.error
        content = orjson.loads(d.content)
        if kind == "nul":
            assert "invalid byte sequence" in d.error or "0x00" in d.error, d.error
            assert content["fields"][0][0] == f"{bad.apps[0]}\tweb\t{NUL_USER}"
        else:
            field = keys.agg_field(bad.apps[0], "web", "agent", "request", "n")
            assert content["fields"] == [[field, "9" * 25]]
        assert await flusher.measure_lag() == 0.0


async def lag_above(flusher: Flusher, seconds: float) -> bool:
    return await flusher.measure_lag() > seconds


async def test_unreadable_bucket_is_quarantined_at_once(
    request: pytest.FixtureRequest, tmp_path: Path, rclient: RedisClient
) -> None:
    cfg, clock = make_settings(fast_flush=True), Clock.past()
    async with migrated(request, "sqlite", tmp_path) as (store, _):
        w = await seed_ws(rclient, store, cfg, clock, products=["agent"], pool=10 * USD)
        bucket = int(clock.now)
        await rclient.hset(keys.agg_key(w.ws, bucket), "not|a|field", "x")
        await rclient.zadd(keys.agg_index_key(w.ws), {str(bucket): bucket})
        flusher = Flusher(rclient, store, cfg)
        res = await flusher.drain(force=False)
        assert res.quarantined == 1
        assert res.failed == 0
        (d,) = await store.dead_letters(w.ws)
        assert d.attempts == 1
        assert "ValueError" in d.error
        assert orjson.loads(d.content) == {"kind": "ag", "fields": [["not|a|field", "x"]]}
        assert await redis_empty(rclient, w.ws)


async def test_gateway_exports_quarantines_and_lag(redis_url: str, tmp_path: Path) -> None:
    """``serve``'s flusher wiring: the counter and the lag gauge on /metrics."""
    cfg = make_settings(
        fast_flush=True,
        store_url=f"sqlite:///{tmp_path / 's.db'}",
        redis_url=redis_url,
        flush_interval_s=0.05,
    )
    clock = Clock.past()
    rclient = connect(redis_url)
    try:
        async with admin_server(cfg) as admin:
            w = await seed_ws(rclient, admin.store, cfg, clock, products=["agent"], pool=USD)
            await poison(rclient, cfg, w, "overflow", clock.now)
            async with admin_server(cfg, run_flusher=True) as flushing:

                async def scraped() -> bool:
                    status, text = await flushing.api("GET", "/metrics")
                    return status == 200 and (
                        'creditgate_flush_quarantined_total{kind="usage"} 1.0' in text
                    )

                await until(scraped, "the quarantine on /metrics")
                await until(lambda: redis_empty(rclient, w.ws), "the flush")

                async def lag_zero() -> bool:
                    _, text = await flushing.api("GET", "/metrics")
                    return "\ncreditgate_flush_lag_seconds 0.0" in text

                await until(lag_zero, "the lag to return to 0")
    finally:
        await rclient.aclose()
