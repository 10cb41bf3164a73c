"""Refunds of charges that opened a billing session (refund.lua): the charge stands when
the session served another message, wherever the session's entry now is; it is given back,
and the session undone, when nothing else was served in it. Real Redis."""

from __future__ import annotations

from meter.accounts import projection
from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient
from tests.support.metering import admission

USD = 1_000_000
PRICE = 200_000


async def free_of(client: RedisClient, ws: str) -> int:
    return (await projection.read_balances(client, ws)).free


async def session_entries(client: RedisClient, ws: str) -> dict[tuple[int, str], str]:
    """Every billing-session entry live in Redis: (bucket, hash field) -> value."""
    out: dict[tuple[int, str], str] = {}
    for b in await client.zrange(keys.sessions_index_key(ws), 0, -1):
        for f, v in (await client.hgetall(f"{keys.ws_prefix(ws)}:sr:{int(b)}")).items():
            out[int(b), f.decode()] = v.decode()
    return out


async def test_a_late_block_opener_stands_once_the_next_block_opened(
    rclient: RedisClient,
) -> None:
    """Block 2's opener O (at 29:45) fails after M2 was served in block 2 and M3 opened
    block 3: O's charge stands (block 2 was used), as it would without M3."""
    clock, _, w, adm = await admission(rclient, free=100 * USD)
    app, t0 = w.apps[0], clock.now
    assert (await adm.admit(app, "web", "u")).units == 1  # block 1 opened at 0
    for at in (850, 899):
        clock.now = t0 + at
        assert (await adm.admit(app, "web", "u")).units == 0
    clock.now = t0 + 1785
    o = await adm.admit(app, "web", "u")  # opens block 2 late
    assert o.units == 1
    assert o.new_session
    clock.now = t0 + 1790
    m2 = await adm.admit(app, "web", "u")  # served in block 2
    assert m2.units == 0
    assert m2.bsid == o.bsid
    clock.now = t0 + 1800.5
    m3 = await adm.admit(app, "web", "u")  # opens block 3
    assert m3.units == 1
    assert m3.bsid != o.bsid
    before = await free_of(rclient, w.ws)
    clock.now = t0 + 1805  # the bot answers O 5xx after 20 s
    assert not await adm.refund(app, o)
    assert await free_of(rclient, w.ws) == before
    entries = await session_entries(rclient, w.ws)
    assert [v.split(",")[4] for v in entries.values() if f",{o.bsid}," in v] == ["2"]


async def test_a_late_block_opener_alone_in_its_block_is_refunded_after_the_next_opened(
    rclient: RedisClient,
) -> None:
    """Block 2 served nothing but its failed opener: refunded, and its entry (no longer
    the conversation's newest) goes; block 3's stays."""
    clock, _, w, adm = await admission(rclient, free=100 * USD)
    app, t0 = w.apps[0], clock.now
    await adm.admit(app, "web", "u")
    clock.now = t0 + 899
    await adm.admit(app, "web", "u")
    clock.now = t0 + 1785
    o = await adm.admit(app, "web", "u")
    clock.now = t0 + 1800.5
    m3 = await adm.admit(app, "web", "u")
    assert (o.units, m3.units) == (1, 1)
    before = await free_of(rclient, w.ws)
    clock.now = t0 + 1805
    assert await adm.refund(app, o)
    assert await free_of(rclient, w.ws) == before + PRICE
    entries = await session_entries(rclient, w.ws)
    assert not [v for v in entries.values() if f",{o.bsid}," in v]
    assert [v.split(",")[4] for v in entries.values() if f",{m3.bsid}," in v] == ["1"]
