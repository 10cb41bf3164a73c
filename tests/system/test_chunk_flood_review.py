"""Review of the chunk bound (gateway.chunk_framing): ways around it, and what it must
not break."""

from __future__ import annotations

import asyncio
import contextlib
import zlib

import orjson
import pytest

from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient
from tests.support.bot import Bot, Running, free_credit
from tests.support.rawhttp import RawConn
from tests.support.settings import OPERATOR_TOKEN
from tests.system.test_chunk_flood import (
    CHUNKED,
    HANG_S,
    UP,
    WS,
    chunked,
    gw,
    hook_head,
    parser_status,
    post_chunked,
    sent,
)

pytestmark = pytest.mark.usefixtures("traffic_server")
__all__ = ["gw"]

AUTH = f"Authorization: Bearer {OPERATOR_TOKEN}\r\nContent-Type: application/json\r\n"


def empty_stored_blocks(n: int) -> bytes:
    """A zlib stream of a JSON body, then ``n`` empty non-final stored blocks (each
    five bytes inflating to nothing), then the end."""
    body = orjson.dumps({"email": "deflate@example.com", "name": "x"})
    co = zlib.compressobj()
    out = co.compress(body) + co.flush(zlib.Z_SYNC_FLUSH)  # ends byte-aligned
    out += b"\x00\x00\x00\xff\xff" * n
    return out + co.flush(zlib.Z_FINISH)


async def test_a_compressed_flood_to_the_admin_api_is_refused(gw: Running) -> None:
    """The admin port inflates request bodies (no auto_decompress=False there): a chunk
    whose bytes inflate to nothing records no chunk end in aiohttp's stream, so a flood
    of one-byte chunks of empty deflate blocks was never counted."""
    wire = chunked(empty_stored_blocks(60_000), 1)  # 300,000 one-byte chunks
    extra = AUTH + "Content-Encoding: deflate\r\n"
    status, code = await post_chunked(gw, wire, "/v1/users", extra, url=gw.admin_url)
    assert (status, code) == (413, "too_many_chunks")


async def test_a_compressed_body_to_the_admin_api_is_refused_as_such(gw: Running) -> None:
    """Bodies are no longer inflated on the admin port: a compressed one is 415."""
    wire = chunked(empty_stored_blocks(10), 4096)
    extra = AUTH + "Content-Encoding: deflate\r\n"
    status, code = await post_chunked(gw, wire, "/v1/users", extra, url=gw.admin_url)
    assert (status, code) == (415, "unsupported_content_encoding")


async def test_a_flood_after_the_admin_ports_100_continue_is_answered(gw: Running) -> None:
    """The admin routes keep aiohttp's own expect handler (its 100 written before the
    handler runs, INTERIM_BYTES never set): the refusal must be answered all the same."""
    body = orjson.dumps({"email": "flood@example.com", "name": "x" * 50_000})
    fields = AUTH + "Expect: 100-continue\r\n" + CHUNKED
    async with RawConn.open(gw.admin_url) as conn:
        conn.send(hook_head(gw.admin_url, fields, path="/v1/users", user=False))
        assert (await conn.response(HANG_S)).status == 100
        await sent(conn, chunked(body, 1))
        resp = await conn.response(HANG_S)
    assert resp.status == 413
    assert orjson.loads(resp.body)["code"] == "too_many_chunks"


async def test_a_flood_in_the_second_request_of_a_connection_is_refused(
    gw: Running, bot: Bot
) -> None:
    head = hook_head(gw.url)
    plain = hook_head(gw.url, "Content-Length: 5000\r\n")
    async with RawConn.open(gw.url) as conn:
        # (a chunked request closes the connection after it: http_rules._close_after)
        await sent(conn, plain + b"a" * 5000 + head + chunked(b"x" * 250_000, 1))
        first = await conn.response(HANG_S)
        second = await conn.response(HANG_S)
    assert first.status == 200
    assert second.status == 413
    assert orjson.loads(second.body)["code"] == "too_many_chunks"
    assert [c.body for c in bot.calls] == [b"a" * 5000]


async def test_a_flood_trickled_in_small_writes_is_refused(gw: Running, bot: Bot) -> None:
    head = hook_head(gw.url)
    wire = chunked(b"x" * 20_000, 1)
    async with RawConn.open(gw.url) as conn:
        conn.send(head)
        with contextlib.suppress(ConnectionError):
            for i in range(0, len(wire), 600):
                conn.send(wire[i : i + 600])
                await conn.writer.drain()
        resp = await conn.response(HANG_S)
    assert resp.status == 413
    assert bot.calls == []


async def test_an_http10_flood_is_refused(gw: Running, bot: Bot) -> None:
    head = hook_head(gw.url, version="1.0")
    async with RawConn.open(gw.url) as conn:
        await sent(conn, head + chunked(b"x" * 250_000, 1))
        resp = await conn.response(HANG_S)
    assert resp.status in (400, 413), resp.status
    assert bot.calls == []


async def test_extensions_and_leading_zeros_count(gw: Running, bot: Bot) -> None:
    wire = b"".join(b"00000001;ext=" + b"v" * 20 + b"\r\nx\r\n" for _ in range(20_000))
    status, code = await post_chunked(gw, wire + b"0\r\nT: 1\r\n\r\n", UP)
    assert (status, code) == (413, "too_many_chunks")
    assert bot.calls == []


async def test_a_large_content_length_body_passes_whole(gw: Running, bot: Bot) -> None:
    body = bytes(range(256)) * 4000  # 1,024,000 bytes: many slices
    head = hook_head(gw.url, f"Content-Length: {len(body)}\r\n")
    async with RawConn.open(gw.url) as conn:
        conn.send(head + body + head + body)  # and a second, pipelined
        await conn.writer.drain()
        rs = [await conn.response(HANG_S), await conn.response(HANG_S)]
    assert [r.status for r in rs] == [200, 200]
    assert [c.body for c in bot.calls] == [body, body]


async def test_a_flood_of_trailer_fields_is_refused(gw: Running, bot: Bot) -> None:
    """aiohttp's parser takes at most 128 fields, trailers included: 400 (or a reset, the
    gateway closing on what the client still sends)."""
    wire = b"1\r\nx\r\n0\r\n" + b"".join(b"t%d: v\r\n" % i for i in range(50_000)) + b"\r\n"
    status = await parser_status(gw, wire)
    assert status in (0, 400), status
    assert bot.calls == []


async def test_an_upgrade_request_with_a_flood_is_not_forwarded(gw: Running, bot: Bot) -> None:
    upgrade = (
        "Connection: upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    )
    head = hook_head(gw.url, upgrade + CHUNKED)
    async with RawConn.open(gw.url) as conn:
        await sent(conn, head + chunked(b"x" * 250_000, 1))
        resp = await conn.response(HANG_S)
    assert resp.status != 200, resp.status
    assert all(c.body != b"x" * 250_000 for c in bot.calls)


async def test_floods_racing_admission_are_never_refunded_twice(
    gw: Running, bot: Bot, rclient: RedisClient
) -> None:
    """The head first, the flood in a later write: the refusal lands before, during or
    after admission. Whatever the timing, the account never ends above where it began
    (a double refund), and a flood never reaches the bot whole."""
    before = await free_credit(rclient, WS)
    head = hook_head(gw.url)
    for _ in range(15):
        async with RawConn.open(gw.url) as conn:
            conn.send(head)
            await conn.writer.drain()
            await sent(conn, chunked(b"x" * 100_000, 1))
            resp = await conn.response(HANG_S)
        assert resp.status == 413
    for _ in range(int(HANG_S / 0.05)):  # reservations settled (refunded or swept)
        if not await rclient.zcard(keys.reservations_key(WS)):
            break
        await asyncio.sleep(0.05)
    assert await free_credit(rclient, WS) <= before
    assert bot.calls == []


@pytest.mark.parametrize(
    ("chunks", "status"),
    [
        pytest.param(2048, 200, id="at-the-bound"),  # 1,024 + 65,536 // 64
        pytest.param(2049, 413, id="one-over"),
    ],
)
async def test_the_bound_is_exact(gw: Running, bot: Bot, chunks: int, status: int) -> None:
    """Chunks of 32 bytes: each prefix of the body is within the bound up to 2,048."""
    body = b"y" * (32 * chunks)
    got, _ = await post_chunked(gw, chunked(body, 32), UP)
    assert got == status
    assert [c.body for c in bot.calls] == ([body] if status == 200 else [])


async def test_a_malformed_request_in_a_large_read_is_answered_once(gw: Running) -> None:
    """The protocol feeds a read to the parser in slices: a parser failed in the first
    must not make each later slice another answer."""
    async with RawConn.open(gw.url) as conn:
        await sent(conn, b"POST /x HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n" + b"j" * 200_000)
        rest = b""
        with contextlib.suppress(ConnectionError):
            rest = await conn.rest(HANG_S)
    assert rest.count(b"HTTP/1.") == 1, rest[:300]
