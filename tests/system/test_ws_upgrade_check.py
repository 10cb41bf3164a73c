"""What a WebSocket upgrade is checked for before the bot is dialled: the rate limits
(read, not counted), and credit only outside a paid session.

The handshake carries a question (path, query, headers) and the bot's pick of
sub-protocol reaches the client uncharged, so an upgrade the app could not be served is
refused before the bot is contacted: past the rate limits 429 ``rate_limited`` with
``Retry-After`` (it was let through: the bot got every handshake of a rate-limited app).
A user inside a billing session already paid is served as its messages are, whatever
credit is left (it was refused 402)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from meter.accounts.projection import read_balances
from meter.accounts.seeding import seed
from meter.redis_layer.client import RedisClient
from tests.support.bot import WsBot, running_gateway, running_ws_bot
from tests.support.settings import make_settings

# Each test runs against both traffic servers (aiohttp, the fast path).
pytestmark = pytest.mark.usefixtures("traffic_server")

WS = "wscheck"
CENT = 10_000  # contact_center: $0.01 per request
FUNDS = 100 * CENT


@pytest.fixture
async def wsbot() -> AsyncIterator[WsBot]:
    async with running_ws_bot() as b:
        yield b


async def balance(rclient: RedisClient, app: str) -> int:
    return (await read_balances(rclient, WS)).app[app]


UPGRADE = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
}


async def upgrade(http: aiohttp.ClientSession, url: str | URL) -> tuple[int, Any, str | None]:
    """An upgrade's status, problem document ({} when it opened) and Retry-After."""
    async with http.get(url, headers=UPGRADE) as r:
        doc = {} if r.status == 101 else await r.json(content_type=None)
        return r.status, doc, r.headers.get("Retry-After")


async def test_an_upgrade_past_the_rate_limit_is_429_before_the_bot_is_dialled(
    redis_url: str, tmp_path: Path, rclient: RedisClient, wsbot: WsBot, http: aiohttp.ClientSession
) -> None:
    app = f"{WS}_rate"
    settings = make_settings(redis_url, tmp_path, rate_per_minute=1, rate_per_hour=10)
    spec = {"product": "contact_center", "upstream_url": wsbot.url, "funds": FUNDS}
    await seed(rclient, settings, WS, {app: spec})
    async with running_gateway(settings) as gw:
        # The check reads the window without counting in it: the socket's one message
        # is the minute's one.
        async with http.ws_connect(f"{gw.url}/hooks/web/{app}/first?user=u") as ws:
            await ws.send_str("q")
            assert (await ws.receive()).data == "echo:q"
        status, doc, retry_after = await upgrade(
            http, f"{gw.url}/hooks/web/{app}/second?user=u&q=question"
        )
        assert status == 429
        assert doc.get("code") == "rate_limited"
        assert int(retry_after or 0) >= 1
        assert wsbot.paths == ["/first?user=u"]  # the second handshake never reached it
        assert await balance(rclient, app) == FUNDS - CENT


async def test_a_user_inside_a_paid_session_gets_a_websocket_without_credit_left(
    redis_url: str, tmp_path: Path, rclient: RedisClient, wsbot: WsBot, http: aiohttp.ClientSession
) -> None:
    app = f"{WS}_sess"
    session = 200_000  # automation: $0.20 per session, all the workspace has
    settings = make_settings(redis_url, tmp_path)
    spec = {"product": "automation", "upstream_url": wsbot.url, "funds": session}
    await seed(rclient, settings, WS, {app: spec})
    async with running_gateway(settings) as gw:
        async with http.ws_connect(f"{gw.url}/hooks/web/{app}/chat?user=u") as ws:
            await ws.send_str("opens the session")  # pays it: no credit left
            assert (await ws.receive()).data == "echo:opens the session"
        assert await balance(rclient, app) == 0
        async with http.ws_connect(f"{gw.url}/hooks/web/{app}/again?user=u") as ws:
            await ws.send_str("inside the session")
            assert (await ws.receive()).data == "echo:inside the session"
        # Another user would open a session of its own: refused as ever.
        status, doc, _ = await upgrade(http, f"{gw.url}/hooks/web/{app}/chat?user=v")
        assert (status, doc.get("code")) == (402, "credits_exhausted")
        assert wsbot.paths == ["/chat?user=u", "/again?user=u"]
        assert await balance(rclient, app) == 0


@pytest.mark.parametrize("raw", ["%FF%FE", "a%C3", "%ED%A0%80"])
async def test_a_query_user_that_is_not_utf8_is_400(
    raw: str,
    redis_url: str,
    tmp_path: Path,
    rclient: RedisClient,
    wsbot: WsBot,
    http: aiohttp.ClientSession,
) -> None:
    """A user spelled in invalid UTF-8 was metered as U+FFFD's while the bot read the
    bytes: each spelling one user to metering, several to the bot."""
    app = f"{WS}_utf8"
    settings = make_settings(redis_url, tmp_path)
    spec = {"product": "contact_center", "upstream_url": wsbot.url, "funds": FUNDS}
    await seed(rclient, settings, WS, {app: spec})
    async with running_gateway(settings) as gw:
        url = URL(f"{gw.url}/hooks/web/{app}/chat?user={raw}", encoded=True)
        status, doc, _ = await upgrade(http, url)
        assert (status, doc.get("code")) == (400, "invalid_channel_user")
        # UTF-8 spelled with escapes (and "+" a space) is the same user to both.
        url = URL(f"{gw.url}/hooks/web/{app}/chat?user=%C3%A9+x", encoded=True)
        async with http.ws_connect(url) as ws:
            await ws.send_str("hi")
            assert (await ws.receive()).data == "echo:hi"
        assert wsbot.paths == ["/chat?user=%C3%A9+x"]
        assert await balance(rclient, app) == FUNDS - CENT
