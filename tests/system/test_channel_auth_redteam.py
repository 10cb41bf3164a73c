"""Red-team findings on channel authentication (gateway/channel_auth.py), each tried as
the attacker did: an end user's chat token used on ``/notify``, the unsigned Meta
handshake used as a free GET to any bot path, odd Slack timestamps, a percent-encoded
``?token=``, and a bearer token in the log of a failed upstream call. Each attack must
fail with nothing metered and nothing forwarded. Real Redis, real bots, real sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from config.fields import ChannelRule
from gateway.channel_auth import NOTIFY_AUDIENCE, Verified, without_token
from gateway.problems import Problem
from meter.accounts.seeding import seed
from meter.redis_layer.client import RedisClient
from tests.support.bot import Bot, WsBot, running_gateway, running_ws_bot, serve
from tests.support.channel_keys import (
    SECRET,
    AuthWorld,
    auth_settings,
    hs256,
    set_secret,
    slack_headers,
)
from tests.support.settings import HOST

WS = "rtauth"
APP = f"{WS}_app1"  # automation, $10 free: chat, notify, WebSocket, Slack
DEAD = f"{WS}_dead"  # no credit: a WhatsApp bot behind the Meta stand-in
LIAR = f"{WS}_liar"  # no credit: a WhatsApp bot that answers anything
HALTED = f"{WS}_halted"  # suspended: the Meta stand-in again
GARBLED = f"{WS}_garbled"  # an upstream that answers no valid HTTP
SOCK = f"{WS}_sock"  # a WebSocket bot that records the URL of each upgrade
FREE = 10_000_000
VERIFY = "my-verify-token"


def notify_token(sub: str | None = None, key: str = SECRET, **claims: Any) -> str:
    return hs256(sub, key, **{"aud": NOTIFY_AUDIENCE, **claims})


# ------------------------------------------------------------------------ the bots


@dataclass
class MetaBot:
    """A WhatsApp bot: answers Meta's handshake with the challenge, anything else with
    an answer worth stealing."""

    url: str = ""
    calls: list[str] = field(default_factory=list)


@pytest.fixture
async def metabot() -> AsyncIterator[MetaBot]:
    b = MetaBot()

    async def any_route(request: web.Request) -> web.Response:
        b.calls.append(request.raw_path)
        q = request.query
        if q.get("hub.mode") == "subscribe" and q.get("hub.verify_token") == VERIFY:
            return web.Response(text=q.get("hub.challenge", ""))
        return web.Response(text="the answer to your question is 4")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", any_route)
    async with serve(app) as url:
        b.url = url
        yield b


@pytest.fixture
async def wsbot() -> AsyncIterator[WsBot]:
    async with running_ws_bot() as b:
        yield b


@pytest.fixture
async def garbled() -> AsyncIterator[str]:
    """An upstream that answers no valid HTTP: the client raises ClientResponseError,
    whose RequestInfo carries every header sent, the client's Authorization included."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"NOT-HTTP garbage\r\n\r\n")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://{HOST}:{port}"
    finally:
        server.close()
        await server.wait_closed()


@dataclass
class World(AuthWorld):
    metabot: MetaBot
    wsbot: WsBot  # records the URL of each upgrade

    async def call(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        url = URL(self.gw.url + path, encoded=True)
        async with self.http.request(method, url, data=body, headers=headers) as resp:
            return resp.status, await resp.read()


@pytest.fixture
async def world(
    metabot: MetaBot,
    garbled: str,
    wsbot: WsBot,
    bot: Bot,
    redis_url: str,
    tmp_path: Path,
    rclient: RedisClient,
    http: aiohttp.ClientSession,
) -> AsyncIterator[World]:
    settings = auth_settings(
        redis_url, tmp_path, channels={"web": ChannelRule(delivery_url=bot.url + "/out/web")}
    )
    dead = {"product": "automation", "use_free_credits": False}
    await seed(rclient, settings, WS, {
        APP: {"product": "automation", "upstream_url": bot.url},
        DEAD: {**dead, "upstream_url": metabot.url + "/whatsapp"},
        LIAR: {**dead, "upstream_url": bot.url + "/whatsapp"},
        HALTED: {**dead, "upstream_url": metabot.url + "/whatsapp", "suspended": True},
        GARBLED: {"product": "automation", "upstream_url": garbled},
        SOCK: {"product": "automation", "upstream_url": wsbot.url},
    }, free=FREE)  # fmt: skip
    for channel in ("web", "slack"):
        await set_secret(rclient, settings, APP, channel)
    for app_id in (GARBLED, SOCK):
        await set_secret(rclient, settings, app_id, "web")
    for app_id in (DEAD, LIAR, HALTED):
        await set_secret(rclient, settings, app_id, "whatsapp")
    async with running_gateway(settings) as gw:
        yield World(WS, gw, bot, rclient, http, metabot, wsbot)


async def refused(
    w: World, method: str, path: str, body: bytes | None, headers: dict[str, str]
) -> None:
    """401 invalid_channel_signature; nothing metered, no bot called."""
    before, calls = await w.state(), (w.bot.count(), len(w.metabot.calls))
    status, raw = await w.call(method, path, body, headers)
    assert status == 401, (method, path, status, raw[:200])
    if method != "HEAD":
        assert json.loads(raw)["code"] == "invalid_channel_signature"
    assert (w.bot.count(), len(w.metabot.calls)) == calls
    assert await w.state() == before


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# ------------------------------------------------- 1. a chat token is not /notify's


async def test_an_end_users_chat_token_does_not_authorize_notify(world: World) -> None:
    user_token = hs256("mallory")  # what the tenant's backend hands the chat widget
    assert (await world.call("POST", f"/hooks/web/{APP}", b"{}", bearer(user_token)))[0] == 200
    send = f"/notify/web/{APP}/send"
    phish = b'{"to":"everyone","text":"phish"}'
    await refused(world, "POST", send, phish, bearer(user_token))
    # Signed with the notify key but for no or another audience: refused as well.
    await refused(world, "POST", send, phish, bearer(hs256(None)))
    await refused(world, "POST", send, phish, bearer(notify_token(aud="creditgate:hooks")))
    await refused(world, "POST", send, phish, bearer(notify_token(exp_in=-3600)))
    assert [c for c in world.bot.calls if c.path_qs.startswith("/out/")] == []

    # The bot's own notify token is delivered, billed, and its credential stays here.
    before = (await world.state())[0].free
    for token in (notify_token(), notify_token(aud=["other", NOTIFY_AUDIENCE])):
        assert (await world.call("POST", send, b'{"to":"alice"}', bearer(token)))[0] == 200
    delivered = [c for c in world.bot.calls if c.path_qs.startswith("/out/")]
    assert [c.path_qs for c in delivered] == ["/out/web/send"] * 2
    assert all("Authorization" not in c.headers for c in delivered)
    assert (await world.state())[0].free < before


async def test_a_notify_token_is_refused_on_hooks(world: World) -> None:
    path = f"/hooks/web/{APP}/chat"
    for token in (notify_token(sub="mallory"), hs256("mallory", aud=["x", NOTIFY_AUDIENCE])):
        await refused(world, "POST", path, b"hi", bearer(token))
        for url, headers in (
            (f"{world.gw.url}/hooks/web/{APP}/ws?token={token}", None),
            (f"{world.gw.url}/hooks/web/{APP}/ws", bearer(token)),
        ):
            with pytest.raises(aiohttp.WSServerHandshakeError) as err:
                await world.http.ws_connect(url, headers=headers)
            assert err.value.status == 401
    assert world.bot.count() == 0
    assert world.bot.ws_messages == []
    # A chat token with an audience of the tenant's own is still a chat token.
    assert (await world.call("POST", path, b"hi", bearer(hs256("bob", aud="widget"))))[0] == 200
    assert world.bot.calls[-1].headers["X-Channel-User-Id"] == "bob"


# ---------------------------------------- 2. the Meta handshake is no free GET


HANDSHAKE = f"hub.mode=subscribe&hub.verify_token={VERIFY}&hub.challenge=1158201444"


async def test_the_meta_handshake_is_not_a_free_get_to_any_bot_path(world: World) -> None:
    hook = f"/hooks/whatsapp/{DEAD}"
    question = "question=what+is+2%2B2"
    for method, path, body in (
        ("GET", f"{hook}/api/answer?{HANDSHAKE}&{question}", None),  # the red team's
        ("GET", f"{hook}/api/answer?{HANDSHAKE}", None),  # another bot path
        ("GET", f"{hook}/%61pi?{HANDSHAKE}", None),
        ("GET", f"{hook}?{HANDSHAKE}&{question}", None),  # another parameter
        ("GET", f"{hook}?{question}&{HANDSHAKE}", None),
        ("GET", f"{hook}?{HANDSHAKE}&hub.challenge=2", None),  # twice
        ("GET", f"{hook}?{HANDSHAKE}&", None),
        ("GET", f"{hook}?{HANDSHAKE.replace('subscribe', 'unsubscribe')}", None),
        ("GET", f"{hook}?{HANDSHAKE.replace('&hub.verify_token', '&x')}", None),
        ("GET", f"{hook}?{HANDSHAKE}", b"a body"),  # not bodiless
        ("POST", f"{hook}?{HANDSHAKE}", b""),
        ("HEAD", f"{hook}?{HANDSHAKE}", None),
    ):
        await refused(world, method, path, body, {})
    assert world.metabot.calls == []

    # The handshake itself, without credit: answered, nothing metered.
    before = await world.state()
    for path in (f"{hook}?{HANDSHAKE}", f"{hook}/?{HANDSHAKE}"):
        assert await world.call("GET", path) == (200, b"1158201444")
    assert world.metabot.calls == [f"/whatsapp?{HANDSHAKE}", f"/whatsapp/?{HANDSHAKE}"]
    assert await world.state() == before
    # A suspended app's: refused as its messages are, the bot not called.
    status, raw = await world.call("GET", f"/hooks/whatsapp/{HALTED}?{HANDSHAKE}")
    assert (status, json.loads(raw)["code"]) == (403, "app_suspended")
    assert len(world.metabot.calls) == 2


async def test_a_handshake_answer_that_is_not_the_challenge_is_not_passed_on(
    world: World,
) -> None:
    # The bot echoes the whole request (the counting bot): not Meta's expected answer.
    status, raw = await world.call("GET", f"/hooks/whatsapp/{LIAR}?{HANDSHAKE}")
    assert world.bot.count("/whatsapp?") == 1
    assert (status, json.loads(raw)["code"]) == (502, "invalid_handshake_answer")
    assert b"verify_token" not in raw
    assert VERIFY.encode() not in raw


async def test_answer_handshake_passes_only_the_exact_challenge(
    http: aiohttp.ClientSession,
) -> None:
    challenge = "1158201444"
    routes = {
        "/exact": (200, challenge),
        "/created": (201, challenge),
        "/more": (200, challenge + " and the bot's secrets"),
        "/less": (200, challenge[:-1]),
        "/spaced": (200, challenge + "\n"),
        "/empty": (200, ""),
        "/error": (500, challenge),
        "/redirect": (302, challenge),
        "/big": (200, challenge + "x" * 1_000_000),
    }

    async def answer(request: web.Request) -> web.Response:
        status, text = routes[request.path]
        return web.Response(status=status, text=text)

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    verified = Verified(True, handshake_challenge=challenge)
    async with serve(app) as url:
        for path, (status, _) in routes.items():
            upstream = await http.get(url + path, allow_redirects=False)
            if path in ("/exact", "/created"):
                resp = await verified.answer_handshake(upstream)
                assert (resp.status, resp.body) == (status, challenge.encode())
            else:
                with pytest.raises(Problem) as err:
                    await verified.answer_handshake(upstream)
                assert (err.value.status, err.value.code) == (502, "invalid_handshake_answer")
                assert challenge not in (err.value.detail or "")
            assert upstream.closed or upstream.connection is None  # released either way


# ------------------------------------------- 3. odd Slack timestamps are 401, not 500


async def test_odd_slack_timestamps_are_refused_not_a_500(world: World) -> None:
    body = b'{"type":"event_callback","event_id":"E1","event":{"user":"U1"}}'
    now = str(int(time.time()))
    for ts in (
        "²",
        "①",
        "\u0661\u0667\u0660\u0660",  # Arabic-Indic digits: int() takes them, Slack never sends them
        "\uff11" * 10,  # fullwidth digits
        "+" + now,
        now + ".5",
        "1e9",
        "1" * 13,
        "-1",
    ):
        await refused(world, "POST", f"/hooks/slack/{APP}/events", body, slack_headers(body, ts=ts))
    # The same body with an honest timestamp is served.
    status, _ = await world.call(
        "POST", f"/hooks/slack/{APP}/events", body, slack_headers(body, ts=now)
    )
    assert status == 200


# -------------------------------------- 4. ?token= is dropped by its decoded name


def test_without_token_drops_every_spelling_and_keeps_the_rest_byte_for_byte() -> None:
    def drop(qs: str) -> str:
        return str(without_token(URL("http://bot:1/ws" + qs, encoded=True)))

    assert drop("?lang=en&%74oken=J&v=2") == "http://bot:1/ws?lang=en&v=2"
    assert (
        drop("?tok%65n=J&TOKEN=keep&%2Btoken=keep&token")
        == "http://bot:1/ws?TOKEN=keep&%2Btoken=keep"
    )
    assert drop("?a=%2F%20b&token=J&&c=d+e&token=K") == "http://bot:1/ws?a=%2F%20b&&c=d+e"
    assert drop("?%74%6F%6B%65%6E=J") == "http://bot:1/ws"
    assert drop("?a=1;token=J") == "http://bot:1/ws?a=1;token=J"  # one parameter "a"
    unchanged = URL("http://bot:1/ws?q=%E2%82%AC&x=%7e", encoded=True)
    assert without_token(unchanged) is unchanged
    assert str(without_token(URL("http://bot:1/ws?", encoded=True))).startswith("http://bot:1/ws")


async def test_a_percent_encoded_token_parameter_is_not_passed_to_the_bot(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    token = hs256("alice")
    # /chat is not the bot's WebSocket route: the bot records the GET it is sent.
    u = URL(f"{world.gw.url}/hooks/web/{APP}/chat?lang=en&%74oken={token}&v=%2B", encoded=True)
    with contextlib.suppress(aiohttp.WSServerHandshakeError):
        await world.http.ws_connect(u)
    assert [c.path_qs for c in world.bot.calls] == ["/chat?lang=en&v=%2B"]
    assert world.bot.calls[0].headers["X-Channel-User-Id"] == "alice"
    logged = [r.getMessage()[:100] for r in caplog.records if token in r.getMessage()]
    assert logged == []


async def test_every_spelling_of_token_is_dropped_from_a_websocket(world: World) -> None:
    token = hs256("alice")
    qs = f"lang=en&%74oken={token}&tok%65n={token}&v=%2B&token"
    async with world.http.ws_connect(
        URL(f"{world.gw.url}/hooks/web/{SOCK}/ws?{qs}", encoded=True)
    ) as ws:
        await ws.send_str("hello")
        assert await ws.receive_str() == "echo:hello"
    assert world.wsbot.paths == ["/ws?lang=en&v=%2B"]
    assert (await world.state())[0].free == FREE - 200_000  # alice's session


async def test_a_signed_websocket_user_is_not_overridden_towards_the_bot(world: World) -> None:
    """The token's user is charged, and the bot is not told another one by ``?user=``."""
    qs = f"lang=en&token={hs256('alice')}&user=bob&%75ser=carol"
    async with world.http.ws_connect(
        URL(f"{world.gw.url}/hooks/web/{SOCK}/ws?{qs}", encoded=True)
    ) as ws:
        await ws.send_str("hello")
        assert await ws.receive_str() == "echo:hello"
    assert world.wsbot.paths == ["/ws?lang=en"]
    assert (await world.state())[0].free == FREE - 200_000  # alice's session


async def test_a_token_parameter_is_not_passed_to_the_bot_over_http(world: World) -> None:
    token = hs256("alice")
    path = f"/hooks/web/{APP}/chat?%74oken={token}&a=1"
    assert (await world.call("POST", path, b"hi", bearer(token)))[0] == 200
    assert [c.path_qs for c in world.bot.calls] == ["/chat?a=1"]


# ------------------------------------------ 5. a failed upstream call logs no token


async def test_a_failed_websocket_upgrade_does_not_log_the_bearer_token(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    token = hs256("alice")
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await world.http.ws_connect(f"{world.gw.url}/hooks/web/{APP}/chat", headers=bearer(token))
    assert err.value.status == 502
    assert world.bot.count("/chat") == 1  # the bot was asked, and said no
    assert any("websocket upstream" in r.getMessage() for r in caplog.records)  # logged
    assert [r.getMessage()[:160] for r in caplog.records if token in r.getMessage()] == []


async def test_a_failed_upstream_request_does_not_log_the_bearer_token(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    token = hs256("alice")
    status, _ = await world.call("POST", f"/hooks/web/{GARBLED}", b"hi", bearer(token))
    assert status == 502
    failed = [r.getMessage() for r in caplog.records if "upstream" in r.getMessage()]
    # aiohttp's client raises ClientResponseError; the fast path's parser says why
    assert any("ClientResponseError" in m or "invalid response" in m for m in failed), failed
    assert [r.getMessage()[:160] for r in caplog.records if token in r.getMessage()] == []
