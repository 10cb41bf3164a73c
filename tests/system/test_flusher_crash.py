"""Exactly-once under crashes: flusher subprocesses SIGKILLed, racing, and a dead database.

100,000 admitted request-unit messages over 50 apps (5 workspaces x 10 apps; scaled by
``CREDITGATE_TEST_SCALE``) are flushed by ``gateway.flusher_cli`` processes that are
SIGKILLed at random moments and restarted (forked with its modules imported,
tests/support/forked_flusher.py: a fresh interpreter per restart cost 0.4 s more CPU);
then one ``python -m gateway.flusher_cli --once --force`` run drains what is left. The
store must then hold exactly the units and amounts admission decided.

The admission clock starts 30 hours ago and advances 0.25 s per round, so every bucket
it writes is already closed for the flushers (which use the real time): they claim
buckets that are still being written, and the late writes get their own generation.

Kills follow observed progress, never a timer: a flusher is killed only after it printed
its readiness line and the store then shows a newly committed batch (or, once admission
is over, Redis holds nothing left to flush). So the test means the same on a loaded
2-core machine, where merely importing the flusher takes a second, as on a fast one.

Database outage: PostgreSQL is really stopped (``pg_ctl stop``). SQLite has no server to
stop: another connection holds an EXCLUSIVE transaction on the file, so every flusher
write blocks until it is released. The database comes back once the rest of the messages
are admitted and the flushers were seen writing into the outage: a flusher holding a
claim it cannot commit and, on PostgreSQL, a write that failed (logged) since the outage
began. Observed, not timed (it was a fixed 30 s, 80 s of the suite's time for both).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from config import Settings
from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient
from meter.store import Store
from tests.support.clock import Clock
from tests.support.flushkit import (
    USD,
    Expected,
    Seeded,
    opened_store,
    scaled,
    seed_ws,
    store_url,
)
from tests.support.forked_flusher import ForkedFlusher
from tests.support.metering import admitter
from tests.support.servers import PostgresServer
from tests.support.settings import make_settings

ROOT = Path(__file__).resolve().parents[2]
WORKSPACES = 5
APPS_PER_WS = 10
ROUND = 500  # messages admitted concurrently per clock step
PROGRESS_DEADLINE_S = 300.0  # generous: a loaded machine is slow, never stuck this long


class FlusherProc:
    """One ``python -m gateway.flusher_cli`` child process; ``ready`` is set by its readiness
    line on stdout (copied to the log with its stderr)."""

    def __init__(self, env: dict[str, str], log: Path, *extra: str) -> None:
        self.env, self.log, self.extra = env, log, extra
        self.proc: asyncio.subprocess.Process | None = None
        self.ready = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.ready = asyncio.Event()
        with self.log.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway.flusher_cli", "--lease", "1", *self.extra,
                env=self.env, cwd=ROOT, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=out,
            )  # fmt: skip
        assert self.proc.stdout is not None
        self._reader = asyncio.create_task(self._read(self.proc.stdout, self.ready))

    async def _read(self, stream: asyncio.StreamReader, ready: asyncio.Event) -> None:
        async for line in stream:
            if line.startswith(b"flusher ") and line.rstrip().endswith(b" ready"):
                ready.set()
            with self.log.open("ab") as out:
                out.write(line)

    async def _reaped(self) -> None:
        if self._reader is not None:
            await self._reader  # ends at EOF, once the process is gone
            self._reader = None

    async def wait_ready(self) -> None:
        try:
            await asyncio.wait_for(self.ready.wait(), PROGRESS_DEADLINE_S)
        except TimeoutError:
            pytest.fail(f"no readiness line from the flusher:\n{self.log_tail()}")

    def log_tail(self) -> str:
        return self.log.read_bytes()[-3000:].decode("utf-8", "replace")

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()
        await self._reaped()
        self.proc = None

    async def stop(self) -> int:
        """SIGTERM: it finishes the closed buckets and exits."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        rc = await asyncio.wait_for(self.proc.wait(), 60)
        await self._reaped()
        return rc


def child_env(cfg: Settings, redis_url: str, url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CREDITGATE_")}
    env.update(
        CREDITGATE_REDIS_URL=redis_url,
        CREDITGATE_STORE_URL=url,
        CREDITGATE_FLUSH_BUCKET_S=str(cfg.flush_bucket_s),
        CREDITGATE_FLUSH_GRACE_S=str(cfg.flush_grace_s),
        CREDITGATE_FLUSH_INTERVAL_S=str(cfg.flush_interval_s),
        CREDITGATE_SESSION_BLOCK_S=str(cfg.session_block_s),
        CREDITGATE_SHUTDOWN_GRACE_S="5",
        CREDITGATE_LOG_LEVEL="WARNING",
        PYTHONPATH=str(ROOT),
    )
    return env


@dataclass
class Observer:
    """What the test can see of the flushers' progress, in the store and in Redis."""

    store: Store
    rclient: RedisClient
    spaces: list[str]

    async def committed(self) -> int:
        """Usage batches committed to the store so far (-1 while it cannot be read)."""
        try:
            async with self.store.connection() as c:
                sql = "SELECT COUNT(*) AS n FROM flush_batches WHERE kind = 'ag'"
                return int(await c.fetchval(sql))
        except Exception:  # the outage tests take the database away
            return -1

    async def holds_claim(self, pid: int) -> bool:
        """Whether process ``pid`` holds a claim now (leases name their owner's pid)."""
        for ws in self.spaces:
            for field in await self.rclient.hkeys(keys.claims_key(ws)):
                kind, _, bucket = field.decode().partition(":")
                holder = await self.rclient.get(keys.lease_key(ws, kind, int(bucket)))
                if holder is not None and holder.decode().rsplit(":", 2)[1] == str(pid):
                    return True
        return False

    async def idle(self) -> bool:
        """No closed bucket, claim or event waits in Redis for these workspaces."""
        c = self.rclient
        for ws in self.spaces:
            if await c.zcard(keys.agg_index_key(ws)) or await c.zcard(keys.sessions_index_key(ws)):
                return False
            if await c.hlen(keys.claims_key(ws)) or await c.llen(keys.events_key(ws)):
                return False
        return True


async def after_progress(
    p: ForkedFlusher, done: asyncio.Event, seen: Observer, rng: random.Random
) -> None:
    """Return once ``p`` is running and progress was observed since: for half of the
    kills ``p`` holding a claim (a kill between claim and ack), else a usage batch
    committed (so the flushers write usage while running, whatever the machine's speed);
    once admission is over, also nothing left to flush. Polls at random intervals, so
    kills land at varied points; fails only after a generous deadline."""
    await p.wait_ready(PROGRESS_DEADLINE_S)
    mid_claim = rng.random() < 0.5
    before = await seen.committed()
    deadline = time.monotonic() + PROGRESS_DEADLINE_S
    while True:
        if mid_claim and await seen.holds_claim(p.pid):
            return
        if await seen.committed() > before or (done.is_set() and await seen.idle()):
            return
        if time.monotonic() > deadline:
            pytest.fail(f"no flush progress observed:\n{p.log_tail()}")
        await asyncio.sleep(rng.uniform(0.005, 0.05))


async def chaos(
    procs: list[ForkedFlusher],
    done: asyncio.Event,
    min_kills: int,
    rng: random.Random,
    seen: Observer,
) -> int:
    """Kill a random flusher after observed progress (and restart it) until done and
    enough kills."""
    for p in procs:
        await p.start()
    kills = 0
    while not (done.is_set() and kills >= min_kills):
        p = rng.choice(procs)
        await after_progress(p, done, seen, rng)
        await p.kill()
        kills += 1
        await p.start()
    return kills


async def admit_all(
    rclient: RedisClient, cfg: Settings, clock: Clock, spaces: list[Seeded], total: int
) -> Expected:
    adm = admitter(rclient, cfg, clock)
    apps = [a for w in spaces for a in w.apps]
    exp = Expected()
    sent = 0
    while sent < total:
        n = min(ROUND, total - sent)
        decisions = await asyncio.gather(
            *(
                adm.admit(apps[(sent + i) % len(apps)], "web", f"u{(sent + i) % 97}")
                for i in range(n)
            )
        )
        for d in decisions:
            exp.add(d)
        sent += n
        clock.advance(0.25)
        await asyncio.sleep(0.02)  # pace: the run spans many kills
    await adm.close()
    return exp


async def setup(rclient: RedisClient, store: Store, cfg: Settings, clock: Clock) -> list[Seeded]:
    spaces = []
    for _ in range(WORKSPACES):
        products = ["contact_center" if i % 2 else "agent" for i in range(APPS_PER_WS)]
        spaces.append(
            await seed_ws(
                rclient, store, cfg, clock, products=products,
                free=200 * USD, pool=150 * USD, app_funds=3 * USD,
            )
        )  # fmt: skip
    return spaces


async def drain(env: dict[str, str], log: Path) -> None:
    final = FlusherProc(env, log, "--once", "--force")
    await final.start()
    assert final.proc is not None
    rc = await asyncio.wait_for(final.proc.wait(), 120)
    assert rc == 0, (await asyncio.to_thread(log.read_text))[-3000:]


async def verify(rclient: RedisClient, store: Store, spaces: list[Seeded], exp: Expected) -> None:
    units = messages = free = app_paid = pool = 0
    for w in spaces:
        t = await store.usage_totals(w.ws)
        units += t.total_units
        messages += t.messages
        free += t.amount_free
        app_paid += t.amount_app
        pool += t.amount_pool
        # Nothing left in Redis: no live bucket, no claim, no event.
        assert await rclient.zcard(keys.agg_index_key(w.ws)) == 0
        assert await rclient.hlen(keys.claims_key(w.ws)) == 0
        assert await rclient.llen(keys.events_key(w.ws)) == 0
        # Lapsed free credits reached the ledger exactly once.
        lapsed = int(await rclient.hget(keys.ws_key(w.ws), "lapsed") or 0)
        lapses = await store.ledger_entries(w.ws, kind="lapse")
        assert -sum(e.amount for e in lapses) == lapsed
        assert len(await store.list_events(w.ws, limit=10_000)) >= len(lapses)
    assert (units, messages) == (exp.units, exp.messages)
    assert (free, app_paid, pool) == (exp.free, exp.app, exp.pool)


BACKENDS = ["sqlite", "postgres"]


# (flushers, kills at least, database outage)
SCENARIOS = [
    pytest.param(1, 20, False, id="flusher_killed_20_times"),
    pytest.param(2, 20, False, id="two_racing_flushers_killed"),
    pytest.param(2, 4, True, id="database_down"),
]


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("flushers", "min_kills", "outage"), SCENARIOS)
async def test_every_unit_is_counted_exactly_once(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    rclient: RedisClient,
    backend: str,
    flushers: int,
    min_kills: int,
    outage: bool,
) -> None:
    cfg = make_settings(fast_flush=True, free_credit_validity_s=30.0)
    clock = Clock.past()
    url = store_url(backend, request, tmp_path)
    redis_url = request.getfixturevalue("redis_url")
    rng = random.Random(f"{backend}-{flushers}-{outage}")
    log = tmp_path / "flusher.log"
    env = child_env(cfg, redis_url, url)
    total = scaled(100_000, 2_000)
    async for store in opened_store(url):
        spaces = await setup(rclient, store, cfg, clock)
        procs = [ForkedFlusher(env, ROOT, log, "--lease", "1") for _ in range(flushers)]
        done = asyncio.Event()
        seen = Observer(store, rclient, [w.ws for w in spaces])
        killer = asyncio.create_task(chaos(procs, done, min_kills, rng, seen))
        try:
            if outage:
                exp = await admit_during_outage(
                    request, backend, url, rclient, cfg, clock, spaces, total, (procs, seen, log)
                )
            else:
                exp = await admit_all(rclient, cfg, clock, spaces, total)
            done.set()
            kills = await killer
        finally:
            done.set()
            if not killer.done():
                killer.cancel()
            for p in procs:
                await p.kill()
        assert kills >= min_kills
        assert exp.units == total - exp.refused
        assert exp.refused == 0
        before = sum([(await store.usage_totals(w.ws)).total_units for w in spaces])
        assert before > 0, "the flushers wrote nothing while running"
        retakes = (await asyncio.to_thread(log.read_text)).count("re-took unacked claim")
        print(f"{backend}: {kills} kills, {retakes} claims re-taken, {before}/{exp.units} units")
        await drain(env, log)
        await verify(rclient, store, spaces, exp)


async def admit_during_outage(
    request: pytest.FixtureRequest,
    backend: str,
    url: str,
    rclient: RedisClient,
    cfg: Settings,
    clock: Clock,
    spaces: list[Seeded],
    total: int,
    watch: tuple[list[ForkedFlusher], Observer, Path],
) -> Expected:
    """Admit a third, take the database away while admitting the rest, and keep it away
    until the flushers were seen writing into the outage (:func:`written_into`)."""
    first = await admit_all(rclient, cfg, clock, spaces, total // 3)
    failed_before = await asyncio.to_thread(failed_writes, watch[2])
    if backend == "postgres":
        pg: PostgresServer = request.getfixturevalue("postgres_server")
        await asyncio.to_thread(pg.stop)
        try:
            rest = await admit_all(rclient, cfg, clock, spaces, total - total // 3)
            await written_into(watch, failed_before)
        finally:
            await asyncio.to_thread(pg.start)
    else:
        lock = sqlite3.connect(
            url.removeprefix("sqlite:///"),
            timeout=60,
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            await asyncio.to_thread(lock.execute, "BEGIN EXCLUSIVE")
            rest = await admit_all(rclient, cfg, clock, spaces, total - total // 3)
            await written_into(watch, None)
            lock.execute("COMMIT")
        finally:
            lock.close()
    for f in ("units", "messages", "free", "app", "pool", "refused"):
        setattr(first, f, getattr(first, f) + getattr(rest, f))
    return first


# What a flusher logs when the store fails it: a batch's write (retried), a whole pass,
# the list of workspaces.
STORE_FAILED = (b"flusher: writing ", b"flusher: pass failed", b"flusher: cannot list")


def failed_writes(log: Path) -> int:
    """The flushers' store failures logged so far."""
    try:
        text = log.read_bytes()
    except FileNotFoundError:
        return 0
    return sum(text.count(marker) for marker in STORE_FAILED)


async def written_into(
    watch: tuple[list[ForkedFlusher], Observer, Path], failed_before: int | None
) -> None:
    """Until a batch is claimed and not committed while the database is away (a
    flusher's write pending on it: its lease may lapse while SQLite makes it wait) and,
    unless ``failed_before`` is None (SQLite: a write waits for the lock instead of
    failing), the store failed a flusher again since ``failed_before`` were logged."""
    _, seen, log = watch
    deadline = time.monotonic() + PROGRESS_DEADLINE_S
    claimed = False
    while True:
        for ws in seen.spaces:
            claimed = claimed or bool(await seen.rclient.hlen(keys.claims_key(ws)))
        failed = (
            failed_before is None or await asyncio.to_thread(failed_writes, log) > failed_before
        )
        if claimed and failed:
            return
        if time.monotonic() > deadline:
            tail = (await asyncio.to_thread(log.read_bytes))[-3000:].decode("utf-8", "replace")
            pytest.fail(f"the flushers were not seen writing into the outage:\n{tail}")
        await asyncio.sleep(0.05)


async def test_sigterm_flushes_what_is_closed_and_exits_0(
    request: pytest.FixtureRequest, tmp_path: Path, rclient: RedisClient
) -> None:
    cfg, clock = make_settings(fast_flush=True), Clock.past()
    url = store_url("sqlite", request, tmp_path)
    log = tmp_path / "flusher.log"
    async for store in opened_store(url):
        w = await seed_ws(rclient, store, cfg, clock, products=["agent"], pool=50 * USD)
        exp = await admit_all(rclient, cfg, clock, [w], 50)
        proc = FlusherProc(child_env(cfg, request.getfixturevalue("redis_url"), url), log)
        await proc.start()
        await proc.wait_ready()
        deadline = time.monotonic() + PROGRESS_DEADLINE_S
        while not (await store.usage_totals(w.ws)).requests:  # running: it flushed something
            assert time.monotonic() < deadline, proc.log_tail()
            await asyncio.sleep(0.05)
        more = await admit_all(rclient, cfg, clock, [w], 70)
        assert await proc.stop() == 0
        assert (await store.usage_totals(w.ws)).requests == exp.units + more.units == 120
