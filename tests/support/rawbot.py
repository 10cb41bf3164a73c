"""A bot that speaks raw bytes: it records each request exactly as it arrived and answers
with bytes a test scripts (a hostile bot's framing), or else with the request's own head.

Usage::

    async with running_raw_bot() as bot:
        bot.answers["/b/evil"] = Answer(b"HTTP/1.1 200 OK\\r\\n...")  # then closes
        ...  bot.heads[-1] is the head of the last request it got
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from tests.support.settings import HOST


@dataclass
class Answer:
    """Bytes written as the answer; the connection is closed after unless ``keep``."""

    data: bytes
    keep: bool = False


@dataclass
class RawBot:
    url: str = ""
    heads: list[bytes] = field(default_factory=list)  # each request head, CRLFCRLF included
    bodies: list[bytes] = field(default_factory=list)
    conns: list[int] = field(default_factory=list)  # each request's connection, by number
    answers: dict[str, Answer] = field(default_factory=dict)  # by path, query excluded
    continues: bool = True  # answers Expect: 100-continue with a 100 (False: never does)

    def head_lines(self, i: int = -1) -> list[bytes]:
        """The lines of a request head (request line first), without CRLF."""
        return self.heads[i].split(b"\r\n")[:-2]

    def header_values(self, name: str, i: int = -1) -> list[bytes]:
        want = name.lower().encode()
        out = []
        for line in self.head_lines(i)[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == want:
                out.append(v.strip())
        return out

    def target(self, i: int = -1) -> bytes:
        return self.head_lines(i)[0].split(b" ")[1]


def echo(head: bytes) -> bytes:
    """The default answer: the request head as the body, kept alive."""
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Length: %d\r\n\r\n%b" % (len(head), head)
    )


async def _body(reader: asyncio.StreamReader, head: bytes) -> bytes:
    low = head.lower()
    if b"\r\ntransfer-encoding: chunked" in low:
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass  # trailers
                return body
            body += await reader.readexactly(size)
            await reader.readexactly(2)
    for line in low.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return await reader.readexactly(int(line.split(b":")[1]))
    return b""


@contextlib.asynccontextmanager
async def running_raw_bot() -> AsyncIterator[RawBot]:
    bot = RawBot()
    opened = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal opened
        opened += 1
        conn = opened
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if bot.continues and b"\r\nexpect: 100-continue\r\n" in head.lower():
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # as servers do
                body = await _body(reader, head)
                bot.heads.append(head)
                bot.bodies.append(body)
                bot.conns.append(conn)
                path = head.split(b" ", 2)[1].partition(b"?")[0].decode("latin-1")
                answer = bot.answers.get(path)
                writer.write(echo(head) if answer is None else answer.data)
                await writer.drain()
                if answer is not None and not answer.keep:
                    break
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, HOST, 0, limit=1 << 20)
    port = server.sockets[0].getsockname()[1]
    bot.url = f"http://{HOST}:{port}"
    try:
        yield bot
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 5)
