"""The console's session cookie never crosses the traffic routes, on both traffic servers
(gateway.console_cookies): where console and traffic share a host name, a browser sends
the cookie to ``/hooks`` and ``/notify`` too, and takes a bot's ``Set-Cookie`` as the
console's. A hostile bot must neither read a console session nor plant one, over HTTP
or a WebSocket upgrade; every other cookie passes as it came.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from config.fields import ChannelRule
from meter.accounts.seeding import seed
from meter.redis_layer.client import RedisClient
from tests.support.bot import Running, running_gateway, serve
from tests.support.channel_keys import auth_settings, hs256, set_secret
from tests.support.rawbot import Answer, RawBot, running_raw_bot
from tests.support.rawhttp import RawConn, Response

pytestmark = pytest.mark.usefixtures("traffic_server")

WS = "cookies"
APP = f"{WS}_app1"
NOTIFY = "n0tify-" + "c" * 30
SID = "Zm9vYmFyLXNlc3Npb24tc2VjcmV0LXZhbHVlLTEyMzQ1"  # a session's opaque value

# (the Cookie lines a browser, or a hostile page, sends; what the bot may see of them)
COOKIES = {
    "console cookie only": ([f"cg_session={SID}"], []),
    "among others": ([f"a=1; cg_session={SID}; b=2"], ["a=1; b=2"]),
    "TLS name, first": ([f"__Host-cg_session={SID}; theme=dark"], ["theme=dark"]),
    "odd spacing and case": ([f"a=1;cg_session={SID} ;  CG_Session=x;\tb=2 ;"], ["a=1; b=2"]),
    "duplicates": ([f"cg_session={SID}; a=1; cg_session=other"], ["a=1"]),
    "other prefixes and cases": (
        [f"__Secure-cg_session={SID}; __host-CG_SESSION=y; __Host-__Secure-cg_session=z; k=v"],
        ["k=v"],
    ),
    "quoted value ahead": ([f'a="x; cg_session={SID}; b=y"'], ['a="x; b=y"']),
    "blanks around the name": ([f"a=1;  cg_session  ={SID}"], ["a=1"]),
    "several Cookie lines": (
        [f"cg_session={SID}", "a=1", f"b=2; cg_session={SID}"],
        ["a=1", "b=2"],
    ),
    "lookalikes kept": (["cg_sessions=1; my_cg_session=2; x=cg_session"],) * 2,
    "nameless cookies kept": (["plain; a=1"], ["plain; a=1"]),
}

# A bot's Set-Cookie lines; which of them reach the client.
SET_COOKIES = {
    "plain": ([f"cg_session={SID}; Path=/; HttpOnly; SameSite=Lax"], []),
    "TLS name": ([f"__Host-cg_session={SID}; Path=/; Secure"], []),
    "case, prefix, blanks": ([f"  CG_SESSION ={SID}", f"__secure-Cg_Session={SID}"], []),
    "nameless": ([f"=cg_session={SID}; Path=/"], []),
    "hidden in a value": ([f"a=1, cg_session={SID}; Path=/"], []),
    "others pass": (
        [f"cg_session={SID}", "theme=dark; Path=/", f"__Host-cg_session={SID}", "lang=en"],
        ["theme=dark; Path=/", "lang=en"],
    ),
    "none of the console's": (["a=1", "b=2; HttpOnly"], ["a=1", "b=2; HttpOnly"]),
}


@dataclass
class Edge:
    gw: Running
    bot: RawBot

    async def send(self, path: str, extra: bytes) -> int:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: gw.example\r\nX-Channel-User-Id: u1\r\n"
            "Content-Length: 2\r\nConnection: close\r\n"
        ).encode()
        async with RawConn.open(self.gw.url) as c:
            c.send(head + extra + b"\r\n{}")
            resp = await c.response()
        return resp.status

    async def answered(self, fields: bytes, version: str = "1.1") -> Response:
        """What a verified user's message gets when the bot answers 200 "ok" with the
        header lines ``fields`` (``version``: of the client's request)."""
        self.bot.answers["/b/x"] = Answer(
            b"HTTP/1.1 200 OK\r\n" + fields + b"Content-Length: 2\r\n\r\nok", keep=True
        )
        async with RawConn.open(self.gw.url) as c:
            c.send(
                f"POST /hooks/web/{APP}/x HTTP/{version}\r\nHost: gw.example\r\n"
                f"Content-Length: 2\r\nAuthorization: Bearer {hs256()}\r\n"
                "Connection: close\r\n\r\n{}".encode()
            )
            return await c.response()


@pytest.fixture
async def edge(redis_url: str, tmp_path: Path, rclient: RedisClient) -> AsyncIterator[Edge]:
    async with running_raw_bot() as bot:
        rules = {"web": ChannelRule(delivery_url=f"{bot.url}/out")}
        settings = auth_settings(redis_url, tmp_path, channels=rules)
        apps = {APP: {"product": "automation", "upstream_url": bot.url + "/b"}}
        await seed(rclient, settings, WS, apps, free=10_000_000)
        await set_secret(rclient, settings, APP, "web", notify=NOTIFY)
        async with running_gateway(settings) as gw:
            yield Edge(gw, bot)


def cookie_lines(lines: list[str]) -> bytes:
    return b"".join(b"Cookie: %b\r\n" % line.encode() for line in lines)


@pytest.mark.parametrize("case", COOKIES, ids=list(COOKIES))
async def test_the_console_cookie_never_reaches_a_bot(edge: Edge, case: str) -> None:
    sent, kept = COOKIES[case]
    token = hs256()  # signed with the web channel's secret: a verified user
    extra = cookie_lines(sent) + f"Authorization: Bearer {token}\r\n".encode()
    assert await edge.send(f"/hooks/web/{APP}/x", extra) == 200
    assert edge.bot.header_values("Cookie") == [k.encode() for k in kept]
    assert SID.encode() not in edge.bot.heads[-1]


@pytest.mark.parametrize("case", ["among others", "TLS name, first", "odd spacing and case"])
async def test_nor_a_channel_through_notify(edge: Edge, case: str) -> None:
    sent, kept = COOKIES[case]
    token = hs256(sub=None, key=NOTIFY, aud="creditgate:notify")
    extra = cookie_lines(sent) + f"Authorization: Bearer {token}\r\n".encode()
    assert await edge.send(f"/notify/web/{APP}/send", extra) == 200
    assert edge.bot.target() == b"/out/send"
    assert edge.bot.header_values("Cookie") == [k.encode() for k in kept]


async def test_a_notification_request_id_not_utf8_is_no_key(edge: Edge) -> None:
    """(Not a cookie: this edge can notify.) Its request id, the key of a notification
    without an Idempotency-Key, is no key when it is not UTF-8 (it was 400
    invalid_channel_user; the channel gets a new one, gateway.channels.request_id)."""
    token = hs256(sub=None, key=NOTIFY, aud="creditgate:notify")
    extra = f"Authorization: Bearer {token}\r\n".encode() + b"X-Request-Id: n\xe9\r\n"
    assert await edge.send(f"/notify/web/{APP}/send", extra) == 200
    assert await edge.send(f"/notify/web/{APP}/send", extra) == 200  # not a duplicate
    (rid,) = edge.bot.header_values("X-Request-Id")
    assert rid.isascii(), rid


@pytest.mark.parametrize("case", SET_COOKIES, ids=list(SET_COOKIES))
async def test_a_bot_cannot_set_the_console_cookie(edge: Edge, case: str) -> None:
    lines, passed = SET_COOKIES[case]
    fields = b"".join(b"Set-Cookie: %b\r\n" % line.encode() for line in lines)
    resp = await edge.answered(fields)
    assert (resp.status, resp.body) == (200, b"ok"), resp.raw_head
    assert resp.headers.getall("Set-Cookie", []) == passed
    assert SID.encode() not in resp.raw_head


@pytest.mark.parametrize("version", ["1.1", "1.0"])  # 1.0: the fast path hands it to aiohttp
async def test_nor_with_a_byte_that_is_not_utf8(edge: Edge, version: str) -> None:
    """aiohttp decodes such a byte to a lone surrogate, which its writer leaves out: the
    name the console check saw (``cg_sess\\udcffion``) reached the browser as
    ``cg_session``. A value that is not UTF-8 is dropped, whatever it says."""
    fields = (
        b"Set-Cookie: cg_sess\xffion=%b; Path=/\r\n"
        b"Set-Cookie: __Host-cg_sess\xc3ion=%b; Path=/; Secure\r\n"
        b"Set-Cookie: theme=dark\r\nX-Latin: caf\xe9\r\nX-Text: caf\xc3\xa9\r\n"
    ) % (SID.encode(), SID.encode())
    resp = await edge.answered(fields, version)
    assert (resp.status, resp.body) == (200, b"ok"), resp.raw_head
    assert resp.headers.getall("Set-Cookie", []) == ["theme=dark"]
    assert SID.encode() not in resp.raw_head
    assert "X-Latin" not in resp.headers
    assert b"\r\nX-Text: caf\xc3\xa9\r\n" in resp.raw_head


@pytest.mark.parametrize(
    "fields",
    [b'Clear-Site-Data: "cookies"\r\n', b'clear-site-data: "*"\r\nCLEAR-SITE-DATA: "storage"\r\n'],
    ids=["cookies", "any case, several lines"],
)
async def test_a_bot_cannot_clear_the_sites_cookies(edge: Edge, fields: bytes) -> None:
    """Clear-Site-Data "cookies" would sign the console's users out and clear the other
    tenants' cookies of the whole registrable domain: no one bot decides that."""
    resp = await edge.answered(fields + b"X-Kept: 1\r\n")
    assert (resp.status, resp.body) == (200, b"ok"), resp.raw_head
    assert resp.headers.get("X-Kept") == "1"
    assert "Clear-Site-Data" not in resp.headers, resp.raw_head


# ------------------------------------------------------------------------ WebSocket


@dataclass
class WsEdge:
    gw: Running
    cookies: list[list[str]]  # the Cookie lines of each upgrade the bot got


@pytest.fixture
async def ws_edge(redis_url: str, tmp_path: Path, rclient: RedisClient) -> AsyncIterator[WsEdge]:
    cookies: list[list[str]] = []

    async def ws(request: web.Request) -> web.StreamResponse:
        cookies.append(request.headers.getall("Cookie", []))
        sock = web.WebSocketResponse()
        sock.headers.add("Set-Cookie", f"cg_session={SID}; Path=/")
        sock.headers.add("Set-Cookie", "theme=dark")
        await sock.prepare(request)
        async for msg in sock:
            await sock.send_str("echo:" + msg.data)
        return sock

    app = web.Application()
    app.router.add_get("/{tail:.*}", ws)
    async with serve(app) as url:
        settings = auth_settings(redis_url, tmp_path)
        await seed(rclient, settings, WS, {APP: {"product": "automation", "upstream_url": url}},
                   free=10_000_000)  # fmt: skip
        async with running_gateway(settings) as gw:
            yield WsEdge(gw, cookies)


async def test_a_websocket_upgrade_neither_leaks_nor_plants_it(ws_edge: WsEdge) -> None:
    headers = {"Cookie": f"a=1; cg_session={SID}; __Host-cg_session={SID}; b=2"}
    async with (
        aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http,
        http.ws_connect(f"{ws_edge.gw.url}/hooks/web/{APP}/ws?user=u1", headers=headers) as sock,
    ):
        await sock.send_str("hi")
        assert (await sock.receive()).data == "echo:hi"
        set_cookies = sock._response.headers.getall("Set-Cookie", [])
    assert ws_edge.cookies == [["a=1; b=2"]]
    assert not any("cg_session" in line for line in set_cookies)
