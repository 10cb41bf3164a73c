"""A bot's bytes beyond its answer, and answers that are not HTTP/1.x, on both traffic
servers: nothing a bot sends may reach a later message (another tenant's: bots are
shared by address).

* Bytes glued to a complete answer (a second answer, bytes past its length, half an
  answer, an interim head): the answer is passed on, and its connection is never used
  again; the next message gets a fresh one. The fast path kept it (llhttp read the
  stray with no one to tell; the next message got a new parser on the same socket).
* A status line that is not ``HTTP/1.x`` (llhttp also reads ``RTSP/1.0``, ``ICE/1.0``,
  ``HTTP/0.9`` and ``HTTP/2.0``): the bot's failure, 502 and refunded, on both servers.
* An answer with both ``Content-Length`` and ``Transfer-Encoding``, and an interim head
  with a length: never followed by a message on that connection.
* A bot that answers before it has read a request's body, keeps the connection and then
  reads the rest of the body as requests (the sender's, whose answers the next message
  on that connection would get): an answer whose head comes while bytes of its request
  are still in the gateway or not acknowledged by the bot's kernel is passed on (and
  charged) and its connection closed, on both servers (gateway/unsent.py). What is left
  (tests/system/test_early_answer.py, xfail): a body the bot's kernel took whole (within
  its receive buffer) and the bot left unread. Its kernel acknowledged every byte, as for
  a bot that read them; no client can tell the two apart. A bot must read a request's
  body whole, or close the connection, before it reads another (RFC 9112 §9.3, §6.3).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from meter.accounts.seeding import seed
from meter.redis_layer.client import RedisClient
from tests.support.bot import Running, SeededGateway, free_credit
from tests.support.rawbot import Answer
from tests.support.rawhttp import RawConn, Response
from tests.support.settings import HOST
from tests.support.shared_bot import FREE, Shared, shared_bot

pytestmark = pytest.mark.usefixtures("traffic_server")

WS, OTHER = "lateone", "latetwo"
APP, VICTIM = f"{WS}_appa", f"{OTHER}_appb"
EVIL = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL"


def ok(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)


@pytest.fixture
async def shared(seeded_gateway: SeededGateway, rclient: RedisClient) -> AsyncIterator[Shared]:
    async with shared_bot(seeded_gateway, rclient, APP, VICTIM) as s:
        yield s


def get(app: str, tail: str, user: str = "u1") -> bytes:
    return (
        f"GET /hooks/web/{app}{tail} HTTP/1.1\r\nHost: gw\r\nX-Channel-User-Id: {user}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()


async def one(gw: Running, data: bytes) -> Response:
    async with RawConn.open(gw.url) as c:
        c.send(data)
        return await c.response()


async def victim_after(shared: Shared) -> None:
    """The other tenant's message gets its own answer, on a connection of its own."""
    victim = await one(shared.gw, get(VICTIM, "/mine", "v1"))
    assert (victim.status, victim.body[:12]) == (200, b"GET /b/mine "), victim.raw_head
    assert b"EVIL" not in victim.raw_head + victim.body
    assert shared.bot.target() == b"/b/mine"
    assert shared.bot.conns[-1] != shared.bot.conns[0]  # never the kept connection


GLUED = {
    "a second answer": ok(b"mine") + EVIL,
    "bytes past its length": ok(b"mine") + b"EVIL",
    "half an answer": ok(b"mine") + b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\nEVIL",
    "an interim head": ok(b"mine") + b"HTTP/1.1 103 Early Hints\r\nLink: </evil>\r\n\r\n",
    "a chunked answer's": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"4\r\nmine\r\n0\r\n\r\n" + EVIL,
    "an interim and its answer": b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"mine") + EVIL,
}


@pytest.mark.parametrize("case", GLUED, ids=list(GLUED))
async def test_bytes_glued_to_an_answer_close_its_connection(
    shared: Shared, case: str, traffic_server: str
) -> None:
    shared.bot.answers["/a/glued"] = Answer(GLUED[case], keep=True)
    first = await one(shared.gw, get(APP, "/glued"))
    if traffic_server == "aiohttp" and case == "bytes past its length":
        # aiohttp's parser fails the whole read, the answer with it: refunded.
        assert (first.status, first.is_problem) == (502, True), first.raw_head
        assert await shared.spent() == 0
    else:
        assert (first.status, first.body) == (200, b"mine"), first.raw_head
        assert await shared.spent() == 1
    await victim_after(shared)


STATUS_LINES = {
    "RTSP": b"RTSP/1.0 200 OK\r\nContent-Length: 4\r\n\r\nEVIL",
    "ICE": b"ICE/1.0 200 OK\r\nContent-Length: 4\r\n\r\nEVIL",
    "HTTP/0.9": b"HTTP/0.9 200 OK\r\nContent-Length: 4\r\n\r\nEVIL",
    "HTTP/2.0": b"HTTP/2.0 200 OK\r\nContent-Length: 4\r\n\r\nEVIL",
    "an RTSP interim": b"RTSP/1.0 100 Continue\r\n\r\n" + ok(b"EVIL"),
    "RTSP after an interim": b"HTTP/1.1 100 Continue\r\n\r\n"
    b"RTSP/1.0 200 OK\r\nContent-Length: 4\r\n\r\nEVIL",
    "an HTTP/2.0 interim": b"HTTP/2.0 103 Early Hints\r\n\r\n" + ok(b"EVIL"),
}


@pytest.mark.parametrize("case", STATUS_LINES, ids=list(STATUS_LINES))
async def test_a_status_line_that_is_not_http_1_is_502_and_refunded(
    shared: Shared, case: str
) -> None:
    shared.bot.answers["/a/odd"] = Answer(STATUS_LINES[case], keep=True)
    first = await one(shared.gw, get(APP, "/odd"))
    assert (first.status, first.is_problem) == (502, True), first.raw_head
    assert b"EVIL" not in first.body
    assert await shared.spent() == 0  # refunded
    await victim_after(shared)


async def test_an_http_1_0_answer_passes(shared: Shared) -> None:
    shared.bot.answers["/a/old"] = Answer(b"HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\nmine")
    first = await one(shared.gw, get(APP, "/old"))
    assert (first.status, first.body) == (200, b"mine"), first.raw_head
    assert await shared.spent() == 1


async def test_an_answer_with_a_length_and_chunked_closes_its_connection(shared: Shared) -> None:
    """RFC 9112 §6.3: a recipient may read it as chunked, and closes the connection
    after it; llhttp refuses it on both servers (strict, and aiohttp's leniencies do not
    allow it): the bot's failure, 502 and refunded."""
    shared.bot.answers["/a/both"] = Answer(
        b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4\r\nmine\r\n0\r\n\r\n" + EVIL,
        keep=True,
    )
    first = await one(shared.gw, get(APP, "/both"))
    assert (first.status, first.is_problem) == (502, True), first.raw_head
    assert await shared.spent() == 0
    await victim_after(shared)


async def test_an_interim_head_with_a_length_never_frames_a_body(shared: Shared) -> None:
    """A 1xx has no body (RFC 9110 §15.2): its length is ignored, and what follows it is
    the next head; here not one, so the bot's failure."""
    shared.bot.answers["/a/interim"] = Answer(
        b"HTTP/1.1 100 Continue\r\nContent-Length: 4\r\n\r\nEVIL" + ok(b"mine"), keep=True
    )
    first = await one(shared.gw, get(APP, "/interim"))
    assert (first.status, first.is_problem) == (502, True), first.raw_head
    assert await shared.spent() == 0
    await victim_after(shared)


@dataclass
class Early:
    """Answers each request as soon as its head is read, its body left unread (a small
    receive buffer and stream limit: its kernel cannot have taken all of it yet);
    told ``more``, reads on, taking the rest of the body for the next request, as a
    careless server does: answers ``/a/smuggled`` with "EVIL", ``/skip`` not at all, any
    other with its path."""

    url: str = ""
    seen: list[bytes] = field(default_factory=list)
    conns: list[int] = field(default_factory=list)
    opened: int = 0
    more: asyncio.Event = field(default_factory=asyncio.Event)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.opened += 1
        conn = self.opened
        with contextlib.suppress(Exception):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ")[1]
                if path == b"/skip":
                    continue
                self.seen.append(path)
                self.conns.append(conn)
                writer.write(ok(b"EVIL" if path.endswith(b"/smuggled") else path))
                await writer.drain()
                if path.endswith(b"/early"):
                    await self.more.wait()
        writer.close()


async def test_an_answer_before_the_body_is_read_never_answers_the_next_message(
    seeded_gateway: SeededGateway, rclient: RedisClient
) -> None:
    bot = Early()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)  # accepted ones inherit it
    listener.bind((HOST, 0))
    server = await asyncio.start_server(bot.serve, sock=listener, limit=1024)
    bot.url = f"http://{HOST}:{listener.getsockname()[1]}"
    smuggled = b"GET /a/smuggled HTTP/1.1\r\nHost: bot\r\n\r\n"
    skip = b"SKIP /skip HTTP/1.1\r\nX-Pad: %b\r\n\r\n" % (b"x" * 900)  # under its limit
    body = skip * 60 + smuggled  # under the fast path's 64 KiB
    post = (
        f"POST /hooks/web/{APP}/early HTTP/1.1\r\nHost: gw\r\nX-Channel-User-Id: u1\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
    try:
        apps = {APP: {"product": "contact_center", "upstream_url": bot.url + "/a"}}
        async with seeded_gateway(WS, apps, free=FREE) as gw:
            victim = {VICTIM: {"product": "contact_center", "upstream_url": bot.url + "/b"}}
            await seed(rclient, gw.gateway.settings, OTHER, victim, free=FREE)
            first = await one(gw, post)
            async with RawConn.open(gw.url) as c:
                c.send(get(VICTIM, "/mine", "v1"))
                while await free_credit(rclient, OTHER) == FREE:  # noqa: ASYNC110
                    await asyncio.sleep(0.005)  # until charged: then forwarded at once
                bot.more.set()
                second = await c.response()
    finally:
        server.close()
        await server.wait_closed()
    assert (first.status, first.body) == (200, b"/a/early"), first.raw_head
    assert (second.status, second.body) == (200, b"/b/mine"), second.raw_head
    assert bot.conns[bot.seen.index(b"/b/mine")] != bot.conns[0]
