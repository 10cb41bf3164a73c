"""A bot that stops reading a WebSocket: the client's message waits at most the send
deadline (``ws_send_timeout_s``) to be taken, then the bot's connection is dropped with
the message still buffered, the message refunded, the client closed 1011
``upstream_timeout`` and its seat freed. Nothing is left for the sweeper (running here)
to refund a second time, and the bot never gets the refunded message to answer (it
was: swept as never forwarded, then read and answered for free, the seat held for
good)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType
from prometheus_client import CollectorRegistry

from config import Settings
from gateway.app import create_app
from gateway.appkeys import PROXY, WEBSOCKETS
from meter.accounts.projection import read_balances
from meter.accounts.seeding import seed
from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient
from meter.store import open_store
from tests.support.bot import Running, eventually, serve
from tests.support.settings import make_settings
from tests.support.ws_frames import accept_upgrade, read_header, tight_bot

# Each test runs against both traffic servers (aiohttp, the fast path).
pytestmark = pytest.mark.usefixtures("traffic_server")

WS = "wsstall"
APP = f"{WS}_app1"  # contact_center: $0.01 per request
CENT = 10_000
FUNDS = 100 * CENT
SIZE = 12 << 20  # far more than the sockets' buffers hold: the send must wait for the bot
# The bound of the gateway's connect to the bot, which must succeed: a bound for a hang.
CONNECT_HANG_S = 60.0


def send_deadline_settings(redis_url: str, tmp_path: Path, send_s: float, **extra: Any) -> Settings:
    """Settings whose WebSocket send waits at most ``send_s`` (``ws_send_timeout_s``),
    under the default refund window (120 s) unless ``extra`` sets one. The send deadline
    was half the refund window, so a 1 s send meant a 2 s window, and the sweeper refunded
    a message confirmed later than that on a busy machine although the bot read it (a
    charge missing, the test failed). The connect to the bot has :data:`CONNECT_HANG_S`
    even under a short window (the settings refuse one over two thirds of it): that check
    is for an HTTP message, admitted before it waits for its connection; a WebSocket's
    messages are admitted once it is connected."""
    settings = make_settings(redis_url, tmp_path, ws_send_timeout_s=send_s, **extra)
    return settings.model_copy(update={"upstream_connect_timeout_s": CONNECT_HANG_S})


class StalledBot:
    """Accepts a WebSocket, then reads nothing until ``read`` is set (tiny receive
    buffer); then reads frames, answering each complete text or binary one. ``got``: the
    sizes of the messages it read whole; ``done`` once its connection ended."""

    def __init__(self) -> None:
        self.read = asyncio.Event()
        self.done = asyncio.Event()
        self.got: list[int] = []
        self.url = ""
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> StalledBot:
        self._server, self.url = await tight_bot(self._handle)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            await accept_upgrade(r, w)
            await w.drain()
            await self.read.wait()
            while True:
                opcode, _, n = await read_header(r)
                await r.readexactly(4 + n)  # mask, payload
                if opcode in (1, 2):
                    self.got.append(n)
                    answer = b"answered"
                    w.write(bytes([0x81, len(answer)]) + answer)
                    await w.drain()
                elif opcode == 8:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.done.set()
            w.close()


@contextlib.asynccontextmanager
async def gateway_with_sweeper(settings: Settings) -> AsyncIterator[Running]:
    store = open_store(settings.store_url)
    await store.migrate()
    try:
        gw = create_app(settings, store=store, registry=CollectorRegistry(), run_flusher=True)
        async with (
            serve(gw.traffic, settings=settings) as url,
            serve(gw.admin, settings=settings) as admin_url,
        ):
            yield Running(gw, url, admin_url)
    finally:
        await store.close()


async def test_a_message_the_bot_does_not_take_is_refunded_and_never_delivered(
    redis_url: str, tmp_path: Path, rclient: RedisClient, http: aiohttp.ClientSession
) -> None:
    settings = send_deadline_settings(redis_url, tmp_path, 1.0, max_body_bytes=16 << 20)
    async with StalledBot() as bot:
        spec = {"product": "contact_center", "upstream_url": bot.url, "funds": FUNDS}
        await seed(rclient, settings, WS, {APP: spec})
        async with (
            gateway_with_sweeper(settings) as gw,
            http.ws_connect(f"{gw.url}/hooks/web/{APP}/slow?user=u", max_msg_size=0) as ws,
        ):
            # Seats are held per tenant (the workspace's owner, else the workspace).
            sockets = gw.gateway.traffic[WEBSOCKETS]
            tenant = gw.gateway.traffic[PROXY].upstreams.tenant(APP)
            assert sockets.held(tenant) == 1
            try:
                await ws.send_bytes(b"Q" * SIZE)
                closed = await ws.receive(timeout=60)  # a bound for a hang only
            finally:
                bot.read.set()  # whatever happened, nothing is left waiting on the bot
            assert closed.type is WSMsgType.CLOSE
            assert (closed.data, closed.extra) == (1011, "upstream_timeout")
            assert await eventually(lambda: sockets.held(tenant) == 0)  # the seat is free
            # The bot reads now: nothing whole is left to read.
            await asyncio.wait_for(bot.done.wait(), 60)
            assert bot.got == []
            # Refunded once (before the close was sent): nothing left for the sweeper.
            assert await rclient.zcard(keys.reservations_key(WS)) == 0
            assert (await read_balances(rclient, WS)).app[APP] == FUNDS
