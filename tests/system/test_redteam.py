"""Red-team findings against the traffic edge, the meter and the admin API.

Each FAILING test is a hole: it asserts the secure behaviour, which the gateway does not
have today. Each passing test is an attack that was tried and is correctly blocked.
Loopback only; real Redis, a real counting bot, real sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from config import Settings
from config.fields import ChannelRule
from meter.accounts.seeding import seed
from meter.admission.reservations import Sweeper
from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient
from tests.support.bot import (
    Bot,
    SeededGateway,
    free_credit,
    post_message,
    raw_exchange,
    running_gateway,
    running_replica,
    seed_self_loop,
)
from tests.support.channel_keys import auth_settings, hs256, set_secret
from tests.support.metering import admitter as make_admitter
from tests.support.rawhttp import RawConn
from tests.support.settings import make_settings
from tests.support.ws_frames import settled

WS = "redteam"
APP = f"{WS}_app1"
FREE = 10_000_000  # $10
SESSION_PRICE = 200_000  # automation: $0.20 a session


async def wait_for(cond: Any, within_s: float = 60.0) -> bool:
    """Poll ``cond`` until true: a hang bound (60 s), never waited out on a busy machine."""
    for _ in range(int(within_s / 0.05)):
        if await cond():
            return True
        await asyncio.sleep(0.05)
    return bool(await cond())


async def credit_is(rclient: RedisClient, amount: int) -> bool:
    return await free_credit(rclient, WS) == amount


def held_upload(
    http: aiohttp.ClientSession,
    url: str,
    user: str,
    parts: tuple[bytes, bytes],
    go_on: asyncio.Event,
) -> asyncio.Task[int]:
    """POST as ``user`` a body whose first part is sent at once and the second only once
    ``go_on`` is set; the task answers the status."""

    async def body() -> AsyncIterator[bytes]:
        yield parts[0]
        await go_on.wait()
        yield parts[1]

    async def upload() -> int:
        async with http.post(url, data=body(), headers={"X-Channel-User-Id": user}) as resp:
            await resp.read()
            return resp.status

    return asyncio.create_task(upload())


# ======================================================================================
# FINDING 1: a message that is refunded undoes the billing session that other messages
# were served in for free: a client holds one "opener" upload open, rides the paid
# session for free, then makes the opener fail (413) -> everything was free.
# ======================================================================================


async def test_refunded_session_opener_makes_the_whole_session_free(
    seeded_gateway: SeededGateway, rclient: RedisClient, bot: Bot, http: aiohttp.ClientSession
) -> None:
    async with seeded_gateway(
        WS, {APP: {"product": "automation"}}, free=FREE, max_body_bytes=4096
    ) as gw:
        url = f"{gw.url}/hooks/web/{APP}"
        go_on = asyncio.Event()
        # Admitted on its first bytes (session opened, $0.20 charged), body streaming; the
        # rest is past max_body_bytes: 413, and the opener is refunded.
        task = held_upload(http, url, "mallory", (b"x" * 100, b"x" * 8192), go_on)
        assert await wait_for(lambda: credit_is(rclient, FREE - SESSION_PRICE))
        # Meanwhile, in the session the opener paid for: 20 ordinary messages.
        served = [
            await post_message(http, url, "mallory", body=b'{"q":"%d"}' % i) for i in range(20)
        ]
        assert served == [200] * 20
        go_on.set()
        assert await task == 413
    assert bot.count("/") >= 20  # the bot answered 20 messages (plus the opener's partial)
    # Secure: 20 served messages are at least one paid session.
    assert await free_credit(rclient, WS) <= FREE - SESSION_PRICE, "20 messages served for $0"


# ======================================================================================
# FINDING 2: an idempotency key is not bound to the message: "redeliveries" with other
# bodies are served and charged nothing (5 different questions for the price of one).
# ======================================================================================

REQ_APP = f"{WS}_reqs"  # contact_center: $0.01 per request
REQ_PRICE = 10_000


async def test_a_redelivery_with_another_body_is_not_free(
    seeded_gateway: SeededGateway, rclient: RedisClient, bot: Bot, http: aiohttp.ClientSession
) -> None:
    async with seeded_gateway(WS, {REQ_APP: {"product": "contact_center"}}, free=FREE) as gw:
        url = f"{gw.url}/hooks/web/{REQ_APP}"
        questions = [b'{"q":"question number %d"}' % i for i in range(5)]
        statuses = [await post_message(http, url, "mallory", "k1", body=q) for q in questions]
        # The same message again is a redelivery: served, not charged again.
        again = await post_message(http, url, "mallory", "k1", body=questions[0])
    # Secure: the 4 impostors under the reused key are refused, the bot never sees them.
    assert statuses == [200] + [409] * 4
    assert again == 200
    assert [c.body for c in bot.calls] == [questions[0], questions[0]]
    assert await free_credit(rclient, WS) == FREE - REQ_PRICE


# ======================================================================================
# FINDING 3: a charge is "confirmed as forwarded" only after the last byte of a streamed
# body; an upload held open past refund_window_s is refunded by the sweeper although
# the bot then gets it and answers.
# ======================================================================================


async def test_a_slow_upload_is_not_refunded_by_the_sweeper(
    seeded_gateway: SeededGateway, rclient: RedisClient, bot: Bot, http: aiohttp.ClientSession
) -> None:
    apps = {REQ_APP: {"product": "contact_center"}}
    async with seeded_gateway(WS, apps, free=FREE, refund_window_s=3.0) as gw:
        url = f"{gw.url}/hooks/web/{REQ_APP}"
        go_on = asyncio.Event()
        question = (b'{"q":"a question that ', b'takes a while to type"}')
        task = held_upload(http, url, "m", question, go_on)
        assert await wait_for(lambda: credit_is(rclient, FREE - REQ_PRICE))
        refunds = make_admitter(rclient, gw.gateway.settings)
        # A sweeper whose clock is past the refund window, the upload still open.
        sweeper = Sweeper(
            rclient,
            lambda: _ws_list(),
            lambda app_id, rid: refunds.void(app_id, rid, ""),
            clock=lambda: time.time() + 5,
        )
        await sweeper.sweep_once()
        go_on.set()
        assert await task == 200
    assert bot.count() == 1  # the bot got the whole message and answered it
    assert await free_credit(rclient, WS) == FREE - REQ_PRICE, (
        "served, then refunded by the sweeper"
    )


async def _ws_list() -> list[str]:
    return [WS]


@pytest.mark.usefixtures("traffic_server")
async def test_a_small_body_trickled_in_past_the_refund_window_is_never_served_free(
    seeded_gateway: SeededGateway, rclient: RedisClient, bot: Bot, http: aiohttp.ClientSession
) -> None:
    # A body of known small length is read after its message is charged (aiohttp path;
    # the fast path reads it first). Trickled in a byte at a time, each read well within
    # body_timeout_s, it outlasted the refund window: the gateway's sweeper refunded the
    # charge, and then the message was sent to the bot, free. Now such a body must be
    # all in within a quarter of the refund window (408 otherwise, and never sent).
    window = 6.0
    apps = {REQ_APP: {"product": "contact_center"}}
    async with seeded_gateway(WS, apps, free=FREE, refund_window_s=window) as gw:
        question = b'{"q":"a question typed one key at a time"}'

        async def trickle() -> AsyncIterator[bytes]:
            for i in range(len(question)):  # 0.3 s apart: 12 s in all, twice the window
                yield question[i : i + 1]
                await asyncio.sleep(0.3)

        refunds = make_admitter(rclient, gw.gateway.settings)
        sweeper = Sweeper(rclient, _ws_list, lambda a, r: refunds.void(a, r, ""))

        async def sweep_all_along() -> None:  # as the gateway's own sweeper does
            while True:
                await sweeper.sweep_once()
                await asyncio.sleep(0.2)

        sweeping = asyncio.create_task(sweep_all_along())
        headers = {"X-Channel-User-Id": "slow", "Content-Length": str(len(question))}
        try:
            async with http.post(f"{gw.url}/hooks/web/{REQ_APP}", data=trickle(),
                                 headers=headers) as resp:  # fmt: skip
                status = resp.status
                await resp.read()
        except aiohttp.ClientError:
            status = 0  # answered early and closed while the body was still coming
        # Until the message's charge is settled: confirmed, refunded, or (the premise of
        # the attack: time passing) swept past its reservation's deadline.
        assert await settled(rclient, WS)
        sweeping.cancel()
    charged = (FREE - await free_credit(rclient, WS)) // REQ_PRICE
    assert charged == bot.count(), (status, charged, bot.count())  # served iff charged
    assert status in (200, 408, 0)


# What a TCP socket's send buffer can grow to (net.ipv4.tcp_wmem's maximum).
SEND_BUFFER_MAX = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])


@contextlib.asynccontextmanager
async def stalling_bot(go_on: asyncio.Event) -> AsyncIterator[tuple[str, list[int]]]:
    """A bot that reads a request's head, then stops reading until ``go_on`` is set; then
    it reads the whole body and answers 200. Its receive buffer is pinned small, so a
    large body fills it and the sender's socket, and the sender's writes wait. Yields its
    URL and the body lengths it received in full."""
    got: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))  # fmt: skip
        await go_on.wait()
        got.append(len(await reader.readexactly(length)))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await writer.drain()
        writer.close()

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # accepted sockets inherit it
    sock.bind(("127.0.0.1", 0))
    server = await asyncio.start_server(handle, sock=sock)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", got
    finally:
        go_on.set()
        server.close()
        await server.wait_closed()


@pytest.mark.usefixtures("traffic_server")
@pytest.mark.parametrize("keyed", [True, False], ids=["read-first", "streamed"])
async def test_a_bot_that_stops_reading_a_large_body_cannot_outwait_the_refund_window(
    redis_url: str, tmp_path: Path, rclient: RedisClient, http: aiohttp.ClientSession,
    keyed: bool,
) -> None:  # fmt: skip
    # A tenant's bot reads the head of a large message and stops reading. Were the charge
    # confirmed only once the last byte is written, the bot could hold it past the refund
    # window, have it refunded by the sweeper, then read the rest and answer: served
    # free. It is confirmed once the first bytes are handed to the socket. A keyed
    # message's body is read whole before it is charged; an unkeyed one is streamed.
    # Larger than the gateway's socket send buffer can grow to, so the write waits.
    size = 2 * SEND_BUFFER_MAX + (1 << 20)
    go_on = asyncio.Event()
    async with stalling_bot(go_on) as (bot_url, got):
        settings = make_settings(redis_url, tmp_path, max_body_bytes=2 * size)
        app = {"product": "contact_center", "upstream_url": bot_url}
        await seed(rclient, settings, WS, {REQ_APP: app}, free=FREE)
        async with running_gateway(settings) as gw:
            headers = {"X-Channel-User-Id": "big"} | ({"Idempotency-Key": "k1"} if keyed else {})

            async def post() -> int:
                url = f"{gw.url}/hooks/web/{REQ_APP}"
                async with http.post(url, data=io.BytesIO(b"x" * size), headers=headers) as resp:
                    await resp.read()
                    return resp.status

            sending = asyncio.create_task(post())
            try:
                assert await wait_for(lambda: credit_is(rclient, FREE - REQ_PRICE))
                # Charged, the bot stalled: the charge is to be confirmed as forwarded
                # now, not once the bot has read everything (which it does not do).
                assert await wait_for(lambda: _nothing_reserved(rclient))
                # Then the window passes (a sweeper whose clock is past it), and the bot
                # reads on and answers.
                refunds = make_admitter(rclient, settings)
                later = settings.refund_window_s * 10
                sweeper = Sweeper(rclient, _ws_list, lambda a, r: refunds.void(a, r, ""),
                                  clock=lambda: time.time() + later)  # fmt: skip
                await sweeper.sweep_once()
            finally:
                go_on.set()
            assert await sending == 200
    assert got == [size]  # the bot read it all and answered
    assert await credit_is(rclient, FREE - REQ_PRICE), "served, and refunded by the sweeper"


async def _nothing_reserved(rclient: RedisClient) -> bool:
    return int(await rclient.zcard(keys.reservations_key(WS))) == 0


# ======================================================================================
# FINDING 4: on an HS256 channel the end-user's SDK token (sub = the user) also
# authorizes /notify (no notify_secret: the channel secret is the notify key), so any
# end user can push arbitrary bodies to the channel's delivery endpoint, billed to the
# tenant as notifications.
# ======================================================================================


async def _signed_app(
    redis_url: str, tmp_path: Path, rclient: RedisClient, bot: Bot, channels: tuple[str, ...]
) -> Settings:
    """Settings with channel authentication; APP seeded with $10 free credit, its secret
    set on ``channels``."""
    settings = auth_settings(
        redis_url, tmp_path, channels={"web": ChannelRule(delivery_url=bot.url + "/out/web")}
    )
    await seed(rclient, settings, WS, {APP: {"product": "automation", "upstream_url": bot.url}},
               free=FREE)  # fmt: skip
    for channel in channels:
        await set_secret(rclient, settings, APP, channel)
    return settings


# ======================================================================================
# FINDING 5: the unsigned Meta subscription handshake is a free pass for ANY GET: any
# tail, any extra query, suspended or broke apps; the bot's full answer comes back.
# ======================================================================================


# ======================================================================================
# FINDING 6: a plain GET with "Upgrade: websocket" is handled as a WebSocket upgrade:
# only checked (nothing charged), then the gateway opens a request to the bot at the
# attacker's path and query: the bot does the work, $0 charged.
# Resolved: the bot's answer other than a 101 never reaches the client (502, none of its
# status, headers or body), so, not served, it is refunded as a bot's failure like a 5xx
# (docs/design.md); what the bot did for it is then free, as for any failure it answers,
# and bounded as that is: each such handshake is admitted first and counts in the app's
# rate windows, and the check before the bot is dialled refuses past them (429).
# ======================================================================================


async def test_an_upgrade_header_buys_no_answer_and_the_rate_limit_bounds_it(
    seeded_gateway: SeededGateway, rclient: RedisClient, bot: Bot
) -> None:
    apps = {APP: {"product": "automation"}}
    async with seeded_gateway(WS, apps, free=FREE, rate_per_minute=3) as gw:
        answers = []
        for i in range(5):
            async with RawConn.open(gw.url) as c:
                c.send(
                    f"GET /hooks/web/{APP}/api/answer?q={i} HTTP/1.1\r\nHost: x\r\n"
                    "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nX-Channel-User-Id: m\r\n\r\n"
                    .encode()
                )  # fmt: skip
                answers.append(await c.response())
    assert [r.status for r in answers] == [502, 502, 502, 429, 429]
    for r in answers:
        assert r.is_problem
        assert b"/api/answer" not in r.body  # nothing of the bot's answer
    assert bot.count("/api/answer") == 3  # the rate limit counted each, then refused
    assert await free_credit(rclient, WS) == FREE  # not served: refunded


# ======================================================================================
# FINDING 7 (design): enabling channel authentication on one channel protects nothing:
# the same app (same bot, same credit) is reachable through any other channel name,
# unauthenticated and billed to the tenant, unless the operator requires auth globally.
# ======================================================================================


# ======================================================================================
# FINDING 8 (critical): shadow mode is an app setting its OWNER may switch on
# (PATCH /v1/apps/{app} {"shadow": true}); a shadow app is never refused and a message
# it cannot pay is "served uncharged": unlimited free service for any tenant.
# ======================================================================================


async def test_a_tenant_cannot_switch_its_own_app_to_free_shadow_mode(
    redis_url: str, tmp_path: Path, bot: Bot, http: aiohttp.ClientSession
) -> None:
    from tests.support.adminkit import admin_server, admin_settings

    settings = admin_settings(redis_url, tmp_path)
    async with admin_server(settings, traffic=True) as admin:
        _, token = await admin.new_user("mallory")
        await admin.ok("POST", "/v1/workspaces", token, {"name": "first"})  # the free $500
        ws = await admin.new_workspace(token, "second")
        app = await admin.new_app(token, ws, bot.url)
        url = f"{admin.traffic_url}/hooks/web/{app}"
        assert await post_message(http, url, "u0") == 402  # no credit in the second workspace
        status, _ = await admin.api("PATCH", f"/v1/apps/{app}", token, {"shadow": True})
        served = 0
        for _ in range(100):  # the gateway follows an app change within a second
            served = sum([await post_message(http, url, f"u{i}") == 200 for i in range(1, 6)])
            if served:
                break
            await asyncio.sleep(0.05)
        more = [await post_message(http, url, f"user{i}") for i in range(40)]
        view = await admin.ok("GET", f"/v1/workspaces/{ws}/plan-usage", token)
    # Secure: the owner may not switch shadow mode on (403/422), and nothing is served.
    assert (bot.count(), more.count(200)) == (0, 0), (
        f"PATCH shadow -> {status}; bot served {bot.count()} sessions; "
        f"balance {view['usable_balance']}"
    )


# ======================================================================================
# FINDING 9: the dot-segment guard splits the tail on raw "/" only: "%2F..%2F" (an
# encoded slash around "..") passes and the bot's decoded path climbs out of the app's
# URL space (aiohttp's request.path at the bot: /tenantA/api/x/../../tenantB/secret).
# ======================================================================================


@pytest.mark.parametrize(
    "tail", ["/x%2F..%2F..%2FtenantB%2Fsecret", "/x/%2e%2e%2f%2e%2e%2ftenantB%2fsecret"]
)
async def test_encoded_slashes_do_not_smuggle_dot_segments(
    seeded_gateway: SeededGateway,
    bot: Bot,
    http: aiohttp.ClientSession,
    tail: str,
) -> None:
    apps = {APP: {"product": "automation", "upstream_url": bot.url + "/tenantA/api"}}
    async with seeded_gateway(WS, apps, free=FREE) as gw:
        u = URL(f"{gw.url}/hooks/web/{APP}{tail}", encoded=True)
        async with http.post(u, data=b"{}", headers={"X-Channel-User-Id": "m"}) as resp:
            status = resp.status
            seen = (await resp.json(content_type=None)).get("path", "")
    # Secure: 400 invalid_path, or at least the bot never sees a ".." segment.
    assert status == 400 or ".." not in seen.split("/"), f"{status}: bot path {seen}"


# ======================================================================================
# FINDING 10: X-Slack-Request-Timestamp "²" (or any Unicode digit int() refuses) passes
# str.isdigit() and then int() raises: unauthenticated 500 on every Slack-enabled app.
# ======================================================================================


# ======================================================================================
# BLOCKED (passing): attacks tried that the gateway refuses correctly.
# ======================================================================================


@pytest.mark.parametrize(
    "target",
    [
        "http://127.0.0.1:{port}/",
        "http://[::ffff:127.0.0.1]:{port}/",
        "http://[::ffff:7f00:1]:{port}/",
        "http://[::127.0.0.1]:{port}/",
        "http://[64:ff9b::7f00:1]:{port}/",
        "http://[2002:7f00:1::]:{port}/",
        "http://localhost:{port}/",
        "http://LOCALHOST.:{port}/",
        "http://2130706433:{port}/",
        "http://0x7f.1:{port}/",
        "http://127.1:{port}/",
        "http://0177.0.0.1:{port}/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fe80::1%25lo]:{port}/",
        "http://10.0.0.1/",
        "http://0.0.0.0:{port}/",
        "http://[::]:{port}/",
        "file:///etc/passwd",
        "gopher://127.0.0.1:{port}/",
        "http://user@127.0.0.1:{port}/",
        "http://127.0.0.1\\@example.com/",
    ],
)
async def test_blocked_ssrf_urls_are_refused_on_save(
    redis_url: str, tmp_path: Path, bot: Bot, target: str
) -> None:
    from tests.support.adminkit import admin_server, admin_settings

    port = URL(bot.url).port
    settings = admin_settings(redis_url, tmp_path, egress_allow=[])
    async with admin_server(settings) as admin:
        token, ws = await admin.owner_workspace("mallory", "w")
        body = {"name": "b", "product": "automation", "upstream_url": target.format(port=port)}
        status, problem = await admin.api("POST", f"/v1/workspaces/{ws}/apps", token, body)
        assert status in (400, 422), (status, problem)
        hook = {"url": target.format(port=port), "secret": "s" * 32}
        status, problem = await admin.api("PUT", f"/v1/workspaces/{ws}/webhook", token, hook)
        assert status in (400, 422), (status, problem)
    assert bot.count() == 0


@pytest.mark.parametrize(
    "target",
    ["http://127.0.0.1:{port}", "http://[::ffff:127.0.0.1]:{port}", "http://localhost:{port}"],
)
async def test_blocked_ssrf_at_connect_time_is_502_and_refunded(
    seeded_gateway: SeededGateway,
    rclient: RedisClient,
    bot: Bot,
    http: aiohttp.ClientSession,
    target: str,
) -> None:
    # The URL reached Redis without the save-time check (a rebinding name, an old row).
    upstream = target.format(port=URL(bot.url).port)
    apps = {APP: {"product": "automation", "upstream_url": upstream}}
    async with seeded_gateway(WS, apps, free=FREE, egress_allow=[]) as gw:
        url = f"{gw.url}/hooks/web/{APP}"
        async with http.post(url, data=b"{}", headers={"X-Channel-User-Id": "m"}) as resp:
            assert resp.status == 502
            assert (await resp.json(content_type=None))["code"] == "upstream_forbidden"
    assert bot.count() == 0
    assert await free_credit(rclient, WS) == FREE


async def test_blocked_upstream_at_the_admin_port_even_when_loopback_is_allowed(
    redis_url: str, tmp_path: Path, rclient: RedisClient, http: aiohttp.ClientSession
) -> None:
    from tests.support.servers import free_port

    traffic, admin = free_port(), free_port()
    settings = make_settings(redis_url, tmp_path, traffic_port=traffic, admin_port=admin)
    targets = [f"http://127.0.0.1:{admin}", f"http://localhost:{admin}",
               f"http://[::ffff:127.0.0.1]:{admin}", f"http://127.0.0.1:{traffic}"]  # fmt: skip
    # One app per target: no upstream cache can answer for another target.
    apps = {f"{WS}_adm{i}": t for i, t in enumerate(targets)}
    await seed(rclient, settings, WS,
               {app: {"product": "automation", "upstream_url": t} for app, t in apps.items()},
               free=FREE)  # fmt: skip
    async with running_replica(settings, "127.0.0.1"):
        for app, target in apps.items():
            async with http.get(f"http://127.0.0.1:{traffic}/hooks/web/{app}/metrics",
                                headers={"X-Channel-User-Id": "m"}) as resp:  # fmt: skip
                body = await resp.read()
                assert resp.status in (502, 508), (target, body[:200])
                assert b"creditgate_" not in body
    assert await free_credit(rclient, WS) == FREE


async def test_blocked_forged_hs256_tokens(
    redis_url: str, tmp_path: Path, rclient: RedisClient, bot: Bot, http: aiohttp.ClientSession
) -> None:
    import base64
    import json

    settings = await _signed_app(redis_url, tmp_path, rclient, bot, channels=("web",))

    def b64(d: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()

    claims = {"sub": "victim", "exp": int(time.time()) + 300}
    forged = [
        b64({"alg": "none", "typ": "JWT"}) + "." + b64(claims) + ".",
        hs256("victim", key="w" * 40),
        hs256("victim", exp_in=-3600),
        hs256("x" * 300),
        "Bearer",
    ]
    async with running_gateway(settings) as gw:
        for tok in forged:
            h = {"Authorization": f"Bearer {tok}", "X-Channel-User-Id": "victim"}
            async with http.post(f"{gw.url}/hooks/web/{APP}", data=b"{}", headers=h) as resp:
                body = await resp.text()
                assert resp.status == 401, (tok, resp.status)
                assert tok not in body or tok == "Bearer"
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await http.ws_connect(f"{gw.url}/hooks/web/{APP}/ws?token={forged[1]}")
        assert err.value.status == 401
    assert bot.count() == 0
    assert bot.ws_messages == []
    assert await free_credit(rclient, WS) == FREE


async def test_blocked_unsigned_free_passes_on_authenticated_channels(
    redis_url: str, tmp_path: Path, rclient: RedisClient, bot: Bot, http: aiohttp.ClientSession
) -> None:
    settings = await _signed_app(redis_url, tmp_path, rclient, bot, channels=("slack", "whatsapp"))
    async with running_gateway(settings) as gw:
        bodies = {
            "slack": b'{"type":"url_verification","challenge":"x"}',
            "whatsapp": b'{"entry":[{"changes":[{"value":{"statuses":[]}}]}]}',
        }
        for ch, body in bodies.items():
            st = await post_message(http, f"{gw.url}/hooks/{ch}/{APP}", "m", body=body)
            assert st == 401
        # A POST that looks like the Meta handshake is not one.
        url = f"{gw.url}/hooks/whatsapp/{APP}?hub.mode=subscribe&hub.verify_token=x&hub.challenge=1"
        assert await post_message(http, url, "m", body=b"hello") == 401
    assert bot.count() == 0
    assert await free_credit(rclient, WS) == FREE


async def test_blocked_loop_and_hop_header_tricks(
    redis_url: str, tmp_path: Path, rclient: RedisClient, bot: Bot, http: aiohttp.ClientSession
) -> None:
    async with running_gateway(make_settings(redis_url, tmp_path)) as gw:
        url = await seed_self_loop(rclient, gw, WS, APP, FREE)
        # Hide Via from the next hop by listing it in Connection: it is re-added.
        h = {"Connection": "keep-alive, Via", "Via": "1.1 other"}
        st = await post_message(http, url, "m", headers=h)
        assert st in (502, 508)
    assert bot.count() == 0
    assert await free_credit(rclient, WS) == FREE


# ======================================================================================
# FINDING 11: the own-address guard knows only THIS process's address. Replicas (the
# HPA runs at least 2) listen on the same ports at other addresses; with the bots'
# internal range allowed (egress_allow), an app whose upstream is a sibling replica's
# admin port reads its /metrics and /readyz through the traffic port. Simulated on
# loopback: replica A on 127.0.0.1, replica B on 127.0.0.2, same ports, 127/8 allowed
# (as a pod CIDR would be).
# ======================================================================================


# ======================================================================================
# FINDING 12 (low): "?token=" is read percent-decoded but removed by its raw name, so
# "?%74oken=<jwt>" authenticates the upgrade AND travels to the bot in the URL (where
# access logs keep it). The contract: a ?token= is not passed on to the bot.
# ======================================================================================


# ======================================================================================
# FINDING 13: a WebSocket upgrade the bot does not accept is logged (INFO) with the repr
# of aiohttp's WSServerHandshakeError, whose RequestInfo carries every request header
# sent upstream, the client's "Authorization: Bearer <channel JWT>" included.
# ======================================================================================


async def test_blocked_edge_inputs_and_redelivery_bounds(
    seeded_gateway: SeededGateway, rclient: RedisClient, bot: Bot, http: aiohttp.ClientSession
) -> None:
    async with seeded_gateway(WS, {REQ_APP: {"product": "contact_center"}}, free=FREE) as gw:
        url = f"{gw.url}/hooks/web/{REQ_APP}"
        for user in (b"\xff\xfe", b"a\x00b", b"a\tb", b"x" * 257, "\u2028".encode()):
            start = (
                f"POST /hooks/web/{REQ_APP} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                "Connection: close\r\nX-Channel-User-Id: "
            )
            head = start.encode() + user + b"\r\n\r\n{}"
            answer = await raw_exchange(gw.url, head)
            assert answer.split(b"\r\n", 1)[0].endswith(b" 400 Bad Request"), (user, answer[:80])
        assert await post_message(http, url, "m", headers={"Via": "1.1 creditgate"}) == 508
        dots = URL(url + "/%2e%2e/x", encoded=True)
        async with http.post(dots, data=b"{}", headers={"X-Channel-User-Id": "m"}) as resp:
            assert resp.status == 400
        # Same key, same body: honoured 5 times, then 409.
        assert [await post_message(http, url, "m", "k") for _ in range(6)] == [200] * 5 + [409]
        # The same key from another user is another (charged) message.
        assert await post_message(http, url, "other", "k") == 200
    assert bot.count() == 6
    assert await free_credit(rclient, WS) == FREE - 2 * REQ_PRICE
