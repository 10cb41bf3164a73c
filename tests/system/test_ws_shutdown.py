"""SIGTERM with WebSockets whose client and bot both stopped reading (a bot that talks,
a client that sends): the worker exits 0 within the grace and every bot connection ends
with its end of stream, never a reset, so each message charged is one its bot reads.

The gateway closed its clients 1001 one after another from the shutting-down task, each
close waiting, unbounded, for a client that does not read to take the close frame, on
the future aiohttp shares with the handler's own writes to that client. So the worker
waited forever (the parent kills it at the grace plus 10 s), or, once a pump cancelled
its write waiting on the same future, the close got the CancelledError and the worker
died at once; either way no handler reached its bot connection's linger, and the
kernel reset every connection with input unread, dropping what it still held, charged
(4 sockets: 2,850 charged, 0 read)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import struct
import time
from pathlib import Path

import aiohttp
import pytest

from meter.accounts.projection import read_balances
from meter.admission.reservations import Sweeper, replay
from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient
from tests.support.bot import eventually
from tests.support.metering import admitter
from tests.support.serving import seeded_serve, tail
from tests.support.settings import make_settings
from tests.support.ws_frames import accept_upgrade, client_close, client_frames, tight_bot

WS = "wsshutdown"
APP = f"{WS}_app1"  # contact_center: $0.01 per request
CENT = 10_000
FUNDS = 1_000_000 * CENT
SENT = 50  # the messages a client that does not flood sends
FIN_WAIT = {"04", "05", "0B"}  # /proc/net/tcp states once a socket sent (or queued) its FIN
CONNECT_S = 60.0  # the gateway's connect to the bot: a hang bound
REFUND_WINDOW_S = 1.5 * CONNECT_S  # the least the settings accept with it


class TalkingBot:
    """Reads the client's first message, then sends text messages without pause and
    reads nothing until the gateway half-closed its connection (``half_closed``, seen
    from the gateway's side); then reads to the end of its stream. ``got``: the sizes of
    the client's messages read whole; ``end``: how its reading ended ("eof" or the
    error's name); ``close``: the code of the gateway's close frame among what it read
    (None without one); ``stalled`` once the gateway stopped reading it (its writes wait)."""

    def __init__(self) -> None:
        self.stalled = asyncio.Event()
        self.done = asyncio.Event()
        self.got: list[int] = []
        self.close: int | None = None
        self.end = ""
        self.url = ""
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> TalkingBot:
        self._server, self.url = await tight_bot(self._handle)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        sending: asyncio.Task[None] | None = None
        try:
            await accept_upgrade(r, w)
            await w.drain()
            data = bytearray(await r.readexactly(2))
            data += await r.readexactly(4 + (data[1] & 0x7F))  # the first one is small
            sending = asyncio.create_task(self._chat(w))
            gateway, bot = w.get_extra_info("peername"), w.get_extra_info("sockname")
            # Until the gateway ends its side (a hang bound only: the gateway's linger
            # waits far longer for the bot to read and end its side).
            if await eventually(lambda: _state(gateway, bot) in FIN_WAIT, within_s=60):
                try:
                    while chunk := await r.read(1 << 20):
                        data += chunk
                    self.end = "eof"
                except ConnectionError as exc:
                    self.end = type(exc).__name__
            self.got = client_frames(bytes(data))
            self.close = client_close(bytes(data))
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            self.end = f"early {type(exc).__name__}"
        finally:
            if sending is not None:
                sending.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sending
            self.done.set()
            w.close()

    async def _chat(self, w: asyncio.StreamWriter) -> None:
        burst = (b"\x81\x7e" + struct.pack("!H", 1000) + b"A" * 1000) * 16
        with contextlib.suppress(ConnectionError):
            while True:
                w.write(burst)
                if w.transport.get_write_buffer_size() > 1 << 16:
                    self.stalled.set()  # past asyncio's high-water mark: the drain waits
                await w.drain()


def _state(local: tuple[str, int], remote: tuple[str, int]) -> str:
    """The TCP state of the socket from ``local`` to ``remote`` ("" once gone)."""

    def hexed(addr: tuple[str, int]) -> str:
        ip = socket.inet_aton(addr[0])[::-1].hex().upper()
        return f"{ip}:{addr[1]:04X}"

    wanted = (hexed(local), hexed(remote))
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if (fields[1], fields[2]) == wanted:
            return fields[3]
    return ""


def _worker(parent: int) -> int:
    """The traffic worker of a one-worker ``creditgate serve``."""
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    workers = [
        int(pid)
        for pid in children
        if b"multiprocessing.spawn" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    assert len(workers) == 1, children
    return workers[0]


async def _flood(ws: aiohttp.ClientWebSocketResponse) -> None:
    """Messages until the bot's connection is full and one stalls: of 4 KiB, so the
    socket buffers on the way (megabytes) fill after some thousand admissions, not the
    hundreds of thousands 20-byte ones took (minutes on a loaded machine)."""
    with contextlib.suppress(ConnectionError):
        while True:
            for _ in range(200):
                await ws.send_bytes(b"Q" * 4096)
            await asyncio.sleep(0)


async def _charged(rclient: RedisClient, n: int) -> bool:
    for _ in range(1200):  # 60 s: a hang bound
        if FUNDS - (await read_balances(rclient, WS)).app[APP] == n * CENT:
            return True
        await asyncio.sleep(0.05)
    return False


async def _only_ws() -> list[str]:
    return [WS]


async def _sweep_as_the_next_start(redis_url: str, tmp_path: Path, rclient: RedisClient) -> int:
    """Once the gateway stopped: what its next start does, without waiting out the refund
    window. The stopped worker's journal is replayed (confirmations it had not got into
    Redis, as each sweeper pass does first), then the gateway's own sweeper refunds every
    charge still reserved, its clock past the window; nothing may stay reserved. The
    number refunded."""
    await replay(rclient, tmp_path / "state")
    refunds = admitter(rclient, make_settings(redis_url, tmp_path))
    sweeper = Sweeper(rclient, _only_ws, lambda a, r: refunds.void(a, r, ""),
                      clock=lambda: time.time() + REFUND_WINDOW_S + 1)  # fmt: skip
    swept = await sweeper.sweep_once()
    assert await rclient.zcard(keys.reservations_key(WS)) == 0
    return swept


@pytest.mark.parametrize("flood", [False, True], ids=["sent", "flooding"])
async def test_sigterm_ends_every_bot_connection_with_what_it_was_charged(
    redis_url: str,
    tmp_path: Path,
    rclient: RedisClient,
    http: aiohttp.ClientSession,
    flood: bool,
) -> None:
    spec = {"product": "contact_center", "funds": FUNDS}
    settings = {
        "workers": 1,
        # The connect to the bot must succeed: a hang bound (1 s, then 8 s, were bounds a
        # busy machine could pass: a 502). It may be at most two thirds of the refund
        # window (the settings' check). The untaken message of a dropped stalled send is
        # the sweeper's to refund: run below once the gateway stopped, its clock past the
        # window (the window is not waited out).
        "upstream_connect_timeout_s": CONNECT_S,
        "refund_window_s": REFUND_WINDOW_S,
        # A stalled send waits 6 s (at most half the refund window, the settings' check):
        # the flooding client's socket is mid-stall at the SIGTERM or already closed
        # 1011, and either way its bot gets what it was charged.
        "ws_send_timeout_s": 6.0,
        "rate_per_minute": 10_000_000,
        "rate_per_hour": 10_000_000,
        "ws_linger_s": 120.0,  # a hang bound only: the bot reads to its end before it
    }
    async with TalkingBot() as bot:
        spec["upstream_url"] = bot.url
        async with seeded_serve(rclient, redis_url, tmp_path, WS, {APP: spec}, **settings) as gw:
            worker = _worker(gw.proc.pid)
            log = tmp_path / "serve.log"
            ws = await http.ws_connect(f"{gw.traffic}/hooks/web/{APP}/s?user=u", max_msg_size=0)
            flooding = asyncio.create_task(_flood(ws)) if flood else None
            try:
                if not flood:
                    for _ in range(SENT):
                        await ws.send_bytes(b"Q" * 20)
                    assert await _charged(rclient, SENT)  # all of them, before the SIGTERM
                # The client reads nothing: the gateway's writes to it wait, so it stops
                # reading the bot, whose writes then wait too.
                await asyncio.wait_for(bot.stalled.wait(), 60)  # a bound for a hang only
                os.kill(worker, signal.SIGTERM)
                await asyncio.wait_for(bot.done.wait(), 90)  # a bound for a hang only
                exited = f"worker {worker} exited with"
                assert await eventually(lambda: exited in tail(log)), tail(log)
            finally:
                if flooding is not None:
                    flooding.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await flooding
                await ws.close()
            assert f"worker {worker} exited with 0;" in tail(log), tail(log)
            assert "Traceback" not in log.read_text(), tail(log)
            assert bot.end == "eof"  # the gateway's end of stream, after all it held
            if not flood:
                assert bot.got == [20] * SENT
                # No send in flight: the bot's side was closed, 1001, after them (a stalled
                # send's connection is dropped without a close frame).
                assert bot.close == 1001
    # The gateway stopped: nothing sends or confirms any more. Once nothing is left for
    # the sweeper, every charge is a message the bot read.
    swept = await _sweep_as_the_next_start(redis_url, tmp_path, rclient)
    charged = (FUNDS - (await read_balances(rclient, WS)).app[APP]) // CENT
    assert charged == len(bot.got), swept
    assert charged > 1
