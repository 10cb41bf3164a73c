"""The gateway is a transparent proxy: what the channel sends is what the bot gets, and
the bot's answer streams back unchanged (real sockets, real Redis, a real bot)."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator

import aiohttp
import pytest
from yarl import URL

from meter.redis_layer.client import RedisClient
from tests.support.bot import CHUNK, Bot, Running, SeededGateway, free_credit

# Each test runs against both traffic servers (aiohttp, the fast path).
pytestmark = pytest.mark.usefixtures("traffic_server")

WS = "transp"
APP = f"{WS}_app1"
USER = {"X-Channel-User-Id": "u1"}


@pytest.fixture
async def gw(seeded_gateway: SeededGateway) -> AsyncIterator[Running]:
    apps = {APP: {"product": "automation"}}
    # The 413 tests' answers are read in the test; the gateway's lingering close after
    # them (the client stops sending once it has its answer) only held the teardown, for
    # aiohttp's 10 s (both traffic servers: 40 s of the suite's time).
    async with seeded_gateway(
        WS, apps, free=500_000_000, max_body_bytes=2 * 1024 * 1024, body_linger_s=0.5
    ) as running:
        yield running


async def test_method_path_query_body_headers_and_status(
    gw: Running, bot: Bot, http: aiohttp.ClientSession
) -> None:
    url = URL(f"{gw.url}/hooks/web/{APP}/a/b%20c/?x=1&y=%2F&x=2", encoded=True)
    headers = {
        **USER,
        "X-Custom": "v1",
        "Content-Type": "text/plain",
        "Cookie": "c=1",
        "User-Agent": "channel-agent/1",
    }
    async with http.put(url, data=b"hello \x00 bot", headers=headers) as resp:
        assert resp.status == 201
        assert resp.headers["X-Bot"] == "1"
        echo = await resp.json()
    assert echo["method"] == "PUT"
    assert echo["raw_path"] == "/a/b%20c/?x=1&y=%2F&x=2"
    assert echo["body"] == "hello \x00 bot"
    [call] = bot.calls
    assert call.headers["X-Custom"] == "v1"
    assert call.headers["Content-Type"] == "text/plain"
    assert call.headers["Cookie"] == "c=1"
    assert call.headers["X-Channel-User-Id"] == "u1"
    assert call.headers["X-Forwarded-For"] == "127.0.0.1"
    assert call.headers["X-Forwarded-Proto"] == "http"
    assert call.headers["X-Forwarded-Host"] == gw.url.removeprefix("http://")
    assert call.headers["X-Request-Id"]
    assert call.headers["User-Agent"] == "channel-agent/1"


@pytest.mark.parametrize("method", ["GET", "POST", "PATCH", "DELETE", "OPTIONS", "HEAD"])
async def test_every_method_reaches_the_bot(
    gw: Running, bot: Bot, http: aiohttp.ClientSession, method: str
) -> None:
    async with http.request(method, f"{gw.url}/hooks/web/{APP}", headers=USER) as resp:
        assert resp.status == 200
        await resp.read()
    assert [(c.method, c.path_qs) for c in bot.calls] == [(method, "/")]


async def test_request_id_and_forwarded_for_are_kept_and_appended(
    gw: Running, bot: Bot, http: aiohttp.ClientSession
) -> None:
    headers = {**USER, "X-Request-Id": "rid-1", "X-Forwarded-For": "10.0.0.1"}
    async with http.post(f"{gw.url}/hooks/web/{APP}/x", data=b"{}", headers=headers) as resp:
        assert resp.status == 200
    [call] = bot.calls
    assert call.headers["X-Request-Id"] == "rid-1"
    assert call.headers["X-Forwarded-For"] == "10.0.0.1, 127.0.0.1"


async def test_hop_by_hop_headers_are_not_forwarded(
    gw: Running, bot: Bot, http: aiohttp.ClientSession
) -> None:
    headers = {
        **USER,
        "Connection": "keep-alive, X-Hop-Listed",
        "X-Hop-Listed": "secret",
        "Keep-Alive": "timeout=5",
        "Proxy-Authorization": "Basic Zm9vOmJhcg==",
        "Proxy-Foo": "bar",
        "TE": "trailers",
        "Trailer": "X-Checksum",
        "X-End-To-End": "kept",
    }
    async with http.get(f"{gw.url}/hooks/web/{APP}/hop", headers=headers) as resp:
        assert resp.status == 200
        assert resp.headers["X-End-To-End"] == "kept"
        for name in ("X-Resp-Hop", "Keep-Alive", "Proxy-Authenticate"):
            assert name not in resp.headers, name
    [call] = bot.calls
    names = {k.lower() for k in call.headers}
    for hop in ("x-hop-listed", "keep-alive", "proxy-authorization", "proxy-foo", "te", "trailer"):
        assert hop not in names, hop
    assert call.headers["X-End-To-End"] == "kept"


async def test_header_names_with_underscores_do_not_reach_the_bot(
    gw: Running, bot: Bot, http: aiohttp.ClientSession
) -> None:
    # A bot's server that maps "_" and "-" to one name (WSGI: HTTP_X_CHANNEL_USER_ID)
    # would read the client's second user id beside the one the gateway metered.
    headers = {**USER, "X_Channel_User_Id": "victim", "X_Other": "x", "X-Kept": "k"}
    async with http.post(f"{gw.url}/hooks/web/{APP}/u", data=b"{}", headers=headers) as resp:
        assert resp.status == 200
    [call] = bot.calls
    assert [k for k, _ in call.raw_headers if "_" in k] == []
    assert (call.headers["X-Channel-User-Id"], call.headers["X-Kept"]) == ("u1", "k")


async def test_the_bot_is_told_which_app_a_message_is_for(
    gw: Running, bot: Bot, http: aiohttp.ClientSession
) -> None:
    # A tenant may point its app at another tenant's bot: the gateway names the app, so
    # that bot can refuse messages that are not its own; a client cannot name another.
    headers = {**USER, "X-Creditgate-App": "someone_else", "x-creditgate-app": "again"}
    async with http.post(f"{gw.url}/hooks/web/{APP}/a", data=b"{}", headers=headers) as resp:
        assert resp.status == 200
    [call] = bot.calls
    assert call.headers.getall("X-Creditgate-App") == [APP]


async def test_ten_megabyte_response_is_streamed_not_buffered(
    gw: Running, bot: Bot, http: aiohttp.ClientSession
) -> None:
    size = 10 * 1024 * 1024
    async with http.get(f"{gw.url}/hooks/web/{APP}/stream/{size}", headers=USER) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == str(size)
        # The bot holds everything after its first chunk until we release it: a
        # buffering proxy would deadlock here.
        first = await asyncio.wait_for(resp.content.readexactly(CHUNK), 60)
        assert not bot.finished.is_set()
        bot.release.set()
        rest = await resp.content.read()
    body = first + rest
    assert len(body) == size
    pattern = bytes(range(256)) * (CHUNK // 256)
    assert body == pattern * (size // CHUNK)


async def test_large_chunked_request_body_streams_through(
    gw: Running, bot: Bot, http: aiohttp.ClientSession
) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB, under the 2 MiB limit

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(payload), 100_000):
            yield payload[i : i + 100_000]

    async with http.post(f"{gw.url}/hooks/web/{APP}/up", data=chunks(), headers=USER) as resp:
        assert resp.status == 200
    assert bot.calls[0].body == payload


async def test_oversized_body_is_413_and_bot_not_called(
    gw: Running, bot: Bot, http: aiohttp.ClientSession
) -> None:
    big = io.BytesIO(b"x" * (2 * 1024 * 1024 + 1))
    async with http.post(f"{gw.url}/hooks/web/{APP}", data=big, headers=USER) as resp:
        assert resp.status == 413
        assert resp.content_type == "application/problem+json"
        assert (await resp.json())["code"] == "body_too_large"
    assert bot.count() == 0


@pytest.mark.parametrize(
    ("key", "charged"),
    [
        pytest.param({}, True, id="unkeyed"),  # streamed after its admission: charged
        pytest.param({"Idempotency-Key": "k1"}, False, id="keyed"),  # read first: refused
        pytest.param({"X-Request-Id": "r1"}, False, id="request-id"),
    ],
)
async def test_oversized_chunked_body_is_413(
    gw: Running,
    bot: Bot,
    http: aiohttp.ClientSession,
    rclient: RedisClient,
    key: dict[str, str],
    charged: bool,
) -> None:
    """README (refusals, MAX_BODY_BYTES): which oversized chunked body is charged."""

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(40):
            yield b"y" * 100_000

    before = await free_credit(rclient, WS)
    url = f"{gw.url}/hooks/web/{APP}/up"
    async with http.post(url, data=chunks(), headers={**USER, **key}) as resp:
        assert resp.status == 413
        assert (await resp.json())["code"] == "body_too_large"
    assert all(len(c.body) <= 2 * 1024 * 1024 for c in bot.calls)
    assert (await free_credit(rclient, WS) < before) is charged


async def test_compressed_bodies_pass_untouched(
    gw: Running, bot: Bot, http: aiohttp.ClientSession
) -> None:
    import gzip

    raw = gzip.compress(b"compressed payload")
    headers = {**USER, "Content-Encoding": "gzip"}
    async with http.post(f"{gw.url}/hooks/web/{APP}/gz", data=raw, headers=headers) as resp:
        assert resp.status == 200
    assert bot.calls[0].body == raw
    assert bot.calls[0].headers["Content-Encoding"] == "gzip"
