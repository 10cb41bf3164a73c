"""A ``wss`` bot's charges stay exact with frames larger than aiohttp's 64 KiB drain
check and than the sockets' buffers (a frame's records then straddle the TLS layer, the
socket transport under it and the kernel), while the bot pings as it stalls (the
gateway's pongs, written between messages under the same lock, sit in the same
buffers): on the aiohttp loop and on uvloop (creditgate serve). Charged messages were
aborted with their records before the TLS exactness (a reset, nothing read)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from meter.accounts.seeding import seed
from meter.redis_layer.client import RedisClient
from tests.support.serving import seeded_serve
from tests.support.tls import bot_context, make_ca, trusting
from tests.support.ws_frames import frame
from tests.support.ws_stall import flood_until_closed, settled_charges
from tests.system.test_ws_stalled_bot import (
    APP,
    CENT,
    WS,
    gateway_with_sweeper,
    send_deadline_settings,
)
from tests.system.test_ws_tls_taken import FUNDS, OPTS, TlsReadingBot

# Each test runs against both traffic servers (aiohttp, the fast path).
pytestmark = pytest.mark.usefixtures("traffic_server")

SEND_S = 1.0  # the send deadline, waited out
PING = 9


class PingingBot(TlsReadingBot):
    """Pings all the time while it reads nothing (until ``read``), then reads it all."""

    async def _talk(
        self, r: asyncio.StreamReader, w: asyncio.StreamWriter, data: bytearray
    ) -> asyncio.Task[None] | None:
        return asyncio.create_task(self._ping(w))

    @staticmethod
    async def _ping(w: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while True:
                w.write(frame(PING, b"p", mask=False))
                await w.drain()
                await asyncio.sleep(0.001)  # a pace, not a wait for anything


async def _flood(ws: aiohttp.ClientWebSocketResponse, size: int) -> None:
    while True:
        for _ in range(20):
            await ws.send_bytes(b"Q" * size)
        await asyncio.sleep(0)


@pytest.mark.parametrize(("size", "serve"), [(100_000, False), (3_000_000, True)])
async def test_large_frames_to_a_pinging_tls_bot_are_charged_as_read(
    redis_url: str,
    tmp_path: Path,
    rclient: RedisClient,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
    size: int,
    serve: bool,
) -> None:
    ca = make_ca(tmp_path)
    trusting(monkeypatch, ca)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca.cert_file))  # creditgate serve's way
    async with PingingBot(bot_context(ca, tmp_path)) as bot:
        spec = {"product": "contact_center", "upstream_url": bot.url, "funds": FUNDS}
        gateway: Any
        if serve:
            gateway = seeded_serve(
                rclient, redis_url, tmp_path, WS, {APP: spec}, ws_send_timeout_s=SEND_S, **OPTS
            )
        else:
            settings = send_deadline_settings(redis_url, tmp_path, SEND_S, **OPTS)
            await seed(rclient, settings, WS, {APP: spec})
            gateway = gateway_with_sweeper(settings)
        async with gateway as gw:
            base = gw.traffic if serve else gw.url
            url = f"{base}/hooks/web/{APP}/slow?user=u"
            async with http.ws_connect(url, max_msg_size=0) as ws:
                await flood_until_closed(ws, bot, _flood(ws, size))
        assert await settled_charges(rclient, WS, APP, FUNDS, CENT) == len(bot.got)
