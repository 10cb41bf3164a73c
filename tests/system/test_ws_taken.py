"""A client message is charged exactly when its whole frame reached the kernel of the
bot's connection (gateway/ws_pump.py, gateway/ws_wire.py): the kernel delivers it
even once the connection is aborted, and the abort discards only what is still in the
transport's own buffer.

* A send whose last bytes leave that buffer in the same loop pass as its deadline is
  charged (the bot reads it whole); it was refunded, delivered for free.
* Messages confirmed before a send that stalls are never in that buffer any more when
  the stalled send is aborted: each charged message is one the bot reads (thousands
  were charged and discarded)."""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import struct
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web

from meter.accounts.projection import read_balances
from meter.accounts.seeding import seed
from meter.redis_layer.client import RedisClient
from tests.support.bot import eventually, serve
from tests.support.settings import HOST
from tests.support.ws_frames import accept_upgrade, client_frames, settled, switching_protocols
from tests.support.ws_stall import (
    flood_until_closed,
    flood_until_dropped,
    settled_charges,
    watch_stalls,
)
from tests.system.test_ws_stalled_bot import (
    APP,
    CENT,
    WS,
    StalledBot,
    gateway_with_sweeper,
    send_deadline_settings,
)

FUNDS = 100 * CENT
SEND_S = 1.0  # the send deadline, waited out (the refund window: the default 120 s)
# The send deadline of the test that ends it itself (a bound for a hang only).
HELD_SEND_S = 600.0


def _settings(redis_url: str, tmp_path: Path, **extra: Any) -> Any:
    return send_deadline_settings(redis_url, tmp_path, SEND_S, max_body_bytes=16 << 20, **extra)


@contextlib.asynccontextmanager
async def slow_socket(
    rclient: RedisClient,
    http: aiohttp.ClientSession,
    settings: Any,
    bot_url: str,
    funds: int,
) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    """A client's socket to the bot at ``bot_url`` (``funds`` seeded) through a gateway,
    with its sweeper, under ``settings``."""
    spec = {"product": "contact_center", "upstream_url": bot_url, "funds": funds}
    await seed(rclient, settings, WS, {APP: spec})
    async with (
        gateway_with_sweeper(settings) as gw,
        http.ws_connect(f"{gw.url}/hooks/web/{APP}/slow?user=u", max_msg_size=0) as ws,
    ):
        yield ws


class ThreadBot:
    """A WebSocket bot on a thread of its own, so it reads while the gateway's loop (the
    test's) is blocked: after its handshake it reads nothing until ``go``, then
    everything to the end of the stream (``got``: the whole messages' sizes)."""

    def __init__(self) -> None:
        self.arrived = threading.Event()  # the gateway wrote to it
        self.go = threading.Event()
        self.ended = threading.Event()
        self.read = 0  # bytes read after the handshake
        self._more = threading.Condition()
        self.got: list[int] = []
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self._listener.bind((HOST, 0))
        self._listener.listen(1)
        self.url = f"http://{HOST}:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._run, daemon=True).start()

    def has_read(self, n: int, within_s: float = 60.0) -> bool:
        with self._more:
            return self._more.wait_for(lambda: self.read >= n, within_s)

    def _run(self) -> None:
        conn, _ = self._listener.accept()
        self._listener.close()
        with conn:
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                head += conn.recv(1)
            conn.sendall(switching_protocols(head))
            select.select([conn], [], [], 60)
            self.arrived.set()
            self.go.wait(60)
            data = bytearray()
            while chunk := self._recv(conn):
                data += chunk
                with self._more:
                    self.read = len(data)
                    self._more.notify_all()
        self.got = client_frames(bytes(data))
        self.ended.set()

    @staticmethod
    def _recv(conn: socket.socket) -> bytes:
        try:
            return conn.recv(1 << 20)
        except OSError:
            return b""


async def test_a_frame_the_kernel_took_at_the_deadline_is_charged(
    redis_url: str,
    tmp_path: Path,
    rclient: RedisClient,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    size = 3 << 20  # more than the kernel takes at once, not twice as much
    frame = 10 + 4 + size  # header, mask, payload
    # The send's deadline is the test's to end: with a real one (1 s), a busy machine
    # passed it before the test had the loop blocked (the tail still in the buffer:
    # refunded, the test failed), and its refund window (2 s) was passed by the time the
    # send was confirmed (the sweeper refunded the message the bot read).
    settings = send_deadline_settings(
        redis_url, tmp_path, HELD_SEND_S, refund_window_s=2 * HELD_SEND_S, max_body_bytes=16 << 20
    )
    bots: list[aiohttp.ClientWebSocketResponse] = []
    send_bytes = aiohttp.ClientWebSocketResponse.send_bytes

    async def seen(self: aiohttp.ClientWebSocketResponse, data: bytes, **kw: Any) -> None:
        bots.append(self)
        await send_bytes(self, data, **kw)

    deadlines: list[asyncio.Timeout] = []  # the send's (gateway/ws_pump.py)
    timeout = asyncio.timeout

    def kept(delay: float | None) -> asyncio.Timeout:
        deadline = timeout(delay)
        if delay == HELD_SEND_S:
            deadlines.append(deadline)
        return deadline

    monkeypatch.setattr(aiohttp.ClientWebSocketResponse, "send_bytes", seen)
    monkeypatch.setattr(asyncio, "timeout", kept)
    bot = ThreadBot()
    spec = {"product": "contact_center", "upstream_url": bot.url, "funds": FUNDS}
    await seed(rclient, settings, WS, {APP: spec})
    loop = asyncio.get_running_loop()
    async with (
        gateway_with_sweeper(settings) as gw,
        http.ws_connect(f"{gw.url}/hooks/web/{APP}/slow?user=u", max_msg_size=0) as ws,
    ):
        try:
            await ws.send_bytes(b"Q" * size)
            # The gateway's send started ...
            assert await loop.run_in_executor(None, bot.arrived.wait, 60)
            transport = next(b for b in bots if b is not ws)._writer.transport
            # ... and waits with the frame's tail in its transport's buffer.
            assert await eventually(lambda: transport.get_write_buffer_size() > 0)
            # Now the gateway's loop is held (the bot's thread waited on here: the loop
            # itself must not run) while the bot reads all the kernel holds, and the
            # deadline is ended: the tail then leaves the buffer in the same loop pass as
            # the deadline passes.
            left = transport.get_write_buffer_size()
            assert left <= frame - left, "the kernel could not take the tail at once"
            bot.go.set()
            assert bot.has_read(frame - left, within_s=60)
            [deadline] = deadlines
            deadline.reschedule(loop.time())
            closed = await ws.receive(timeout=60)
        finally:
            bot.go.set()
        assert (closed.type, closed.data, closed.extra) == (
            WSMsgType.CLOSE,
            1011,
            "upstream_timeout",
        )
        assert await loop.run_in_executor(None, bot.ended.wait, 60)
        assert bot.got == [size]  # the bot read it whole: it is paid
        assert await settled(rclient, WS)
        assert (await read_balances(rclient, WS)).app[APP] == FUNDS - CENT


class ReadingBot(StalledBot):
    """As StalledBot, but once told to it reads every frame to the end of the stream
    and answers none (so it never stops reading because a write of its failed)."""

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            await accept_upgrade(r, w)
            await w.drain()
            await self.read.wait()
            data = bytearray()
            while chunk := await r.read(1 << 20):
                data += chunk
            self.got = client_frames(bytes(data))
        except ConnectionError:
            pass
        finally:
            self.done.set()
            w.close()


async def test_messages_charged_before_a_stalled_one_all_reach_the_bot(
    redis_url: str, tmp_path: Path, rclient: RedisClient, http: aiohttp.ClientSession
) -> None:
    funds = 1_000_000 * CENT
    settings = _settings(redis_url, tmp_path, rate_per_minute=1_000_000, rate_per_hour=10_000_000)
    async with ReadingBot() as bot, slow_socket(rclient, http, settings, bot.url, funds) as ws:
        await flood_until_closed(ws, bot, _flood(ws))
        assert len(bot.got) > 1
        # Once nothing is left for the sweeper, every charge is a message the bot read.
        assert await settled_charges(rclient, WS, APP, funds, CENT) == len(bot.got)


async def _flood(ws: aiohttp.ClientWebSocketResponse) -> None:
    """Messages until the bot's connection is full and one stalls: of 4 KiB, so the
    socket buffers between the gateway and the bot (megabytes) fill after some thousand
    admissions. Of 20 bytes it took hundreds of thousands, over a minute on a loaded
    machine: the test's bound for a hang, not its subject."""
    while True:
        for _ in range(200):
            await ws.send_bytes(b"Q" * 4096)
        await asyncio.sleep(0)


async def test_the_bots_ping_is_answered_by_the_pump(
    redis_url: str, tmp_path: Path, rclient: RedisClient, http: aiohttp.ClientSession
) -> None:
    """aiohttp no longer answers the bot's pings by itself (it would write while a client
    message is in flight): the pump does, between messages."""
    answers: list[tuple[WSMsgType, bytes]] = []

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        assert (await ws.receive()).data == "hello"
        await ws.ping(b"hi")
        msg = await ws.receive()
        answers.append((msg.type, msg.data))
        await ws.send_str("answered")
        async for _ in ws:
            pass
        return ws

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    settings = _settings(redis_url, tmp_path)
    async with serve(app) as bot_url:
        spec = {"product": "contact_center", "upstream_url": bot_url, "funds": FUNDS}
        await seed(rclient, settings, WS, {APP: spec})
        async with (
            gateway_with_sweeper(settings) as gw,
            http.ws_connect(f"{gw.url}/hooks/web/{APP}/ws?user=u") as ws,
        ):
            await ws.send_str("hello")
            assert (await ws.receive(timeout=60)).data == "answered"
    assert answers == [(WSMsgType.PONG, b"hi")]


class ChattyBot(StalledBot):
    """Reads the client's first message, then sends text messages without pause and
    reads nothing until ``read`` is set; then reads to the end of its stream. ``got``:
    the sizes of the client's messages it read whole (the first one included). Its
    input left unread in the gateway's socket made the gateway's drop a reset, which
    throws away what the kernel still held for the bot: charged, never delivered."""

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        sending: asyncio.Task[None] | None = None
        try:
            await accept_upgrade(r, w)
            await w.drain()
            data = bytearray(await r.readexactly(2))
            data += await r.readexactly(4 + (data[1] & 0x7F))  # the first one is small
            sending = asyncio.create_task(self._chat(w))
            await self.read.wait()
            with contextlib.suppress(ConnectionError):  # what came before it counts
                while chunk := await r.read(1 << 20):
                    data += chunk
            self.got = client_frames(bytes(data))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            if sending is not None:
                sending.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sending
            self.done.set()
            w.close()

    @staticmethod
    async def _chat(w: asyncio.StreamWriter) -> None:
        burst = (b"\x81\x7e" + struct.pack("!H", 1000) + b"A" * 1000) * 16
        with contextlib.suppress(ConnectionError):
            while True:
                w.write(burst)
                await w.drain()
                # drain() returns without yielding while the socket takes every write (a
                # peer that reads as fast, or discards): this loop would then hold the
                # event loop the gateway and the test share, spinning (seen on a loaded
                # machine). A yield keeps it talking without starving them.
                await asyncio.sleep(0)


async def test_a_bot_that_talks_while_it_stalls_gets_every_message_charged(
    redis_url: str,
    tmp_path: Path,
    rclient: RedisClient,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    funds = 1_000_000 * CENT
    settings = _settings(
        redis_url,
        tmp_path,
        rate_per_minute=1_000_000,
        rate_per_hour=10_000_000,
        ws_linger_s=60.0,  # a bound for a hang only: the bot reads to its end before it
    )
    dropped = watch_stalls(monkeypatch)
    async with ChattyBot() as bot, slow_socket(rclient, http, settings, bot.url, funds) as ws:
        # The bot's messages wait unread in the gateway's socket when the send stalls.
        await flood_until_dropped(ws, bot, dropped, _flood(ws))
        charged = await settled_charges(rclient, WS, APP, funds, CENT)
        assert charged > 1
        assert len(bot.got) == charged  # was 1 read of 53,062 charged


class PingingBot(StalledBot):
    """Pings without pause and reads nothing: the gateway's pongs fill its connection
    until one waits on the bot."""

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            await accept_upgrade(r, w)
            pings = (b"\x89\x7d" + b"p" * 125) * 64
            while not self.read.is_set():
                w.write(pings)
                await w.drain()
        except ConnectionError:
            pass
        finally:
            self.done.set()
            w.close()


async def test_a_pong_the_bot_does_not_take_ends_the_socket(
    redis_url: str, tmp_path: Path, rclient: RedisClient, http: aiohttp.ClientSession
) -> None:
    """A pong waited on the bot without a deadline: the socket was held, the bot's
    direction pinned, until the client's idle timeout (an hour here)."""
    settings = _settings(
        redis_url, tmp_path, ws_idle_timeout_s=3600.0, ws_first_message_timeout_s=3600.0
    )
    async with PingingBot() as bot:
        spec = {"product": "contact_center", "upstream_url": bot.url, "funds": FUNDS}
        await seed(rclient, settings, WS, {APP: spec})
        async with (
            gateway_with_sweeper(settings) as gw,
            http.ws_connect(f"{gw.url}/hooks/web/{APP}/ping?user=u") as ws,
        ):
            try:
                closed = await ws.receive(timeout=60)  # a bound for a hang only
            finally:
                bot.read.set()
            assert (closed.type, closed.data, closed.extra) == (
                WSMsgType.CLOSE,
                1011,
                "upstream_timeout",
            )
        assert (await read_balances(rclient, WS)).app[APP] == FUNDS  # nothing charged


async def test_a_bot_that_talks_without_reading_gets_every_message_at_a_close(
    redis_url: str,
    tmp_path: Path,
    rclient: RedisClient,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The client closes (no send stalled): the bot never answers the close, and
    aiohttp's close of its connection, with the bot's input unread, was a reset."""
    funds = 1_000_000 * CENT
    settings = send_deadline_settings(  # the close's answer waited for at most SEND_S
        redis_url,
        tmp_path,
        SEND_S,
        ws_linger_s=60.0,  # a bound for a hang only: the bot reads to its end before it
    )
    bots: list[aiohttp.ClientWebSocketResponse] = []
    send_bytes = aiohttp.ClientWebSocketResponse.send_bytes

    async def seen(self: aiohttp.ClientWebSocketResponse, data: bytes, **kw: Any) -> None:
        bots.append(self)
        await send_bytes(self, data, **kw)

    monkeypatch.setattr(aiohttp.ClientWebSocketResponse, "send_bytes", seen)
    async with ChattyBot() as bot, slow_socket(rclient, http, settings, bot.url, funds) as ws:
        try:
            for _ in range(200):
                await ws.send_bytes(b"Q" * 20)
            assert await eventually(lambda: len(bots) == 400)  # ours and the gateway's
            upstream = next(b for b in bots if b is not ws)
            await ws.close()
            # The gateway closed the bot's connection (its close never answered).
            assert await eventually(upstream._writer.transport.is_closing, within_s=60)
            bot.read.set()
            await asyncio.wait_for(bot.done.wait(), 60)
        finally:
            bot.read.set()
        assert await settled(rclient, WS)
        charged = (funds - (await read_balances(rclient, WS)).app[APP]) // CENT
        assert charged == 200
        assert len(bot.got) == charged
