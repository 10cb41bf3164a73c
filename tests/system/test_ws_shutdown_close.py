"""SIGTERM with WebSockets whose client and bot both read: each side is closed ``1001``
(the client's with ``shutting down``), before the worker exits 0, and the messages sent
before are charged exactly once, every charge confirmed by the stopping worker.

test_ws_shutdown.py covers a client and a bot that stopped reading: its client never
reads its close, and a send stalled on the bot is dropped without one; so a drain that
closed the sockets with another code (or closed the client's not at all) passed it.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import aiohttp
from aiohttp import WSMsgType, web

from meter.accounts.projection import read_balances
from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient
from tests.support.bot import eventually, serve
from tests.support.serving import seeded_serve, tail

WS = "wsclose"
APP = f"{WS}_app1"  # contact_center: $0.01 per request
CENT = 10_000
FUNDS = 1_000 * CENT
SENT = 5


def echo_bot(closes: list[int | None]) -> web.Application:
    """Echoes each text message (``echo:`` before it); ``closes``: the close code of each
    of its sockets as the bot saw it, once closed."""

    async def ws(request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        async for msg in sock:
            if msg.type is WSMsgType.TEXT:
                await sock.send_str(f"echo:{msg.data}")
        closes.append(sock.close_code)
        return sock

    bot = web.Application()
    bot.router.add_get("/{t:.*}", ws)
    return bot


async def test_sigterm_closes_both_sides_1001_and_confirms_every_charge(
    redis_url: str, tmp_path: Path, rclient: RedisClient, http: aiohttp.ClientSession
) -> None:
    closes: list[int | None] = []
    async with serve(echo_bot(closes)) as bot_url:
        spec = {"product": "contact_center", "funds": FUNDS, "upstream_url": bot_url}
        async with seeded_serve(rclient, redis_url, tmp_path, WS, {APP: spec}, workers=1) as gw:
            log = tmp_path / "serve.log"
            url = f"{gw.traffic}/hooks/web/{APP}/s?user=u"
            async with http.ws_connect(url, autoclose=False, autoping=True) as ws:
                for i in range(SENT):
                    await ws.send_str(f"m{i}")
                    msg = await ws.receive()
                    assert (msg.type, msg.data) == (WSMsgType.TEXT, f"echo:m{i}")
                gw.proc.send_signal(signal.SIGTERM)  # the parent passes it to its worker
                async with asyncio.timeout(60):  # a bound for a hang only
                    msg = await ws.receive()
                assert (msg.type, msg.data, msg.extra) == (
                    WSMsgType.CLOSE,
                    1001,
                    "shutting down",
                ), tail(log)
                await ws.close()
            async with asyncio.timeout(60):  # a bound for a hang only
                await gw.proc.wait()
            assert await eventually(lambda: closes == [1001]), (closes, tail(log))  # the bot's
            assert gw.proc.returncode == 0, tail(log)
            text = log.read_text()
            assert "did not stop in time" not in text, tail(log)  # killed past the grace
            assert "Traceback" not in text, tail(log)
    # Each message charged once; each confirmed by the worker that forwarded it (nothing
    # left for a sweeper: no journal replayed, no refund window waited out).
    assert FUNDS - (await read_balances(rclient, WS)).app[APP] == SENT * CENT
    assert await rclient.zcard(keys.reservations_key(WS)) == 0
