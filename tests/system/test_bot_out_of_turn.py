"""A bot that writes an answer nobody asked for, while its connection idles between
messages: the next message sent to that bot (another tenant's, since bots are shared by
address) must get its own answer, never the stray one, on both traffic servers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from gateway.appkeys import HTTP
from meter.accounts.seeding import seed
from meter.redis_layer.client import RedisClient
from tests.support.bot import Running, SeededGateway
from tests.support.rawhttp import RawConn

pytestmark = pytest.mark.usefixtures("traffic_server")

FREE = 10_000_000


@dataclass
class OutOfTurn:
    """Answers each request with its path; after the first, on the same connection and
    when told to, one more answer ("EVIL"). Records request lines and closed connections."""

    url: str = ""
    seen: list[bytes] = field(default_factory=list)
    inject: asyncio.Event = field(default_factory=asyncio.Event)
    injected: asyncio.Event = field(default_factory=asyncio.Event)
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line = head.split(b"\r\n", 1)[0]
                self.seen.append(line)
                path = line.split(b" ")[1]
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(path), path))
                await writer.drain()
                if len(self.seen) == 1:
                    await self.inject.wait()  # the gateway answered its client: idle now
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL")
                    await writer.drain()
                    self.injected.set()
        self.closed.set()
        writer.close()


@contextlib.asynccontextmanager
async def out_of_turn_bot() -> AsyncIterator[OutOfTurn]:
    bot = OutOfTurn()
    server = await asyncio.start_server(bot.serve, "127.0.0.1", 0)
    bot.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield bot
    finally:
        server.close()
        await server.wait_closed()


def get(app: str, tail: str, user: str) -> bytes:
    return (
        f"GET /hooks/web/{app}{tail} HTTP/1.1\r\nHost: gw\r\nX-Channel-User-Id: {user}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()


async def answer(gw: Running, request: bytes) -> bytes:
    async with RawConn.open(gw.url) as c:
        c.send(request)
        resp = await c.response()
    assert resp.status == 200, resp.body[:300]
    return resp.body


async def stray_read(gw: Running, bot: OutOfTurn, server: str) -> None:
    """Until the gateway has read the stray answer: the fast path closes the connection
    at once; on the aiohttp path it lies in the idle connection's buffer."""
    await bot.injected.wait()
    if server == "fast":
        await bot.closed.wait()
        return
    conns = gw.gateway.traffic[HTTP].connector._conns  # type: ignore[attr-defined]
    while not any(p.should_close for idle in conns.values() for p, _ in idle):  # noqa: ASYNC110
        await asyncio.sleep(0.005)  # polls the loop's progress; no deadline


async def test_an_answer_out_of_turn_never_answers_another_tenants_message(
    seeded_gateway: SeededGateway, rclient: RedisClient, traffic_server: str
) -> None:
    async with out_of_turn_bot() as bot:
        apps = {"stray_appa": {"product": "contact_center", "upstream_url": bot.url + "/a"}}
        async with seeded_gateway("stray", apps, free=FREE) as gw:
            victim = {"victim_appb": {"product": "contact_center", "upstream_url": bot.url + "/b"}}
            await seed(rclient, gw.gateway.settings, "victim", victim, free=FREE)
            assert await answer(gw, get("stray_appa", "/first", "u1")) == b"/a/first"
            bot.inject.set()
            await stray_read(gw, bot, traffic_server)
            assert await answer(gw, get("victim_appb", "/second", "v1")) == b"/b/second"
            assert await answer(gw, get("victim_appb", "/third", "v2")) == b"/b/third"
    assert [line.split(b" ")[1] for line in bot.seen] == [b"/a/first", b"/b/second", b"/b/third"]


@dataclass
class Glued:
    """Answers each request with its path; the answer to ``.../first`` has a stray one
    glued to it, in the same write (the bot's parser reads both in one callback)."""

    url: str = ""
    seen: list[bytes] = field(default_factory=list)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.seen.append(head.split(b"\r\n", 1)[0])
                path = head.split(b" ")[1]
                answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(path), path)
                if path.endswith(b"/first"):
                    answer += b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL"
                writer.write(answer)
                await writer.drain()
        writer.close()


@pytest.mark.parametrize("metering", [False, True])
async def test_a_stray_answer_glued_to_a_real_one_leaves_the_next_pipelined_message_its_own(
    seeded_gateway: SeededGateway, rclient: RedisClient, metering: bool
) -> None:
    """The message pipelined after the one the bot answered runs at once on the fast path
    (gateway.fastpath.flow): never inside the callbacks of the answer before it, where it
    took that bot connection back while the parser still read the stray answer (502)."""
    bot = Glued()
    server = await asyncio.start_server(bot.serve, "127.0.0.1", 0)
    bot.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        apps = {
            "glued_appa": {"product": "contact_center", "upstream_url": bot.url + "/a"},
            "glued_appb": {"product": "contact_center", "upstream_url": bot.url + "/b"},
        }
        keep = "GET /hooks/web/{}{} HTTP/1.1\r\nHost: gw\r\nX-Channel-User-Id: u1\r\n\r\n"
        async with (
            seeded_gateway("glued", apps, free=FREE, metering=metering) as gw,
            RawConn.open(gw.url) as c,
        ):
            # Both apps' first messages open the bot connection the others then reuse.
            c.send(keep.format("glued_appa", "/warm").encode())
            c.send(keep.format("glued_appb", "/warm").encode())
            warm = await c.responses(2)
            c.send(
                keep.format("glued_appa", "/first").encode()
                + keep.format("glued_appb", "/second").encode()
                + get("glued_appb", "/third", "u2")
            )
            answers = await c.responses(3)
    finally:
        server.close()
        await server.wait_closed()
    assert [(r.status, r.body) for r in warm] == [(200, b"/a/warm"), (200, b"/b/warm")]
    assert [(r.status, r.body) for r in answers] == [
        (200, b"/a/first"),
        (200, b"/b/second"),
        (200, b"/b/third"),
    ]
