"""A chunked request on a keep-alive connection, on both traffic servers: the gateway
closes the connection after answering it (trailers would leak into the next request,
:mod:`gateway.http_rules`), and its answer says so (``Connection: close``, RFC 9112
§9.6), so a keep-alive client sends its next request on a new connection instead of into
the close (aiohttp's client: ``ServerDisconnected``, the POST lost)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from meter.accounts.seeding import seed
from meter.redis_layer.client import RedisClient
from tests.support.bot import Bot, Running, running_gateway
from tests.support.settings import make_settings

WS = "kalive"
APP = f"{WS}_app1"
USER = {"X-Channel-User-Id": "u1"}


@pytest.fixture(params=["aiohttp", "fast"])
async def gw(
    request: pytest.FixtureRequest, redis_url: str, tmp_path: Path, rclient: RedisClient, bot: Bot
) -> AsyncIterator[Running]:
    settings = make_settings(redis_url, tmp_path, traffic_server=request.param)
    apps = {APP: {"product": "automation", "upstream_url": bot.url, "funds": 1_000_000}}
    await seed(rclient, settings, WS, apps)
    async with running_gateway(settings) as running:
        yield running


async def test_the_answer_to_a_chunked_request_says_the_connection_closes(
    gw: Running, bot: Bot
) -> None:
    u = URL(gw.url)
    reader, writer = await asyncio.open_connection(u.host, u.port)
    try:
        writer.write(
            f"POST /hooks/web/{APP}/up HTTP/1.1\r\nHost: {u.authority}\r\n"
            "X-Channel-User-Id: u1\r\nTransfer-Encoding: chunked\r\n\r\n"
            "3\r\nabc\r\n0\r\n\r\n".encode()
        )
        await writer.drain()
        answer = await reader.read()  # until the gateway closes
    finally:
        writer.close()
    head = answer.split(b"\r\n\r\n", 1)[0].lower().split(b"\r\n")
    assert head[0] == b"http/1.1 200 ok"
    assert b"connection: close" in head
    assert bot.calls[-1].body == b"abc"


async def test_requests_after_a_chunked_one_on_a_keep_alive_session_all_arrive(
    gw: Running, bot: Bot
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b"z" * 1000

    # One connection at a time: each request goes on the previous one's if it stays open.
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1))
    try:
        for body in (chunks(), b"x", chunks(), chunks(), b"y"):
            async with http.post(f"{gw.url}/hooks/web/{APP}/p", data=body, headers=USER) as resp:
                assert resp.status == 200
                await resp.read()
    finally:
        await http.close()
    assert [len(c.body) for c in bot.calls] == [3000, 1, 3000, 3000, 1]
