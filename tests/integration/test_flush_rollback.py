"""Redis losing writes the store already committed: a restart from an older dump, and a
failover to a replica that had not received them.

The flusher claims and commits closed buckets; then Redis comes back as it was before the
claim (the buckets live again, the id counter back). Every admission must still be counted
exactly once, in micro-dollars, and no id may come again (a new billing session must not
merge into an old one). With ``redis_durability = replicated`` a claim is written to the
store only once the replica has it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from meter.admission.decision import Decision
from meter.redis_layer import keys
from meter.redis_layer.client import connect
from meter.store import SessionRow, Store, UsageRow
from meter.usage.flusher import Flusher
from tests.support.clock import Clock
from tests.support.flushkit import USD, Expected, opened_store, seed_ws, store_url
from tests.support.metering import admitter
from tests.support.servers import RedisServer, start_redis
from tests.support.servers.resp import info_fields
from tests.support.settings import make_settings


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async for s in opened_store(store_url(request.param, request, tmp_path)):
        yield s


@pytest.fixture
def servers() -> Iterator[list[RedisServer]]:
    """The Redis servers a test starts, stopped at its end."""
    started: list[RedisServer] = []
    yield started
    for s in started:
        s.kill()


def replica_of(master: RedisServer, workdir: Path) -> RedisServer:
    replica = start_redis(workdir, extra_args=["--replicaof", master.host, str(master.port)])
    wait_in_sync(master, replica)
    return replica


def wait_in_sync(master: RedisServer, replica: RedisServer) -> None:
    """Until the replica is linked and has everything the master wrote (observed)."""
    while True:
        mine = info_fields(str(replica.command("INFO", "replication")))
        theirs = info_fields(str(master.command("INFO", "replication")))
        linked = mine.get("master_link_status") == "up" and theirs.get("connected_slaves") == "1"
        if linked and mine.get("slave_repl_offset") == theirs.get("master_repl_offset"):
            return
        replica.command("PING")  # a round trip, not a timer


def sessions_seen(decisions: list[tuple[str, Decision]]) -> dict[str, tuple[str, int, int]]:
    """bsid -> (user, messages, amount), from the admission decisions alone."""
    out: dict[str, tuple[str, int, int]] = {}
    for user, d in decisions:
        _, n, amount = out.get(d.bsid, (user, 0, 0))
        out[d.bsid] = (user, n + 1, amount + d.charged)
    return out


@pytest.mark.parametrize("loss", ["restart", "failover"])
async def test_redis_losing_a_committed_claim_counts_nothing_twice(
    loss: str, store: Store, tmp_path: Path, servers: list[RedisServer]
) -> None:
    master = start_redis(tmp_path / "master")
    servers.append(master)
    replica = replica_of(master, tmp_path / "replica") if loss == "failover" else None
    if replica is not None:
        servers.append(replica)
    cfg, clock = make_settings(redis_url=master.url, fast_flush=True), Clock.past()
    r = connect(master.url)
    w = await seed_ws(r, store, cfg, clock, products=["agent", "automation"], pool=100 * USD)
    adm = admitter(r, cfg, clock)
    exp, sessions = Expected(), []
    for i in range(10):
        exp.add(await adm.admit(w.apps[0], "web", f"u{i}"))
    d = await adm.admit(w.apps[1], "web", "alice")
    exp.add(d)
    sessions.append(("alice", d))
    clock.advance(3600)
    # What Redis will come back with: a dump, or a replica cut off from its master.
    if replica is None:
        master.command("SAVE")
    else:
        wait_in_sync(master, replica)
        replica.command("REPLICAOF", "NO", "ONE")
    flusher = Flusher(r, store, cfg, clock=clock)
    await flusher.drain(force=False)
    assert (await store.usage_totals(w.ws)).amount == exp.amount  # committed, acked
    assert not await r.hlen(keys.claims_key(w.ws))
    await r.aclose()
    if replica is None:
        master.kill()
        master.start()  # from the dump: the claims are gone, the buckets live again
        url = master.url
    else:
        master.kill()
        url = replica.url  # promoted without the claims
    r = connect(url)
    assert await r.zcard(keys.agg_index_key(w.ws)) == 1  # the committed bucket, live again
    adm = admitter(r, cfg, clock)
    d = await adm.admit(w.apps[1], "web", "bob")
    exp.add(d)
    sessions.append(("bob", d))
    for i in range(3):
        exp.add(await adm.admit(w.apps[0], "web", f"u{i}"))
    clock.advance(3600)
    again = Flusher(r, store, cfg, clock=clock)
    await again.drain(force=False)
    await r.aclose()

    tot = await store.usage_totals(w.ws)
    assert (tot.total_units, tot.messages, tot.amount_pool) == (exp.units, exp.messages, exp.pool)
    assert tot.amount == exp.amount == 13 * 20_000 + 2 * 200_000
    assert tot.requests == 13
    rows = await store.sessions(w.ws, 0, 2**62)
    got = {s.id: (s.channel_user, s.messages, s.amount) for s in rows}
    assert got == sessions_seen(sessions)
    assert len(got) == 2  # bob's session is not alice's


async def test_replicated_claims_wait_for_the_replica(
    store: Store, tmp_path: Path, servers: list[RedisServer]
) -> None:
    """redis_durability=replicated: a claim the replica has not got is not written to the
    store; once the replica is back the same claim (same gen) is."""
    master = start_redis(tmp_path / "master")
    servers.append(master)
    replica = replica_of(master, tmp_path / "replica")
    servers.append(replica)
    cfg = make_settings(
        redis_url=master.url, fast_flush=True, redis_durability="replicated", redis_replicas=1
    )
    # The flusher's WAIT gives up after 0.8 x this (the admissions keep the tests' long one).
    flush_cfg = cfg.model_copy(update={"redis_timeout_s": 5.0})
    clock = Clock.past()
    r = connect(master.url)
    w = await seed_ws(r, store, cfg, clock, products=["agent"], pool=100 * USD)
    adm = admitter(r, cfg, clock)
    exp = Expected()
    for i in range(5):
        exp.add(await adm.admit(w.apps[0], "web", f"u{i}"))
    clock.advance(3600)
    replica.kill()
    flusher = Flusher(r, store, flush_cfg, clock=clock)
    try:
        res = await flusher.flush_once()
        assert res.failed == 1
        assert res.batches == 0
        claimed = await r.hgetall(keys.claims_key(w.ws))
        assert len(claimed) == 1  # still claimed, for a later pass
        assert (await store.usage_totals(w.ws)).amount == 0
        replica.start()
        wait_in_sync(master, replica)
        await flusher.drain(force=False)
    finally:
        await flusher.close()
    assert not await r.hlen(keys.claims_key(w.ws))
    await r.aclose()
    tot = await store.usage_totals(w.ws)
    assert (tot.total_units, tot.messages, tot.amount) == (exp.units, exp.messages, exp.amount)
    [(field, gen)] = claimed.items()
    kind, _, bucket = field.decode().partition(":")
    batch = await store.get_flush_batch(f"{w.ws}:{kind}:{bucket}:{gen.decode()}")
    assert batch is not None  # written under the gen first claimed
    assert batch.rows > 0


def _usage(ws: str, bucket_ms: int, n: int) -> UsageRow:
    return UsageRow(ws, bucket_ms, "app1", "web", "agent", "message", units=n, messages=n,
                    amount_pool=n * 20_000)  # fmt: skip


def _session(ws: str, messages: int, amount: int, seq: int) -> SessionRow:
    return SessionRow(ws, "s1", "app1", "web", "alice", "agent", 1_000, 2_000 + messages,
                      messages, amount, seq)  # fmt: skip


@pytest.mark.parametrize("order", ["lost_first", "lost_last"])
async def test_two_histories_of_one_bucket_count_once(order: str, store: Store) -> None:
    """The store side alone: a bucket claimed above the same known gen in two histories (the
    one Redis lost: 5 messages; the one it kept: 3 of them, nothing after), committed in
    either order, counts 5; a later claim of the bucket (known = the kept one's gen) adds."""
    ws, b = "wsroll", 1_800_000_000_000
    lost = (f"{ws}:ag:{b // 1000}:200", [_usage(ws, b, 5)], [_session(ws, 5, 90_000, 200)])
    kept = (f"{ws}:ag:{b // 1000}:300", [_usage(ws, b, 3)], [_session(ws, 3, 50_000, 300)])
    for batch_id, usage, sessions in [lost, kept] if order == "lost_first" else [kept, lost]:
        assert await store.write_flush_batch(
            batch_id, ws, "ag", b, usage_rows=usage, session_rows=sessions, known_gen=100
        )
    later = f"{ws}:ag:{b // 1000}:400"
    assert await store.write_flush_batch(later, ws, "ag", b, usage_rows=[_usage(ws, b, 2)],
                                         known_gen=300)  # fmt: skip
    tot = await store.usage_totals(ws)
    assert (tot.messages, tot.amount_pool) == (7, 7 * 20_000)
    [s] = await store.sessions(ws, 0, 2**62)
    assert (s.messages, s.amount) == (5, 90_000)  # the snapshot Redis kept is older
