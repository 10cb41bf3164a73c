"""A bot that sends its answer's head and then nothing (or ends there): the client gets
the documented 504/502 problem and is refunded, on both traffic servers, because no byte
of the bot's answer reached it; once some of the answer's body did, it stays charged and
the client's connection is cut (a truncated answer), never refunded as well.

The fast path keeps a head until the first body bytes (one write, not two) and the
aiohttp server did not (its head went out at once): a stalled head left a fast-path
client with a reset and nothing, the message charged, and an aiohttp client with the
bot's status and headers, then a reset, charged too. Both now hold the head until the
first body bytes (or the answer's end), so both answer a head that stalls alike. And a
client whose streamed body fails after the bot's head came gets its own problem (or a cut
answer), charged, where aiohttp's reader used to wait for the bot for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator

import orjson
import pytest

from meter.redis_layer.client import RedisClient
from tests.support.bot import SeededGateway, free_credit
from tests.support.rawbot import Answer, running_raw_bot
from tests.support.rawhttp import RawConn
from tests.support.settings import HOST
from tests.system.test_forwarding_attack import APP, FREE, WS, Edge, message

pytestmark = pytest.mark.usefixtures("traffic_server")
USERS = itertools.count(1)
SESSION = 200_000  # automation: $0.20 a session, each user's first message opens one
SECRET = b"X-Answer: the bot's secret\r\n"
HANG_S = 60.0  # a bound for a hang only: the gateway answers after its read timeout
HEADS = {
    "length": b"HTTP/1.1 200 OK\r\n" + SECRET + b"Content-Length: 10\r\n\r\n",
    "chunked": b"HTTP/1.1 200 OK\r\n" + SECRET + b"Transfer-Encoding: chunked\r\n\r\n",
    "close-delimited": b"HTTP/1.1 200 OK\r\n" + SECRET + b"Connection: close\r\n\r\n",
}


@pytest.fixture
async def edge(seeded_gateway: SeededGateway, rclient: RedisClient) -> AsyncIterator[Edge]:
    async with running_raw_bot() as bot:
        apps = {APP: {"product": "automation", "upstream_url": bot.url + "/b"}}
        # The bot stalls for good: any read timeout ends the wait; 1 s keeps it short.
        async with seeded_gateway(WS, apps, free=FREE, upstream_read_timeout_s=1.0) as gw:
            yield Edge(gw, bot, rclient)


async def answer_to(edge: Edge, path: str) -> tuple[bytes, int]:
    """Everything the client gets for a message (a new user's) until the gateway closes
    its connection, and what the message was charged."""
    before = await free_credit(edge.rclient, WS)
    data = message(path).replace(b": u1\r\n", b": u%d\r\n" % next(USERS))
    async with RawConn.open(edge.gw.url) as c:
        c.send(data)
        got = await c.rest(HANG_S)
    return got, before - await free_credit(edge.rclient, WS)


def problem_code(got: bytes, status: int) -> str:
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d " % status), got[:300]
    assert b"application/problem+json" in head, head
    assert b"X-Answer" not in got  # nothing of the bot's head
    code: str = orjson.loads(body)["code"]
    return code


@pytest.mark.parametrize("framing", HEADS, ids=list(HEADS))
async def test_a_head_then_nothing_is_a_refunded_timeout(edge: Edge, framing: str) -> None:
    edge.bot.answers["/b/stall"] = Answer(HEADS[framing], keep=True)  # then reads on
    got, charged = await answer_to(edge, "/stall")
    assert problem_code(got, 504) == "upstream_timeout"
    assert charged == 0
    assert len(edge.bot.heads) == 1  # the bot had the message: refunded, not unsent


async def test_a_head_then_the_bots_close_is_a_refunded_failure(edge: Edge) -> None:
    edge.bot.answers["/b/gone"] = Answer(HEADS["length"], keep=False)  # then closes
    got, charged = await answer_to(edge, "/gone")
    assert problem_code(got, 502) == "upstream_unavailable"
    assert charged == 0


async def test_an_answer_whose_body_started_stays_charged_and_is_cut(edge: Edge) -> None:
    # Not refunded as well: the client has the bot's head and the start of its body.
    edge.bot.answers["/b/half"] = Answer(HEADS["length"] + b"half", keep=True)
    got, charged = await answer_to(edge, "/half")
    assert got.startswith(b"HTTP/1.1 200 OK\r\n"), got[:300]
    assert b"X-Answer: the bot's secret\r\n" in got
    assert got.endswith(b"\r\n\r\nhalf")  # cut short: 4 bytes of the 10 announced
    assert charged == SESSION


@contextlib.asynccontextmanager
async def early_head_bot(got_start: asyncio.Event, answer: bytes) -> AsyncIterator[str]:
    """A bot that answers a request's head at once with ``answer`` (a head, or a head and
    the start of its body), then reads the body (setting ``got_start`` at its first bytes)
    and sends nothing more."""

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            await r.readuntil(b"\r\n\r\n")
            w.write(answer)
            await w.drain()
            while await r.read(65536):
                got_start.set()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            w.close()

    server = await asyncio.start_server(handle, HOST, 0)
    try:
        yield f"http://{HOST}:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


@contextlib.asynccontextmanager
async def stalled_body(seeded_gateway: SeededGateway, answer: bytes) -> AsyncIterator[RawConn]:
    """A client connection whose message's streamed body stops after its first chunk,
    once the bot (which answered ``answer`` at once) has that chunk."""
    got_start = asyncio.Event()
    async with early_head_bot(got_start, answer) as url:
        apps = {APP: {"product": "automation", "upstream_url": url}}
        # The body stalls for good: any body timeout ends the wait; 1 s keeps it short,
        # and so does a short linger of the stalled body once answered.
        settings = {"body_timeout_s": 1.0, "body_linger_s": 0.1}
        async with (
            seeded_gateway(WS, apps, free=FREE, **settings) as gw,
            RawConn.open(gw.url) as conn,
        ):
            conn.send(
                f"POST /hooks/web/{APP}/early HTTP/1.1\r\nHost: gw\r\n"
                "X-Channel-User-Id: u1\r\nTransfer-Encoding: chunked\r\n\r\n"
                "5\r\nhello\r\n".encode()
            )
            await got_start.wait()
            yield conn


async def test_a_body_the_client_stalls_after_the_bots_head_stays_charged(
    seeded_gateway: SeededGateway, rclient: RedisClient
) -> None:
    # The client's failure, not the bot's (gateway.proxy: charged once the bot has the
    # body's start), though the bot's head is held: answered as such, never a refund, and
    # never a wait for good (aiohttp stops the bot's read timeout when the body fails).
    async with stalled_body(seeded_gateway, HEADS["length"]) as conn:
        got = await conn.rest(HANG_S)
    assert problem_code(got, 408) == "body_timeout"
    assert FREE - await free_credit(rclient, WS) == SESSION


async def test_a_body_the_client_stalls_after_the_answer_started_cuts_it(
    seeded_gateway: SeededGateway, rclient: RedisClient
) -> None:
    # The bot's answer started (head and "half" went out): the client's connection is cut
    # as soon as its body fails, not held until the bot ends, and the charge stands.
    async with stalled_body(seeded_gateway, HEADS["length"] + b"half") as conn:
        got = await conn.reader.readuntil(b"\r\n\r\nhalf")
        assert await conn.closed(HANG_S)
    assert got.startswith(b"HTTP/1.1 200 OK\r\n")
    assert FREE - await free_credit(rclient, WS) == SESSION
