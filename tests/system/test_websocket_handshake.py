"""A bot message before the client's first admitted message answers the WebSocket
handshake (a question can ride on its query, path or headers): the handshake is then one
metered message, and without credit that answer never reaches the client."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from gateway.appkeys import OWED
from meter.accounts.projection import read_balances
from meter.accounts.seeding import seed
from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient
from tests.support.bot import Running, running_gateway, serve
from tests.support.servers import RedisServer
from tests.support.settings import make_settings

# Each test runs against both traffic servers (aiohttp, the fast path).
pytestmark = pytest.mark.usefixtures("traffic_server")

WS = "wshand"
APP = f"{WS}_app1"  # contact_center: $0.01 per request
POOR = f"{WS}_poor"  # credit for one request
CHAT = f"{WS}_chat"  # automation: $0.20 per session
CENT = 10_000
SESSION = 200_000
FUNDS = 100 * CENT


@dataclass
class AnsweringBot:
    """On ``/answer``, answers the upgrade's ``q`` with two messages (once the test sets
    ``release[c]``, when the query names a connection ``c``) then echoes; on ``/greet``,
    greets and echoes; on ``/moved``, redirects to ``/answer``; elsewhere only echoes."""

    url: str = ""
    opened: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    release: collections.defaultdict[str, asyncio.Event] = field(
        default_factory=lambda: collections.defaultdict(asyncio.Event)
    )
    received: list[str] = field(default_factory=list)


@pytest.fixture
async def answering() -> AsyncIterator[AnsweringBot]:
    b = AnsweringBot()

    async def ws(request: web.Request) -> web.StreamResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        conn = request.query.get("c", "")
        b.opened.put_nowait(conn)
        if request.path == "/answer":
            if conn:
                await b.release[conn].wait()
            await sock.send_str("answer to: " + request.query.get("q", ""))
            await sock.send_str("more")
        elif request.path == "/greet":
            await sock.send_str("hello")
        async for msg in sock:
            b.received.append(msg.data)
            await sock.send_str("echo:" + msg.data)
        return sock

    async def moved(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(f"/answer?q=followed&user={request.query.get('user', '')}")

    app = web.Application()
    app.router.add_get("/moved", moved)
    app.router.add_get("/{tail:.*}", ws)
    async with serve(app) as url:
        b.url = url
        yield b


@pytest.fixture
async def gw(
    redis_url: str, tmp_path: Path, rclient: RedisClient, answering: AnsweringBot
) -> AsyncIterator[Running]:
    settings = make_settings(redis_url, tmp_path)
    apps = {
        APP: {"product": "contact_center", "upstream_url": answering.url, "funds": FUNDS},
        POOR: {"product": "contact_center", "upstream_url": answering.url, "funds": CENT},
        CHAT: {"product": "automation", "upstream_url": answering.url, "funds": FUNDS},
    }
    await seed(rclient, settings, WS, apps)
    async with running_gateway(settings) as running:
        yield running


async def charged(rclient: RedisClient, app: str, funds: int = FUNDS) -> int:
    return funds - (await read_balances(rclient, WS)).app[app]


async def counted(rclient: RedisClient, app: str, product: str, unit: str, metric: str) -> int:
    total = 0
    for bucket in await rclient.zrange(keys.agg_index_key(WS), 0, -1):
        agg = await rclient.hgetall(keys.agg_key(WS, int(bucket)))
        total += int(agg.get(keys.agg_field(app, "web", product, unit, metric).encode(), 0))
    return total


async def test_an_answer_to_the_upgrade_is_one_metered_message(
    gw: Running, http: aiohttp.ClientSession, rclient: RedisClient
) -> None:
    url = f"{gw.url}/hooks/web/{APP}/answer?user=u1&q=write+my+essay"
    async with http.ws_connect(url) as ws:
        assert (await ws.receive()).data == "answer to: write my essay"
        assert (await ws.receive()).data == "more"
    assert await charged(rclient, APP) == CENT
    assert await counted(rclient, APP, "contact_center", "request", "m") == 1


async def test_a_redirect_answering_the_upgrade_is_not_followed(
    gw: Running, http: aiohttp.ClientSession, rclient: RedisClient, answering: AnsweringBot
) -> None:
    """The redirect is not followed: the bot refused the upgrade, which served the client
    nothing (502), so the message admitted for it is refunded."""
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        async with http.ws_connect(f"{gw.url}/hooks/web/{APP}/moved?user=u1"):
            pass
    assert err.value.status == 502
    async with http.ws_connect(f"{gw.url}/hooks/web/{APP}/greet?user=u2") as ws:
        assert (await ws.receive()).data == "hello"
    assert await answering.opened.get() == ""  # the greeting, not /answer
    assert answering.opened.empty()
    assert await charged(rclient, APP) == CENT  # the greeting
    assert await counted(rclient, APP, "contact_center", "request", "m") == 1


async def test_without_credit_the_answer_never_reaches_the_client(
    gw: Running, http: aiohttp.ClientSession, rclient: RedisClient, answering: AnsweringBot
) -> None:
    # Credit for one message: both upgrades pass their check; the first answer spends it.
    base = f"{gw.url}/hooks/web/{POOR}/answer?user=u1&q=write+my+essay"
    async with (
        http.ws_connect(base + "&c=a", autoclose=False) as first,
        http.ws_connect(base + "&c=b", autoclose=False) as second,
    ):
        assert {await answering.opened.get(), await answering.opened.get()} == {"a", "b"}
        answering.release["a"].set()
        assert (await first.receive()).data == "answer to: write my essay"
        answering.release["b"].set()
        close = await second.receive()  # not the answer: the refusal
    assert (close.type, close.data, close.extra) == (
        aiohttp.WSMsgType.CLOSE,
        1008,
        "credits_exhausted",
    )
    assert await charged(rclient, POOR, CENT) == CENT
    async with http.get(f"{gw.admin_url}/metrics") as resp:
        assert 'creditgate_refusals_total{reason="credits_exhausted"} 1.0' in await resp.text()


async def test_a_client_that_speaks_first_pays_for_its_messages_only(
    gw: Running, http: aiohttp.ClientSession, rclient: RedisClient, answering: AnsweringBot
) -> None:
    async with http.ws_connect(f"{gw.url}/hooks/web/{APP}/echo?user=u1") as ws:
        for i in range(5):
            await ws.send_str(f"m{i}")
            assert (await ws.receive()).data == f"echo:m{i}"
    assert answering.received == [f"m{i}" for i in range(5)]
    assert await charged(rclient, APP) == 5 * CENT
    assert await counted(rclient, APP, "contact_center", "request", "m") == 5


async def test_a_greeting_is_a_message_of_the_conversation(
    gw: Running, http: aiohttp.ClientSession, rclient: RedisClient
) -> None:
    # Two connections of one user: the first greeting opens (and pays) the session, the
    # messages after it and the second connection's greeting are in that paid session.
    for sent in (["m1", "m2"], ["m3"]):
        async with http.ws_connect(f"{gw.url}/hooks/web/{CHAT}/greet?user=u1") as ws:
            assert (await ws.receive()).data == "hello"
            for m in sent:
                await ws.send_str(m)
                assert (await ws.receive()).data == "echo:" + m
    assert await charged(rclient, CHAT) == SESSION
    assert await counted(rclient, CHAT, "automation", "session", "n") == 1
    assert await counted(rclient, CHAT, "automation", "session", "m") == 2 + 3


async def test_a_greeting_then_messages_cost_one_message_more(
    gw: Running, http: aiohttp.ClientSession, rclient: RedisClient
) -> None:
    async with http.ws_connect(f"{gw.url}/hooks/web/{APP}/greet?user=u1") as ws:
        assert (await ws.receive()).data == "hello"
        for m in ("m1", "m2"):
            await ws.send_str(m)
            assert (await ws.receive()).data == "echo:" + m
    assert await charged(rclient, APP) == 3 * CENT
    assert await counted(rclient, APP, "contact_center", "request", "m") == 3


@pytest.mark.parametrize("fail_mode", ["open", "closed"])
async def test_redis_down_when_the_bot_answers_follows_the_fail_mode(
    redis_url: str,
    redis_server: RedisServer,
    tmp_path: Path,
    rclient: RedisClient,
    answering: AnsweringBot,
    http: aiohttp.ClientSession,
    fail_mode: str,
) -> None:
    settings = make_settings(redis_url, tmp_path, fail_mode=fail_mode)  # Redis killed: refused
    apps = {APP: {"product": "contact_center", "upstream_url": answering.url, "funds": FUNDS}}
    await seed(rclient, settings, WS, apps)
    async with running_gateway(settings) as gw:
        url = f"{gw.url}/hooks/web/{APP}/answer?user=u1&q=essay&c=a"
        async with http.ws_connect(url, autoclose=False) as ws:
            assert await answering.opened.get() == "a"  # the upgrade was checked
            redis_server.kill()
            try:
                answering.release["a"].set()
                first = await ws.receive()
            finally:
                redis_server.start()
        owed = gw.gateway.traffic[OWED]
        if fail_mode == "open":  # served, and owed
            assert (first.type, first.data) == (aiohttp.WSMsgType.TEXT, "answer to: essay")
            assert len(owed.debts) == 1
        else:
            assert (first.type, first.data, first.extra) == (
                aiohttp.WSMsgType.CLOSE,
                1013,
                "metering_unavailable",
            )
            assert len(owed.debts) == 0
