"""WebSocket proxying: every client -> bot message is metered; a refusal closes the
socket with 1008 and the refusal code, and nothing more reaches the bot."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from meter.accounts.projection import read_balances
from meter.accounts.seeding import seed
from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient
from tests.support.bot import Bot, Running, running_gateway, serve
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


@contextlib.asynccontextmanager
async def closing_bot(answer_close: bool) -> AsyncIterator[tuple[str, list[str]]]:
    """A bot that holds its answers until the gateway's close frame comes, then sends
    them and answers the close (``answer_close``), or never answers it: its URL, and the
    messages it answered."""
    answered: list[str] = []
    release = asyncio.Event()  # a bot that never answers the close waits for this

    async def late(request: web.Request) -> web.StreamResponse:
        sock = web.WebSocketResponse(autoclose=False)
        await sock.prepare(request)
        held: list[str] = []
        while (msg := await sock.receive()).type is aiohttp.WSMsgType.TEXT:
            held.append(msg.data)
        if msg.type is aiohttp.WSMsgType.CLOSE:
            for data in held:  # before its own close frame, as a bot finishing up
                await sock.send_str(f"late:{data}")
                answered.append(data)
            if not answer_close:
                await release.wait()  # the gateway must drop it, then close the client
        await sock.close()
        return sock

    app = web.Application()
    app.router.add_get("/{tail:.*}", late)
    async with serve(app) as url:
        try:
            yield url, answered
        finally:
            release.set()  # before the bot's server waits for its handlers


@pytest.mark.parametrize("answer_close", [True, False], ids=["answers", "never_answers"])
async def test_a_refusal_still_delivers_the_bot_s_answers_to_paid_messages(
    redis_url: str,
    tmp_path: Path,
    rclient: RedisClient,
    http: aiohttp.ClientSession,
    answer_close: bool,
) -> None:
    """The bot's answer to the last message paid for, sent as the next one is refused,
    reached the client only if it beat Redis's refusal: the gateway closed the bot's side
    and dropped what came before its close frame (a bot slower than Redis, an LLM's,
    never won). This bot answers only once the gateway's close frame comes: it went
    unanswered every time, on both servers. A bot that then never answers the close is
    dropped once its wait is over, and the client still gets its 1008."""
    # The bot's wait for the close: half the refund window, as for a send; the answers
    # must arrive within it on a busy machine, so it is a hang bound, not a timer: the
    # default 10 s for a bot that answers, 5 s for one that never does (its test waits
    # the whole bound).
    settings = make_settings(redis_url, tmp_path, refund_window_s=120.0 if answer_close else 10.0)
    async with closing_bot(answer_close) as (url, answered):
        app = {"product": "contact_center", "upstream_url": url, "funds": 2 * CENT}
        await seed(rclient, settings, "wslate", {"wslate_app1": app})
        async with running_gateway(settings) as gw:
            url, headers = f"{gw.url}/hooks/web/wslate_app1/ws", {"X-Channel-User-Id": "u1"}
            async with http.ws_connect(url, headers=headers) as ws:
                for data in ("m0", "m1", "m2"):  # two paid for, the third refused
                    await ws.send_str(data)
                replies = [msg.data async for msg in ws]
                assert ws.close_code == 1008
    assert answered == ["m0", "m1"]
    assert replies == ["late:m0", "late:m1"]


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
