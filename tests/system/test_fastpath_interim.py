"""Interim (1xx) answers before a bot's final answer: bounded on the fast path.

The fast path keeps every byte of an answer's head until the head is complete (it may
read it again leniently: gateway.fastpath.upstream), interim heads included: a bot
sending 102s without end made the gateway hold up to ``HEAD_BYTES`` (about 4.2 MB) per
bot connection until its final head, for every message it held so. Now interim heads
may take at most ``INTERIM_BYTES`` in all: beyond, the answer is the bot's failure (502,
refunded, its connection closed). A few interim answers (100, 102, 103) still pass.
aiohttp's client reads one interim head at a time and keeps none: it passes them all.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from gateway.fastpath.upstream import INTERIM_BYTES
from meter.redis_layer.client import RedisClient
from tests.support.bot import SeededGateway, free_credit
from tests.support.rawhttp import RawConn
from tests.support.settings import HOST

pytestmark = pytest.mark.usefixtures("traffic_server")

WS = "interim"
APP = f"{WS}_app1"
FREE = 10_000_000
PRICE = 10_000  # contact_center: one cent a message
PROCESSING = b"HTTP/1.1 102 Processing\r\nX-Pad: %b\r\n\r\n" % (b"p" * 1000)
FINAL = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal"


@contextlib.asynccontextmanager
async def interim_bot(count: int) -> AsyncIterator[str]:
    """A bot answering each request with ``count`` 102s, written one at a time (a loop
    pass between: the gateway reads them as they come), then its final answer."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while True:
                await reader.readuntil(b"\r\n\r\n")
                for _ in range(count):
                    writer.write(PROCESSING)
                    await writer.drain()
                    await asyncio.sleep(0)  # a loop pass, not time
                writer.write(FINAL)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, HOST, 0)
    try:
        yield f"http://{HOST}:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await server.wait_closed()


async def ask(seeded_gateway: SeededGateway, rclient: RedisClient, count: int) -> tuple[int, int]:
    """The status of one message to a bot sending ``count`` 102s first, and the number of
    messages charged."""
    async with interim_bot(count) as url:
        apps = {APP: {"product": "contact_center", "upstream_url": url}}
        async with seeded_gateway(WS, apps, free=FREE) as gw, RawConn.open(gw.url) as c:
            c.send(
                f"GET /hooks/web/{APP}/x HTTP/1.1\r\nHost: gw\r\nX-Channel-User-Id: u1\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            resp = await c.response()
            charged = (FREE - await free_credit(rclient, WS)) // PRICE
    return resp.status, charged


async def test_a_few_interim_answers_pass(
    seeded_gateway: SeededGateway, rclient: RedisClient
) -> None:
    assert await ask(seeded_gateway, rclient, 3) == (200, 1)


async def test_interim_answers_past_the_bound_are_the_bots_failure(
    seeded_gateway: SeededGateway, rclient: RedisClient, traffic_server: str
) -> None:
    count = 4 * INTERIM_BYTES // len(PROCESSING)  # well under HEAD_BYTES (4.2 MB)
    status, charged = await ask(seeded_gateway, rclient, count)
    if traffic_server == "fast":
        assert (status, charged) == (502, 0)  # refunded
    else:  # aiohttp's client keeps none of them: nothing held to bound
        assert (status, charged) == (200, 1)
