"""A real HTTP receiver of owner notifications on a loopback port, for tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp
import orjson
import pytest
from aiohttp import web

from meter.accounts.webhook_signing import (
    SIGNATURE_HEADER,
    TIMED_SIGNATURE_HEADER,
    verify,
    verify_timed,
)
from tests.support.bot import serve


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> dict[str, object]:
        data: dict[str, object] = orjson.loads(self.body)
        return data


@dataclass
class Receiver:
    """Records every POST; answers ``fail_with`` to the next ``fail`` requests."""

    url: str = ""
    got: list[Received] = field(default_factory=list)
    fail: int = 0
    fail_with: int = 500
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def valid(self, secret: str) -> list[Received]:
        return [r for r in self.got if verify(secret, r.body, r.headers.get(SIGNATURE_HEADER))]

    def valid_at(self, secret: str, now: float) -> list[Received]:
        """The requests whose timed signature a receiver whose clock reads ``now`` takes."""
        return [
            r
            for r in self.got
            if verify_timed(secret, r.body, r.headers.get(TIMED_SIGNATURE_HEADER), now)
        ]

    def types(self) -> list[object]:
        return [r.json["type"] for r in self.got]


@asynccontextmanager
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()

    async def hook(request: web.Request) -> web.Response:
        rec.got.append(Received(dict(request.headers), await request.read()))
        rec.arrived.set()
        if rec.fail > 0:
            rec.fail -= 1
            return web.Response(status=rec.fail_with)
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    async with serve(app) as url:
        rec.url = f"{url}/hook"
        yield rec


@dataclass
class Hang:
    """A receiver that accepts every connection, reads the request and never answers."""

    url: str = ""
    connections: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)


@asynccontextmanager
async def hanging_receiver() -> AsyncIterator[Hang]:
    """A :class:`Hang` on a loopback port; on exit its connections are reset, so a
    client still waiting for an answer fails at once."""
    hang = Hang()
    open_: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hang.connections += 1
        hang.arrived.set()
        open_.append(writer)
        with contextlib.suppress(ConnectionError):
            await reader.read()  # until the client gives up

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    hang.url = f"http://127.0.0.1:{port}/hook"
    try:
        yield hang
    finally:
        server.close()
        for writer in open_:
            writer.transport.abort()
        await server.wait_closed()


# Fixtures (loaded for every test by ``pytest_plugins`` in tests/conftest.py).


@pytest.fixture
async def rec() -> AsyncIterator[Receiver]:
    """A receiver of owner notifications, running for the test."""
    async with receiver() as r:
        yield r


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client session for a notifier, closed after the test."""
    async with aiohttp.ClientSession() as s:
        yield s
