"""A bot that fails costs nothing: 5xx, unreachable and too slow bots are refunded."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from meter.accounts.projection import read_balances
from meter.accounts.seeding import seed
from meter.redis_layer.client import RedisClient
from tests.support.bot import Bot, Running, running_gateway
from tests.support.servers import free_port
from tests.support.settings import make_settings

# Each test runs against both traffic servers (aiohttp, the fast path).
pytestmark = pytest.mark.usefixtures("traffic_server")

WS = "refund"
APP = f"{WS}_app1"
DOWN = f"{WS}_down"
FUNDS = 1_000_000  # $1.00 tied to each app: five sessions


@asynccontextmanager
async def gateway(
    redis_url: str, tmp_path: Path, rclient: RedisClient, bot: Bot, **overrides: Any
) -> AsyncIterator[Running]:
    settings = make_settings(redis_url, tmp_path, **overrides)
    apps = {
        APP: {"product": "automation", "upstream_url": bot.url, "funds": FUNDS},
        DOWN: {
            "product": "automation",
            "upstream_url": f"http://127.0.0.1:{free_port()}",
            "funds": FUNDS,
        },
    }
    await seed(rclient, settings, WS, apps)
    async with running_gateway(settings) as running:
        yield running


@pytest.fixture
async def gw(
    redis_url: str, tmp_path: Path, rclient: RedisClient, bot: Bot
) -> AsyncIterator[Running]:
    """The default bot read timeout (30 s): no answer of a busy machine's bot reaches it."""
    async with gateway(redis_url, tmp_path, rclient, bot) as running:
        yield running


@pytest.fixture
async def impatient(
    redis_url: str, tmp_path: Path, rclient: RedisClient, bot: Bot
) -> AsyncIterator[Running]:
    """A 0.3 s read timeout, for the bot too slow alone: with it, every test's bot answer
    had to come within 0.3 s, and on a busy machine an /ok or a 500 could be a 504."""
    async with gateway(redis_url, tmp_path, rclient, bot, upstream_read_timeout_s=0.3) as running:
        yield running


async def balance(rclient: RedisClient, app: str = APP) -> int:
    return (await read_balances(rclient, WS)).app[app]


async def post(http: aiohttp.ClientSession, url: str, user: str) -> tuple[int, str, bytes]:
    async with http.post(url, headers={"X-Channel-User-Id": user}, data=b"hi") as resp:
        return resp.status, resp.content_type, await resp.read()


async def test_bot_500_is_withheld_and_refunded(
    gw: Running, bot: Bot, http: aiohttp.ClientSession, rclient: RedisClient
) -> None:
    # A bot cannot answer for free by answering 5xx: its body never reaches the client.
    status, ctype, body = await post(http, f"{gw.url}/hooks/web/{APP}/status/500", "u1")
    assert (status, ctype) == (502, "application/problem+json")
    assert b"bot says" not in body
    assert orjson.loads(body)["code"] == "upstream_error"
    assert bot.count() == 1
    assert await balance(rclient) == FUNDS
    # the refund undid the session: the user's next message opens (and pays) it afresh
    assert (await post(http, f"{gw.url}/hooks/web/{APP}/ok", "u1"))[0] == 200
    assert await balance(rclient) == FUNDS - 200_000


async def test_bot_4xx_is_charged(
    gw: Running, bot: Bot, http: aiohttp.ClientSession, rclient: RedisClient
) -> None:
    assert (await post(http, f"{gw.url}/hooks/web/{APP}/status/404", "u1"))[0] == 404
    assert await balance(rclient) == FUNDS - 200_000


async def test_bot_down_is_502_and_refunded(
    gw: Running, http: aiohttp.ClientSession, rclient: RedisClient
) -> None:
    status, ctype, _ = await post(http, f"{gw.url}/hooks/web/{DOWN}", "u1")
    assert (status, ctype) == (502, "application/problem+json")
    assert await balance(rclient, DOWN) == FUNDS


async def test_bot_slow_is_504_and_refunded(
    impatient: Running, bot: Bot, http: aiohttp.ClientSession, rclient: RedisClient
) -> None:
    status, ctype, body = await post(http, f"{impatient.url}/hooks/web/{APP}/slow/2", "u1")
    assert (status, ctype) == (504, "application/problem+json")
    assert b"upstream_timeout" in body
    assert bot.count() == 1
    assert await balance(rclient) == FUNDS


async def test_refunds_are_counted_in_metrics(
    gw: Running, http: aiohttp.ClientSession, rclient: RedisClient
) -> None:
    await post(http, f"{gw.url}/hooks/web/{DOWN}", "u1")
    async with http.get(f"{gw.admin_url}/metrics") as resp:
        text = await resp.text()
    assert "creditgate_refunds_total 1.0" in text
    assert 'creditgate_requests_total{channel="web",outcome="bot_error"} 1.0' in text
    assert 'creditgate_requests_total{channel="web",outcome="error"} 0.0' in text
    assert 'creditgate_upstream_seconds_count{outcome="connect"} 1.0' in text
