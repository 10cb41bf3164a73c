"""The fast traffic path (``traffic_server = "fast"``): which requests it serves itself,
and that everything else is handed to aiohttp on the same connection and answered as
aiohttp answers it (real sockets, real Redis, a real bot)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest
from yarl import URL

from gateway.appkeys import TRAFFIC_STATS
from gateway.traffic_stats import TrafficStats
from meter.accounts.projection import read_balances
from meter.accounts.seeding import seed
from meter.redis_layer.client import RedisClient
from tests.support.bot import Bot, Running, raw_exchange, running_gateway
from tests.support.settings import make_settings

WS = "fastp"
APP = f"{WS}_app1"
POOR = f"{WS}_poor"
TLS = f"{WS}_tlsbot"
FUNDS = 1_000_000  # five sessions
USER = {"X-Channel-User-Id": "u1"}
USER_LINE = "X-Channel-User-Id: u2"  # a second user: one would be charged, the bot reads both


@pytest.fixture
async def gw(
    redis_url: str, tmp_path: Path, rclient: RedisClient, bot: Bot
) -> AsyncIterator[Running]:
    settings = make_settings(redis_url, tmp_path, traffic_server="fast")
    port = URL(bot.url).port
    apps = {
        APP: {"product": "automation", "upstream_url": bot.url, "funds": FUNDS},
        POOR: {"product": "automation", "upstream_url": bot.url},
        # TLS spoken to a plain-HTTP bot: the fast path hands https bots to aiohttp
        TLS: {"product": "automation", "upstream_url": f"https://127.0.0.1:{port}", "funds": FUNDS},
    }
    await seed(rclient, settings, WS, apps)
    async with running_gateway(settings) as running:
        yield running


def stats(gw: Running) -> TrafficStats:
    return gw.gateway.traffic[TRAFFIC_STATS]


async def balance(rclient: RedisClient) -> int:
    return (await read_balances(rclient, WS)).app[APP]


async def test_small_messages_are_served_by_the_fast_path_on_one_connection(
    gw: Running, bot: Bot, http: aiohttp.ClientSession, rclient: RedisClient
) -> None:
    for i in range(3):
        url = f"{gw.url}/hooks/web/{APP}/in/{i}?q=a%20b&x"
        async with http.post(url, data=b'{"n": %d}' % i, headers=USER) as resp:
            assert resp.status == 200
            assert resp.headers["X-Bot"] == "1"
            doc = await resp.json()
        assert doc["raw_path"] == f"/in/{i}?q=a%20b&x"
        assert doc["body"] == '{"n": ' + str(i) + "}"
    assert stats(gw).fast == 3
    assert stats(gw).handed_off == 0
    call = bot.calls[0]
    assert call.headers["X-Channel-User-Id"] == "u1"
    assert call.headers["Via"].endswith("1.1 creditgate")
    assert call.headers["X-Forwarded-For"] == "127.0.0.1"
    assert call.headers["X-Forwarded-Proto"] == "http"
    assert call.headers["Content-Length"] == "8"
    assert await balance(rclient) == FUNDS - 200_000  # one session for three messages


async def test_refusals_and_bad_paths_are_problem_documents(
    gw: Running, bot: Bot, http: aiohttp.ClientSession
) -> None:
    for url, status, code in (
        (f"{gw.url}/hooks/web/{POOR}", 402, "credits_exhausted"),
        (f"{gw.url}/hooks/web/{WS}_nope1", 404, "unknown_app"),
    ):
        async with http.post(url, data=b"x", headers=USER) as resp:
            assert resp.status == status
            assert resp.content_type == "application/problem+json"
            assert (await resp.json())["code"] == code
    async with http.post(f"{gw.url}/hooks/web/{APP}", data=b"x") as resp:
        assert (resp.status, (await resp.json())["code"]) == (400, "missing_channel_user")
    assert bot.count() == 0
    assert stats(gw).fast == 3
    assert stats(gw).handed_off == 0


async def test_bot_5xx_is_withheld_and_refunded(
    gw: Running, bot: Bot, http: aiohttp.ClientSession, rclient: RedisClient
) -> None:
    async with http.post(f"{gw.url}/hooks/web/{APP}/status/503", data=b"x", headers=USER) as r:
        assert r.status == 502
        body = await r.read()
    assert b"bot says" not in body
    assert orjson.loads(body)["code"] == "upstream_error"
    assert await balance(rclient) == FUNDS
    assert stats(gw).fast == 1


async def test_chunked_upload_head_and_https_bots_are_handed_to_aiohttp(
    gw: Running, bot: Bot
) -> None:
    # A connection handed off stays with aiohttp: one connection per request here.
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
    try:
        await _three_hand_offs(gw, bot, http)
    finally:
        await http.close()
    assert stats(gw).handed_off == 3
    assert stats(gw).fast == 0


async def _three_hand_offs(gw: Running, bot: Bot, http: aiohttp.ClientSession) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b"z" * 1000

    async with http.post(f"{gw.url}/hooks/web/{APP}/up", data=chunks(), headers=USER) as resp:
        assert resp.status == 200
    assert bot.calls[-1].body == b"z" * 3000
    async with http.head(f"{gw.url}/hooks/web/{APP}/h", headers=USER) as resp:
        assert resp.status == 200
        assert await resp.read() == b""
    assert bot.calls[-1].method == "HEAD"
    async with http.post(f"{gw.url}/hooks/web/{TLS}", data=b"x", headers=USER) as resp:
        assert resp.status == 502  # aiohttp's TLS handshake with a plain bot fails
        assert (await resp.json())["code"] == "upstream_unavailable"


async def test_websocket_through_the_fast_server(
    gw: Running, bot: Bot, http: aiohttp.ClientSession
) -> None:
    async with http.ws_connect(f"{gw.url}/hooks/web/{APP}/ws?user=u1") as ws:
        await ws.send_str("hello")
        assert (await ws.receive(timeout=60)).data == "echo:hello"
    assert bot.ws_messages == ["hello"]
    assert stats(gw).handed_off == 1


async def test_pipelined_requests_are_answered_in_order_across_a_hand_off(
    gw: Running, bot: Bot
) -> None:
    host = URL(gw.url).authority
    fast = f"POST /hooks/web/{APP}/one HTTP/1.1\r\nHost: {host}\r\nX-Channel-User-Id: u1\r\n"
    fast += "Content-Length: 3\r\n\r\nabc"
    head = f"HEAD /hooks/web/{APP}/two HTTP/1.1\r\nHost: {host}\r\nX-Channel-User-Id: u1\r\n\r\n"
    last = f"GET /hooks/web/{APP}/three HTTP/1.1\r\nHost: {host}\r\nX-Channel-User-Id: u1\r\n"
    last += "Connection: close\r\n\r\n"
    answer = await raw_exchange(gw.url, (fast + head + last).encode())
    assert answer.count(b"HTTP/1.1 200 OK") == 3
    assert [c.path_qs for c in bot.calls] == ["/one", "/two", "/three"]
    assert bot.calls[0].body == b"abc"
    assert stats(gw).fast == 1
    assert stats(gw).handed_off == 1


@pytest.mark.parametrize(
    "framing",
    [
        "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        "Transfer-Encoding: xchunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        "Transfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        "Content-Length: 3\r\n" + ("X-Big: " + "b" * 8000 + "\r\n") * 10 + "\r\nabc",
        f"Content-Length: 3\r\n{USER_LINE}\r\n\r\nabc",
        "Content-Length: +3\r\n\r\nabc",
    ],
)
async def test_ambiguous_framing_is_refused_and_never_forwarded(
    gw: Running, bot: Bot, framing: str
) -> None:
    req = f"POST /hooks/web/{APP} HTTP/1.1\r\nHost: x\r\nX-Channel-User-Id: u1\r\n{framing}"
    answer = await raw_exchange(gw.url, req.encode())
    status = answer.split(b"\r\n")[0].split(b" ")[1]
    assert status in (b"400", b"431", b"501"), answer[:200]  # aiohttp's (http_rules) answer
    assert b"application/problem+json" in answer
    assert bot.count() == 0
    assert stats(gw).fast == 0


async def test_stop_drains_the_request_in_flight(
    redis_url: str, tmp_path: Path, rclient: RedisClient, bot: Bot
) -> None:
    settings = make_settings(redis_url, tmp_path, traffic_server="fast")
    app = {"product": "automation", "upstream_url": bot.url, "funds": FUNDS}
    await seed(rclient, settings, WS, {APP: app})
    async with aiohttp.ClientSession() as http:
        async with running_gateway(settings) as gw:
            url = f"{gw.url}/hooks/web/{APP}/slow/1"
            pending = asyncio.ensure_future(http.post(url, headers=USER, data=b"x"))
            for _ in range(200):
                if bot.count():
                    break
                await asyncio.sleep(0.05)
        # the gateway stopped after the slow request was answered, not before
        resp = await pending
        assert resp.status == 200
        assert await resp.read() == b"slow done"
        resp.release()


async def test_a_half_closed_client_gets_its_answer_and_a_stalled_body_is_cut_off(
    redis_url: str, tmp_path: Path, rclient: RedisClient, bot: Bot
) -> None:
    settings = make_settings(redis_url, tmp_path, traffic_server="fast")
    app = {"product": "automation", "upstream_url": bot.url, "funds": FUNDS}
    await seed(rclient, settings, WS, {APP: app})
    head = f"POST /hooks/web/{APP}/h HTTP/1.1\r\nHost: x\r\nX-Channel-User-Id: u1\r\n"
    async with running_gateway(settings) as gw:
        u = URL(gw.url)
        reader, writer = await asyncio.open_connection(u.host, u.port)
        writer.write(f"{head}Content-Length: 2\r\n\r\nhi".encode())
        writer.write_eof()  # half-closed: the answer must still come, then the close
        answer = await asyncio.wait_for(reader.read(), 60)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 200 OK")
        assert b'"body": "hi"' in answer
    # The stalled body must be cut off: a header timeout waited out, on a gateway of its
    # own (the request above must not race it). It also bounds the start of the request
    # that stalls, which must arrive first: 0.5 s, a busy machine passed it (the
    # connection then closed before it, and reset by it).
    settings = make_settings(redis_url, tmp_path, traffic_server="fast", header_timeout_s=5.0)
    async with running_gateway(settings) as gw:
        u = URL(gw.url)
        reader, writer = await asyncio.open_connection(u.host, u.port)
        writer.write(f"{head}Content-Length: 10\r\n\r\n01234".encode())  # then nothing
        assert await asyncio.wait_for(reader.read(), 60) == b""  # closed, unanswered
        writer.close()
    assert [c.path_qs for c in bot.calls] == ["/h"]
