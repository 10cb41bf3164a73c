"""What an operator reads: exact money counters, channel labels by configured name, client
disconnects counted at DEBUG (not ERROR tracebacks), and the access log."""

from __future__ import annotations

import asyncio
import logging
import socket
import traceback
from collections.abc import AsyncIterator

import aiohttp
import pytest
from yarl import URL

from tests.support.bot import Bot, Running, SeededGateway

WS = "opsws"
APP = f"{WS}_app1"


@pytest.fixture
async def gw(seeded_gateway: SeededGateway) -> AsyncIterator[Running]:
    apps = {APP: {"product": "automation", "funds": 5_000_000}}
    async with seeded_gateway(WS, apps, channels={"sms": {}}, access_log=True) as running:
        yield running


async def _post(http: aiohttp.ClientSession, url: str, user: str) -> int:
    async with http.post(url, headers={"X-Channel-User-Id": user}, data=b"hi") as resp:
        await resp.read()
        return resp.status


def _traceback(record: logging.LogRecord) -> str:
    return "".join(traceback.format_exception(*record.exc_info)) if record.exc_info else ""


async def _metrics(http: aiohttp.ClientSession, gw: Running) -> str:
    async with http.get(f"{gw.admin_url}/metrics") as resp:
        return await resp.text()


async def test_money_is_counted_exactly_and_channels_by_their_names(
    gw: Running, http: aiohttp.ClientSession
) -> None:
    # Three $0.20 sessions: a float sum of dollars reads 0.6000000000000001.
    for channel, user in (("web", "a"), ("sms", "b"), ("carrier-pigeon", "c")):
        assert await _post(http, f"{gw.url}/hooks/{channel}/{APP}", user) == 200
    text = await _metrics(http, gw)
    assert 'creditgate_charged_microdollars_total{pool="app"} 600000.0' in text
    assert "creditgate_charged_dollars_total" not in text
    for label in ("web", "sms", "other"):  # built-in, configured, unknown
        assert f'creditgate_requests_total{{channel="{label}",outcome="admitted"}} 1.0' in text
    assert 'channel="carrier-pigeon"' not in text


async def test_a_client_that_goes_away_is_counted_at_debug(
    gw: Running, bot: Bot, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    host, port = gw.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        f"GET /hooks/web/{APP}/stream/{64 << 20} HTTP/1.1\r\nHost: x\r\n"
        "X-Channel-User-Id: gone\r\n\r\n".encode()
    )
    await writer.drain()
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
    await reader.read(1)  # the body has started
    writer.transport.get_extra_info("socket").setsockopt(
        socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
    )  # close with a reset, as a client that crashes does
    writer.close()
    bot.release.set()  # the bot streams on, into a connection that is gone

    async def counted() -> bool:
        return "creditgate_client_disconnects_total 1.0" in await _metrics(http, gw)

    deadline = asyncio.get_running_loop().time() + 30
    while not await counted():
        assert asyncio.get_running_loop().time() < deadline, await _metrics(http, gw)
        await asyncio.sleep(0.05)
    # The test bot (plain aiohttp) may log its own broken pipe; the gateway logs none.
    errors = [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.ERROR and "tests/support/bot.py" not in _traceback(r)
    ]
    assert errors == []
    assert any("client went away" in r.getMessage() for r in caplog.records)


async def test_the_access_log_has_refusals_with_their_code_and_no_secrets(
    gw: Running, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="creditgate.access")
    url = f"{gw.url}/hooks/web/{WS}_nosuch/path?token=s3cret"
    async with http.post(url, headers={"X-Channel-User-Id": "u", "Authorization": "Bearer tok"}):
        pass
    assert await _post(http, f"{gw.url}/hooks/web/{APP}", "ok-user") == 200
    lines = [r.getMessage() for r in caplog.records if r.name == "creditgate.access"]
    assert any(f"POST /hooks/web/{WS}_nosuch/path 404 unknown_app" in x for x in lines), lines
    assert any(f"POST /hooks/web/{APP} 200" in x for x in lines), lines
    joined = "\n".join(lines)
    for secret in ("s3cret", "tok", "ok-user", "hi"):
        assert secret not in joined


FORGED = "%0A2026-12-01%2017:59:59,000%20INFO%20creditgate.access%20POST%20/v1/x%20200%200.1ms"


async def test_the_access_log_writes_the_path_as_sent(
    gw: Running, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """A percent-encoded newline or escape stays encoded: no forged line, no terminal codes."""
    caplog.set_level(logging.INFO, logger="creditgate.access")
    for base in (gw.url, gw.admin_url):
        for path in (f"/nothing{FORGED}", "/nothing%1B%5B2J", f"/hooks/web/{WS}_x{FORGED}"):
            url = URL(f"{base}{path}?q=%0Asecret", encoded=True)
            async with http.get(url) as resp:
                assert resp.status == 404
    lines = [r.getMessage() for r in caplog.records if r.name == "creditgate.access"]
    assert sum(f"GET /nothing{FORGED} 404" in x for x in lines) == 2, lines
    assert sum("GET /nothing%1B%5B2J 404" in x for x in lines) == 2, lines
    assert sum(f"GET /hooks/web/{WS}_x{FORGED} 404" in x for x in lines) == 2, lines
    for line in lines:
        assert "\n" not in line, line
        assert "\x1b" not in line, line
        assert "secret" not in line, line
