"""A bot that answers a client message it has not taken whole, then fails its send: the
client must not get the answer of a message that is refunded (gateway/ws_pump.py).

A large message's frame waits on the bot's reading. A bot that reads raw bytes reads the
start (the question), answers it, then fails the send: it resets its connection (the send
fails: refunded as ``connect``), closes it (the send cut short, left to the sweeper) or
stops reading (past the deadline: refunded). Each was refunded while the client got the
answer: every message of a tenant whose SDK pads its messages served for free. A bot
message is now passed on only once the frame in flight is taken (charged), never after
a failed one.
"""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

import aiohttp
import pytest
from aiohttp import WSMsgType

from meter.accounts.projection import read_balances
from meter.accounts.seeding import seed
from meter.redis_layer.client import RedisClient
from tests.support.bot import eventually
from tests.support.ws_frames import accept_upgrade, settled, tight_bot
from tests.system.test_fastpath_limits import unsent
from tests.system.test_ws_stalled_bot import (
    APP,
    CENT,
    SIZE,
    WS,
    gateway_with_sweeper,
    send_deadline_settings,
)

pytestmark = pytest.mark.usefixtures("traffic_server")

FUNDS = 100 * CENT
ANSWER = b"the answer"
# How the bot ends, and whether it waits for the client to have the answer first (it
# never does now: past the deadline the send fails and the answer is withheld).
CASES = {
    "reset once answered": ("reset", False),
    "close once answered": ("close", False),
    "stall once answered": ("stall", False),
    "reset at once": ("reset", True),
    "close at once": ("close", True),
    "a close code for an answer": ("code", True),
}
CODE = 4242  # what the bot's close says: a number for an answer


class PeekingBot:
    """Reads the head and the first bytes of the client's frame, answers, then (once the
    client has the answer, ``answered``, or ``at_once``: once the gateway's kernel has
    it) ends as ``ending`` says, reading no more, and closes once ``released``."""

    def __init__(self, ending: str, at_once: bool) -> None:
        self.ending, self.at_once = ending, at_once
        self.answered = asyncio.Event()
        self.released = asyncio.Event()
        self.done = asyncio.Event()
        self.url = ""
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> PeekingBot:
        self._server, self.url = await tight_bot(self._handle)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.answered.set()
        self.released.set()
        assert self._server is not None
        self._server.close()

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            await accept_upgrade(r, w)
            await w.drain()
            _, b1 = await r.readexactly(2)
            await r.readexactly({126: 2, 127: 8}.get(b1 & 0x7F, 0) + 4 + 1000)  # the start
            if self.ending == "code":  # the close frame's code is the answer
                w.write(b"\x88\x02" + struct.pack("!H", CODE))
                await w.drain()
                await self.released.wait()
                return
            w.write(bytes([0x81, len(ANSWER)]) + ANSWER)
            await w.drain()
            if self.at_once:
                assert await eventually(lambda: unsent(w.get_extra_info("socket")) == 0)
            else:
                await self.answered.wait()
            if self.ending == "reset":  # closed with input unread: a reset
                w.transport.abort()
            elif self.ending == "close":
                w.write(b"\x88\x02\x03\xe8")  # 1000
                await w.drain()
            await self.released.wait()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.done.set()
            w.close()


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
async def test_a_refunded_message_never_gets_the_answer_the_bot_sent_while_it_was_sent(
    redis_url: str,
    tmp_path: Path,
    rclient: RedisClient,
    http: aiohttp.ClientSession,
    case: str,
) -> None:
    # The send waits at most 1 s; the sweeper refunds what is left to it 2 s after its
    # charge (a send cut short: every message here is to be refunded, so it can only
    # help). The connect to the bot has a hang bound (it had 1 s: a busy machine's 502).
    settings = send_deadline_settings(
        redis_url,
        tmp_path,
        1.0,
        refund_window_s=2.0,
        max_body_bytes=16 << 20,
        ws_linger_s=60.0,  # a bound for a hang only
    )
    async with PeekingBot(*CASES[case]) as bot:
        spec = {"product": "contact_center", "upstream_url": bot.url, "funds": FUNDS}
        await seed(rclient, settings, WS, {APP: spec})
        async with (
            gateway_with_sweeper(settings) as gw,
            http.ws_connect(f"{gw.url}/hooks/web/{APP}/peek?user=u", max_msg_size=0) as ws,
        ):
            got = []
            try:
                await ws.send_bytes(b"Q" * SIZE)
                # bounds for a hang only
                while (msg := await ws.receive(timeout=60)).type is WSMsgType.TEXT:
                    got.append(msg.data)
                    bot.answered.set()
            finally:
                bot.answered.set()
                bot.released.set()
            assert msg.type is WSMsgType.CLOSE
            assert msg.data != CODE  # the bot's close answers no refunded message either
            await asyncio.wait_for(bot.done.wait(), 60)
            assert await settled(rclient, WS)  # confirmed, or refunded (the sweeper too)
            charged = FUNDS - (await read_balances(rclient, WS)).app[APP]
    assert (got, charged) == ([], 0)  # was: the answer, and refunded
