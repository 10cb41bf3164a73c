"""An open WebSocket's credential holds only while it would still verify: the socket is
closed 1008 ``invalid_channel_signature`` once its token expires (plus the leeway), and
before a client message is admitted once the channel's secret is rotated or removed
(it outlived both: the socket went on being served on a token HTTP refused 401)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import WSMsgType, web

from gateway.appkeys import PROXY
from meter.accounts import channel_secrets
from meter.accounts.projection import read_balances
from meter.accounts.seeding import seed
from meter.redis_layer.client import RedisClient
from tests.support.bot import WsBot, running_gateway, running_ws_bot, serve
from tests.support.channel_keys import auth_settings, hs256, set_secret

# Each test runs against both traffic servers (aiohttp, the fast path).
pytestmark = pytest.mark.usefixtures("traffic_server")

WS = "wstoken"
APP = f"{WS}_app1"  # contact_center: $0.01 per request
CENT = 10_000
FUNDS = 100 * CENT


@pytest.fixture
async def wsbot() -> AsyncIterator[WsBot]:
    async with running_ws_bot() as b:
        yield b


async def charged(rclient: RedisClient) -> int:
    return FUNDS - (await read_balances(rclient, WS)).app[APP]


async def test_a_socket_is_closed_once_its_token_expires(
    redis_url: str, tmp_path: Path, rclient: RedisClient, wsbot: WsBot, http: aiohttp.ClientSession
) -> None:
    settings = auth_settings(redis_url, tmp_path, channel_jwt_leeway_s=0.0)
    spec = {"product": "contact_center", "upstream_url": wsbot.url, "funds": FUNDS}
    await seed(rclient, settings, WS, {APP: spec})
    await set_secret(rclient, settings, APP, "web")
    async with running_gateway(settings) as gw:
        # A token that lives a few seconds; should it expire before the upgrade is done (a
        # busy machine), the upgrade is refused 401 and a longer-lived one is tried.
        for exp_in in (4, 8, 16, 32, 64):
            url = f"{gw.url}/hooks/web/{APP}/chat?token={hs256('alice', exp_in=exp_in)}"
            try:
                ws = await http.ws_connect(url)
            except aiohttp.WSServerHandshakeError as exc:
                refused: int | None = exc.status
            else:
                refused = None
            if refused is not None:
                assert refused == 401  # expired on the way: try a longer-lived token
                continue
            async with ws:
                # Nothing is sent: the expiry alone closes it.
                closed = await ws.receive(timeout=exp_in + 60)  # a bound for a hang only
                assert closed.type is WSMsgType.CLOSE
                assert (closed.data, closed.extra) == (1008, "invalid_channel_signature")
            break
        else:
            pytest.fail("every token expired before its upgrade was answered")
    assert wsbot.paths == ["/chat"]
    assert await charged(rclient) == 0


@pytest.mark.parametrize("change", ["rotated", "removed"])
async def test_a_socket_is_closed_once_its_channel_secret_changes(
    change: str,
    redis_url: str,
    tmp_path: Path,
    rclient: RedisClient,
    wsbot: WsBot,
    http: aiohttp.ClientSession,
) -> None:
    settings = auth_settings(redis_url, tmp_path)  # secrets read fresh from Redis
    spec = {"product": "contact_center", "upstream_url": wsbot.url, "funds": FUNDS}
    await seed(rclient, settings, WS, {APP: spec})
    await set_secret(rclient, settings, APP, "web")
    async with (
        running_gateway(settings) as gw,
        http.ws_connect(f"{gw.url}/hooks/web/{APP}/chat?token={hs256('alice')}") as ws,
    ):
        await ws.send_str("before")
        assert (await ws.receive()).data == "echo:before"
        keys = gw.gateway.traffic[PROXY].auth._keys  # the worker's cache of channel keys
        verified_with = await keys.get(APP, "web")
        if change == "rotated":
            await set_secret(rclient, settings, APP, "web", secret="rotated-" + "y" * 32)
        else:
            await channel_secrets.project(rclient, APP, "web", None)
        # The cache reads the key again within channel_secret_max_age_s (a read under
        # way may still bring the old one): wait until it has the change.
        for _ in range(600):
            if await keys.get(APP, "web") != verified_with:
                break
            await asyncio.sleep(0.05)
        await ws.send_str("after")
        closed = await ws.receive(timeout=30)
        assert closed.type is WSMsgType.CLOSE
        assert (closed.data, closed.extra) == (1008, "invalid_channel_signature")
    assert await charged(rclient) == CENT  # "after" was neither charged nor answered


@contextlib.asynccontextmanager
async def farewell_bot() -> AsyncIterator[str]:
    """A bot that says goodbye as the gateway's close frame comes, then answers it."""

    async def farewell(request: web.Request) -> web.StreamResponse:
        sock = web.WebSocketResponse(autoclose=False)
        await sock.prepare(request)
        while (msg := await sock.receive()).type is WSMsgType.TEXT:
            pass
        if msg.type is WSMsgType.CLOSE:
            await sock.send_str("bye")
        await sock.close()
        return sock

    app = web.Application()
    app.router.add_get("/{tail:.*}", farewell)
    async with serve(app) as url:
        yield url


async def test_a_socket_refused_before_it_paid_gets_no_farewell_for_free(
    redis_url: str, tmp_path: Path, rclient: RedisClient, http: aiohttp.ClientSession
) -> None:
    """The secret rotated before the client's first message: that message is refused,
    and the bot's answer to the gateway's close frame (a goodbye) was taken for the
    answer to the handshake: admitted (charged) after the refusal and delivered to a
    client whose credential no longer verifies."""
    settings = auth_settings(redis_url, tmp_path)  # secrets read fresh from Redis
    async with farewell_bot() as url:
        spec = {"product": "contact_center", "upstream_url": url, "funds": FUNDS}
        await seed(rclient, settings, WS, {APP: spec})
        await set_secret(rclient, settings, APP, "web")
        async with (
            running_gateway(settings) as gw,
            http.ws_connect(f"{gw.url}/hooks/web/{APP}/chat?token={hs256('alice')}") as ws,
        ):
            keys = gw.gateway.traffic[PROXY].auth._keys
            verified_with = await keys.get(APP, "web")
            await set_secret(rclient, settings, APP, "web", secret="rotated-" + "y" * 32)
            for _ in range(600):  # until the worker's cache has the new key
                if await keys.get(APP, "web") != verified_with:
                    break
                await asyncio.sleep(0.05)
            await ws.send_str("first")
            replies = [msg.data async for msg in ws]
            assert (ws.close_code, replies) == (1008, [])
    assert await charged(rclient) == 0
