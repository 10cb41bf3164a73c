"""An open WebSocket's credential holds only while it would still verify: the socket is
closed 1008 ``invalid_channel_signature`` once its token expires (plus the leeway), and
before a client message is admitted once the channel's secret is rotated or removed
(it outlived both: the socket went on being served on a token HTTP refused 401)."""

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

from config.settings import Settings
from gateway.appkeys import PROXY
from meter.accounts import channel_secrets
from meter.accounts.projection import read_balances
from meter.accounts.seeding import seed
from meter.redis_layer.client import RedisClient
from tests.support.bot import Running, WsBot, running_gateway, running_ws_bot, serve
from tests.support.channel_keys import auth_settings, hs256, set_secret

# Each test runs against both traffic servers (aiohttp, the fast path).
pytestmark = pytest.mark.usefixtures("traffic_server")

WS = "wstoken"
APP = f"{WS}_app1"  # contact_center: $0.01 per request
CENT = 10_000
FUNDS = 100 * CENT
PLENTY = 10**6 * CENT  # for a client that sends as fast as its bot reads


@pytest.fixture
async def wsbot() -> AsyncIterator[WsBot]:
    async with running_ws_bot() as b:
        yield b


async def charged(rclient: RedisClient, funds: int = FUNDS) -> int:
    return funds - (await read_balances(rclient, WS)).app[APP]


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
        for _ in range(1200):  # 60 s: a hang bound
            if await keys.get(APP, "web") != verified_with:
                break
            await asyncio.sleep(0.05)
        await ws.send_str("after")
        closed = await ws.receive(timeout=60)
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


@dataclass
class Held:
    """One connection of a :func:`holding_bot`: the client messages it read, and ``closing``
    once the gateway's close frame came (``moved`` is set at each of both)."""

    got: list[str] = field(default_factory=list)
    moved: asyncio.Event = field(default_factory=asyncio.Event)
    closing: asyncio.Event = field(default_factory=asyncio.Event)


@contextlib.asynccontextmanager
async def holding_bot(answer: asyncio.Event) -> AsyncIterator[tuple[str, list[Held]]]:
    """A bot that answers nothing until the gateway's close frame comes and ``answer`` is
    set, then answers each message it read (``late:``) and the close: its URL, and its
    connections in order (each listed before its upgrade is answered)."""
    held: list[Held] = []

    async def late(request: web.Request) -> web.StreamResponse:
        sock = web.WebSocketResponse(autoclose=False)
        held.append(conn := Held())
        await sock.prepare(request)
        while (msg := await sock.receive()).type is WSMsgType.TEXT:
            conn.got.append(msg.data)
            conn.moved.set()
        if msg.type is WSMsgType.CLOSE:
            conn.closing.set()
            conn.moved.set()
            await answer.wait()
            for data in conn.got:
                await sock.send_str(f"late:{data}")
        await sock.close()
        return sock

    app = web.Application()
    app.router.add_get("/{tail:.*}", late)
    async with serve(app) as url:
        try:
            yield url, held
        finally:
            answer.set()  # before the bot's server waits for its handlers


@contextlib.asynccontextmanager
async def secured_gateway(
    rclient: RedisClient, settings: Settings, url: str, funds: int = FUNDS
) -> AsyncIterator[Running]:
    """A gateway in front of the bot at ``url`` for APP, its ``web`` channel secured."""
    spec = {"product": "contact_center", "upstream_url": url, "funds": funds}
    await seed(rclient, settings, WS, {APP: spec})
    await set_secret(rclient, settings, APP, "web")
    async with running_gateway(settings) as gw:
        yield gw


async def expiring(
    http: aiohttp.ClientSession, url: str, exp_in: int
) -> aiohttp.ClientWebSocketResponse | None:
    """A socket on a token that lives ``exp_in`` s; None when it expired before its
    upgrade was answered (401: a busy machine, a longer-lived one is tried)."""
    try:
        return await http.ws_connect(f"{url}?token={hs256('alice', exp_in=exp_in)}")
    except aiohttp.WSServerHandshakeError as exc:
        refused = exc.status
    assert refused == 401
    return None


async def expiring_pair(
    http: aiohttp.ClientSession, url: str, exp_in: int
) -> tuple[aiohttp.ClientWebSocketResponse, aiohttp.ClientWebSocketResponse] | None:
    """Two sockets on one token (so one expiry) that lives ``exp_in`` s; None when it
    expired before both upgrades were answered (as :func:`expiring`)."""
    token = hs256("alice", exp_in=exp_in)
    opened: list[aiohttp.ClientWebSocketResponse] = []
    for path in ("chat", "witness"):
        try:
            opened.append(await http.ws_connect(f"{url}/{path}?token={token}"))
        except aiohttp.WSServerHandshakeError as exc:
            refused = exc.status
            break
    else:
        return opened[0], opened[1]
    for ws in opened:
        await ws.close()
    assert refused == 401
    return None


async def replies_and_close(
    ws: aiohttp.ClientWebSocketResponse, within_s: float = 60
) -> tuple[list[str], Any]:
    """What the client got until its close frame, and that frame's (code, reason)."""
    replies = []
    while (msg := await ws.receive(timeout=within_s)).type is WSMsgType.TEXT:  # a hang bound
        replies.append(msg.data)
    assert msg.type is WSMsgType.CLOSE
    return replies, (msg.data, msg.extra)


LIFETIMES = (4, 8, 16, 32, 64)  # a token's, longer each time its messages were too late
EXPIRED = (1008, "invalid_channel_signature")


async def test_a_token_s_expiry_still_delivers_the_bot_s_answers_to_paid_messages(
    redis_url: str, tmp_path: Path, rclient: RedisClient, http: aiohttp.ClientSession
) -> None:
    """The expiry ended the socket at once, unlike a refusal: the bot's answers to the
    messages paid before it, sent as its close frame came, never reached the client."""
    # The bot's wait for the close: min(half the refund window, 10 s), a hang bound.
    settings = auth_settings(redis_url, tmp_path, channel_jwt_leeway_s=0.0)
    answer = asyncio.Event()
    answer.set()
    async with (
        holding_bot(answer) as (url, held),
        secured_gateway(rclient, settings, url) as gw,
    ):
        for exp_in in LIFETIMES:
            if not (ws := await expiring(http, f"{gw.url}/hooks/web/{APP}/chat", exp_in)):
                continue
            async with ws:
                conn = held[-1]
                await ws.send_str("m0")
                await ws.send_str("m1")
                replies, closed = await replies_and_close(ws)  # the expiry ends it
            assert closed == EXPIRED
            assert replies == [f"late:{data}" for data in conn.got]
            if conn.got == ["m0", "m1"]:  # else the token expired first
                break
        else:
            pytest.fail("no token lived long enough for its messages")
    assert await charged(rclient) == CENT * sum(len(conn.got) for conn in held)


async def test_the_expiry_s_drain_lets_no_more_messages_through(
    redis_url: str, tmp_path: Path, rclient: RedisClient, http: aiohttp.ClientSession
) -> None:
    """A client that sends as fast as its bot reads until its token expires, then more
    while the bot's answers are on their way: each message the bot read was charged once
    and answered, no other was charged, and none reached the bot past the expiry."""
    rates = {"rate_per_minute": 10**6, "rate_per_hour": 10**6}  # not the limit under test
    settings = auth_settings(redis_url, tmp_path, channel_jwt_leeway_s=0.0, **rates)
    answer = asyncio.Event()  # the bot holds its answers until the client sent its last
    async with (
        holding_bot(answer) as (url, held),
        secured_gateway(rclient, settings, url, PLENTY) as gw,
    ):
        for exp_in in LIFETIMES:
            if not (ws := await expiring(http, f"{gw.url}/hooks/web/{APP}/chat", exp_in)):
                continue
            async with ws:
                conn, sent = held[-1], 0
                answer.clear()
                while not conn.closing.is_set():  # until the expiry's close reached it
                    conn.moved.clear()
                    await ws.send_str(f"m{sent}")
                    sent += 1
                    await asyncio.wait_for(conn.moved.wait(), exp_in + 60)  # hang bound
                for data in ("after0", "after1", "after2"):  # in the drain window
                    await ws.send_str(data)
                answer.set()
                replies, closed = await replies_and_close(ws)
            assert closed == EXPIRED
            assert conn.got == [f"m{i}" for i in range(len(conn.got))]
            assert replies == [f"late:{data}" for data in conn.got]
            if conn.got:  # else the token expired first
                break
        else:
            pytest.fail("no token lived long enough for its messages")
    assert await charged(rclient, PLENTY) == CENT * sum(len(conn.got) for conn in held)


async def test_an_expired_socket_that_never_paid_gets_no_farewell_for_free(
    redis_url: str, tmp_path: Path, rclient: RedisClient, http: aiohttp.ClientSession
) -> None:
    """The expiry's drain before the client's first message: the bot's goodbye, its
    answer to the gateway's close frame, would answer the handshake; it is neither
    charged nor delivered (as after a rotation)."""
    settings = auth_settings(redis_url, tmp_path, channel_jwt_leeway_s=0.0)
    async with (
        farewell_bot() as url,
        secured_gateway(rclient, settings, url) as gw,
    ):
        ws = None
        for exp_in in LIFETIMES:
            if ws := await expiring(http, f"{gw.url}/hooks/web/{APP}/chat", exp_in):
                break
        assert ws is not None, "every token expired before its upgrade was answered"
        async with ws:
            assert await replies_and_close(ws) == ([], EXPIRED)  # nothing sent
    assert await charged(rclient) == 0


async def _admission_held(rclient: RedisClient) -> None:
    """Until an admission (a script) waits in Redis behind the test's CLIENT PAUSE."""
    while True:
        clients = await rclient.execute_command("CLIENT", "LIST")
        if any(b"flags=b " in line and b"cmd=evalsha" in line for line in clients.splitlines()):
            return
        await asyncio.sleep(0.01)  # polling observed progress, not a timer


async def test_a_first_message_refunded_at_the_expiry_pays_for_no_greeting(
    redis_url: str, tmp_path: Path, rclient: RedisClient, http: aiohttp.ClientSession
) -> None:
    """The client's first message admitted as its token expired is refunded, never sent;
    the bot's greeting (an answer to the handshake) that waited for that admission was
    then delivered as paid for by it: an answer for free (since 7892baf)."""
    # The admission waits in Redis until the token expired: a Redis timeout past the
    # longest lifetime tried, not the usual 10 s (a 16 s token would meet it).
    hold_s = LIFETIMES[-1] + 60.0
    settings = auth_settings(redis_url, tmp_path, channel_jwt_leeway_s=0.0, redis_timeout_s=hold_s)
    greet, got = asyncio.Event(), []

    async def greeting(request: web.Request) -> web.StreamResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        if request.path != "/witness":  # the witness's bot says nothing
            await greet.wait()
            await sock.send_str("hello")
        got.extend([msg.data async for msg in sock])
        return sock

    app = web.Application()
    app.router.add_get("/{tail:.*}", greeting)
    async with (
        serve(app) as url,
        secured_gateway(rclient, settings, url) as gw,
    ):
        for exp_in in LIFETIMES:
            if pair := await expiring_pair(http, f"{gw.url}/hooks/web/{APP}", exp_in):
                break
        else:
            pytest.fail("no token lived long enough for its upgrades")
        ws, witness = pair
        async with ws, witness:
            await rclient.execute_command("CLIENT", "PAUSE", 600_000, "WRITE")
            try:
                await ws.send_str("m0")
                await asyncio.wait_for(_admission_held(rclient), 60)  # a hang bound
                greet.set()  # its greeting waits for the admission under way
                # The expiry as the gateway keeps it: it closes the idle socket on the
                # same token (so the same expiry) by itself.
                assert await replies_and_close(witness, exp_in + 60) == ([], EXPIRED)
            finally:
                await rclient.execute_command("CLIENT", "UNPAUSE")
            replies, closed = await replies_and_close(ws)
        greet.set()
    assert closed == EXPIRED
    assert (replies, got) == ([], [])
    assert await charged(rclient) == 0
