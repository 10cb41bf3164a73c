"""A message to a ``wss`` bot is charged exactly when its whole frame reached the kernel
of the bot's connection, as over plain TCP (tests/system/test_ws_taken.py): under TLS
the bytes pass two buffers of the gateway's own (the TLS layer's and the socket
transport's under it), and a send counted as taken while its records still sat there
(aiohttp waits for them only past 64 KiB, and the TLS layer's count leaves out the
transport under it). A bot that stopped reading had its connection dropped at a stalled
send with those buffers discarded: hundreds of messages charged that never left the
gateway, the bot reading again all it was sent."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from meter.redis_layer.client import RedisClient
from tests.support.serving import seeded_serve
from tests.support.settings import HOST
from tests.support.tls import bot_context, make_ca, trusting
from tests.support.ws_frames import accept_upgrade, client_frames
from tests.support.ws_stall import (
    HANG_S,
    flood_until_closed,
    flood_until_dropped,
    settled_charges,
    watch_stalls,
)
from tests.system.test_ws_stalled_bot import (
    APP,
    CENT,
    WS,
    send_deadline_settings,
)
from tests.system.test_ws_taken import ChattyBot, _flood, slow_socket

# Each test runs against both traffic servers (aiohttp, the fast path).
pytestmark = pytest.mark.usefixtures("traffic_server")

SEND_S = 1.0  # the send deadline, waited out (the refund window: the default 120 s)
FUNDS = 1_000_000 * CENT
OPTS: dict[str, Any] = {
    "max_body_bytes": 16 << 20,
    "rate_per_minute": 1_000_000,
    "rate_per_hour": 10_000_000,
    "ws_linger_s": HANG_S,  # the bot reads to its end before it
}


class TlsReadingBot:
    """A wss bot whose connection takes 4 KiB at a time: after the handshake it reads
    nothing until ``read`` is set, then everything to the end of its stream (``got``: the
    sizes of the client's messages it read whole), answering none."""

    def __init__(self, context: ssl.SSLContext, chatty: bool = False) -> None:
        self.context = context
        self.chatty = chatty
        self.read = asyncio.Event()
        self.done = asyncio.Event()
        self.got: list[int] = []
        self.url = ""
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> TlsReadingBot:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.bind((HOST, 0))
        sock.listen(8)
        self.url = f"https://{HOST}:{sock.getsockname()[1]}"
        self._server = await asyncio.start_server(
            self._handle, sock=sock, ssl=self.context, limit=4096
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _talk(
        self, r: asyncio.StreamReader, w: asyncio.StreamWriter, data: bytearray
    ) -> asyncio.Task[None] | None:
        """Once upgraded, before it reads: a chatty bot reads the client's first message
        (into ``data``) and then talks without pause (the task, cancelled at its end)."""
        if not self.chatty:
            return None
        data += await r.readexactly(2)
        data += await r.readexactly(4 + (data[1] & 0x7F))  # the first one is small
        return asyncio.create_task(ChattyBot._chat(w))

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        data = bytearray()
        talking: asyncio.Task[None] | None = None
        try:
            await accept_upgrade(r, w)
            await w.drain()
            talking = await self._talk(r, w, data)
            await self.read.wait()
            with contextlib.suppress(OSError):  # the stream ends without TLS's close
                while chunk := await r.read(1 << 20):
                    data += chunk
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            if talking is not None:
                talking.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await talking
            self.got = client_frames(bytes(data))
            self.done.set()
            w.close()


async def test_messages_charged_before_a_stalled_one_all_reach_a_tls_bot(
    redis_url: str,
    tmp_path: Path,
    rclient: RedisClient,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ca = make_ca(tmp_path)
    trusting(monkeypatch, ca)
    settings = send_deadline_settings(redis_url, tmp_path, SEND_S, **OPTS)
    async with (
        TlsReadingBot(bot_context(ca, tmp_path)) as bot,
        slow_socket(rclient, http, settings, bot.url, FUNDS) as ws,
    ):
        await flood_until_closed(ws, bot, _flood(ws))
        assert len(bot.got) > 1
        # Once nothing is left for the sweeper, every charge is a message the bot read.
        assert await settled_charges(rclient, WS, APP, FUNDS, CENT) == len(bot.got)


async def test_a_tls_bot_that_talks_while_it_stalls_gets_every_message_charged(
    redis_url: str,
    tmp_path: Path,
    rclient: RedisClient,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its input left unread in the gateway's socket made the drop (an abort over TLS,
    never a linger) a reset, which throws away what the kernel still held for the bot."""
    ca = make_ca(tmp_path)
    trusting(monkeypatch, ca)
    settings = send_deadline_settings(redis_url, tmp_path, SEND_S, **OPTS)
    dropped = watch_stalls(monkeypatch)
    async with (
        TlsReadingBot(bot_context(ca, tmp_path), chatty=True) as bot,
        slow_socket(rclient, http, settings, bot.url, FUNDS) as ws,
    ):
        await flood_until_dropped(ws, bot, dropped, _flood(ws))
        charged = await settled_charges(rclient, WS, APP, FUNDS, CENT)
        assert charged > 1
        assert len(bot.got) == charged


async def test_a_tls_bot_gets_every_message_charged_under_creditgate_serve(
    redis_url: str,
    tmp_path: Path,
    rclient: RedisClient,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same on uvloop, whose TLS layer keeps the transport under it elsewhere."""
    ca = make_ca(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca.cert_file))
    async with TlsReadingBot(bot_context(ca, tmp_path)) as bot:
        spec = {"product": "contact_center", "upstream_url": bot.url, "funds": FUNDS}
        async with seeded_serve(
            rclient, redis_url, tmp_path, WS, {APP: spec}, ws_send_timeout_s=SEND_S, **OPTS
        ) as served:
            url = f"{served.traffic}/hooks/web/{APP}/slow?user=u"
            async with http.ws_connect(url, max_msg_size=0) as ws:
                await flood_until_closed(ws, bot, _flood(ws))
            assert len(bot.got) > 1
            assert await settled_charges(rclient, WS, APP, FUNDS, CENT) == len(bot.got)
