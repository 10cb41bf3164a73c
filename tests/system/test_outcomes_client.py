"""A client that fails its own request body is its own doing, on both traffic servers:
gone mid-upload (a reset, a cut body, an ``Expect: 100-continue`` never followed), a
streamed body that stalls or turns invalid after admission. None of it is the gateway's
``error`` (which pages: k8s/base/prometheusrule.yaml), nor the bot's (``bot_error``, an
upstream 5xx, refunded): it is ``client_error``, answered 499/408/400 (gateway.request_body)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from meter.accounts.seeding import seed
from meter.redis_layer.client import RedisClient
from tests.support.bot import Bot, Running, SeededGateway, running_gateway
from tests.support.channel_keys import auth_settings, set_secret
from tests.support.rawhttp import RawConn

# Each test runs against both traffic servers (aiohttp, the fast path: it hands a
# chunked, large or Expect request to aiohttp).
pytestmark = pytest.mark.usefixtures("traffic_server")

WS = "clientfail"
APP = f"{WS}_app1"
SLACK = f"{WS}_slack1"
FUNDS = 1_000_000


def head(path: str, framing: str, extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nX-Channel-User-Id: u1\r\n{extra}{framing}\r\n".encode()
    )


async def metrics(http: aiohttp.ClientSession, gw: Running) -> dict[str, float]:
    """Requests by outcome, in flight, client disconnects, refunds and upstream calls by
    outcome."""
    async with http.get(f"{gw.admin_url}/metrics") as resp:
        text = await resp.text()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "creditgate_requests_total" and s.value:
                out[s.labels["outcome"]] = out.get(s.labels["outcome"], 0) + s.value
            elif s.name in ("creditgate_client_disconnects_total", "creditgate_refunds_total"):
                out[s.name] = out.get(s.name, 0) + s.value
            elif s.name == "creditgate_in_flight_requests":
                out["in_flight"] = out.get("in_flight", 0) + s.value
            elif s.name == "creditgate_upstream_seconds_count" and s.value:
                out["upstream_" + s.labels["outcome"]] = s.value
    return out


# How long a poll below waits for what it waits for: a bound for a hang only (they
# waited without one: a test that went wrong hung the run).
POLLS = 1200  # of 0.05 s: 60 s


async def counted(http: aiohttp.ClientSession, gw: Running, n: int = 1) -> dict[str, float]:
    """The metrics once ``n`` requests are counted (waits for it)."""
    outcomes = ("admitted", "unmetered", "refused", "client_error", "bot_error", "error")
    for _ in range(POLLS):
        got = await metrics(http, gw)
        if sum(got.get(o, 0) for o in outcomes) >= n:
            return got
        await asyncio.sleep(0.05)
    raise AssertionError(f"{n} requests not counted: {got}")


async def being_handled(http: aiohttp.ClientSession, gw: Running) -> None:
    """Until the gateway counts a request in flight."""
    for _ in range(POLLS):
        if (await metrics(http, gw)).get("in_flight"):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("no request in flight")


def only_a_client_error(got: dict[str, float]) -> None:
    """One request counted, the client's: not the gateway's, not the bot's."""
    assert got.get("client_error") == 1, got
    assert "error" not in got, got
    assert "bot_error" not in got, got
    assert "upstream_5xx" not in got, got


async def send_then_vanish(http: aiohttp.ClientSession, gw: Running, data: bytes) -> None:
    """Send ``data``, wait until the gateway handles the request (its body still to
    come), then reset: observed progress, so a busy machine cannot reset it unread."""
    async with RawConn.open(gw.url) as conn:
        conn.send(data)
        await being_handled(http, gw)
        conn.writer.transport.abort()


GONE = {
    "large body cut": head(f"/hooks/web/{APP}", "Content-Length: 300000\r\n") + b"x" * 100_000,
    "chunked body cut": head(f"/hooks/web/{APP}", "Transfer-Encoding: chunked\r\n")
    + b"5\r\nhello\r\n",
    "100-continue never followed": head(
        f"/hooks/web/{APP}", "Content-Length: 100\r\nExpect: 100-continue\r\n"
    ),
}


@pytest.mark.parametrize("case", sorted(GONE))
async def test_a_client_gone_mid_body_is_a_client_error(
    case: str, seeded_gateway: SeededGateway, http: aiohttp.ClientSession
) -> None:
    apps = {APP: {"product": "automation", "funds": FUNDS}}
    async with seeded_gateway(WS, apps, body_timeout_s=30.0) as gw:
        await send_then_vanish(http, gw, GONE[case])
        got = await counted(http, gw)
    only_a_client_error(got)
    assert got["creditgate_client_disconnects_total"] >= 1, got


async def test_a_small_body_cut_on_the_aiohttp_server_is_a_client_error(
    traffic_server: str, seeded_gateway: SeededGateway, http: aiohttp.ClientSession
) -> None:
    if traffic_server == "fast":
        pytest.skip("the fast path reads a small body before anything: nothing is counted")
    apps = {APP: {"product": "automation", "funds": FUNDS}}
    async with seeded_gateway(WS, apps, body_timeout_s=30.0) as gw:
        cut = head(f"/hooks/web/{APP}", "Content-Length: 100\r\n") + b"x"
        await send_then_vanish(http, gw, cut)
        got = await counted(http, gw)
    only_a_client_error(got)


@pytest.mark.parametrize(
    "framing",
    ["Transfer-Encoding: chunked\r\n", "Content-Length: 1000\r\nExpect: 100-continue\r\n"],
    ids=["chunked", "expect"],
)
async def test_an_outsider_gone_before_a_signed_channel_checks_is_a_client_error(
    framing: str, redis_url: str, tmp_path: Path, rclient: RedisClient, bot: Bot
) -> None:
    # Slack's signature is checked over the body, so the body is read first: anyone can
    # start a request on a signed app and leave, credentials or not.
    settings = auth_settings(redis_url, tmp_path)
    app = {"product": "automation", "funds": FUNDS, "upstream_url": bot.url}
    await seed(rclient, settings, WS, {SLACK: app})
    await set_secret(rclient, settings, SLACK, "slack")
    extra = f"X-Slack-Request-Timestamp: {int(time.time())}\r\nX-Slack-Signature: v0=forged\r\n"
    data = head(f"/hooks/slack/{SLACK}", framing, extra)
    if "chunked" in framing:
        data += b"a\r\n" + b"x" * 10 + b"\r\n"
    async with running_gateway(settings) as gw, aiohttp.ClientSession() as http:
        await send_then_vanish(http, gw, data)
        got = await counted(http, gw)
    only_a_client_error(got)
    assert bot.count() == 0


async def test_a_streamed_body_that_stalls_is_408_and_stays_charged(
    seeded_gateway: SeededGateway, http: aiohttp.ClientSession, bot: Bot
) -> None:
    # Its first 100 000 bytes went to the bot (its start): the charge stands, and the
    # bot's failure to answer a request never completed is not the bot's.
    apps = {APP: {"product": "automation", "funds": FUNDS}}
    # The client sends nothing after its answer: aiohttp's lingering close (10 s by
    # default) only held the connection, and the gateway's shutdown, that long.
    async with seeded_gateway(WS, apps, body_timeout_s=0.5, body_linger_s=0.5) as gw:
        data = head(f"/hooks/web/{APP}/echo", "Content-Length: 300000\r\n") + b"x" * 100_000
        async with RawConn.open(gw.url) as conn:
            conn.send(data)
            resp = await conn.response()
        got = await counted(http, gw)
    assert (resp.status, orjson.loads(resp.body)["code"]) == (408, "body_timeout")
    only_a_client_error(got)
    assert not got.get("creditgate_refunds_total"), got


async def test_a_streamed_body_turned_invalid_is_the_clients_error(
    seeded_gateway: SeededGateway, http: aiohttp.ClientSession, bot: Bot
) -> None:
    apps = {APP: {"product": "automation", "funds": FUNDS}}
    async with seeded_gateway(WS, apps, body_timeout_s=0.5, body_linger_s=0.5) as gw:
        data = head(f"/hooks/web/{APP}/echo", "Transfer-Encoding: chunked\r\n")
        async with RawConn.open(gw.url) as conn:
            conn.send(data + b"5\r\nhello\r\n")
            await being_handled(http, gw)  # (else aiohttp refuses it at once)
            conn.send(b"zz\r\n")
            resp = await conn.response()
        got = await counted(http, gw)
    # aiohttp's C parser never passes the error on to the body being read: a stall.
    code = (resp.status, orjson.loads(resp.body)["code"])
    assert code in ((408, "body_timeout"), (400, "invalid_body")), code
    only_a_client_error(got)
