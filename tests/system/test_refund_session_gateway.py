"""The gateway reports the failure of a message admitted inside a paid billing session
(gateway/metering.py Meter.failed): with the bot down, a session whose every message
failed is refunded (refund.lua un-counts the in-session ones). Real Redis, a real bot,
real sockets."""

from __future__ import annotations

import asyncio

import aiohttp

from meter.redis_layer.client import RedisClient
from tests.support.bot import Bot, SeededGateway, free_credit, post_message

WS = "sessfail"
APP = f"{WS}_app1"
FREE = 10_000_000


async def test_a_session_whose_messages_all_timed_out_is_refunded(
    seeded_gateway: SeededGateway, rclient: RedisClient, bot: Bot, http: aiohttp.ClientSession
) -> None:
    apps = {APP: {"product": "automation"}}
    async with seeded_gateway(WS, apps, free=FREE, upstream_read_timeout_s=0.5) as gw:
        url = f"{gw.url}/hooks/web/{APP}/slow/1.5"
        # Both admitted while the bot holds them: the first opens the session, the
        # second is inside it; both time out (504), each reported as it fails.
        got = await asyncio.gather(*(post_message(http, url, "u") for _ in range(2)))
        assert got == [504, 504]
        assert bot.count() == 2
    assert await free_credit(rclient, WS) == FREE
