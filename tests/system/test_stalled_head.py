"""A bot that sends its answer's head and then nothing (or ends there): the client gets
the documented 504/502 problem and is refunded, on both traffic servers, because no byte
of the bot's answer reached it; once some of the answer's body did, it stays charged and
the client's connection is cut (a truncated answer), never refunded as well.

The fast path keeps a head until the first body bytes (one write, not two) and the
aiohttp server did not (its head went out at once): a stalled head left a fast-path
client with a reset and nothing, the message charged, and an aiohttp client with the
bot's status and headers, then a reset, charged too. Both now hold the head until the
first body bytes (or the answer's end), so both answer a head that stalls alike.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator

import orjson
import pytest

from meter.redis_layer.client import RedisClient
from tests.support.bot import SeededGateway, free_credit
from tests.support.rawbot import Answer, running_raw_bot
from tests.support.rawhttp import RawConn
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
