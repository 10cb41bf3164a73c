"""Bots behind TLS: an ``https`` upstream URL is reached over TLS for HTTP messages (the
fast path hands them to aiohttp) and as ``wss`` for WebSockets, verified against the
CAs the gateway trusts (a private CA: ``SSL_CERT_FILE``, tests/support/tls.py). A
message is charged once; a bot whose certificate does not verify is a bot that could
not be reached: 502 ``upstream_unavailable``, refunded, nothing charged."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import WSMsgType, web

from config import Settings
from meter.accounts.projection import read_balances
from meter.accounts.seeding import seed
from meter.redis_layer.client import RedisClient
from tests.support.bot import running_gateway
from tests.support.serving import seeded_serve
from tests.support.settings import make_settings
from tests.support.tls import Ca, bot_context, make_ca, serve_tls, trusting
from tests.support.ws_frames import settled

# Each test runs against both traffic servers (aiohttp, the fast path).
pytestmark = pytest.mark.usefixtures("traffic_server")

WS = "tlsbot"
APP = f"{WS}_app1"  # contact_center: $0.01 per request
CENT = 10_000
FUNDS = 100 * CENT
USER = {"X-Channel-User-Id": "u"}


@dataclass
class TlsBot:
    """An https bot: ``/ws`` echoes WebSocket messages (``messages``), anything else
    answers "bot: <body>" (``bodies``)."""

    url: str = ""
    bodies: list[bytes] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)


def _app(bot: TlsBot) -> web.Application:
    async def ws(request: web.Request) -> web.StreamResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        async for msg in sock:
            if msg.type is WSMsgType.TEXT:
                bot.messages.append(msg.data)
                await sock.send_str("echo:" + msg.data)
        return sock

    async def anything(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        bot.bodies.append(body)
        return web.Response(body=b"bot: " + body)

    app = web.Application()
    app.router.add_get("/ws", ws)
    app.router.add_route("*", "/{tail:.*}", anything)
    return app


@pytest.fixture
def ca(tmp_path: Path) -> Ca:
    return make_ca(tmp_path)


@pytest.fixture
async def tls_bot(ca: Ca, tmp_path: Path) -> AsyncIterator[TlsBot]:
    bot = TlsBot()
    async with serve_tls(_app(bot), bot_context(ca, tmp_path)) as url:
        bot.url = url
        yield bot


async def _seeded(redis_url: str, tmp_path: Path, rclient: RedisClient, bot_url: str) -> Settings:
    """The gateway's settings, its app (the bot at ``bot_url``) seeded with ``FUNDS``."""
    settings = make_settings(redis_url, tmp_path)
    spec = {"product": "contact_center", "upstream_url": bot_url, "funds": FUNDS}
    await seed(rclient, settings, WS, {APP: spec})
    return settings


async def _balance(rclient: RedisClient) -> int:
    return (await read_balances(rclient, WS)).app[APP]


async def test_an_https_bot_answers_a_message_charged_once(
    redis_url: str,
    tmp_path: Path,
    rclient: RedisClient,
    http: aiohttp.ClientSession,
    tls_bot: TlsBot,
    ca: Ca,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    trusting(monkeypatch, ca)
    settings = await _seeded(redis_url, tmp_path, rclient, tls_bot.url)
    async with (
        running_gateway(settings) as gw,
        http.post(f"{gw.url}/hooks/web/{APP}/m", data=b"hello", headers=USER) as resp,
    ):
        assert resp.status == 200, await resp.text()
        assert await resp.read() == b"bot: hello"
    assert tls_bot.bodies == [b"hello"]
    assert await settled(rclient, WS)
    assert await _balance(rclient) == FUNDS - CENT


async def test_a_wss_bot_gets_each_message_charged_and_answers(
    redis_url: str,
    tmp_path: Path,
    rclient: RedisClient,
    http: aiohttp.ClientSession,
    tls_bot: TlsBot,
    ca: Ca,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    trusting(monkeypatch, ca)
    settings = await _seeded(redis_url, tmp_path, rclient, tls_bot.url)
    async with running_gateway(settings) as gw:
        async with http.ws_connect(f"{gw.url}/hooks/web/{APP}/ws?user=u") as ws:
            for text in ("one", "two", "three"):
                await ws.send_str(text)
                answer = await ws.receive(timeout=60)  # a bound for a hang only
                assert (answer.type, answer.data) == (WSMsgType.TEXT, "echo:" + text)
        assert tls_bot.messages == ["one", "two", "three"]
        assert await settled(rclient, WS)
        assert await _balance(rclient) == FUNDS - 3 * CENT


async def test_a_bot_whose_certificate_does_not_verify_is_502_refunded(
    redis_url: str,
    tmp_path: Path,
    rclient: RedisClient,
    http: aiohttp.ClientSession,
    tls_bot: TlsBot,
) -> None:
    """The bot's CA is not one the gateway trusts: nothing reaches it, nothing is paid."""
    settings = await _seeded(redis_url, tmp_path, rclient, tls_bot.url)
    async with running_gateway(settings) as gw:
        async with http.post(f"{gw.url}/hooks/web/{APP}/m", data=b"hello", headers=USER) as resp:
            assert resp.status == 502
            assert (await resp.json())["code"] == "upstream_unavailable"
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(f"{gw.url}/hooks/web/{APP}/ws?user=u")
        assert refused.value.status == 502
        assert await settled(rclient, WS)
    assert tls_bot.bodies == []
    assert tls_bot.messages == []
    assert await _balance(rclient) == FUNDS


async def test_creditgate_serve_trusts_the_ca_of_ssl_cert_file(
    redis_url: str,
    tmp_path: Path,
    rclient: RedisClient,
    http: aiohttp.ClientSession,
    tls_bot: TlsBot,
    ca: Ca,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """How an operator points the gateway at a bot with a private CA: OpenSSL's own
    ``SSL_CERT_FILE`` in the environment of ``creditgate serve`` (no setting of its own)."""
    monkeypatch.setenv("SSL_CERT_FILE", str(ca.cert_file))
    spec = {"product": "contact_center", "upstream_url": tls_bot.url, "funds": FUNDS}
    async with seeded_serve(rclient, redis_url, tmp_path, WS, {APP: spec}) as served:
        async with http.post(
            f"{served.traffic}/hooks/web/{APP}/m", data=b"hi", headers=USER
        ) as resp:
            assert resp.status == 200
            assert await resp.read() == b"bot: hi"
        async with http.ws_connect(f"{served.traffic}/hooks/web/{APP}/ws?user=u") as ws:
            await ws.send_str("again")
            answer = await ws.receive(timeout=60)  # a bound for a hang only
            assert (answer.type, answer.data) == (WSMsgType.TEXT, "echo:again")
        assert await settled(rclient, WS)
    assert await _balance(rclient) == FUNDS - 2 * CENT
