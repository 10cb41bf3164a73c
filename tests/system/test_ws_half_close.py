"""A client that sends its close frame right after a paid message still gets the bot's
answer to it (RFC 6455 §5.5.1: the gateway, as any endpoint, may finish what it is
sending before it answers a close): the gateway passes the close on to the bot and
relays what the bot sends until the bot's own close, then answers the client's. The
gateway answered the client's close at once and closed the bot's side, discarding the
answer the client had paid for."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from meter.accounts.projection import read_balances
from meter.accounts.seeding import seed
from meter.redis_layer.client import RedisClient
from tests.support.bot import eventually, running_gateway
from tests.support.settings import HOST, make_settings
from tests.support.ws_frames import accept_upgrade, frame, raw_upgrade, read_frame, settled

# Each test runs against both traffic servers (aiohttp, the fast path).
pytestmark = pytest.mark.usefixtures("traffic_server")

WS = "wshalf"
APP = f"{WS}_app1"  # contact_center: $0.01 per request
CENT = 10_000
FUNDS = 100 * CENT
TEXT, CLOSE = 1, 8
HANG_S = 60.0  # a bound for a hang only


class LateBot:
    """Reads the client's message, then the next frame (the close passed on), and only
    then answers the message and closes: its answer was on its way as the close came."""

    reads = 2  # frames read before it answers
    answer = b"the answer"

    def __init__(self) -> None:
        self.got: list[tuple[int, bytes]] = []
        self.url = ""

    async def handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            await accept_upgrade(r, w)
            for _ in range(self.reads):
                self.got.append(await read_frame(r))
            w.write(frame(TEXT, self.answer, mask=False))
            w.write(frame(CLOSE, struct.pack("!H", 1000), mask=False))
            await w.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            w.close()


@contextlib.asynccontextmanager
async def gateway_to(
    bot: LateBot, redis_url: str, tmp_path: Path, rclient: RedisClient
) -> AsyncIterator[Any]:
    """A gateway (``FUNDS`` seeded) whose app's bot is ``bot`` on a loopback server."""
    server = await asyncio.start_server(bot.handle, HOST, 0)
    settings = make_settings(redis_url, tmp_path)
    url = f"http://{HOST}:{server.sockets[0].getsockname()[1]}"
    spec = {"product": "contact_center", "upstream_url": url, "funds": FUNDS}
    await seed(rclient, settings, WS, {APP: spec})
    try:
        async with running_gateway(settings) as gw:
            yield gw
    finally:
        server.close()


async def test_the_bots_answer_reaches_a_client_that_closed(
    redis_url: str, tmp_path: Path, rclient: RedisClient
) -> None:
    bot = LateBot()
    async with gateway_to(bot, redis_url, tmp_path, rclient) as gw:
        r, w = await raw_upgrade(f"{gw.url}/hooks/web/{APP}/q?user=u")
        try:
            w.write(frame(TEXT, b"question", mask=True))
            w.write(frame(CLOSE, struct.pack("!H", 1000), mask=True))
            await w.drain()
            frames = []
            while True:
                opcode, payload = await asyncio.wait_for(read_frame(r), HANG_S)
                frames.append((opcode, payload))
                if opcode == CLOSE:
                    break
        finally:
            w.close()
        assert frames == [(TEXT, b"the answer"), (CLOSE, struct.pack("!H", 1000))]
        assert bot.got[0] == (TEXT, b"question")
        assert bot.got[1][0] == CLOSE  # the client's close, passed on
        assert await settled(rclient, WS)
    assert (await read_balances(rclient, WS)).app[APP] == FUNDS - CENT


@pytest.mark.parametrize("code", [4001, 1008])
async def test_aiohttp_clients_close_still_completes(
    redis_url: str, tmp_path: Path, rclient: RedisClient, http: aiohttp.ClientSession, code: int
) -> None:
    """An ordinary client's close: answered, its code passed on, once the bot answers
    (1008 too: the client's, no refusal's, which the bot got as 1000)."""
    bot = LateBot()
    async with gateway_to(bot, redis_url, tmp_path, rclient) as gw:
        ws = await http.ws_connect(f"{gw.url}/hooks/web/{APP}/q?user=u")
        await ws.send_str("question")
        assert await asyncio.wait_for(ws.close(code=code), HANG_S)
        assert await eventually(lambda: len(bot.got) == 2)
        assert bot.got[1] == (CLOSE, struct.pack("!H", code))
        assert await settled(rclient, WS)
    assert (await read_balances(rclient, WS)).app[APP] == FUNDS - CENT


class GreetingBot(LateBot):
    """Reads the first frame (the client's close passed on), then greets and closes."""

    reads = 1
    answer = b"hello there"


async def test_a_client_that_closes_before_a_message_pays_for_no_greeting(
    redis_url: str, tmp_path: Path, rclient: RedisClient
) -> None:
    """Before anything was paid the bot's side is closed at once: a greeting is an answer
    to the handshake, charged, and the client that closed heard nothing."""
    bot = GreetingBot()
    async with gateway_to(bot, redis_url, tmp_path, rclient) as gw:
        r, w = await raw_upgrade(f"{gw.url}/hooks/web/{APP}/q?user=u")
        try:
            w.write(frame(CLOSE, struct.pack("!H", 1000), mask=True))
            await w.drain()
            opcode, _ = await asyncio.wait_for(read_frame(r), HANG_S)
        finally:
            w.close()
        assert opcode == CLOSE
        assert await eventually(lambda: len(bot.got) == 1)
        assert bot.got[0][0] == CLOSE
        assert await settled(rclient, WS)
    assert (await read_balances(rclient, WS)).app[APP] == FUNDS


@pytest.mark.parametrize("code", [1008, 1000])
async def test_a_client_closing_1008_before_a_message_pays_for_no_greeting(
    redis_url: str, tmp_path: Path, rclient: RedisClient, code: int
) -> None:
    """The client's own close with 1008 (policy violation) is the client's close, not a
    refusal of the gateway's: before anything was paid the bot's side is closed at once.
    It was taken for a refusal (the pump's client side ending 1008): the bot's greeting
    was then admitted as the handshake's answer, charged and relayed to a client that
    had closed."""
    bot = GreetingBot()
    async with gateway_to(bot, redis_url, tmp_path, rclient) as gw:
        r, w = await raw_upgrade(f"{gw.url}/hooks/web/{APP}/q?user=u")
        try:
            w.write(frame(CLOSE, struct.pack("!H", code), mask=True))
            await w.drain()
            frames = [await asyncio.wait_for(read_frame(r), HANG_S)]
        finally:
            w.close()
        assert frames == [(CLOSE, struct.pack("!H", code))]
        assert await eventually(lambda: len(bot.got) == 1)
        assert bot.got[0] == (CLOSE, struct.pack("!H", code))
        assert await settled(rclient, WS)
    assert (await read_balances(rclient, WS)).app[APP] == FUNDS
