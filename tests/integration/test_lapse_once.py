"""Once-only events of the free credits after Redis lost writes the store already has.

Free credits expire (or run out), the flusher commits the ``lapse`` ledger entry and the
owner event; then Redis comes back from an older dump, or fails over to a replica that
had not received them, and the next message does the same lapse (or exhaustion) again
under a new event id. The store must take each once: one ledger entry, one webhook.
But a crossing that really happens again is a new one, and must reach the store: free
credits a refund gave back that run out again, and free credits a replica whose clock is
behind gave back after another had lapsed them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from config import Settings, load_catalog
from meter.accounts.projection import grant, read_balances
from meter.accounts.rebuild import rebuild_workspace
from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient, connect
from meter.store import OutboxEvent, Store
from meter.usage.flusher import Flusher
from meter.usage.reconcile import compare
from tests.support.clock import Clock
from tests.support.flushkit import USD, opened_store, seed_ws, store_url
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
    started: list[RedisServer] = []
    yield started
    for s in started:
        s.kill()


def wait_in_sync(master: RedisServer, replica: RedisServer) -> None:
    """Until the replica is linked and has everything the master wrote (observed)."""
    while True:
        mine = info_fields(str(replica.command("INFO", "replication")))
        theirs = info_fields(str(master.command("INFO", "replication")))
        linked = mine.get("master_link_status") == "up" and theirs.get("connected_slaves") == "1"
        if linked and mine.get("slave_repl_offset") == theirs.get("master_repl_offset"):
            return
        replica.command("PING")  # a round trip, not a timer


class Losing:
    """A Redis that will lose what follows :meth:`mark`: from a dump, or by failover."""

    def __init__(self, loss: str, tmp_path: Path, servers: list[RedisServer]) -> None:
        self.master = start_redis(tmp_path / "master")
        servers.append(self.master)
        self.replica: RedisServer | None = None
        if loss == "failover":
            self.replica = start_redis(
                tmp_path / "replica",
                extra_args=["--replicaof", self.master.host, str(self.master.port)],
            )
            servers.append(self.replica)
            wait_in_sync(self.master, self.replica)

    def mark(self) -> None:
        if self.replica is None:
            self.master.command("SAVE")
        else:
            wait_in_sync(self.master, self.replica)
            self.replica.command("REPLICAOF", "NO", "ONE")  # misses what follows

    def lose(self) -> str:
        """Kill the master; the url of the Redis that comes back without the writes."""
        self.master.kill()
        if self.replica is None:
            self.master.start()
            return self.master.url
        return self.replica.url


async def flush(r: RedisClient, store: Store, cfg: Settings, clock: Clock) -> None:
    clock.advance(60)
    await Flusher(r, store, cfg, clock=clock).drain(force=False)


@pytest.mark.parametrize("loss", ["restart", "failover"])
async def test_an_expiry_lapses_once_though_redis_lost_it(
    loss: str, store: Store, tmp_path: Path, servers: list[RedisServer]
) -> None:
    redis = Losing(loss, tmp_path, servers)
    cfg = make_settings(redis_url=redis.master.url, fast_flush=True, free_credit_validity_s=600)
    clock = Clock.past()
    r = connect(redis.master.url)
    w = await seed_ws(r, store, cfg, clock, products=["agent"], free=10 * USD, pool=100 * USD)
    adm = admitter(r, cfg, clock)
    assert (await adm.admit(w.apps[0], "web", "u1")).free == 20_000
    redis.mark()
    clock.advance(700)  # the free credits expire: the next message lapses them
    assert (await adm.admit(w.apps[0], "web", "u2")).admitted
    await flush(r, store, cfg, clock)
    [first] = await store.ledger_entries(w.ws, kind="lapse")
    await r.aclose()

    r = connect(redis.lose())  # the lapse is undone there; the next message lapses again
    clock.advance(5)
    assert (await admitter(r, cfg, clock).admit(w.apps[0], "web", "u3")).admitted
    await flush(r, store, cfg, clock)
    lapses = await store.ledger_entries(w.ws, kind="lapse")
    assert [(e.amount, e.reference) for e in lapses] == [(-(10 * USD - 20_000), first.reference)]
    expired = [e for e in await store.list_events(w.ws) if e.event_type == "free_credits.expired"]
    assert [e.event_id for e in expired] == [first.reference]
    report = await compare(store, r, w.ws)
    await r.aclose()
    free = [d for d in report.differences if d.field in ("free", "lapsed")]
    assert not [d.line() for d in free if not d.explained]
    assert (await store.ledger_balance(w.ws)).free == 20_000  # granted - lapsed = spent


@pytest.mark.parametrize("loss", ["restart", "failover"])
async def test_free_credits_run_out_once_though_redis_lost_it(
    loss: str, store: Store, tmp_path: Path, servers: list[RedisServer]
) -> None:
    redis = Losing(loss, tmp_path, servers)
    cfg = make_settings(redis_url=redis.master.url, fast_flush=True)
    clock = Clock.past()
    r = connect(redis.master.url)
    w = await seed_ws(r, store, cfg, clock, products=["agent"], free=40_000, pool=100 * USD)
    adm = admitter(r, cfg, clock)
    assert (await adm.admit(w.apps[0], "web", "u1")).free == 20_000
    redis.mark()
    assert (await adm.admit(w.apps[0], "web", "u2")).free == 20_000  # the last of them
    await flush(r, store, cfg, clock)
    await r.aclose()

    r = connect(redis.lose())
    assert (await admitter(r, cfg, clock).admit(w.apps[0], "web", "u3")).free == 20_000
    await flush(r, store, cfg, clock)
    await r.aclose()
    types = [e.event_type for e in await store.list_events(w.ws)]
    assert types.count("free_credits.exhausted") == 1


async def test_a_grant_and_a_message_lapse_one_expiry_under_one_reference(
    store: Store, tmp_path: Path, servers: list[RedisServer]
) -> None:
    """Whichever lapses an expiry (the next message, or a new free grant), its reference
    is the same: one history's lapse and the other's are one ledger entry."""
    server = start_redis(tmp_path / "redis")
    servers.append(server)
    cfg = make_settings(redis_url=server.url, fast_flush=True, free_credit_validity_s=600)
    clock = Clock.past()
    r = connect(server.url)
    seeded = [
        await seed_ws(r, store, cfg, clock, products=["agent"], free=USD, pool=USD)
        for _ in range(2)
    ]
    clock.advance(700)
    by_message, by_grant = seeded
    assert (await admitter(r, cfg, clock).admit(by_message.apps[0], "web", "u1")).admitted
    clock.advance(1)  # later, as a history that lost the first lapse would do it again
    await grant(r, by_grant.ws, reference="more", kind="free", amount=USD,
                low_threshold=0, free_expires_ms=int(clock.now * 1000) + 600_000,
                now_ms=int(clock.now * 1000))  # fmt: skip
    await flush(r, store, cfg, clock)
    await r.aclose()
    refs = []
    for w in seeded:
        [lapse] = await store.ledger_entries(w.ws, kind="lapse")
        assert lapse.amount == -USD
        refs.append(lapse.reference.removeprefix(f"{w.ws}:"))
    assert refs[0] == refs[1]


async def test_a_refund_after_the_lapse_from_a_replica_behind_lapses_what_it_gives_back(
    store: Store, tmp_path: Path, servers: list[RedisServer]
) -> None:
    """Replica A runs 50 s behind B. A charges free credit before the expiry, B lapses the
    rest after it, then A refunds its message, still before the expiry by A's clock: the
    free credit comes back lapsed (not spendable, not lapsed again by B's next message
    under the key the store already took), and the ledger lapses all of it, as Redis."""
    server = start_redis(tmp_path / "redis")
    servers.append(server)
    cfg = make_settings(redis_url=server.url, fast_flush=True, free_credit_validity_s=600)
    ahead = Clock.past()
    r = connect(server.url)
    w = await seed_ws(r, store, cfg, ahead, products=["agent"], free=10 * USD, pool=100 * USD)
    behind = Clock(ahead.now - 50)
    a, b = admitter(r, cfg, behind), admitter(r, cfg, ahead)
    ahead.advance(590)
    behind.advance(590)
    d = await a.admit(w.apps[0], "web", "u1")  # 60 s before the expiry by A's clock
    assert d.free == 20_000
    ahead.advance(20)
    behind.advance(20)  # B: 10 s past the expiry; A: 40 s before it
    assert (await b.admit(w.apps[0], "web", "u2")).admitted  # lapses the rest
    assert await a.refund(w.apps[0], d)
    bal = await read_balances(r, w.ws)
    assert (bal.free, bal.lapsed) == (0, 10 * USD)  # lapsed, not spendable again
    ahead.advance(5)
    assert (await b.admit(w.apps[0], "web", "u3")).admitted
    bal = await read_balances(r, w.ws)
    assert (bal.free, bal.lapsed) == (0, 10 * USD)
    await flush(r, store, cfg, ahead)
    lapses = await store.ledger_entries(w.ws, kind="lapse")
    assert sorted(-e.amount for e in lapses) == [20_000, 10 * USD - 20_000]
    report = await compare(store, r, w.ws)
    await r.aclose()
    assert not [d.line() for d in report.differences if not d.explained]
    assert (await store.ledger_balance(w.ws)).free == 0  # granted - lapsed, nothing spent


async def test_free_credits_of_a_lapsed_set_put_back_lapse_again_under_a_key_of_their_own(
    store: Store, tmp_path: Path, servers: list[RedisServer]
) -> None:
    """A gateway not yet upgraded refunds as before: free credits of a set that already
    lapsed come back spendable. The next message lapses them again, a lapse of its own
    (the set's key with the lapsed total before it), which the store takes too."""
    server = start_redis(tmp_path / "redis")
    servers.append(server)
    cfg = make_settings(redis_url=server.url, fast_flush=True, free_credit_validity_s=600)
    clock = Clock.past()
    r = connect(server.url)
    w = await seed_ws(r, store, cfg, clock, products=["agent"], free=10 * USD, pool=100 * USD)
    adm = admitter(r, cfg, clock)
    clock.advance(700)
    assert (await adm.admit(w.apps[0], "web", "u1")).admitted  # lapses the 10 USD
    await r.hincrby(keys.ws_key(w.ws), "free", 20_000)  # the earlier refund.lua's write
    clock.advance(5)
    assert (await adm.admit(w.apps[0], "web", "u2")).admitted  # lapses the 0.02 USD
    await flush(r, store, cfg, clock)
    lapses = await store.ledger_entries(w.ws, kind="lapse")
    assert sorted(-e.amount for e in lapses) == [20_000, 10 * USD]
    assert (await read_balances(r, w.ws)).lapsed == 10 * USD + 20_000
    await r.aclose()


async def test_a_workspace_rebuilt_after_the_lapse_knows_its_free_credits_lapsed(
    store: Store, tmp_path: Path, servers: list[RedisServer]
) -> None:
    """Redis loses the workspace after its free credits lapsed: the rebuilt one knows the
    set lapsed, so free credits of it put back (as above) lapse under a key of their own."""
    server = start_redis(tmp_path / "redis")
    servers.append(server)
    cfg = make_settings(redis_url=server.url, fast_flush=True, free_credit_validity_s=600)
    clock = Clock.past()
    r = connect(server.url)
    w = await seed_ws(r, store, cfg, clock, products=["agent"], free=10 * USD, pool=100 * USD)
    clock.advance(700)
    assert (await admitter(r, cfg, clock).admit(w.apps[0], "web", "u1")).admitted
    await flush(r, store, cfg, clock)
    await r.delete(keys.ws_key(w.ws))  # lost
    outcome = await rebuild_workspace(store, r, cfg, load_catalog(), w.ws, now_s=clock.now)
    assert outcome == "rebuilt"
    await r.hincrby(keys.ws_key(w.ws), "free", 20_000)  # an earlier refund.lua's write
    clock.advance(5)
    assert (await admitter(r, cfg, clock).admit(w.apps[0], "web", "u2")).admitted
    await flush(r, store, cfg, clock)
    lapses = await store.ledger_entries(w.ws, kind="lapse")
    assert sorted(-e.amount for e in lapses) == [20_000, 10 * USD]
    await r.aclose()


async def test_free_credits_given_back_and_run_out_again_are_announced_again(
    store: Store, tmp_path: Path, servers: list[RedisServer]
) -> None:
    """Free credits run out, a refund gives some back, they run out again: two crossings,
    two webhooks; a Redis that lost the second and does it again still makes two."""
    redis = Losing("restart", tmp_path, servers)
    cfg = make_settings(redis_url=redis.master.url, fast_flush=True)
    clock = Clock.past()
    r = connect(redis.master.url)
    w = await seed_ws(r, store, cfg, clock, products=["agent"], free=40_000, pool=100 * USD)
    adm = admitter(r, cfg, clock)
    assert (await adm.admit(w.apps[0], "web", "u1")).free == 20_000
    d = await adm.admit(w.apps[0], "web", "u2")
    assert d.free == 20_000  # the last of them
    await flush(r, store, cfg, clock)
    assert await adm.refund(w.apps[0], d)  # the bot failed: the free credit comes back
    redis.mark()
    assert (await adm.admit(w.apps[0], "web", "u3")).free == 20_000  # out again
    await flush(r, store, cfg, clock)
    await r.aclose()

    def exhausted(events: list[OutboxEvent]) -> list[str]:
        return [e.event_id for e in events if e.event_type == "free_credits.exhausted"]

    first = exhausted(await store.list_events(w.ws))
    assert len(first) == 2

    r = connect(redis.lose())  # the second crossing is undone there, and done again
    assert (await admitter(r, cfg, clock).admit(w.apps[0], "web", "u4")).free == 20_000
    await flush(r, store, cfg, clock)
    await r.aclose()
    assert exhausted(await store.list_events(w.ws)) == first
