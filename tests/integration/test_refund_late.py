"""A failure of a session's opener reported long after its block (refund.lua): a keyed
charge record lives the idempotency window (a day), far longer than the buckets a refund
looks for the session's entry in. Once the entry cannot be found, nothing shows that the
block served nothing else: the charge stands. Found in time and alone, it is refunded.
Real Redis."""

from __future__ import annotations

from meter.accounts import projection
from meter.admission.admitter import Admitter
from meter.admission.decision import Decision
from meter.admission.reservations import Sweeper
from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient
from tests.support.clock import Clock
from tests.support.metering import Workspace, admission

USD = 1_000_000
PRICE = 200_000  # $0.20 per session, the standard catalog price
LATE_S = 2 * 3600  # past IDLE + BLOCK + a bucket (45 min by default): entry not looked at


async def pool_of(client: RedisClient, w: Workspace) -> int:
    return (await projection.read_balances(client, w.ws)).pool


async def used_block(client: RedisClient) -> tuple[Clock, Workspace, Admitter, Decision]:
    """Opener O (key K) opens a session; M2 is served in it 5 s later."""
    clock, _, w, adm = await admission(client, pool=100 * USD)
    app = w.apps[0]
    o = await adm.admit(app, "slack", "u", "K", digest="d")
    assert (o.units, o.new_session) == (1, True)
    clock.advance(5)
    m2 = await adm.admit(app, "slack", "u")  # served: reports nothing
    assert (m2.units, m2.bsid) == (0, o.bsid)
    return clock, w, adm, o


async def test_a_late_redelivery_of_an_opener_keeps_a_used_block_charged(
    client: RedisClient,
) -> None:
    """O fails (stands: M2 used the block); 2 h later the client redelivers K and the
    bot fails it again: the block M2 was served in stays charged."""
    clock, w, adm, o = await used_block(client)
    app = w.apps[0]
    assert not await adm.refund(app, o)
    before = await pool_of(client, w)
    assert before == 100 * USD - PRICE
    clock.advance(LATE_S)
    r = await adm.admit(app, "slack", "u", "K", digest="d")
    assert r.duplicate
    assert not await adm.refund(app, r)
    assert await pool_of(client, w) == before
    assert not await adm.refund(app, r)  # counted once: still nothing


async def test_a_void_deferred_past_the_session_keeps_the_charge(client: RedisClient) -> None:
    """O's admission was answered 503 (ambiguous) and its void only reaches Redis 2 h
    later: the block served M2, the charge stands."""
    clock, w, adm, o = await used_block(client)
    app = w.apps[0]
    clock.advance(LATE_S)
    assert not await adm.void(app, o.rid, o.token)
    assert await pool_of(client, w) == 100 * USD - PRICE


async def test_a_sweep_past_the_session_keeps_the_charge(client: RedisClient) -> None:
    """O was never confirmed as forwarded and the sweeper comes 2 h later: the charge
    stands, and its reservation is settled."""
    clock, w, adm, _ = await used_block(client)
    clock.advance(LATE_S)
    sweeper = Sweeper(
        client,
        lambda: _reserved(client, w.ws),
        lambda a, r: adm.void(a, r, ""),
        clock=clock,
    )
    assert await sweeper.sweep_once() == 0
    assert await client.zcard(keys.reservations_key(w.ws)) == 0
    assert await pool_of(client, w) == 100 * USD - PRICE


async def test_an_opener_alone_failing_in_time_is_refunded(client: RedisClient) -> None:
    """The normal case: the bot fails O within seconds, nothing else in the block."""
    clock, _, w, adm = await admission(client, pool=100 * USD)
    app = w.apps[0]
    o = await adm.admit(app, "slack", "u", "K", digest="d")
    assert o.units == 1
    clock.advance(3)
    assert await adm.refund(app, o)
    assert await pool_of(client, w) == 100 * USD


async def test_the_sweeper_refunds_a_lone_opener_in_time(client: RedisClient) -> None:
    """O never forwarded, swept after the refund window, nothing else in the block."""
    clock, cfg, w, adm = await admission(client, pool=100 * USD)
    app = w.apps[0]
    assert (await adm.admit(app, "slack", "u", "K", digest="d")).units == 1
    clock.advance(cfg.refund_window_s + 1)
    sweeper = Sweeper(
        client,
        lambda: _reserved(client, w.ws),
        lambda a, r: adm.void(a, r, ""),
        clock=clock,
    )
    assert await sweeper.sweep_once() == 1
    assert await pool_of(client, w) == 100 * USD


async def _reserved(client: RedisClient, ws: str) -> list[str]:
    return [ws]
