"""What a bot can answer a WebSocket handshake with, and what it costs: a close before the
client's first message is an answer (one message, refused: 1008, the bot's code never
passed on); an upgrade the bot does not open (any answer but a 101) is refunded, the
client answered 502 without the bot's answer; a client offers at most 8 sub-protocols
(the bot's pick reaches it for free)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp import web

from meter.accounts.projection import read_balances
from meter.accounts.seeding import seed
from meter.redis_layer.client import RedisClient
from tests.support.bot import Running, running_gateway, serve
from tests.support.settings import make_settings

# Each test runs against both traffic servers (aiohttp, the fast path).
pytestmark = pytest.mark.usefixtures("traffic_server")

WS = "wsbill"
APP = f"{WS}_app1"  # contact_center: $0.01 per request
POOR = f"{WS}_poor"  # credit for one request
CENT = 10_000
BOT_ANSWER = "the bot's own answer"
FUNDS = 100 * CENT


@dataclass
class ClosingBot:
    """``/close?code=N``: accepts, then (once ``release`` is set when the query has
    ``wait``) closes with code N and reason "answer"; ``/status/N``: answers N; ``/post``
    (HTTP): 200; elsewhere: echoes. Records each upgrade's offered sub-protocols."""

    url: str = ""
    release: asyncio.Event = field(default_factory=asyncio.Event)
    opened: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    offers: list[str] = field(default_factory=list)


@pytest.fixture
async def closing() -> AsyncIterator[ClosingBot]:
    b = ClosingBot()

    async def ws(request: web.Request) -> web.StreamResponse:
        if request.method == "POST":
            return web.Response(text="ok")
        if request.path.startswith("/status/"):
            return web.Response(status=int(request.path.rsplit("/", 1)[1]), text=BOT_ANSWER)
        b.offers.append(request.headers.get("Sec-WebSocket-Protocol", ""))
        sock = web.WebSocketResponse(protocols=("p1",))
        await sock.prepare(request)
        b.opened.put_nowait(request.path)
        if request.path == "/close":
            if "wait" in request.query:
                await b.release.wait()
            await sock.close(code=int(request.query["code"]), message=b"answer")
            return sock
        async for msg in sock:
            await sock.send_str("echo:" + msg.data)
        return sock

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", ws)
    async with serve(app) as url:
        b.url = url
        yield b


@pytest.fixture
async def gw(
    redis_url: str, tmp_path: Path, rclient: RedisClient, closing: ClosingBot
) -> AsyncIterator[Running]:
    settings = make_settings(redis_url, tmp_path)
    apps = {
        APP: {"product": "contact_center", "upstream_url": closing.url, "funds": FUNDS},
        POOR: {"product": "contact_center", "upstream_url": closing.url, "funds": CENT},
    }
    await seed(rclient, settings, WS, apps)
    async with running_gateway(settings) as running:
        yield running


async def charged(rclient: RedisClient, app: str, funds: int = FUNDS) -> int:
    return funds - (await read_balances(rclient, WS)).app[app]


async def test_a_close_before_the_first_message_answers_the_handshake(
    gw: Running, http: aiohttp.ClientSession, rclient: RedisClient
) -> None:
    for code in (4321, 1000):
        url = f"{gw.url}/hooks/web/{APP}/close?user=u1&code={code}"
        async with http.ws_connect(url) as ws:
            msg = await ws.receive()
        assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, code)
    assert await charged(rclient, APP) == 2 * CENT
    # The client spoke first: its message paid, the close after it costs nothing more.
    async with http.ws_connect(f"{gw.url}/hooks/web/{APP}/echo?user=u1") as ws:
        await ws.send_str("m")
        assert (await ws.receive()).data == "echo:m"
    assert await charged(rclient, APP) == 3 * CENT


async def test_a_refused_close_answer_is_1008_not_the_bots_code(
    gw: Running, http: aiohttp.ClientSession, rclient: RedisClient, closing: ClosingBot
) -> None:
    url = f"{gw.url}/hooks/web/{POOR}/close?user=u1&code=4321&wait=1"
    async with http.ws_connect(url, autoclose=False) as ws:
        assert await closing.opened.get() == "/close"  # the upgrade passed its check
        post = f"{gw.url}/hooks/web/{POOR}/post"
        async with http.post(post, data=b"x", headers={"X-Channel-User-Id": "u1"}) as resp:
            assert resp.status == 200  # spends the credit
        closing.release.set()
        msg = await ws.receive()
    assert (msg.type, msg.data, msg.extra) == (aiohttp.WSMsgType.CLOSE, 1008, "credits_exhausted")
    assert await charged(rclient, POOR, CENT) == CENT


UPGRADE = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
}


async def test_an_upgrade_the_bot_does_not_open_is_refunded(
    gw: Running, http: aiohttp.ClientSession, rclient: RedisClient
) -> None:
    # Whatever the bot answers instead of a 101 (a failure, a refusal, a page), the client
    # is not served: it gets the gateway's 502, never the bot's answer, and pays nothing.
    for status in (503, 500, 403, 404, 200, 302):
        url = f"{gw.url}/hooks/web/{APP}/status/{status}?user=u1"
        async with http.get(url, headers=UPGRADE, allow_redirects=False) as resp:
            body = await resp.read()
            assert (resp.status, resp.content_type) == (502, "application/problem+json")
        assert orjson.loads(body)["code"] == "upstream_unavailable", status
        assert BOT_ANSWER.encode() not in body
        assert await charged(rclient, APP) == 0, status
    # Each was admitted then refunded once: the user's next message costs one message.
    async with http.ws_connect(f"{gw.url}/hooks/web/{APP}/echo?user=u1") as ws:
        await ws.send_str("m")
        assert (await ws.receive()).data == "echo:m"
    assert await charged(rclient, APP) == CENT


async def test_at_most_eight_sub_protocols_are_offered(
    gw: Running, http: aiohttp.ClientSession, rclient: RedisClient, closing: ClosingBot
) -> None:
    url = f"{gw.url}/hooks/web/{APP}/echo?user=u1"
    nine = [f"p{i}" for i in range(9)]
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await http.ws_connect(url, protocols=nine)
    assert err.value.status == 400
    # Over two header lines, the same count.
    lines = [("Sec-WebSocket-Protocol", v) for v in ("p0, p1, p2, p3, p4", "p5,p6,p7,p8")]
    async with http.get(url, headers=[*UPGRADE.items(), *lines]) as resp:
        assert resp.status == 400
        assert (await resp.json(content_type=None))["code"] == "invalid_upgrade"
    assert closing.offers == []
    async with http.ws_connect(url, protocols=nine[:8]) as ws:
        assert ws.protocol == "p1"
        await ws.send_str("m")
        assert (await ws.receive()).data == "echo:m"
    assert closing.offers == [",".join(nine[:8])]
    assert await charged(rclient, APP) == CENT
