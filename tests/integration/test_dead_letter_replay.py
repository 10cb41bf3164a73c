"""Dead letters an older flusher quarantined are replayed by the current code, once.

The previous version's flusher cannot parse a billing-session entry that carries
``opened`` (``too many values to unpack (expected 7)``) and quarantines the whole bucket.
That is simulated with the real pieces: the bucket is claimed by ``claim.lua``, its
content goes through ``raw_content`` into ``Store.quarantine_flush_batch`` and the claim
is acked, as ``BatchWriter._quarantine`` does. An aggregate bucket is quarantined the same
way: its counters are added, so a second write of it would show.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from config import Settings
from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient
from meter.store import DeadLetter, Store, open_store
from meter.usage.batches import raw_content
from meter.usage.claims import BucketKind, Claims
from meter.usage.flusher import Flusher
from meter.usage.replay import replay_all
from tests.support.clock import Clock
from tests.support.flushkit import USD, Expected, Seeded, opened_store, seed_ws, store_url
from tests.support.metering import admitter
from tests.support.serving import CREDITGATE, creditgate_env
from tests.support.settings import make_settings

OLD_ERROR = "ValueError: too many values to unpack (expected 7)"


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return store_url(request.param, request, tmp_path)


@pytest.fixture
async def store(url: str) -> AsyncIterator[Store]:
    async for s in opened_store(url):
        yield s


async def old_flusher_quarantines(
    rclient: RedisClient, store: Store, ws: str, clock: Clock, kinds: tuple[BucketKind, ...]
) -> list[str]:
    """Claim, dead-letter and ack every bucket of ``kinds``; the dead letters' ids."""
    claims = Claims(rclient, "old-flusher", 60_000, clock=clock)
    _, ag, sr, _ = await claims.scan(ws, float("inf"), float("inf"))
    ids = []
    for kind, buckets in (("ag", ag), ("sr", sr)):
        for bucket in buckets if kind in kinds else []:
            _, claim = await claims.claim(ws, kind, bucket)  # type: ignore[arg-type]
            assert claim is not None
            now = int(clock.now * 1000)
            dead = DeadLetter(
                claim.batch_id, ws, kind, bucket * 1000, raw_content(claim), OLD_ERROR, 1, now, now
            )
            assert await store.quarantine_flush_batch(dead)
            assert await claims.ack(claim)
            ids.append(claim.batch_id)
    return ids


async def two_sessions(
    rclient: RedisClient, store: Store, cfg: Settings, clock: Clock
) -> tuple[Seeded, Expected, dict[str, tuple[str, int, int]]]:
    """Bob's and alice's sessions admitted, then closed; expected (user -> id, start, amount)."""
    w = await seed_ws(rclient, store, cfg, clock, products=["automation"], pool=100 * USD)
    adm = admitter(rclient, cfg, clock)
    exp, want = Expected(), {}
    for user in ("bob", "alice"):
        d = await adm.admit(w.apps[0], "web", user)
        exp.add(d)
        want[user] = (d.bsid, int(clock.now * 1000), d.charged)
        clock.advance(10)
    entries = await rclient.hvals(keys.sessions_key(w.ws, sessions_bucket(cfg, clock.now - 20)))
    assert entries
    assert all(len(v.split(b",")) == 8 for v in entries)  # with ``opened``
    clock.advance(3 * cfg.session_block_s + cfg.session_idle_s + 5)
    return w, exp, want


def sessions_bucket(cfg: Settings, at: float) -> int:
    width = max(1, int(cfg.session_block_s))
    return int(at) // width * width


async def stored_sessions(store: Store, ws: str) -> dict[str, tuple[str, int, int]]:
    rows = await store.sessions(ws, 0, 2**62)
    assert len({r.id for r in rows}) == len(rows)
    return {r.channel_user: (r.id, r.start_ms, r.amount) for r in rows}


async def test_replay_writes_quarantined_sessions_once(rclient: RedisClient, store: Store) -> None:
    cfg, clock = make_settings(fast_flush=True), Clock.past()
    w, _, want = await two_sessions(rclient, store, cfg, clock)
    (dead_id,) = await old_flusher_quarantines(rclient, store, w.ws, clock, ("sr",))
    assert await stored_sessions(store, w.ws) == {}  # lost, until replayed
    assert [d.id for d in await store.dead_letters()] == [dead_id]

    block_ms = int(cfg.session_block_s * 1000)
    report = await replay_all(store, block_ms)
    assert (report.replayed, report.taken, report.stuck) == ([dead_id], [], {})
    assert await stored_sessions(store, w.ws) == want
    assert await store.dead_letters() == []
    batch = await store.get_flush_batch(dead_id)
    assert batch is not None
    assert batch.rows == 2

    again = await replay_all(store, block_ms)
    assert (again.replayed, again.taken, again.stuck) == ([], [], {})
    assert await stored_sessions(store, w.ws) == want


async def test_two_replayers_at_once_write_each_dead_letter_once(
    rclient: RedisClient, store: Store, url: str
) -> None:
    cfg, clock = make_settings(fast_flush=True), Clock.past()
    w, exp, want = await two_sessions(rclient, store, cfg, clock)
    ids = await old_flusher_quarantines(rclient, store, w.ws, clock, ("ag", "sr"))
    assert len(ids) >= 2
    assert (await store.usage_totals(w.ws)).total_units == 0

    block_ms = int(cfg.session_block_s * 1000)
    async with open_store(url) as other:
        one, two = await asyncio.gather(replay_all(store, block_ms), replay_all(other, block_ms))
    assert sorted(one.replayed + two.replayed) == sorted(ids)
    assert set(one.taken + two.taken) <= set(ids)  # what the other one wrote first
    tot = await store.usage_totals(w.ws)
    assert (tot.total_units, tot.messages, tot.amount) == (exp.units, exp.messages, exp.amount)
    assert await stored_sessions(store, w.ws) == want
    assert await store.dead_letters() == []


async def test_a_dead_letter_still_unreadable_stays_and_is_reported(
    rclient: RedisClient, store: Store
) -> None:
    cfg, clock = make_settings(fast_flush=True), Clock.past()
    w, _, want = await two_sessions(rclient, store, cfg, clock)
    bad = sessions_bucket(cfg, clock.now - 3600)
    await rclient.hset(keys.sessions_key(w.ws, bad), f"{w.apps[0]}\tweb\tcarol", "1,2,x")
    await rclient.zadd(keys.sessions_index_key(w.ws), {str(bad): bad})
    ids = await old_flusher_quarantines(rclient, store, w.ws, clock, ("sr",))
    bad_id = next(i for i in ids if i.endswith(f":sr:{bad}:" + i.rsplit(":", 1)[1]))

    # Each flusher pass replays what it can read; the unreadable one stays, tried once.
    flusher = Flusher(rclient, store, cfg, clock=clock)
    res = await flusher.flush_once()
    assert (res.replayed, res.failed, res.quarantined) == (1, 0, 0)
    assert await stored_sessions(store, w.ws) == want
    assert [d.id for d in await store.dead_letters()] == [bad_id]
    assert (await flusher.flush_once()).replayed == 0
    assert flusher.stats.replayed == 1

    report = await replay_all(store, int(cfg.session_block_s * 1000))
    assert report.replayed == []
    assert list(report.stuck) == [bad_id]
    assert "ValueError" in report.stuck[bad_id]
    (left,) = await store.dead_letters()
    assert (left.id, left.error) == (bad_id, OLD_ERROR)
    assert await stored_sessions(store, w.ws) == want


async def test_the_command_replays_and_lists_what_stays(
    rclient: RedisClient, store: Store, url: str
) -> None:
    cfg, clock = make_settings(fast_flush=True), Clock.past()
    w, _, want = await two_sessions(rclient, store, cfg, clock)
    bad = sessions_bucket(cfg, clock.now - 3600)
    await rclient.hset(keys.sessions_key(w.ws, bad), f"{w.apps[0]}\tweb\tcarol", "1,2,x")
    await rclient.zadd(keys.sessions_index_key(w.ws), {str(bad): bad})
    await old_flusher_quarantines(rclient, store, w.ws, clock, ("sr",))
    env = creditgate_env(store_url=url, session_block_s=cfg.session_block_s)
    cmd = [CREDITGATE, "flush", "--replay-dead-letters"]
    res = await asyncio.to_thread(
        subprocess.run, cmd, env=env, capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 1, res.stderr
    assert f"{w.ws}:sr:{bad}:" in res.stderr
    assert "replayed 1 dead letters (0 by another replayer), 1 stay" in res.stderr
    assert await stored_sessions(store, w.ws) == want
    assert len(await store.dead_letters()) == 1
