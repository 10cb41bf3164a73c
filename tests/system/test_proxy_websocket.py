"""WebSocket proxying: every client -> bot message is metered; a refusal closes the
socket with 1008 and the refusal code, and nothing more reaches the bot."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import ClientWSTimeout, web

from gateway import websocket, ws_pump
from meter.accounts.projection import read_balances
from meter.accounts.seeding import seed
from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient
from tests.support.bot import Bot, Running, running_gateway, serve
from tests.support.settings import HOST, make_settings
from tests.support.ws_frames import accept_upgrade

# Each test runs against both traffic servers (aiohttp, the fast path).
pytestmark = pytest.mark.usefixtures("traffic_server")

WS = "wsock"
APP = f"{WS}_app1"
POOR = f"{WS}_poor"
CENT = 10_000  # contact_center: $0.01 per request


@pytest.fixture
async def gw(
    redis_url: str, tmp_path: Path, rclient: RedisClient, bot: Bot
) -> AsyncIterator[Running]:
    settings = make_settings(redis_url, tmp_path)
    apps = {
        APP: {"product": "contact_center", "upstream_url": bot.url, "funds": 100 * CENT * 2},
        POOR: {"product": "contact_center", "upstream_url": bot.url, "funds": 5 * CENT},
    }
    await seed(rclient, settings, WS, apps)
    async with running_gateway(settings) as running:
        yield running


async def test_hundred_messages_hundred_metered(
    gw: Running, bot: Bot, http: aiohttp.ClientSession, rclient: RedisClient
) -> None:
    async with http.ws_connect(f"{gw.url}/hooks/web/{APP}/ws?user=u1") as ws:
        for i in range(100):
            await ws.send_str(f"m{i}")
            reply = await ws.receive()
            assert reply.data == f"echo:m{i}"
        await ws.send_bytes(b"\x00\x01")
        assert (await ws.receive()).data == b"\x00\x01"
    assert len(bot.ws_messages) == 101
    assert (await read_balances(rclient, WS)).app[APP] == 200 * CENT - 101 * CENT
    # Summed over the flush buckets: the messages may straddle a bucket's end (the test
    # read one bucket alone, and failed whenever they did).
    field = keys.agg_field(APP, "web", "contact_center", "request", "m")
    buckets = await rclient.zrange(keys.agg_index_key(WS), 0, -1)
    counted = [await rclient.hget(keys.agg_key(WS, int(b)), field) for b in buckets]
    assert sum(int(c or 0) for c in counted) == 101


async def test_running_out_of_credit_mid_stream_closes_1008(
    gw: Running, bot: Bot, http: aiohttp.ClientSession
) -> None:
    headers = {"X-Channel-User-Id": "u1"}
    async with http.ws_connect(f"{gw.url}/hooks/web/{POOR}/ws", headers=headers) as ws:
        for i in range(10):
            await ws.send_str(f"m{i}")
        replies = []
        async for msg in ws:
            replies.append(msg.data)
        assert ws.close_code == 1008
    assert replies == [f"echo:m{i}" for i in range(5)]
    assert bot.ws_messages == [f"m{i}" for i in range(5)]
    async with http.get(f"{gw.admin_url}/metrics") as resp:
        text = await resp.text()
    assert 'creditgate_refusals_total{reason="credits_exhausted"} 1.0' in text


@contextlib.asynccontextmanager
async def closing_bot(answer_close: bool) -> AsyncIterator[tuple[str, list[str]]]:
    """A bot that holds its answers until the gateway's close frame comes, then sends
    them and answers the close (``answer_close``), or never answers it: its URL, and the
    messages it answered."""
    answered: list[str] = []
    release = asyncio.Event()  # a bot that never answers the close waits for this

    async def late(request: web.Request) -> web.StreamResponse:
        sock = web.WebSocketResponse(autoclose=False)
        await sock.prepare(request)
        held: list[str] = []
        while (msg := await sock.receive()).type is aiohttp.WSMsgType.TEXT:
            held.append(msg.data)
        if msg.type is aiohttp.WSMsgType.CLOSE:
            for data in held:  # before its own close frame, as a bot finishing up
                await sock.send_str(f"late:{data}")
                answered.append(data)
            if not answer_close:
                await release.wait()  # the gateway must drop it, then close the client
        await sock.close()
        return sock

    app = web.Application()
    app.router.add_get("/{tail:.*}", late)
    async with serve(app) as url:
        try:
            yield url, answered
        finally:
            release.set()  # before the bot's server waits for its handlers


@pytest.mark.parametrize("answer_close", [True, False], ids=["answers", "never_answers"])
async def test_a_refusal_still_delivers_the_bot_s_answers_to_paid_messages(
    redis_url: str,
    tmp_path: Path,
    rclient: RedisClient,
    http: aiohttp.ClientSession,
    answer_close: bool,
) -> None:
    """The bot's answer to the last message paid for, sent as the next one is refused,
    reached the client only if it beat Redis's refusal: the gateway closed the bot's side
    and dropped what came before its close frame (a bot slower than Redis, an LLM's,
    never won). This bot answers only once the gateway's close frame comes: it went
    unanswered every time, on both servers. A bot that then never answers the close is
    dropped once its wait is over, and the client still gets its 1008."""
    # The bot's wait for the close: the send deadline, at most 10 s; the answers must
    # arrive within it on a busy machine, so it is a hang bound, not a timer: the
    # default 10 s for a bot that answers, 5 s for one that never does (its test waits
    # the whole bound). Set alone (it was half a 10 s refund window, which left the
    # connect to the bot 6.7 s).
    send = {} if answer_close else {"ws_send_timeout_s": 5.0}
    settings = make_settings(redis_url, tmp_path, **send)
    async with closing_bot(answer_close) as (url, answered):
        app = {"product": "contact_center", "upstream_url": url, "funds": 2 * CENT}
        await seed(rclient, settings, "wslate", {"wslate_app1": app})
        async with running_gateway(settings) as gw:
            url, headers = f"{gw.url}/hooks/web/wslate_app1/ws", {"X-Channel-User-Id": "u1"}
            async with http.ws_connect(url, headers=headers) as ws:
                for data in ("m0", "m1", "m2"):  # two paid for, the third refused
                    await ws.send_str(data)
                replies = [msg.data async for msg in ws]
                assert ws.close_code == 1008
    assert answered == ["m0", "m1"]
    assert replies == ["late:m0", "late:m1"]


class RawBot:
    """A bot speaking raw WebSocket frames, so that it sees every frame the gateway sends:
    it holds its answers until the gateway's close frame comes, then sends them and answers
    the close, or (``first``) answers the first message at once and closes first; its
    close frame has ``status`` (None: none, an empty close frame). It then keeps its side
    open, reading, until the gateway ends the connection (``ended``): ``after``, the frames
    (opcode, payload) that came after its close frame."""

    def __init__(self, status: int | None, first: bool) -> None:
        self.status, self.first = status, first
        self.after: list[tuple[int, bytes]] = []
        self.ended = asyncio.Event()

    async def handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            await accept_upgrade(r, w)
            held: list[bytes] = []
            while (frame := await _frame(r))[0] != CLOSE:
                held.append(frame[1])
                if self.first:
                    break
            for data in held:
                w.write(b"\x81" + bytes([len(data) + 5]) + b"late:" + data)
            status = b"" if self.status is None else struct.pack("!H", self.status)
            w.write(b"\x88" + bytes([len(status)]) + status)
            while True:
                self.after.append(await _frame(r))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the gateway ended the connection
        finally:
            self.ended.set()
            w.close()


CLOSE = 8


async def _frame(r: asyncio.StreamReader) -> tuple[int, bytes]:
    """The next frame from the gateway (small, masked): its opcode and payload."""
    head = await r.readexactly(2)
    mask = await r.readexactly(4)
    data = await r.readexactly(head[1] & 0x7F)
    return head[0] & 0x0F, bytes(b ^ mask[i % 4] for i, b in enumerate(data))


@pytest.mark.parametrize("first", [False, True], ids=["answers", "closes_first"])
@pytest.mark.parametrize("status", [1000, None], ids=["status", "no_status"])
async def test_one_close_frame_each_way_and_the_bot_s_ends_the_socket(
    redis_url: str,
    tmp_path: Path,
    rclient: RedisClient,
    http: aiohttp.ClientSession,
    status: int | None,
    first: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Once the bot had answered the gateway's close frame (a refusal's), the handler's
    close wrote it a second one; and when that answer, or a close of the bot's own, had no
    status code, the handler then waited for another close frame from the bot for
    aiohttp's ``ws_close`` or ``CLOSE_ANSWER_S`` (10 s each) before the client got its
    close. Here both waits are an hour, so the test's bound is a hang bound, not a speed
    check."""
    monkeypatch.setattr(
        aiohttp.client, "DEFAULT_WS_CLIENT_TIMEOUT", ClientWSTimeout(ws_receive=None, ws_close=3600)
    )
    for module in (ws_pump, websocket):
        monkeypatch.setattr(module, "CLOSE_ANSWER_S", 3600.0)
    settings = make_settings(redis_url, tmp_path)
    bot = RawBot(status, first)
    server = await asyncio.start_server(bot.handle, HOST, 0)
    try:
        url = f"http://{HOST}:{server.sockets[0].getsockname()[1]}"
        app = {"product": "contact_center", "upstream_url": url, "funds": 2 * CENT}
        await seed(rclient, settings, "wsraw", {"wsraw_app1": app})
        async with running_gateway(settings) as gw:
            headers = {"X-Channel-User-Id": "u1"}
            async with http.ws_connect(f"{gw.url}/hooks/web/wsraw_app1/ws", headers=headers) as ws:
                # Two paid for, the third refused; a bot that closes first reads one.
                for data in ("m0",) if first else ("m0", "m1", "m2"):
                    await ws.send_str(data)
                assert (await ws.receive(timeout=60)).data == "late:m0"  # a hang bound
                # Then, the bot's close frame on its way with its last answer, the client's
                # close (a hang bound: the old waits were an hour here).
                async with asyncio.timeout(60):
                    replies = [msg.data async for msg in ws]
            await asyncio.wait_for(bot.ended.wait(), 60)  # a hang bound
    finally:
        server.close()
    if first:  # the bot's own close: answered with its code (1000 for none), once
        assert (ws.close_code, replies) == (1000, [])
        assert bot.after == [(CLOSE, struct.pack("!H", 1000))]
    else:
        assert (ws.close_code, replies) == (1008, ["late:m1"])
        assert bot.after == []


async def test_refusal_reason_is_the_close_message(gw: Running, bot: Bot) -> None:
    async with (
        aiohttp.ClientSession() as s,
        s.ws_connect(f"{gw.url}/hooks/web/{POOR}/ws?user=u2", autoclose=False) as ws,
    ):
        for i in range(6):
            await ws.send_str(f"x{i}")
        while (msg := await ws.receive()).type is aiohttp.WSMsgType.TEXT:
            pass
    assert msg.type is aiohttp.WSMsgType.CLOSE
    assert (msg.data, msg.extra) == (1008, "credits_exhausted")
    assert len(bot.ws_messages) == 5


async def test_websocket_needs_a_user_and_a_known_app(
    gw: Running, http: aiohttp.ClientSession
) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await http.ws_connect(f"{gw.url}/hooks/web/{APP}/ws")
    assert err.value.status == 400
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await http.ws_connect(f"{gw.url}/hooks/web/{WS}_nope/ws?user=u")
    assert err.value.status == 404
