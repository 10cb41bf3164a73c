"""Hostile input at the traffic edge: each test tries to cheat the meter or to reach
what it should not, and asserts the bot call count and the balance before and after
(real sockets, real Redis, a real counting bot)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from bot import (  # noqa: F401
    Bot,
    Running,
    bot_fixture,
    http_fixture,
    make_settings,
    rclient_fixture,
    running_gateway,
    seed,
)
from yarl import URL

from meter import keys
from meter.redis_client import RedisClient

WS = "edge"
APP = f"{WS}_app1"
USER = {"X-Channel-User-Id": "u1"}
FREE = 10_000_000  # $10


async def free_left(rclient: RedisClient, ws: str = WS) -> int:
    return int(await rclient.hget(keys.ws_key(ws), "free") or 0)


@pytest.fixture
async def gw(
    redis_url: str, tmp_path: Path, rclient: RedisClient, bot: Bot
) -> AsyncIterator[Running]:
    settings = make_settings(redis_url, tmp_path)
    await seed(
        rclient,
        settings,
        WS,
        {APP: {"product": "automation", "upstream_url": bot.url + "/slack/events"}},
        free=FREE,
    )
    async with running_gateway(settings) as running:
        yield running


async def test_upstream_url_is_used_as_is_without_a_tail(
    gw: Running, bot: Bot, http: aiohttp.ClientSession
) -> None:
    async with http.post(f"{gw.url}/hooks/web/{APP}", data=b"{}", headers=USER) as resp:
        assert resp.status == 200
    async with http.post(f"{gw.url}/hooks/web/{APP}/x?q=1", data=b"{}", headers=USER) as resp:
        assert resp.status == 200
    assert [c.path_qs for c in bot.calls] == ["/slack/events", "/slack/events/x?q=1"]


@pytest.mark.parametrize(
    "tail",
    ["/../tenantB/secret", "/a/./b", "/%2e%2e/x", "/%2E%2e", "/a/.%2E/b", "/..", "/."],
)
async def test_dot_segments_in_the_tail_are_refused_uncharged(
    gw: Running, bot: Bot, http: aiohttp.ClientSession, rclient: RedisClient, tail: str
) -> None:
    before = await free_left(rclient)
    url = URL(f"{gw.url}/hooks/web/{APP}{tail}", encoded=True)
    async with http.post(url, data=b"{}", headers=USER) as resp:
        assert resp.status == 400
        assert resp.content_type == "application/problem+json"
        assert (await resp.json())["code"] == "invalid_path"
    assert bot.count() == 0
    assert await free_left(rclient) == before


async def test_dots_inside_a_segment_are_not_dot_segments(
    gw: Running, bot: Bot, http: aiohttp.ClientSession
) -> None:
    url = URL(f"{gw.url}/hooks/web/{APP}/v1.2/..x/.well-known", encoded=True)
    async with http.get(url, headers=USER) as resp:
        assert resp.status == 200
    assert [c.path_qs for c in bot.calls] == ["/slack/events/v1.2/..x/.well-known"]
