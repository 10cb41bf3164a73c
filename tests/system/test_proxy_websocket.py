"""WebSocket proxying: every client -> bot message is metered; a refusal closes the
socket with 1008 and the refusal code, and nothing more reaches the bot."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from meter.accounts.projection import read_balances
from meter.accounts.seeding import seed
from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient
from tests.support.bot import Bot, Running, running_gateway
from tests.support.settings import make_settings

# Each test runs against both traffic servers (aiohttp, the fast path).
pytestmark = pytest.mark.usefixtures("traffic_server")

WS = "wsock"
APP = f"{WS}_app1"
POOR = f"{WS}_poor"
CENT = 10_000  # contact_center: $0.01 per request


@pytest.fixture
async def gw(
    redis_url: str, tmp_path: Path, rclient: RedisClient, bot: Bot
) -> AsyncIterator[Running]:
    settings = make_settings(redis_url, tmp_path)
    apps = {
        APP: {"product": "contact_center", "upstream_url": bot.url, "funds": 100 * CENT * 2},
        POOR: {"product": "contact_center", "upstream_url": bot.url, "funds": 5 * CENT},
    }
    await seed(rclient, settings, WS, apps)
    async with running_gateway(settings) as running:
        yield running


async def test_hundred_messages_hundred_metered(
    gw: Running, bot: Bot, http: aiohttp.ClientSession, rclient: RedisClient
) -> None:
    async with http.ws_connect(f"{gw.url}/hooks/web/{APP}/ws?user=u1") as ws:
        for i in range(100):
            await ws.send_str(f"m{i}")
            reply = await ws.receive()
            assert reply.data == f"echo:m{i}"
        await ws.send_bytes(b"\x00\x01")
        assert (await ws.receive()).data == b"\x00\x01"
    assert len(bot.ws_messages) == 101
    assert (await read_balances(rclient, WS)).app[APP] == 200 * CENT - 101 * CENT
    # Summed over the flush buckets: the messages may straddle a bucket's end (the test
    # read one bucket alone, and failed whenever they did).
    field = keys.agg_field(APP, "web", "contact_center", "request", "m")
    buckets = await rclient.zrange(keys.agg_index_key(WS), 0, -1)
    counted = [await rclient.hget(keys.agg_key(WS, int(b)), field) for b in buckets]
    assert sum(int(c or 0) for c in counted) == 101


async def test_running_out_of_credit_mid_stream_closes_1008(
    gw: Running, bot: Bot, http: aiohttp.ClientSession
) -> None:
    headers = {"X-Channel-User-Id": "u1"}
    async with http.ws_connect(f"{gw.url}/hooks/web/{POOR}/ws", headers=headers) as ws:
        for i in range(10):
            await ws.send_str(f"m{i}")
        replies = []
        async for msg in ws:
            replies.append(msg.data)
        assert ws.close_code == 1008
    assert replies == [f"echo:m{i}" for i in range(5)]
    assert bot.ws_messages == [f"m{i}" for i in range(5)]
    async with http.get(f"{gw.admin_url}/metrics") as resp:
        text = await resp.text()
    assert 'creditgate_refusals_total{reason="credits_exhausted"} 1.0' in text


async def test_refusal_reason_is_the_close_message(gw: Running, bot: Bot) -> None:
    async with (
        aiohttp.ClientSession() as s,
        s.ws_connect(f"{gw.url}/hooks/web/{POOR}/ws?user=u2", autoclose=False) as ws,
    ):
        for i in range(6):
            await ws.send_str(f"x{i}")
        while (msg := await ws.receive()).type is aiohttp.WSMsgType.TEXT:
            pass
    assert msg.type is aiohttp.WSMsgType.CLOSE
    assert (msg.data, msg.extra) == (1008, "credits_exhausted")
    assert len(bot.ws_messages) == 5


async def test_websocket_needs_a_user_and_a_known_app(
    gw: Running, http: aiohttp.ClientSession
) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await http.ws_connect(f"{gw.url}/hooks/web/{APP}/ws")
    assert err.value.status == 400
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await http.ws_connect(f"{gw.url}/hooks/web/{WS}_nope/ws?user=u")
    assert err.value.status == 404
