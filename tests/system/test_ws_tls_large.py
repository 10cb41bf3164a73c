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

from meter.accounts.projection import read_balances
from meter.accounts.seeding import seed
from meter.redis_layer.client import RedisClient
from tests.support.serving import seeded_serve
from tests.support.tls import bot_context, make_ca, trusting
from tests.support.ws_frames import accept_upgrade, client_frames, frame, settled
from tests.system.test_ws_stalled_bot import (
    APP,
    CENT,
    WS,
    gateway_with_sweeper,
    send_deadline_settings,
)
from tests.system.test_ws_tls_taken import TlsReadingBot

# Each test runs against both traffic servers (aiohttp, the fast path).
pytestmark = pytest.mark.usefixtures("traffic_server")

SEND_S = 1.0  # the send deadline, waited out
HANG_S = 60.0  # a bound for a hang only
PING = 9


class PingingBot(TlsReadingBot):
    """Pings all the time while it reads nothing (until ``read``), then reads it all."""

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        data = bytearray()
        pinging: asyncio.Task[None] | None = None
        try:
            await accept_upgrade(r, w)
            await w.drain()
            pinging = asyncio.create_task(self._ping(w))
            await self.read.wait()
            with contextlib.suppress(OSError):  # the stream ends without TLS's close
                while chunk := await r.read(1 << 20):
                    data += chunk
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            if pinging is not None:
                pinging.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pinging
            self.got = client_frames(bytes(data))
            self.done.set()
            w.close()

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
    funds = 1_000_000 * CENT
    opts: dict[str, Any] = {
        "max_body_bytes": 16 << 20,
        "rate_per_minute": 1_000_000,
        "rate_per_hour": 10_000_000,
        "ws_linger_s": HANG_S,  # the bot reads to its end before it
    }
    async with PingingBot(bot_context(ca, tmp_path)) as bot:
        spec = {"product": "contact_center", "upstream_url": bot.url, "funds": funds}
        gateway: Any
        if serve:
            gateway = seeded_serve(
                rclient, redis_url, tmp_path, WS, {APP: spec}, ws_send_timeout_s=SEND_S, **opts
            )
        else:
            settings = send_deadline_settings(redis_url, tmp_path, SEND_S, **opts)
            await seed(rclient, settings, WS, {APP: spec})
            gateway = gateway_with_sweeper(settings)
        async with gateway as gw:
            base = gw.traffic if serve else gw.url
            url = f"{base}/hooks/web/{APP}/slow?user=u"
            async with http.ws_connect(url, max_msg_size=0) as ws:
                flooding = asyncio.create_task(_flood(ws, size))
                try:
                    closed = await ws.receive(timeout=HANG_S)
                finally:
                    bot.read.set()
                    flooding.cancel()
                    with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                        await flooding
                assert (closed.data, closed.extra) == (1011, "upstream_timeout")
                await asyncio.wait_for(bot.done.wait(), HANG_S)
        assert await settled(rclient, WS)
        charged = (funds - (await read_balances(rclient, WS)).app[APP]) // CENT
        assert charged == len(bot.got)
