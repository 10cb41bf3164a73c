"""Every refusal of docs/design.md §3, each from a real scenario: the answer is problem+json with
its code and status, and the bot is never called."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from meter.accounts.projection import Licence
from meter.accounts.seeding import seed
from meter.redis_layer.client import RedisClient
from tests.support.bot import Bot, Running, running_gateway
from tests.support.clock import Clock
from tests.support.servers import RedisServer
from tests.support.settings import make_settings

# Each test runs against both traffic servers (aiohttp, the fast path).
pytestmark = pytest.mark.usefixtures("traffic_server")

WS = "refuse"
APP = f"{WS}_app1"
DOLLAR = 1_000_000

Start = Callable[..., Any]


@pytest.fixture
async def start(
    redis_url: str, tmp_path: Path, rclient: RedisClient, bot: Bot
) -> AsyncIterator[Start]:
    """``await start(apps={...}, settings={...}, **seed_kw)`` -> a running gateway."""
    stack: list[Any] = []

    async def _start(
        apps: dict[str, dict[str, Any]] | None = None,
        settings: dict[str, Any] | None = None,
        clock: Callable[[], float] = time.time,
        **seed_kw: Any,
    ) -> Running:
        s = make_settings(redis_url, tmp_path, **(settings or {}))
        apps = apps or {APP: {"product": "automation"}}
        for kw in apps.values():
            kw.setdefault("upstream_url", bot.url)
        now = clock()
        await seed(rclient, s, WS, apps, now=now, **seed_kw)
        cm = running_gateway(s, clock=clock)
        stack.append(cm)
        return await cm.__aenter__()

    yield _start
    for cm in reversed(stack):
        await cm.__aexit__(None, None, None)


async def send(
    http: aiohttp.ClientSession, gw: Running, user: str = "u1", app: str = APP, **kw: Any
) -> tuple[int, dict[str, Any], aiohttp.typedefs.LooseHeaders]:
    headers = {"X-Channel-User-Id": user, **kw.pop("headers", {})}
    async with http.post(f"{gw.url}/hooks/web/{app}/msg", headers=headers, **kw) as resp:
        body = await resp.json(content_type=None)
        return resp.status, body, resp.headers


def assert_problem(status: int, body: dict[str, Any], want_status: int, code: str) -> None:
    assert (status, body.get("code")) == (want_status, code), body
    assert body["status"] == want_status
    assert body["type"].endswith(code)
    assert body["title"]


async def test_unknown_app(start: Start, http: aiohttp.ClientSession, bot: Bot) -> None:
    gw = await start()
    for app in (f"{WS}_nosuchapp", "not-an-app-id", "nows_app1"):
        status, body, _ = await send(http, gw, app=app)
        assert_problem(status, body, 404, "unknown_app")
    assert bot.count() == 0


async def test_credits_exhausted(start: Start, http: aiohttp.ClientSession, bot: Bot) -> None:
    # $0.40 tied to the app, no free credits: two sessions at $0.20.
    gw = await start(apps={APP: {"product": "automation", "funds": 400_000}})
    assert (await send(http, gw, "a"))[0] == 200
    assert (await send(http, gw, "b"))[0] == 200
    assert (await send(http, gw, "a"))[0] == 200  # inside a paid session: free of charge
    status, body, _ = await send(http, gw, "c")
    assert_problem(status, body, 402, "credits_exhausted")
    assert bot.count() == 3


async def test_free_credits_expired(start: Start, http: aiohttp.ClientSession, bot: Bot) -> None:
    clock = Clock.wall()
    gw = await start(clock=clock, free=500 * DOLLAR, free_expires_ms=int((clock.now + 10) * 1000))
    assert (await send(http, gw, "a"))[0] == 200
    clock.now += 11
    status, body, _ = await send(http, gw, "b")
    assert_problem(status, body, 402, "free_credits_expired")
    assert bot.count() == 1


async def test_product_not_licensed(start: Start, http: aiohttp.ClientSession, bot: Bot) -> None:
    gw = await start(
        plan="enterprise",
        licences={"search": Licence(usage_limit=1000, per_minute=100, per_hour=1000)},
    )
    status, body, _ = await send(http, gw)
    assert_problem(status, body, 403, "product_not_licensed")
    assert bot.count() == 0


async def test_app_suspended(start: Start, http: aiohttp.ClientSession, bot: Bot) -> None:
    gw = await start(apps={APP: {"product": "automation", "suspended": True}}, free=DOLLAR)
    status, body, _ = await send(http, gw)
    assert_problem(status, body, 403, "app_suspended")
    assert bot.count() == 0


async def test_rate_limited_with_retry_after(
    start: Start, http: aiohttp.ClientSession, bot: Bot
) -> None:
    gw = await start(apps={APP: {"product": "automation", "per_minute": 2}}, free=DOLLAR)
    assert (await send(http, gw))[0] == 200
    assert (await send(http, gw))[0] == 200
    status, body, headers = await send(http, gw)
    assert_problem(status, body, 429, "rate_limited")
    retry = int(headers["Retry-After"])
    assert 1 <= retry <= 61
    assert body["retry_after"] == retry
    assert bot.count() == 2


async def test_usage_limit_reached(start: Start, http: aiohttp.ClientSession, bot: Bot) -> None:
    gw = await start(
        plan="enterprise",
        licences={"automation": Licence(usage_limit=1, per_minute=100, per_hour=1000)},
    )
    assert (await send(http, gw, "a"))[0] == 200
    status, body, _ = await send(http, gw, "b")
    assert_problem(status, body, 429, "usage_limit_reached")
    assert bot.count() == 1


async def test_missing_channel_user(start: Start, http: aiohttp.ClientSession, bot: Bot) -> None:
    gw = await start(free=DOLLAR)
    async with http.post(f"{gw.url}/hooks/web/{APP}", data=b"{}") as resp:
        body = await resp.json(content_type=None)
        assert resp.content_type == "application/problem+json"
        assert_problem(resp.status, body, 400, "missing_channel_user")
    assert bot.count() == 0


async def test_metering_unavailable_when_redis_is_down(
    start: Start, http: aiohttp.ClientSession, bot: Bot, redis_server: RedisServer
) -> None:
    # make_settings' patient Redis timeout: the warm-up below must not time out on a busy
    # machine (0.5 s could: 503), and the killed Redis refuses connections at once.
    gw = await start(free=DOLLAR)
    assert (await send(http, gw, "warm"))[0] == 200  # caches the app's upstream
    redis_server.kill()
    try:
        # A hang bound, not a speed check: the answer comes at once (a killed Redis
        # refuses the connection), at worst by redis_timeout_s, never after whatever
        # the client waits.
        async with asyncio.timeout(60):
            status, body, headers = await send(http, gw, "b")
        assert_problem(status, body, 503, "metering_unavailable")
        assert headers["Retry-After"]
        # an app never seen before cannot even be resolved: same answer
        status, body, _ = await send(http, gw, "b", app=f"{WS}_other")
        assert_problem(status, body, 503, "metering_unavailable")
    finally:
        redis_server.start()
    assert bot.count() == 1
