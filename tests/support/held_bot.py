"""A bot that holds every request until the test releases it, and counts its connections.

A real listening socket on 127.0.0.1: ``accepted`` counts the connections it accepted,
``open`` those open now, ``peak`` the most open at once, ``paths`` the requests it read
(in order; ``journal`` too, a list bots may share: the order across them), ``held`` the
requests read and not yet answered. Once ``release`` is set every request is answered
``200`` with its own path as the body, keep-alive (``/close/...``: ``Connection: close``,
and the bot closes the connection after the answer).

Usage::

    async with held_bot() as bot:
        ...  await eventually(lambda: bot.held == 2); bot.release.set()

A test of a message waiting past the connect timeout for a place held here gives the
connects that must succeed (the held messages', another tenant's) the settings' hang
bound, and only the messages it starts inside :func:`connect_wait` a short one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import attr
import pytest

from gateway.appkeys import HTTP
from gateway.fastpath.pool import Pool
from tests.support.bot import Running
from tests.support.settings import HOST


@dataclass
class HeldBot:
    url: str = ""
    accepted: int = 0
    open: int = 0
    peak: int = 0
    held: int = 0
    paths: list[str] = field(default_factory=list)
    journal: list[str] = field(default_factory=list)  # may be shared: the order across bots
    release: asyncio.Event = field(default_factory=asyncio.Event)
    writers: set[asyncio.StreamWriter] = field(default_factory=set)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.writers.add(writer)
        self.open += 1
        self.peak = max(self.peak, self.open)
        try:
            while await self._one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self.open -= 1
            self.writers.discard(writer)
            writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Read one request and answer it once released; whether to read another."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False  # the gateway closed the connection
        lines = head.decode("latin-1").split("\r\n")
        path = lines[0].split(" ")[1]
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        await reader.readexactly(length)
        self.paths.append(path)
        self.journal.append(path)
        self.held += 1
        try:
            await self.release.wait()
        finally:
            self.held -= 1
        close = path.startswith("/close/")
        body = path.encode()
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n%s\r\n%s"
            % (len(body), b"Connection: close\r\n" if close else b"", body)
        )
        await writer.drain()
        return not close


@contextlib.asynccontextmanager
async def held_bot(journal: list[str] | None = None) -> AsyncIterator[HeldBot]:
    bot = HeldBot() if journal is None else HeldBot(journal=journal)
    server = await asyncio.start_server(bot.serve, HOST, 0)
    bot.url = f"http://{HOST}:{server.sockets[0].getsockname()[1]}"
    try:
        yield bot
    finally:
        bot.release.set()  # nothing left waiting on the test's loop
        server.close()
        for writer in list(bot.writers):
            writer.close()
        await server.wait_closed()


@contextlib.contextmanager
def connect_wait(gw: Running, seconds: float) -> Iterator[None]:
    """Within the block, a message the in-process gateway ``gw`` starts to send waits at
    most ``seconds`` for its bot connection (a place, then the connect), on both traffic
    servers; before and after it, ``upstream_connect_timeout_s``. One setting bounds
    both in production, so a test of a wait past it would otherwise give the connects
    that must succeed meanwhile that short bound too (a busy machine passed it: a
    spurious 504). Each message takes its bound as it starts (``Pool.deadline`` on the
    fast path, the bot session's ``ClientTimeout`` on aiohttp's)."""
    session = gw.gateway.traffic[HTTP]
    short = attr.evolve(session.timeout, connect=seconds, sock_connect=seconds)

    def deadline(pool: Pool) -> float:
        return pool.loop.time() + seconds

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(session, "_timeout", short)
        patch.setattr(Pool, "deadline", deadline)
        yield
