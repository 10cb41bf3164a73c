"""The aiohttp path's bot connections (gateway/bot_connector.py) when a bot answers a
streamed body early (gateway/unsent.py), in an aiohttp session against a real bot with
a small receive buffer that reads requests in turn, a body as more requests, and
answers each with its connection's number.

* The answer's head came once the bot had read all that was sent, the rest of the body
  was written before its end, and the bot had not read it: the connection is closed as
  it is released, never handed to the next request.
* The answer ended while the body was still being written (aiohttp's writer waiting for
  its next chunk): aiohttp cancels the writer and closes the connection. Pinned here:
  an aiohttp that kept it would send the next request on a half-sent body.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp

from gateway.bot_connector import BotConnector
from tests.support.settings import HOST

GUARD_S = 60.0  # timeouts that only stop a hang
FIRST = b"x" * 1000  # what the bot reads before it answers
REST = b"SKIP /skip HTTP/1.1\r\nX-Pad: %b\r\n\r\n" % (b"x" * 900) * 60  # past its buffer


@dataclass
class Bot:
    """``/late``: reads :data:`FIRST`, answers with its head and half its body, and the
    other half once told (``go``); any other path: its connection's number."""

    url: str = ""
    opened: int = 0
    go: asyncio.Event = field(default_factory=asyncio.Event)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.opened += 1
        conn = self.opened
        with contextlib.suppress(Exception):
            while True:
                path = (await reader.readuntil(b"\r\n\r\n")).split(b" ")[1]
                if path == b"/skip":
                    continue
                if path == b"/late":
                    await reader.readexactly(len(FIRST))
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nhalf")
                    await self.go.wait()
                    writer.write(b"done")
                    continue
                number = b"%d" % conn
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(number), number)
                )
        writer.close()


@contextlib.asynccontextmanager
async def bot_and_session() -> AsyncIterator[tuple[Bot, aiohttp.ClientSession]]:
    bot = Bot()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)  # accepted ones inherit it
    listener.bind((HOST, 0))
    server = await asyncio.start_server(bot.serve, sock=listener, limit=1024)
    bot.url = f"http://{HOST}:{listener.getsockname()[1]}"
    connector = BotConnector(limit=4, limit_per_host=4, keepalive_timeout=30)
    timeout = aiohttp.ClientTimeout(total=None, connect=GUARD_S, sock_read=GUARD_S)
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            yield bot, http
    finally:
        server.close()
        await server.wait_closed()


async def served_by(http: aiohttp.ClientSession, bot: Bot) -> bytes:
    """The number of the connection the next request went on."""
    async with http.get(bot.url + "/next") as resp:
        return await resp.read()


async def test_an_answer_that_ends_before_the_body_is_read_closes_its_connection() -> None:
    headed, written = asyncio.Event(), asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield FIRST
        await headed.wait()
        yield REST
        written.set()  # REST is with the transport: aiohttp asks for more

    async with bot_and_session() as (bot, http):
        length = {"Content-Length": str(len(FIRST) + len(REST))}
        async with http.post(bot.url + "/late", data=body(), headers=length) as resp:
            headed.set()  # the head came after the bot had read all that was sent
            await written.wait()  # the writer's last step: done before the bot is told
            bot.go.set()
            assert await resp.read() == b"halfdone"
        assert await served_by(http, bot) == b"2"


async def test_an_answer_that_ends_while_the_body_is_written_closes_its_connection() -> None:
    never = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield FIRST
        await never.wait()
        yield REST

    async with bot_and_session() as (bot, http):
        length = {"Content-Length": str(len(FIRST) + len(REST))}
        async with http.post(bot.url + "/late", data=body(), headers=length) as resp:
            bot.go.set()
            assert await resp.read() == b"halfdone"
        assert await served_by(http, bot) == b"2"
