"""``Expect: 100-continue`` and ``Upgrade: websocket`` at the traffic port, on both traffic
servers (the fast path hands both to aiohttp on the same connection).

A raw bot that never sends a 100 (tests/support/rawbot.py), a raw client
(tests/support/rawhttp.py), real Redis. Each case checks the money and the bot, not only
the status:

* the gateway meets ``100-continue`` itself: the bot gets a complete request with its
  ``Content-Length`` and no ``Expect`` (it would make the gateway wait for a 100 the bot
  never sends), charged once;
* a message refused from its head (413, 401, 402, 429) gets the refusal and no 100, the
  connection is closed, nothing is charged or forwarded: the client never sends its
  body, so the gateway cannot have read it;
* a request asking for a WebSocket that is not an opening handshake (RFC 6455 §4.2.1:
  an HTTP/1.1 GET without a body, ``Connection: Upgrade``, version 13, a key) is 400
  ``invalid_upgrade`` at once, the connection closed, nothing charged or forwarded;
* so is every request asking for a WebSocket on ``/notify``, which has none, handshake
  or not: it is not turned into a charged notification.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import orjson
import pytest

from config import Settings
from config.fields import ChannelRule
from meter.accounts.seeding import seed
from meter.redis_layer.client import RedisClient
from tests.support.bot import Running, SeededGateway, free_credit
from tests.support.channel_keys import SECRET_KEY, hs256, set_secret
from tests.support.rawbot import RawBot, running_raw_bot
from tests.support.rawhttp import RawConn, Response

pytestmark = pytest.mark.usefixtures("traffic_server")

WS, BROKE = "expup", "expbroke"
APP, LIMITED, SIGNED = f"{WS}_app1", f"{WS}_lim1", f"{WS}_sig1"
POOR = f"{BROKE}_app1"
FREE = 10_000_000  # $10
SESSION = 200_000  # what a message of a new user costs (automation)
MAX_BODY = 256 * 1024
# A request hidden in a body: never to be answered as the connection's next request.
SMUGGLED = f"GET /hooks/web/{APP}/smuggled HTTP/1.1\r\nHost: gw\r\nX-Channel-User-Id: u1\r\n\r\n"
N = len(SMUGGLED)


@dataclass
class Edge:
    gw: Running
    bot: RawBot
    rclient: RedisClient

    @property
    def settings(self) -> Settings:
        return self.gw.gateway.settings

    async def spent(self) -> int:
        return FREE - await free_credit(self.rclient, WS)


@pytest.fixture
async def edge(seeded_gateway: SeededGateway, rclient: RedisClient) -> AsyncIterator[Edge]:
    async with running_raw_bot() as bot:
        bot.continues = False  # a bot that never answers an expectation
        up = {"product": "automation", "upstream_url": bot.url + "/b"}
        apps = {APP: up, LIMITED: {**up, "per_minute": 1}, SIGNED: up}
        settings = {
            "secret_key": SECRET_KEY,
            "channel_secret_max_age_s": 0.001,
            "max_body_bytes": MAX_BODY,
            "channels": {"web": ChannelRule(delivery_url=bot.url + "/out")},  # /notify
        }
        async with seeded_gateway(WS, apps, free=FREE, **settings) as gw:
            await seed(rclient, gw.gateway.settings, BROKE, {POOR: up})  # no credit at all
            for channel in ("web", "slack"):
                await set_secret(rclient, gw.gateway.settings, SIGNED, channel)
            yield Edge(gw, bot, rclient)


def head(app: str, tail: str, length: int, extra: str = "", channel: str = "web") -> bytes:
    """A billable POST's head asking for a 100 before its body."""
    return (
        f"POST /hooks/{channel}/{app}{tail} HTTP/1.1\r\nHost: gw\r\nX-Channel-User-Id: u1\r\n"
        f"Content-Length: {length}\r\nExpect: 100-continue\r\n{extra}\r\n"
    ).encode()


def problem(resp: Response, status: int) -> str:
    assert resp.status == status, (resp.status, resp.body[:300])
    assert resp.is_problem, resp.raw_head
    code: str = orjson.loads(resp.body)["code"]
    return code


# ------------------------------------------------------------------ 100-continue


@pytest.mark.parametrize("size", [2, 100 * 1024], ids=["buffered", "streamed"])
async def test_the_gateway_meets_the_expectation_and_the_bot_never_sees_it(
    edge: Edge, size: int
) -> None:
    body = b"x" * size
    async with RawConn.open(edge.gw.url) as c:
        c.send(head(APP, "/e", size))
        assert (await c.response()).status == 100  # the gateway's, asked for the body
        c.send(body)
        resp = await c.response()
    # Forwarded, the expectation had the gateway wait for the bot's 100 until its read
    # timeout (504, refunded).
    assert resp.status == 200, resp.body[:300]
    bot = edge.bot
    assert not bot.header_values("Expect"), bot.heads[-1]
    assert bot.header_values("Content-Length") == [str(size).encode()]
    assert not bot.header_values("Transfer-Encoding")
    assert bot.bodies == [body]
    assert await edge.spent() == SESSION  # charged once


async def refused_from_the_head(edge: Edge, data: bytes, length: int, status: int) -> str:
    """Send a head that asks for a 100 before its ``length`` bytes of body: the refusal
    comes instead, nothing is charged or forwarded. A client that then sends its body
    anyway (a request hidden in it) gets no second answer, and the connection closes."""
    spent, calls = await edge.spent(), len(edge.bot.heads)
    async with RawConn.open(edge.gw.url) as c:
        c.send(data)
        resp = await c.response()  # a 100 here would fail the status below
        code = problem(resp, status)
        assert resp.headers.get("Connection", "").lower() == "close"
        c.send(SMUGGLED.encode().ljust(length, b" "))
        rest = await c.rest()
        assert b"HTTP/1." not in rest, rest[:300]
        assert await c.closed()
    assert len(edge.bot.heads) == calls
    assert await edge.spent() == spent
    return code


async def test_a_body_refused_after_its_100_is_answered(edge: Edge) -> None:
    """A keyed chunked body is read before admission, so its 100 is sent first; found over
    the limit, it is answered 413 all the same (a 100 is no answer begun: it was reset
    unanswered, aiohttp logging an error), nothing charged or forwarded."""
    data = (
        f"POST /hooks/web/{APP}/big HTTP/1.1\r\nHost: gw\r\nX-Channel-User-Id: u1\r\n"
        "Idempotency-Key: k-big\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    spent, calls = await edge.spent(), len(edge.bot.heads)
    async with RawConn.open(edge.gw.url) as c:
        c.send(data)
        assert (await c.response()).status == 100
        c.send(b"%x\r\n%b\r\n0\r\n\r\n" % (MAX_BODY + 1, b"x" * (MAX_BODY + 1)))
        resp = await c.response()
    assert problem(resp, 413) == "body_too_large"
    assert len(edge.bot.heads) == calls
    assert await edge.spent() == spent


async def test_an_oversized_body_is_refused_before_it_is_read(edge: Edge) -> None:
    n = MAX_BODY + 1
    code = await refused_from_the_head(edge, head(APP, "/big", n), n, 413)
    assert code == "body_too_large"


async def test_no_credit_is_refused_before_the_body_is_read(edge: Edge) -> None:
    code = await refused_from_the_head(edge, head(POOR, "/p", N), N, 402)
    assert code == "credits_exhausted"
    assert await free_credit(edge.rclient, BROKE) == 0


async def test_a_rate_limited_message_is_refused_before_the_body_is_read(edge: Edge) -> None:
    async with RawConn.open(edge.gw.url) as c:  # the minute's one message
        c.send(head(LIMITED, "/one", 2))
        assert (await c.response()).status == 100
        c.send(b"{}")
        assert (await c.response()).status == 200
    assert await edge.spent() == SESSION
    data = head(LIMITED, "/two", N)
    assert await refused_from_the_head(edge, data, N, 429) == "rate_limited"


@pytest.mark.parametrize(
    ("channel", "extra"),
    [
        ("web", ""),  # no bearer token
        ("web", "Authorization: Bearer not.a.jwt\r\n"),
        ("slack", ""),  # no signature: refused before the signed body is asked for
        ("slack", "X-Slack-Signature: v0=00\r\nX-Slack-Request-Timestamp: 1000000000\r\n"),
    ],
    ids=["no token", "bad token", "unsigned", "stale signature"],
)
async def test_a_channel_auth_failure_is_refused_before_the_body_is_read(
    edge: Edge, channel: str, extra: str
) -> None:
    data = head(SIGNED, "/a", N, extra, channel=channel)
    assert await refused_from_the_head(edge, data, N, 401) == "invalid_channel_signature"


# ------------------------------------------------------------------ Upgrade: websocket

KEY = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
UPGRADE = "Upgrade: websocket\r\nConnection: Upgrade\r\n"
NOT_HANDSHAKES = {
    "POST with a body": ("POST", "HTTP/1.1", UPGRADE + KEY, SMUGGLED),
    "POST without a body": ("POST", "HTTP/1.1", UPGRADE + KEY, ""),
    "GET with a body": ("GET", "HTTP/1.1", UPGRADE + KEY, SMUGGLED),
    "GET with a chunked body": ("GET", "HTTP/1.1", UPGRADE + KEY, None),
    "HTTP/1.0": ("GET", "HTTP/1.0", UPGRADE + KEY, ""),
    "no Connection: Upgrade": ("GET", "HTTP/1.1", "Upgrade: websocket\r\n" + KEY, ""),
    "no key": ("GET", "HTTP/1.1", UPGRADE + "Sec-WebSocket-Version: 13\r\n", ""),
    "a short key": ("GET", "HTTP/1.1", UPGRADE + KEY.replace("dGhlIHNhbXBsZSBub25jZQ", "eA"), ""),
    "version 12": ("GET", "HTTP/1.1", UPGRADE + KEY.replace(": 13", ": 12"), ""),
}


@pytest.mark.parametrize("case", NOT_HANDSHAKES, ids=list(NOT_HANDSHAKES))
async def test_an_upgrade_that_is_not_a_handshake_is_400_at_once(edge: Edge, case: str) -> None:
    method, version, headers, body = NOT_HANDSHAKES[case]
    data = f"{method} /hooks/web/{APP}/ws {version}\r\nHost: gw\r\nX-Channel-User-Id: u1\r\n"
    data += headers
    if body is None:
        data += "Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
    else:
        data += f"Content-Length: {len(body)}\r\n\r\n{body}" if body else "\r\n"
    # Before, a POST with a body waited for the bot until the read timeout (its
    # Content-Length went to the bot with the bodiless handshake): 502.
    await refused_upgrade(edge, data, says_close=version == "HTTP/1.1")


async def refused_upgrade(edge: Edge, data: str, *, says_close: bool = True) -> None:
    """``data`` is answered 400 ``invalid_upgrade``, the connection closed (``says_close``:
    and says so; HTTP/1.0 closes unless kept alive), what followed never answered as a
    request; the bot not called, nothing charged."""
    async with RawConn.open(edge.gw.url) as c:
        c.send(data.encode())
        resp = await c.response()
        assert problem(resp, 400) == "invalid_upgrade"
        if says_close:
            assert resp.headers.get("Connection", "").lower() == "close"
        rest = await c.rest()
        assert b"HTTP/1." not in rest, rest[:300]  # the body was never a request
        assert await c.closed()
    assert not edge.bot.heads
    assert await edge.spent() == 0


NOTIFY_AUD = "creditgate:notify"  # the audience of /notify tokens (README)
NOTIFY_UPGRADES = {
    "a handshake": ("GET", UPGRADE + KEY, ""),
    "POST with a body": ("POST", UPGRADE + KEY, SMUGGLED),
    "no Connection: Upgrade": ("POST", "Upgrade: websocket\r\n", "{}"),
}


@pytest.mark.parametrize("case", NOTIFY_UPGRADES, ids=list(NOTIFY_UPGRADES))
async def test_an_upgrade_to_websocket_on_notify_is_400_at_once(edge: Edge, case: str) -> None:
    # Decided (docs/design.md): /notify has no WebSocket, and a client asking for one is
    # not charged a notification it cannot use (the rule of the /hooks route). Before,
    # the Upgrade header was dropped and the request sent on as a charged notification.
    method, headers, body = NOTIFY_UPGRADES[case]
    token = hs256(sub=None, aud=NOTIFY_AUD)
    data = f"{method} /notify/web/{SIGNED}/n HTTP/1.1\r\nHost: gw\r\n"
    data += f"Authorization: Bearer {token}\r\n{headers}"
    data += f"Content-Length: {len(body)}\r\n\r\n{body}" if body else "\r\n"
    await refused_upgrade(edge, data)
    # The same notification without the Upgrade header is sent on, and charged.
    data = data.replace(headers, "")
    async with RawConn.open(edge.gw.url) as c:
        c.send(data.encode())
        assert (await c.response()).status == 200
    assert edge.bot.target() == b"/out/n"
    assert await edge.spent() > 0
