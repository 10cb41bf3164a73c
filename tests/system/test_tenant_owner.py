"""A tenant's share of a worker's caps is the customer's (the owner of the app's
workspace) and, by default, small enough that two tenants at their share leave room for
a third (config/settings.py ``share``: 3/8 of a cap); a WebSocket that sends nothing
holds its seat only for ``ws_first_message_timeout_s``.

Before, each workspace had its own share of three quarters: two workspaces of one user
held every bot connection (the third tenant's message waited, then 504) and every
WebSocket seat (its upgrade 503), and a socket that never sent a message, never charged,
held its seat for the whole idle timeout (300 s). Each test fails there. Nothing here is
timed: a test waits for what the gateway observably did.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import aiohttp
import pytest
from aiohttp import WSMsgType, web

from config.fields import ChannelRule
from gateway.channel_credentials import NOTIFY_AUDIENCE
from meter.accounts.seeding import seed
from meter.redis_layer.client import RedisClient
from tests.support.bot import Running, eventually, running_gateway, serve
from tests.support.channel_keys import SECRET_KEY, hs256, set_secret
from tests.support.held_bot import held_bot
from tests.support.settings import make_settings
from tests.support.ws_frames import after_pings

# Each test runs against both traffic servers (aiohttp, the fast path).
pytestmark = pytest.mark.usefixtures("traffic_server")

FUNDS = 100 * 200_000
MALLORY = "usrmallory"  # owns two workspaces
WS_MAX = 8  # WebSocket budget of the WebSocket tests: a tenant's share is 3
NOTIFY = "notify-" + "n" * 30  # the apps' notify secret (the /notify test)
LONG_WAIT = {"upstream_connect_timeout_s": 600, "refund_window_s": 1200}


async def post(
    http: aiohttp.ClientSession, url: str, user: str, headers: dict[str, str] | None = None
) -> int:
    headers = {"X-Channel-User-Id": user, **(headers or {})}
    async with http.post(url, headers=headers, data=b"hi") as resp:
        await resp.read()
        return resp.status


def share_waits(http: aiohttp.ClientSession, gw: Running) -> Callable[[], Awaitable[int]]:
    async def count() -> int:
        async with http.get(f"{gw.admin_url}/metrics") as resp:
            for line in (await resp.text()).splitlines():
                if line.startswith("creditgate_tenant_share_waits_total "):
                    return int(float(line.split()[1]))
        return 0

    return count


async def seats_free(http: aiohttp.ClientSession, gw: Running) -> bool:
    async with http.get(f"{gw.admin_url}/metrics") as resp:
        return "creditgate_open_websockets 0.0" in await resp.text()


async def until(cond: Callable[[], Awaitable[bool]]) -> bool:
    for _ in range(300):
        if await cond():
            return True
        await asyncio.sleep(0.05)
    return await cond()


async def test_one_users_workspaces_leave_bot_connections_to_another_tenant(
    redis_url: str, tmp_path: Path, rclient: RedisClient, http: aiohttp.ClientSession
) -> None:
    """4 connections in all: the user's share is 1 of them, however many workspaces its
    messages come from; the other tenant's message is served at once (was 504)."""
    async with held_bot() as h1, held_bot() as h2, held_bot() as other_bot:
        other_bot.release.set()
        caps = {"upstream_connections": 4, "upstream_connections_per_bot": 4}
        settings = make_settings(redis_url, tmp_path, **caps, **LONG_WAIT)
        tenants = (("mala", h1, MALLORY), ("malb", h2, MALLORY), ("vict", other_bot, "usrvic"))
        for ws, bot, owner in tenants:
            app = {"product": "automation", "upstream_url": bot.url, "funds": FUNDS}
            await seed(rclient, settings, ws, {f"{ws}_app1": app}, owner=owner)
        async with running_gateway(settings) as gw:
            waits = share_waits(http, gw)
            held = [
                asyncio.create_task(post(http, f"{gw.url}/hooks/web/{ws}_app1/{i}", f"{ws}{i}"))
                for ws in ("mala", "malb")
                for i in range(3)
            ]

            async def parked() -> bool:  # before: the held bots hold every place
                return h1.held + h2.held == 4 or (h1.held + h2.held == 1 and await waits() == 5)

            assert await until(parked)
            other = asyncio.create_task(post(http, f"{gw.url}/hooks/web/vict_app1/x", "v"))
            served = await eventually(other.done)
            h1.release.set()
            h2.release.set()
            statuses = await asyncio.gather(*held)
            assert served, "the other tenant's message waited for the user's places"
            assert other.result() == 200
            assert statuses == [200] * 6  # the user's messages waited their turn
            assert other_bot.paths == ["/x"]


async def test_one_users_notifications_leave_a_delivery_endpoint_to_another_tenant(
    redis_url: str, tmp_path: Path, rclient: RedisClient, http: aiohttp.ClientSession
) -> None:
    """/notify goes out to the channel's delivery endpoint, one for every tenant (4
    connections there): the notifications of one user's four workspaces take its share, 1,
    and another tenant's is served at once (was: each workspace a share of its own)."""
    async with held_bot() as out:
        rule = {"web": ChannelRule(delivery_url=out.url + "/out")}
        caps = {"upstream_connections_per_bot": 4, "channels": rule, "secret_key": SECRET_KEY}
        settings = make_settings(redis_url, tmp_path, **caps, **LONG_WAIT)
        mallorys = [f"mal{i}" for i in "abcd"]
        for ws, owner in [*((ws, MALLORY) for ws in mallorys), ("vict", "usrvic")]:
            app = {"product": "automation", "upstream_url": out.url, "funds": FUNDS}
            await seed(rclient, settings, ws, {f"{ws}_app1": app}, owner=owner)
            await set_secret(rclient, settings, f"{ws}_app1", "web", notify=NOTIFY)
        token = hs256(None, NOTIFY, aud=NOTIFY_AUDIENCE)
        async with running_gateway(settings) as gw:
            waits = share_waits(http, gw)

            def notify(ws: str) -> asyncio.Task[int]:
                url = f"{gw.url}/notify/web/{ws}_app1/{ws}"
                head = {"Authorization": f"Bearer {token}", "X-Channel-User-Id": ws}
                return asyncio.create_task(post(http, url, ws, head))

            held = [notify(ws) for ws in mallorys]

            async def parked() -> bool:  # before: the user's messages hold every place
                return out.held == 4 or (out.held == 1 and await waits() == 3)

            assert await until(parked)
            other = notify("vict")
            served = await eventually(lambda: "/out/vict" in out.paths)
            out.release.set()
            statuses = await asyncio.gather(*held, other)
            assert served, "the other tenant's notification waited for the user's places"
            assert statuses == [200] * 5


@dataclass
class EchoBot:
    """A WebSocket echo bot at ``url``; ``closes``: its sockets' close codes as they end."""

    url: str = ""
    closes: list[int | None] = field(default_factory=list)


@contextlib.asynccontextmanager
async def echo_bot() -> AsyncIterator[EchoBot]:
    bot = EchoBot()

    async def ws(request: web.Request) -> web.StreamResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        async for msg in sock:
            if msg.type is WSMsgType.TEXT:
                await sock.send_str("echo:" + msg.data)
        bot.closes.append(sock.close_code)
        return sock

    app = web.Application()
    app.router.add_get("/{tail:.*}", ws)
    async with serve(app) as url:
        bot.url = url
        yield bot


async def open_until_refused(
    stack: contextlib.AsyncExitStack, http: aiohttp.ClientSession, gw: Running, app: str
) -> tuple[int, int]:
    """Sockets to ``app`` until one is refused: how many opened, the refusal's status."""
    for n in range(WS_MAX + 1):
        try:
            await stack.enter_async_context(
                http.ws_connect(f"{gw.url}/hooks/web/{app}/s?user=u{n}")
            )
        except aiohttp.WSServerHandshakeError as exc:
            return n, exc.status
    return WS_MAX + 1, 101


async def test_two_tenants_leave_websocket_seats_to_a_third(
    redis_url: str, tmp_path: Path, rclient: RedisClient, http: aiohttp.ClientSession
) -> None:
    """8 seats: one user's two workspaces take 3 together, another tenant 3, and a third
    tenant's upgrade is served (was 503: the first workspace took 6, the second 2)."""
    async with echo_bot() as bot:
        url = bot.url
        settings = make_settings(redis_url, tmp_path, ws_max_connections=WS_MAX)
        for ws, owner in (("wsma", MALLORY), ("wsmb", MALLORY), ("wsbo", "usrbob"), ("wsvi", "")):
            apps = {f"{ws}_app1": {"product": "automation", "upstream_url": url, "funds": FUNDS}}
            await seed(rclient, settings, ws, apps, owner=owner or None)
        async with running_gateway(settings) as gw, contextlib.AsyncExitStack() as stack:
            tenants = ("wsma", "wsmb", "wsbo")
            opened = [await open_until_refused(stack, http, gw, f"{ws}_app1") for ws in tenants]
            assert opened == [(3, 503), (0, 503), (3, 503)]
            # A workspace without a projected owner is a tenant of its own.
            async with http.ws_connect(f"{gw.url}/hooks/web/wsvi_app1/s?user=v") as sock:
                await sock.send_str("hi")
                assert (await sock.receive()).data == "echo:hi"


async def test_a_websocket_that_sends_nothing_gives_its_seat_back_after_the_first_timeout(
    redis_url: str, tmp_path: Path, rclient: RedisClient, http: aiohttp.ClientSession
) -> None:
    """One seat, an idle timeout of 300 s: a client that never sends a message is closed
    1001 ``idle`` after ``ws_first_message_timeout_s`` (pings or not), and the seat
    serves the next socket."""
    async with echo_bot() as bot:
        url = bot.url
        caps = {"ws_max_connections": 1, "ws_first_message_timeout_s": 0.2}
        settings = make_settings(redis_url, tmp_path, **caps)
        apps = {"wsfm_app1": {"product": "automation", "upstream_url": url, "funds": FUNDS}}
        await seed(rclient, settings, "wsfm", apps)
        async with running_gateway(settings) as gw:
            sock_url = f"{gw.url}/hooks/web/wsfm_app1/s"
            async with http.ws_connect(f"{sock_url}?user=quiet", autoping=False) as sock:
                msg = await after_pings(sock)  # until the gateway closes the socket
                assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, 1001, "idle")
            assert await eventually(lambda: bot.closes == [1001])
            # The seat serves the next socket. Its "hi" has the same 0.2 s: a busy machine
            # may pass it (closed idle before the echo), so again until one is echoed, each
            # once the last socket's seat is given back (the handler ends after the bot).
            async with asyncio.timeout(60):  # a hang bound
                while True:
                    assert await until(partial(seats_free, http, gw))
                    async with http.ws_connect(f"{sock_url}?user=next") as sock:
                        await sock.send_str("hi")
                        msg = await sock.receive()
                    if msg.type is WSMsgType.TEXT:
                        break
                    assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, 1001, "idle")
            assert msg.data == "echo:hi"
