"""A retried delivery (same Idempotency-Key, same body) is proxied while the original still
waits on the bot: over HTTP, on both traffic servers, the charge stands while either may
be served, and is refunded when both fail. The bot here holds each answer until the test
releases it, so the order of events is the test's, never the machine's speed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from meter.redis_layer.client import RedisClient
from tests.support.bot import SeededGateway, eventually, free_credit, post_message

pytestmark = pytest.mark.usefixtures("traffic_server")

WS = "redeliv"
APP = f"{WS}_app1"
FREE = 10_000_000  # $10
SESSION_PRICE = 200_000  # automation: $0.20 a session
BODY = b'{"text": "hi"}'


@dataclass
class HeldBot:
    """Call i waits until ``release(i)``, then answers ``statuses[i]``."""

    statuses: list[int]
    url: str = ""
    arrived: int = 0
    gates: list[asyncio.Event] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.gates = [asyncio.Event() for _ in self.statuses]

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        i = self.arrived
        self.arrived += 1
        await self.gates[i].wait()
        return web.Response(status=self.statuses[i], text=f"answer {i}")

    def release(self, i: int) -> None:
        self.gates[i].set()

    @contextlib.asynccontextmanager
    async def releasing(self) -> AsyncIterator[None]:
        """Every call answered on the way out (a failed test must not leave the gateway
        waiting on the bot at shutdown)."""
        try:
            yield
        finally:
            for g in self.gates:
                g.set()


@contextlib.asynccontextmanager
async def held_bot(*statuses: int) -> AsyncIterator[HeldBot]:
    bot = HeldBot(list(statuses))
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", bot.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    bot.url = f"http://127.0.0.1:{port}"
    try:
        yield bot
    finally:
        await runner.cleanup()


async def both_with_the_bot(
    http: aiohttp.ClientSession, url: str, bot: HeldBot
) -> tuple[asyncio.Task[int], asyncio.Task[int]]:
    """The original, then its retry (same key and body), each once the bot holds it."""
    first = asyncio.create_task(post_message(http, url, "u1", "evt-1", BODY))
    assert await eventually(lambda: bot.arrived == 1)
    retry = asyncio.create_task(post_message(http, url, "u1", "evt-1", BODY))
    assert await eventually(lambda: bot.arrived == 2)
    return first, retry


async def test_a_retry_served_while_the_original_fails_keeps_the_charge(
    seeded_gateway: SeededGateway, rclient: RedisClient, http: aiohttp.ClientSession
) -> None:
    async with (
        held_bot(500, 200) as bot,
        seeded_gateway(WS, {APP: {"product": "automation", "upstream_url": bot.url}}, free=FREE)
        as gw,
        bot.releasing(),
    ):  # fmt: skip
        first, retry = await both_with_the_bot(http, f"{gw.url}/hooks/web/{APP}", bot)
        bot.release(1)
        assert await retry == 200  # the bot answered the message
        bot.release(0)
        assert await first == 502  # the original failed: refunded only if nothing served
    assert FREE - await free_credit(rclient, WS) == SESSION_PRICE


async def test_the_charge_is_refunded_when_the_last_delivery_fails(
    seeded_gateway: SeededGateway, rclient: RedisClient, http: aiohttp.ClientSession
) -> None:
    async with (
        held_bot(500, 500) as bot,
        seeded_gateway(WS, {APP: {"product": "automation", "upstream_url": bot.url}}, free=FREE)
        as gw,
        bot.releasing(),
    ):  # fmt: skip
        first, retry = await both_with_the_bot(http, f"{gw.url}/hooks/web/{APP}", bot)
        bot.release(0)
        assert await first == 502
        # The retry is still with the bot and may yet be served: the charge stands.
        assert FREE - await free_credit(rclient, WS) == SESSION_PRICE
        bot.release(1)
        assert await retry == 502
    assert await free_credit(rclient, WS) == FREE
