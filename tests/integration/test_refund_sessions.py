"""Refunds of charges that opened a billing session (refund.lua): the charge stands when
the session served another message, wherever the session's entry now is; it is given back,
and the session undone, when nothing else was served in it. Real Redis."""

from __future__ import annotations

import asyncio

import pytest

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


# A message admitted inside a paid session (charged nothing) that fails no longer counts
# as served there: the opener's charge goes back once nothing of the session was served,
# whichever failure comes last, and once only.


async def test_bot_down_opener_refunded_when_the_other_message_failed_first(
    rclient: RedisClient,
) -> None:
    _, _, w, adm = await admission(rclient, free=100 * USD)
    app = w.apps[0]
    o, m2 = await asyncio.gather(adm.admit(app, "web", "u"), adm.admit(app, "web", "u"))
    assert (o.units, m2.units, m2.bsid) == (1, 0, o.bsid)
    assert not await adm.refund(app, m2)
    assert await adm.refund(app, o)
    assert await free_of(rclient, w.ws) == 100 * USD
    assert not await adm.refund(app, o)
    assert not await adm.refund(app, m2)
    assert await free_of(rclient, w.ws) == 100 * USD
    assert not [v for v in (await session_entries(rclient, w.ws)).values() if o.bsid in v]


async def test_bot_down_opener_refunded_by_the_last_failure_of_its_session(
    rclient: RedisClient,
) -> None:
    """The opener fails first (kept: another message counts), then the others: the last
    one's failure gives the opener's charge back, once."""
    clock, _, w, adm = await admission(rclient, free=100 * USD)
    app = w.apps[0]
    o = await adm.admit(app, "web", "u")
    clock.advance(5)
    m2, m3 = await asyncio.gather(adm.admit(app, "web", "u"), adm.admit(app, "web", "u"))
    assert (o.units, m2.units, m3.units) == (1, 0, 0)
    assert not await adm.refund(app, o)
    assert not await adm.refund(app, m2)
    assert not await adm.refund(app, m2)  # reported twice: counted once
    assert await free_of(rclient, w.ws) == 100 * USD - PRICE
    assert await adm.refund(app, m3)
    assert await free_of(rclient, w.ws) == 100 * USD
    assert not await adm.refund(app, m3)
    assert not await adm.refund(app, o)
    assert await free_of(rclient, w.ws) == 100 * USD
    again = await adm.admit(app, "web", "u")  # the block opens again, charged
    assert again.units == 1


async def test_opener_stands_when_another_message_of_its_session_was_served(
    rclient: RedisClient,
) -> None:
    clock, _, w, adm = await admission(rclient, free=100 * USD)
    app = w.apps[0]
    o = await adm.admit(app, "web", "u")
    clock.advance(5)
    m2 = await adm.admit(app, "web", "u")
    clock.advance(5)
    served = await adm.admit(app, "web", "u")  # served: its bot call reports nothing
    assert (o.units, m2.units, served.units) == (1, 0, 0)
    assert not await adm.refund(app, o)
    assert not await adm.refund(app, m2)
    assert not await adm.refund(app, m2)  # a second report of m2 must not un-count served
    assert await free_of(rclient, w.ws) == 100 * USD - PRICE


async def test_keyed_message_in_session_uncounted_when_every_delivery_failed(
    rclient: RedisClient,
) -> None:
    """A keyed message inside the session and its redelivery: while the redelivery may be
    served the opener's charge stands; its failure gives it back."""
    clock, _, w, adm = await admission(rclient, free=100 * USD)
    app = w.apps[0]
    o = await adm.admit(app, "slack", "u")
    clock.advance(5)
    m2 = await adm.admit(app, "slack", "u", "Ev1", digest="ab")
    clock.advance(5)
    retry = await adm.admit(app, "slack", "u", "Ev1", digest="ab")
    assert (o.units, m2.units, m2.bsid, retry.duplicate) == (1, 0, o.bsid, True)
    assert not await adm.refund(app, m2)
    assert not await adm.refund(app, o)
    assert await free_of(rclient, w.ws) == 100 * USD - PRICE
    assert await adm.refund(app, retry)
    assert await free_of(rclient, w.ws) == 100 * USD
    assert not await adm.refund(app, retry)
    assert not await adm.refund(app, m2)


async def messages_by_bucket(client: RedisClient, ws: str) -> dict[int, int]:
    """The aggregates' message count ("m") of each live bucket."""
    out: dict[int, int] = {}
    for b in await client.zrange(keys.agg_index_key(ws), 0, -1):
        for f, v in (await client.hgetall(keys.agg_key(ws, int(b)))).items():
            if keys.agg_field_parts(f)[4] == "m":
                out[int(b)] = out.get(int(b), 0) + int(v)
    return out


async def test_a_message_uncounted_from_its_session_leaves_the_messages_it_was_counted_in(
    rclient: RedisClient,
) -> None:
    """Messages admitted inside a paid session without a charge (keyless, keyed) whose
    bot failed no longer count in the session, nor in the aggregates' messages: taken
    back in the bucket each was counted in, though the failure comes a bucket later.
    (They stayed counted: flushed rows said messages that were never served.)"""
    clock, cfg, w, adm = await admission(rclient, free=100 * USD)
    app, fb = w.apps[0], cfg.flush_bucket_s
    clock.now = (int(clock.now) // fb + 1) * fb  # the start of a flush bucket
    first = int(clock.now)
    o = await adm.admit(app, "slack", "u")
    clock.advance(fb - 2)
    keyless = await adm.admit(app, "slack", "u")
    keyed = await adm.admit(app, "slack", "u", "Ev1", digest="ab")
    assert (o.units, keyless.units, keyed.units) == (1, 0, 0)
    assert await messages_by_bucket(rclient, w.ws) == {first: 3}
    clock.advance(5)  # the bot's failures are reported in the next bucket
    assert not await adm.refund(app, keyless)
    assert not await adm.refund(app, keyed)
    assert (await messages_by_bucket(rclient, w.ws)).get(first) == 1  # was 3
    assert sum((await messages_by_bucket(rclient, w.ws)).values()) == 1
    assert not await adm.refund(app, keyless)  # once
    assert sum((await messages_by_bucket(rclient, w.ws)).values()) == 1
    assert await adm.refund(app, o)  # alone now: the opener's charge too
    assert sum((await messages_by_bucket(rclient, w.ws)).values()) == 0


@pytest.mark.parametrize("how", ["redelivery", "void", "full_path"])
async def test_a_keyed_message_is_uncounted_where_it_was_counted_whatever_fails_last(
    rclient: RedisClient, how: str
) -> None:
    """A keyed message admitted inside a paid session (charged nothing) is taken back in
    the bucket it was counted in, though its last failing delivery is a redelivery
    admitted a bucket later, or a deferred void (no admission time), and also when it
    took the full path (shadow mode). It was taken back in the failure's bucket: rows
    (bucket 1, messages 2) and (bucket 2, messages -1)."""
    clock, cfg, w, adm = await admission(rclient, free=100 * USD)
    app, fb = w.apps[0], cfg.flush_bucket_s
    clock.now = (int(clock.now) // fb + 1) * fb  # the start of a flush bucket
    first = int(clock.now)
    if how == "full_path":  # not the short path: record() writes the record
        await rclient.hset(keys.app_key(w.ws, app), "shadow", "1")
    o = await adm.admit(app, "slack", "u")
    clock.advance(1)
    k = await adm.admit(app, "slack", "u", "Ev1", digest="ab")
    assert (o.units, k.units, k.bsid) == (1, 0, o.bsid)
    assert await messages_by_bucket(rclient, w.ws) == {first: 2}
    clock.advance(fb + 1)  # the next bucket
    if how == "redelivery":
        k2 = await adm.admit(app, "slack", "u", "Ev1", digest="ab")
        assert k2.duplicate
        assert not await adm.refund(app, k)
        assert not await adm.refund(app, k2)  # the last failure, counted a bucket later
    else:
        assert not await adm.void(app, k.rid, k.token)  # a deferred void: at unknown
    got = {b: n for b, n in (await messages_by_bucket(rclient, w.ws)).items() if n}
    assert got == {first: 1}  # was {first: 2, first + fb: -1}
    assert await adm.refund(app, o)  # alone now: the opener's charge too
    assert not {b: n for b, n in (await messages_by_bucket(rclient, w.ws)).items() if n}
