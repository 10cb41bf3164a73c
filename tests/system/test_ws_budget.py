"""WebSockets have a budget and bot connections of their own (gateway/ws_budget.py), and
an idle timeout.

Before, each socket's bot connection held a place of its tenant's share of the HTTP
messages' pool for its whole life, with no idle timeout: idle sockets (free to open on a
channel without a secret) made the tenant's own messages time out 504, and the sockets
of two tenants, whose shares overfill the caps, a third tenant's. The first two tests
fail that way on the old code. Nothing here is timed: the idle close is waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web

from meter.accounts.projection import read_balances
from meter.accounts.seeding import seed
from meter.redis_layer.client import RedisClient
from tests.support.bot import Running, eventually, running_gateway, serve
from tests.support.settings import make_settings
from tests.support.ws_frames import after_pings

# Each test runs against both traffic servers (aiohttp, the fast path).
pytestmark = pytest.mark.usefixtures("traffic_server")

FUNDS = 100 * 10_000  # contact_center: $0.01 a message


@dataclass
class SockBot:
    """A bot: WebSocket echo on ``/ws`` (counting upgrades, recording each socket's close
    code as the bot saw it), ``200 ok`` on any other path."""

    url: str = ""
    upgrades: int = 0
    open: int = 0
    closes: list[int | None] = field(default_factory=list)
    http: int = 0
    gate: asyncio.Event = field(default_factory=asyncio.Event)  # ``?gate``: 101 once set


@contextlib.asynccontextmanager
async def sock_bot() -> AsyncIterator[SockBot]:
    bot = SockBot()

    async def ws(request: web.Request) -> web.StreamResponse:
        bot.upgrades += 1
        if "gate" in request.query:
            await bot.gate.wait()
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        bot.open += 1
        async for msg in sock:
            if msg.type is WSMsgType.TEXT:
                await sock.send_str("echo:" + msg.data)
        bot.open -= 1
        bot.closes.append(sock.close_code)
        return sock

    async def other(request: web.Request) -> web.StreamResponse:
        await request.read()
        bot.http += 1
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/ws", ws)
    app.router.add_route("*", "/{tail:.*}", other)
    async with serve(app) as url:
        bot.url = url
        yield bot


@pytest.fixture(name="sbot")
async def sbot_fixture() -> AsyncIterator[SockBot]:
    async with sock_bot() as bot:
        yield bot


async def seeded(
    redis_url: str, tmp_path: Path, rclient: RedisClient, bot: SockBot, tenants: str, **kw: Any
) -> contextlib.AbstractAsyncContextManager[Running]:
    settings = make_settings(redis_url, tmp_path, **kw)
    for ws in tenants.split():
        app = {"product": "contact_center", "upstream_url": bot.url, "funds": FUNDS}
        await seed(rclient, settings, ws, {f"{ws}_app1": app})
    return running_gateway(settings)


async def chunked() -> AsyncIterator[bytes]:
    yield b'{"q": "hi"}'  # streamed: the fast path hands it to the aiohttp app


async def messages(gw: Running, app: str) -> list[int]:
    """A streamed and a small message to ``app``'s bot, each on a connection of its own:
    their statuses."""
    url, head = f"{gw.url}/hooks/web/{app}/chat", {"X-Channel-User-Id": "victim"}
    statuses = []
    for body in (chunked(), b'{"q": "hi"}'):
        async with aiohttp.ClientSession() as s, s.post(url, data=body, headers=head) as resp:
            await resp.read()
            statuses.append(resp.status)
    return statuses


async def sockets(
    stack: contextlib.AsyncExitStack, http: aiohttp.ClientSession, gw: Running, app: str, n: int
) -> list[aiohttp.ClientWebSocketResponse]:
    """``n`` idle sockets to ``app``, closed as ``stack`` ends."""
    url = f"{gw.url}/hooks/web/{app}/ws"
    return [
        await stack.enter_async_context(http.ws_connect(f"{url}?user=idle{i}")) for i in range(n)
    ]


async def refused(http: aiohttp.ClientSession, gw: Running, app: str) -> aiohttp.ClientResponse:
    """An upgrade to ``app`` refused: its response (its body read)."""
    head = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13"}
    head |= {"Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "X-Channel-User-Id": "over"}
    async with http.get(f"{gw.url}/hooks/web/{app}/ws", headers=head) as resp:
        await resp.read()
        return resp


async def metrics(http: aiohttp.ClientSession, gw: Running) -> str:
    async with http.get(f"{gw.admin_url}/metrics") as resp:
        return await resp.text()


async def test_a_tenants_open_websockets_leave_its_messages_served(
    redis_url: str, tmp_path: Path, rclient: RedisClient, sbot: SockBot, http: aiohttp.ClientSession
) -> None:
    # The tenant's share of the bot's 4 connections is 3; of 4 WebSockets, 3 too.
    caps = {"upstream_connections_per_bot": 4, "ws_max_connections": 4}
    caps |= {"upstream_connections_per_tenant_bot": 3, "ws_max_connections_per_tenant": 3}
    async with (
        await seeded(redis_url, tmp_path, rclient, sbot, "wsba", **caps) as gw,
        contextlib.AsyncExitStack() as stack,
    ):
        await sockets(stack, http, gw, "wsba_app1", 3)
        assert sbot.open == 3
        assert await messages(gw, "wsba_app1") == [200, 200]  # was 504
        resp = await refused(http, gw, "wsba_app1")  # the tenant's part is full
        assert (resp.status, resp.headers["Retry-After"]) == (503, "1")
        assert sbot.upgrades == 3
    assert (await read_balances(rclient, "wsba")).app["wsba_app1"] == FUNDS - 2 * 10_000


async def test_two_tenants_websockets_leave_a_third_tenant_served(
    redis_url: str, tmp_path: Path, rclient: RedisClient, sbot: SockBot, http: aiohttp.ClientSession
) -> None:
    # Each tenant's share of the worker's 8 connections is 6: two shares overfill them.
    caps = {"upstream_connections": 8, "upstream_connections_per_bot": 8, "ws_max_connections": 16}
    caps |= {"upstream_connections_per_tenant": 6, "upstream_connections_per_tenant_bot": 6}
    caps["ws_max_connections_per_tenant"] = 6
    async with (
        await seeded(redis_url, tmp_path, rclient, sbot, "wsbx wsby wsbz", **caps) as gw,
        contextlib.AsyncExitStack() as stack,
    ):
        for ws in ("wsbx", "wsby"):
            await sockets(stack, http, gw, f"{ws}_app1", 6)
        assert sbot.open == 12
        assert await messages(gw, "wsbz_app1") == [200, 200]  # was 504
        assert await messages(gw, "wsbx_app1") == [200, 200]


async def test_an_upgrade_past_the_budget_is_503_uncharged_and_never_reaches_the_bot(
    redis_url: str, tmp_path: Path, rclient: RedisClient, sbot: SockBot, http: aiohttp.ClientSession
) -> None:
    caps = {"ws_max_connections": 2, "ws_max_connections_per_tenant": 2}
    async with (
        await seeded(redis_url, tmp_path, rclient, sbot, "wsbp wsbq", **caps) as gw,
        contextlib.AsyncExitStack() as stack,
    ):
        socks = await sockets(stack, http, gw, "wsbp_app1", 2)  # the worker's whole budget
        resp = await refused(http, gw, "wsbq_app1")
        problem = await resp.json(content_type=None)
        assert (resp.status, problem["code"]) == (503, "too_many_websockets")
        assert resp.headers["Retry-After"] == "1"
        assert (sbot.upgrades, sbot.http) == (2, 0)
        text = await metrics(http, gw)
        assert 'creditgate_refusals_total{reason="too_many_websockets"} 1.0' in text
        assert "creditgate_open_websockets 2.0" in text
        for ws in ("wsbp", "wsbq"):
            assert (await read_balances(rclient, ws)).app[f"{ws}_app1"] == FUNDS
        await socks[0].close()  # its seat is given back as it closes
        assert await eventually(lambda: sbot.open == 1)
        sock = await stack.enter_async_context(
            http.ws_connect(f"{gw.url}/hooks/web/wsbq_app1/ws?user=u")
        )
        await sock.send_str("hi")
        assert (await sock.receive()).data == "echo:hi"


async def test_an_idle_websocket_is_closed_1001_both_ways_pings_or_not(
    redis_url: str, tmp_path: Path, rclient: RedisClient, sbot: SockBot, http: aiohttp.ClientSession
) -> None:
    async with await seeded(
        redis_url, tmp_path, rclient, sbot, "wsbi", ws_idle_timeout_s=0.2
    ) as gw:
        url = f"{gw.url}/hooks/web/wsbi_app1/ws?user=u"
        # The 0.2 s also bound the client's "hi" (the first message's timeout is at most
        # the idle one) and the bot's echo: a busy machine may pass them, the socket then
        # closed idle before the echo; so again, on a new socket, until one is echoed.
        opened = 0
        async with asyncio.timeout(60):  # a hang bound
            while True:
                opened += 1
                async with http.ws_connect(url, autoping=False) as sock:
                    await sock.send_str("hi")
                    msg = await sock.receive()
                    if msg.type is not WSMsgType.TEXT:
                        assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, 1001, "idle")
                        continue  # closed before the echo: too late, again
                    assert msg.data == "echo:hi"
                    msg = await after_pings(sock)  # until the gateway closes the socket
                    assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, 1001, "idle")
                    break
        assert await eventually(lambda: sbot.closes == [1001] * opened)
        assert await eventually(lambda: sbot.open == 0)
        assert "creditgate_open_websockets 0.0" in await metrics(http, gw)


HANDSHAKE = (
    "GET /hooks/web/{app}/ws?user=u{query} HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\n"
    "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
)


async def raw_upgrade(gw: Running, app: str, query: str = "") -> asyncio.StreamWriter:
    host, port = gw.url.removeprefix("http://").rsplit(":", 1)
    _, writer = await asyncio.open_connection(host, int(port))
    writer.write(HANDSHAKE.format(app=app, query=query).encode())
    await writer.drain()
    return writer


async def test_a_client_gone_during_the_bots_handshake_gives_its_seat_back(
    redis_url: str, tmp_path: Path, rclient: RedisClient, sbot: SockBot, http: aiohttp.ClientSession
) -> None:
    """The client closes (FIN) before the bot's 101: the bot's socket is closed and the
    seat given back at once, not held until the idle timeout (300 s here)."""
    async with await seeded(redis_url, tmp_path, rclient, sbot, "wsbg", ws_max_connections=4) as gw:
        writer = await raw_upgrade(gw, "wsbg_app1", "&gate")
        assert await eventually(lambda: sbot.upgrades == 1)
        writer.close()
        sbot.gate.set()  # the bot answers after the client left
        assert await eventually(lambda: len(sbot.closes) == 1)
        assert "creditgate_open_websockets 0.0" in await metrics(http, gw)
    assert (await read_balances(rclient, "wsbg")).app["wsbg_app1"] == FUNDS


async def test_a_client_that_shuts_its_side_after_the_101_gives_its_seat_back(
    redis_url: str, tmp_path: Path, rclient: RedisClient, sbot: SockBot, http: aiohttp.ClientSession
) -> None:
    """A WebSocket client that shuts its side (FIN, no close frame) can say nothing more:
    the socket ends with it, not at the idle timeout."""
    async with await seeded(redis_url, tmp_path, rclient, sbot, "wsbf", ws_max_connections=4) as gw:
        writer = await raw_upgrade(gw, "wsbf_app1")
        assert await eventually(lambda: sbot.open == 1)
        writer.write_eof()
        assert await eventually(lambda: len(sbot.closes) == 1)
        assert "creditgate_open_websockets 0.0" in await metrics(http, gw)
        writer.close()


async def test_another_upgrade_is_answered_and_the_connection_closed_saying_so(
    redis_url: str, tmp_path: Path, rclient: RedisClient, sbot: SockBot
) -> None:
    """``Connection: Upgrade`` + ``Upgrade: h2c`` (what ``curl --http2`` sends): served as
    HTTP, but aiohttp reads nothing after it as HTTP, so the answer says it closes."""
    async with await seeded(redis_url, tmp_path, rclient, sbot, "wsbh") as gw:
        host, port = gw.url.removeprefix("http://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        head = "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        head += "HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\nX-Channel-User-Id: u\r\n"
        request = f"GET /hooks/web/wsbh_app1/x HTTP/1.1\r\nHost: gw\r\n{head}\r\n"
        writer.write(request.encode())
        answer = (await reader.read(2000)).decode().lower()
        assert answer.startswith("http/1.1 200"), answer
        assert "connection: close" in answer
        writer.close()
