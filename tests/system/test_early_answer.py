"""A bot that answers before it has read its request's body, on both traffic servers
(gateway/unsent.py; the plainest case is in tests/system/test_fastpath_late_answer.py).

* Its answer's head came while the body was not all with the bot's kernel, its end
  after the bot had read all of it (as requests, one of which it answers after): the
  connection is closed all the same, so that answer never reaches the next message.
* What remains (xfail, strict): a body the bot's kernel took whole (it fits the bot's
  receive buffer), left unread by the bot, which answers and later reads it as a
  request. Its kernel acknowledged every byte before the answer came, exactly as for a
  bot that read it: no client can tell the two apart, so the answer to the smuggled
  request goes to the next message sent on that connection. A bot must read a body
  whole, or close its connection, before it reads a next request (RFC 9112 §9.3, §6.3).
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
from tests.support.rawhttp import RawConn
from tests.support.settings import HOST

pytestmark = pytest.mark.usefixtures("traffic_server")

WS, OTHER = "earlyone", "earlytwo"
APP, VICTIM = f"{WS}_appa", f"{OTHER}_appb"
FREE = 10_000_000
SMUGGLED = b"GET /a/smuggled HTTP/1.1\r\nHost: bot\r\n\r\n"
SKIP = b"SKIP /skip HTTP/1.1\r\nX-Pad: %b\r\n\r\n" % (b"x" * 900)  # under its limit
BIG = SKIP * 60 + SMUGGLED  # past its receive buffer, under the fast path's 64 KiB


def ok(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)


@dataclass
class Careless:
    """Reads requests in turn on each connection, a body as more requests: answers each
    with its path (``/a/smuggled``: "EVIL", ``/skip`` not at all) as soon as its head is
    read. ``/a/early``: then waits for ``more``. ``/a/split``: answers with its head and
    half its body, waits for ``go``, reads on, and sends the other half as it reads
    ``/a/smuggled``; that one's answer waits for ``more``."""

    url: str = ""
    seen: list[bytes] = field(default_factory=list)
    conns: list[int] = field(default_factory=list)
    opened: int = 0
    go: asyncio.Event = field(default_factory=asyncio.Event)
    more: asyncio.Event = field(default_factory=asyncio.Event)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.opened += 1
        conn, rest = self.opened, b""
        with contextlib.suppress(Exception):
            while True:
                path = (await reader.readuntil(b"\r\n\r\n")).split(b" ")[1]
                if path == b"/skip":
                    continue
                self.seen.append(path)
                self.conns.append(conn)
                if path.endswith(b"/split"):
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 16\r\n\r\n/a/split")
                    rest = b"/a/split"
                    await self.go.wait()
                    continue
                if path.endswith(b"/smuggled"):
                    if rest:
                        writer.write(rest)  # the split answer ends: its body was all read
                        rest = b""
                        await self.more.wait()
                    writer.write(ok(b"EVIL"))
                    continue
                writer.write(ok(path))
                await writer.drain()
                if path.endswith(b"/early"):
                    await self.more.wait()
        writer.close()


@contextlib.asynccontextmanager
async def careless(
    seeded_gateway: SeededGateway, rclient: RedisClient, rcvbuf: int | None
) -> AsyncIterator[tuple[Careless, Running]]:
    """The bot (a receive buffer of ``rcvbuf``, or the system's), and the gateway with
    both tenants' apps on it."""
    bot = Careless()
    listener = socket.socket()
    if rcvbuf is not None:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # inherited
    listener.bind((HOST, 0))
    server = await asyncio.start_server(bot.serve, sock=listener, limit=1024)
    bot.url = f"http://{HOST}:{listener.getsockname()[1]}"
    try:
        apps = {APP: {"product": "contact_center", "upstream_url": bot.url + "/a"}}
        async with seeded_gateway(WS, apps, free=FREE) as gw:
            victim = {VICTIM: {"product": "contact_center", "upstream_url": bot.url + "/b"}}
            await seed(rclient, gw.gateway.settings, OTHER, victim, free=FREE)
            yield bot, gw
    finally:
        server.close()
        await server.wait_closed()


def post(tail: str, body: bytes) -> bytes:
    return (
        f"POST /hooks/web/{APP}{tail} HTTP/1.1\r\nHost: gw\r\nX-Channel-User-Id: u1\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


async def victim_after(bot: Careless, gw: Running, rclient: RedisClient) -> bytes:
    """The other tenant's message, sent as the bot's next answer on the first connection
    is held back (``more``), until it is charged (then it is forwarded at once)."""
    async with RawConn.open(gw.url) as c:
        c.send(
            f"GET /hooks/web/{VICTIM}/mine HTTP/1.1\r\nHost: gw\r\nX-Channel-User-Id: v1\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        while await free_credit(rclient, OTHER) == FREE:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        bot.more.set()
        second = await c.response()
    assert second.status == 200, second.raw_head
    return second.body


async def test_an_answer_begun_early_closes_its_connection_though_it_ended_late(
    seeded_gateway: SeededGateway, rclient: RedisClient
) -> None:
    async with careless(seeded_gateway, rclient, 2048) as (bot, gw):
        async with RawConn.open(gw.url) as c:
            c.send(post("/split", BIG))
            head = await c.response(head_only=True)
            assert head.status == 200, head.raw_head
            assert await c.reader.readexactly(8) == b"/a/split"
            bot.go.set()  # the gateway had the head: now the bot reads the body
            assert await c.reader.readexactly(8) == b"/a/split"
        assert await victim_after(bot, gw, rclient) == b"/b/mine"
    assert bot.seen[:2] == [b"/a/split", b"/a/smuggled"]
    assert bot.conns[bot.seen.index(b"/b/mine")] != bot.conns[0]


@pytest.mark.xfail(strict=True, reason="a body the bot's kernel took: see the module")
async def test_a_body_the_bots_kernel_took_unread_is_beyond_telling(
    seeded_gateway: SeededGateway, rclient: RedisClient
) -> None:
    async with careless(seeded_gateway, rclient, None) as (bot, gw):
        async with RawConn.open(gw.url) as c:
            c.send(post("/early", SMUGGLED))
            first = await c.response()
        assert (first.status, first.body) == (200, b"/a/early"), first.raw_head
        assert await victim_after(bot, gw, rclient) == b"/b/mine"  # gets "EVIL"
