"""A chunked body in a flood of tiny chunks (gateway.chunk_framing), on both traffic
servers: each chunk cost a worker a few Python calls, so 250,000 one-byte chunks (a
250 KB body, well within the size limit; 1.5 MB on the wire) cost it some 0.15 s of
CPU, and a 1 MiB one 0.6 s, where the same body with a Content-Length costs
milliseconds. A chunked body may have 1,024 chunks plus one per 64 bytes of it: the
flood is refused 413 ``too_many_chunks`` as it arrives, never reaches the bot, and is
not charged; bodies in ordinary chunks pass as before."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest
from yarl import URL

from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient
from tests.support.bot import Bot, Running, SeededGateway, free_credit
from tests.support.rawhttp import Closed, RawConn
from tests.support.settings import OPERATOR_TOKEN

pytestmark = pytest.mark.usefixtures("traffic_server")

WS = "chflood"
APP = f"{WS}_app1"
HANG_S = 60.0  # a bound for a hang only
UP = f"/hooks/web/{APP}/up"
CHUNKED = "Transfer-Encoding: chunked\r\n"


@pytest.fixture
async def gw(seeded_gateway: SeededGateway) -> AsyncIterator[Running]:
    apps = {APP: {"product": "automation"}}
    async with seeded_gateway(
        WS, apps, free=500_000_000, body_linger_s=0.5, operator=True
    ) as running:
        yield running


def chunked(body: bytes, size: int) -> bytes:
    """``body`` framed in chunks of ``size`` bytes, and its last chunk."""
    parts = [b"%x\r\n%b\r\n" % (len(body[i : i + size]), body[i : i + size])
             for i in range(0, len(body), size)]  # fmt: skip
    return b"".join(parts) + b"0\r\n\r\n"


def hook_head(
    url: str, fields: str = CHUNKED, *, path: str = UP, version: str = "1.1", user: bool = True
) -> bytes:
    """A POST's head to ``path`` on ``url``'s server: its Host, a channel user (unless
    ``user`` is false), then ``fields`` (each ending in CRLF)."""
    who = "X-Channel-User-Id: u1\r\n" if user else ""
    return f"POST {path} HTTP/{version}\r\nHost: {URL(url).authority}\r\n{who}{fields}\r\n".encode()


async def sent(conn: RawConn, data: bytes) -> None:
    """``data`` written as the socket takes it (the gateway may close before it took all)."""
    conn.send(data)
    with contextlib.suppress(ConnectionError):
        await conn.writer.drain()


async def post_chunked(
    gw: Running, wire: bytes, path: str, extra: str = "", *, url: str = ""
) -> tuple[int, str]:
    """POST a chunked body of these bytes at once (to the traffic port unless ``url``
    says); the answer's status and problem code."""
    async with RawConn.open(url or gw.url) as conn:
        await sent(conn, hook_head(url or gw.url, extra + CHUNKED, path=path) + wire)
        resp = await conn.response(HANG_S)
    code = orjson.loads(resp.body).get("code", "") if resp.is_problem else ""
    return resp.status, code


async def parser_status(gw: Running, wire: bytes) -> int:
    """:func:`post_chunked` to the upload path, for a body aiohttp's parser refuses: the
    answer's status, or 0 when the gateway closed on what the client still sent."""
    try:
        status, _ = await post_chunked(gw, wire, UP)
    except (ConnectionError, Closed):
        return 0
    return status


@pytest.mark.parametrize(
    ("path", "extra"),
    [
        # Streamed to the bot after its admission (nothing reads it before).
        pytest.param(f"/hooks/web/{APP}/up", "", id="streamed"),
        # Read whole before admission, for the key's digest.
        pytest.param(f"/hooks/web/{APP}/up", "Idempotency-Key: k1\r\n", id="keyed"),
    ],
)
async def test_a_flood_of_one_byte_chunks_is_refused_uncharged(
    gw: Running, bot: Bot, rclient: RedisClient, path: str, extra: str
) -> None:
    before = await free_credit(rclient, WS)
    status, code = await post_chunked(gw, chunked(b"x" * 250_000, 1), path, extra)
    assert (status, code) == (413, "too_many_chunks")
    assert bot.calls == []
    assert await free_credit(rclient, WS) == before


async def test_a_flood_to_the_admin_api_is_refused(gw: Running) -> None:
    """The admin port runs the same protocol: its API answers the problem too."""
    body = orjson.dumps({"email": "flood@example.com", "name": "x" * 50_000})
    auth = f"Authorization: Bearer {OPERATOR_TOKEN}\r\nContent-Type: application/json\r\n"
    status, code = await post_chunked(gw, chunked(body, 1), "/v1/users", auth, url=gw.admin_url)
    assert (status, code) == (413, "too_many_chunks")


@pytest.mark.parametrize(
    ("size", "chunk"),
    [
        pytest.param(250_000, 250_000, id="one-chunk"),
        pytest.param(250_000, 4096, id="4KiB-chunks"),
        pytest.param(250_000, 64, id="64B-chunks"),  # the smallest always let through
        pytest.param(1024, 1, id="1024-one-byte-chunks"),  # the free allowance
    ],
)
async def test_bodies_in_ordinary_chunks_pass(gw: Running, bot: Bot, size: int, chunk: int) -> None:
    body = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
    status, _ = await post_chunked(gw, chunked(body, chunk), f"/hooks/web/{APP}/up")
    assert status == 200
    assert [c.body for c in bot.calls] == [body]


async def test_a_streamed_upload_of_many_medium_chunks_passes(
    gw: Running, bot: Bot, http: aiohttp.ClientSession
) -> None:
    async def pieces() -> AsyncIterator[bytes]:
        for i in range(1000):
            yield bytes([i % 256]) * 1000

    headers = {"X-Channel-User-Id": "u1"}
    async with http.post(f"{gw.url}/hooks/web/{APP}/up", data=pieces(), headers=headers) as resp:
        assert resp.status == 200
    assert [len(c.body) for c in bot.calls] == [1_000_000]


async def test_a_flood_after_a_100_continue_is_answered(gw: Running, bot: Bot) -> None:
    """The client asked for a 100 and got it before its body was read: the refusal of
    its body is still answered (an interim answer is no answer begun)."""
    async with RawConn.open(gw.url) as conn:
        conn.send(hook_head(gw.url, "Expect: 100-continue\r\n" + CHUNKED))
        assert (await conn.response(HANG_S)).status == 100
        await sent(conn, chunked(b"x" * 250_000, 1))
        resp = await conn.response(HANG_S)
    assert resp.status == 413
    assert orjson.loads(resp.body)["code"] == "too_many_chunks"
    assert bot.calls == []


async def test_a_flood_after_the_bot_had_its_start_stays_charged(
    gw: Running, bot: Bot, rclient: RedisClient
) -> None:
    """A streamed body's first chunk went to the bot (its charge confirmed), then the
    flood: 413 all the same, the bot never gets a complete request, and the charge
    stays, as for any body failing once the bot had its start (gateway.proxy)."""
    before = await free_credit(rclient, WS)
    async with RawConn.open(gw.url) as conn:
        conn.send(hook_head(gw.url) + b"1000\r\n" + b"a" * 4096 + b"\r\n")
        for _ in range(int(HANG_S / 0.05)):  # until the charge is confirmed (a hang bound)
            charged = await free_credit(rclient, WS) < before
            if charged and not await rclient.zcard(keys.reservations_key(WS)):
                break
            await asyncio.sleep(0.05)
        await sent(conn, chunked(b"x" * 250_000, 1))
        resp = await conn.response(HANG_S)
    assert resp.status == 413
    assert orjson.loads(resp.body)["code"] == "too_many_chunks"
    assert bot.calls == []
    assert await free_credit(rclient, WS) < before
