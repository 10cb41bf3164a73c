"""A chunked body whose framing is no body (gateway.chunk_framing), on both traffic
servers and the admin port: chunk extensions (``5;name=value``), leading zeros in a
chunk's size and trailer fields were parsed by aiohttp's parser without a bound (it
keeps neither) and counted nowhere: five bytes of body in one chunk with a 200 MB
extension were parsed whole, answered 200, forwarded and charged as a five-byte
message. A chunked body's framing may be 8 KiB plus 32 bytes a chunk: more is refused
413 ``chunk_framing_too_large`` as it arrives, never reaches the bot, and is not
charged; chunks with ordinary extensions pass."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import orjson
import pytest

from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient
from tests.support.bot import Bot, Running, SeededGateway, free_credit
from tests.support.rawhttp import RawConn
from tests.support.settings import OPERATOR_TOKEN
from tests.system.test_chunk_flood import (
    APP,
    HANG_S,
    UP,
    WS,
    gw,
    hook_head,
    parser_status,
    post_chunked,
)

pytestmark = pytest.mark.usefixtures("traffic_server")
__all__ = ["gw"]

MB = 2_000_000  # framing bytes an attack sends: far over the bound, well within a read or two
AUTH = f"Authorization: Bearer {OPERATOR_TOKEN}\r\nContent-Type: application/json\r\n"
OVER = ("chunk_framing_too_large", 413)

ATTACKS = {
    # one chunk of five bytes whose size line carries megabytes of extension
    "one-huge-extension": b"5;n=" + b"v" * MB + b"\r\nhello\r\n0\r\n\r\n",
    # 1,000 one-byte chunks (within the chunk bound), each with a 10 KiB extension
    "10KiB-extension-a-chunk": b"".join(b"1;n=" + b"v" * 10240 + b"\r\nx\r\n" for _ in range(1000))
    + b"0\r\n\r\n",
    # a size line of megabytes of zeros
    "leading-zeros": b"0" * MB + b"5\r\nhello\r\n0\r\n\r\n",
    # the last chunk's extension
    "last-chunk-extension": b"5\r\nhello\r\n0;n=" + b"v" * MB + b"\r\n\r\n",
    # a trailer section of 100 fields of 8,000 bytes: each within aiohttp's field limit
    # (8,190) and their number within its 128 fields, 800 KB in all (the head: 64 KiB)
    "trailer-section": b"5\r\nhello\r\n0\r\n"
    + b"".join(b"t%d: %b\r\n" % (i, b"v" * 8000) for i in range(100))
    + b"\r\n",
}


@pytest.mark.parametrize("extra", ["", "Idempotency-Key: k1\r\n"], ids=["streamed", "keyed"])
@pytest.mark.parametrize("case", list(ATTACKS))
async def test_framing_past_its_bound_is_refused_uncharged(
    gw: Running, bot: Bot, rclient: RedisClient, case: str, extra: str
) -> None:
    before = await free_credit(rclient, WS)
    status, code = await post_chunked(gw, ATTACKS[case], UP, extra)
    assert (code, status) == OVER
    assert bot.calls == []
    assert await free_credit(rclient, WS) == before


async def test_framing_past_its_bound_to_the_admin_api_is_refused(gw: Running) -> None:
    """The admin port runs the same protocol: a valid body with a huge extension, which
    was parsed whole and served (201), is refused."""
    body = orjson.dumps({"email": "ext@example.com", "name": "x"})
    wire = b"%x;n=%b\r\n%b\r\n0\r\n\r\n" % (len(body), b"v" * MB, body)
    status, code = await post_chunked(gw, wire, "/v1/users", AUTH, url=gw.admin_url)
    assert (code, status) == OVER


async def test_framing_trickled_after_the_head_is_refused(
    gw: Running, bot: Bot, rclient: RedisClient
) -> None:
    """The extension arrives in many small writes after the head (counted slice by slice,
    none of it with the head): refused within the bound, before the client sent it all;
    the message, admitted meanwhile or not, is not charged (refunded at once)."""
    before = await free_credit(rclient, WS)
    wire = ATTACKS["one-huge-extension"]
    async with RawConn.open(gw.url) as conn:
        conn.send(hook_head(gw.url))
        await conn.writer.drain()
        with contextlib.suppress(ConnectionError):
            for i in range(0, len(wire), 600):
                conn.send(wire[i : i + 600])
                await conn.writer.drain()
        resp = await conn.response(HANG_S)
    assert (orjson.loads(resp.body)["code"], resp.status) == OVER
    assert bot.calls == []
    for _ in range(int(HANG_S / 0.05)):  # its reservation settled (a hang bound)
        if not await rclient.zcard(keys.reservations_key(WS)):
            break
        await asyncio.sleep(0.05)
    assert await free_credit(rclient, WS) == before


@pytest.mark.parametrize(
    ("size", "chunk", "ext"),
    [
        pytest.param(500_000, 500, b";name=" + b"v" * 12, id="500B-chunks-18B-extensions"),
        # 16,383 chunks: the stream pauses its reading past 4,096 unread chunk ends
        pytest.param(1_048_500, 64, b";e=1", id="1MB-in-64B-chunks-with-extensions"),
    ],
)
async def test_bodies_with_ordinary_framing_pass(
    gw: Running, bot: Bot, size: int, chunk: int, ext: bytes
) -> None:
    """Extensions of a few bytes on every chunk, leading zeros, a short trailer section:
    as before, forwarded whole."""
    body = bytes(range(250)) * (size // 250)
    pieces = [body[i : i + chunk] for i in range(0, len(body), chunk)]
    wire = b"".join(b"%08x%b\r\n%b\r\n" % (len(piece), ext, piece) for piece in pieces)
    wire += b"0;last\r\nX-Checksum: " + b"c" * 4000 + b"\r\n\r\n"
    status, _ = await post_chunked(gw, wire, f"/hooks/web/{APP}/up")
    assert status == 200
    assert [c.body for c in bot.calls] == [body]


async def test_a_trailer_field_over_aiohttps_limit_is_refused(gw: Running, bot: Bot) -> None:
    """aiohttp's parser limits each trailer field, as a header field, to 8,190 bytes
    (its max_field_size): one longer is 400, or a reset (the gateway closing on what the
    client still sends), whatever the framing bound says."""
    wire = b"5\r\nhello\r\n0\r\nT: " + b"v" * 8200 + b"\r\n\r\n"
    status = await parser_status(gw, wire)
    assert status in (0, 400), status
    assert bot.calls == []


@pytest.fixture
async def quick_gw(seeded_gateway: SeededGateway) -> AsyncIterator[Running]:
    """A gateway whose bodies time out after 2 s without data."""
    apps = {APP: {"product": "automation"}}
    async with seeded_gateway(WS, apps, free=500_000_000, body_timeout_s=2.0) as running:
        yield running


async def test_extension_bytes_alone_do_not_keep_a_body_alive(quick_gw: Running, bot: Bot) -> None:
    """The traffic port's body timeout waits for body data, not wire bytes: a client
    trickling a chunk's extension a byte at a time (never reaching the framing bound)
    is answered 408 ``body_timeout`` once no data came for ``body_timeout_s``; the
    message was admitted before (streamed), and the bot never gets it whole."""
    gw = quick_gw
    async with RawConn.open(gw.url) as conn:
        conn.send(hook_head(gw.url) + b"5;n=")
        answer = asyncio.ensure_future(conn.response(HANG_S))
        sent = 0
        try:
            # Pacing, not a measure: one byte every 20 ms until the gateway answers.
            while not answer.done() and sent < 4096:
                conn.send(b"v")
                await conn.writer.drain()
                sent += 1
                await asyncio.wait([answer], timeout=0.02)
            resp = await answer
        finally:
            answer.cancel()
    assert sent < 4096  # answered by the timeout, not by the framing bound
    assert (orjson.loads(resp.body)["code"], resp.status) == ("body_timeout", 408)
    assert bot.calls == []


@pytest.mark.parametrize(
    "tail",
    [
        b"0\r\n" + b"".join(b"t%d: v\r\n" % i for i in range(200)) + b"\r\n",  # > 128 fields
        b"zz\r\nabc\r\n0\r\n\r\n",  # not a size
        b"3;x\nabc\r\n0\r\n\r\n",  # bare LF after an extension
        b"3;a b\r\nabc\r\n0\r\n\r\n",  # space in an extension's name
    ],
    ids=["trailer-fields-past-128", "bad-size", "extension-bare-lf", "extension-space"],
)
async def test_framing_invalid_after_the_head_is_400_at_once(
    gw: Running, bot: Bot, rclient: RedisClient, tail: bytes
) -> None:
    """A streamed body's first chunk reached the bot (its charge confirmed), then the
    parser fails on what follows: aiohttp queued its error behind the request and told
    the body nothing, so the gateway waited out ``body_timeout_s`` (30 s, the connection
    and its bot connection held) and answered 408. Now 400 ``invalid_body`` at once; the
    bot never gets a complete request and the charge stays, as for any body failing
    once the bot had its start."""
    before = await free_credit(rclient, WS)
    async with RawConn.open(gw.url) as conn:
        conn.send(hook_head(gw.url) + b"5\r\nhello\r\n")
        for _ in range(int(HANG_S / 0.05)):  # until the charge is confirmed (a hang bound)
            charged = await free_credit(rclient, WS) < before
            if charged and not await rclient.zcard(keys.reservations_key(WS)):
                break
            await asyncio.sleep(0.05)
        conn.send(tail)
        await conn.writer.drain()
        resp = await conn.response(HANG_S)
        assert await conn.closed()
    assert (orjson.loads(resp.body)["code"], resp.status) == ("invalid_body", 400)
    assert bot.calls == []
    assert await free_credit(rclient, WS) < before


async def test_framing_invalid_after_the_admin_ports_100_continue_is_400(gw: Running) -> None:
    """The admin port alike: its 100 says the head was handed on (aiohttp's own expect
    handler), then a malformed chunk size waited out ``admin_body_timeout_s`` (15 s),
    answered 408; now 400 ``invalid_body`` at once."""
    fields = AUTH + "Expect: 100-continue\r\nTransfer-Encoding: chunked\r\n"
    async with RawConn.open(gw.admin_url) as conn:
        conn.send(hook_head(gw.admin_url, fields, path="/v1/users", user=False))
        assert (await conn.response(HANG_S)).status == 100
        conn.send(b'5\r\n{"a":\r\nzz\r\n1\r\n}\r\n0\r\n\r\n')
        await conn.writer.drain()
        resp = await conn.response(HANG_S)
    assert (orjson.loads(resp.body)["code"], resp.status) == ("invalid_body", 400)
