"""Each tenant's share of the gateway's connections to bots (gateway/tenant_share.py):
``upstream_connections_per_tenant_bot`` at one bot, ``upstream_connections_per_tenant``
in all (set here to three quarters of ``upstream_connections_per_bot`` and
``upstream_connections``; the defaults and the owner as tenant: test_tenant_owner.py).

Tenant B's bot holds every request until the test releases it (tests/support/held_bot.py)
and tenant A points an app at it: the same host and port, so the same per-bot cap. The
tests of the total give A apps at three ports of held bots and B an app on the counting
bot. Each message comes from its own user, so an admitted message is one session charged:
a test sees a message admitted by its charge in Redis, and one waiting for its tenant's
share in ``creditgate_tenant_share_waits_total``. Before the share, A took every place
and B's message waited: each test fails there (B not served) or sooner.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from config.fields import ChannelRule
from gateway.channel_credentials import NOTIFY_AUDIENCE
from meter.accounts.projection import read_balances
from meter.accounts.seeding import seed
from meter.redis_layer.client import RedisClient
from tests.support.bot import Bot, Running, eventually, running_gateway
from tests.support.channel_keys import SECRET_KEY, hs256, set_secret
from tests.support.held_bot import HeldBot, connect_wait, held_bot
from tests.support.serving import seeded_serve, tail
from tests.support.settings import make_settings

# Each test runs against both traffic servers (aiohttp, the fast path).
pytestmark = pytest.mark.usefixtures("traffic_server")

A, B = "shra", "shrb"  # two tenants (workspaces)
APP_A, APP_B = f"{A}_app1", f"{B}_app1"
APPS = [f"{A}_app{i}" for i in (1, 2, 3)]  # A's apps at three ports (the total's tests)
SESSION = 200_000  # one automation session: what each message of a new user costs
FUNDS = 100 * SESSION
CAP = 4  # upstream_connections_per_bot of the one-bot tests: A's share there is 3
SHARE = 3
NOTIFY = "notify-" + "n" * 30  # the apps' notify secret (the /notify test)
LONG_WAIT: dict[str, Any] = {"upstream_connect_timeout_s": 600, "refund_window_s": 1200}
# The wait for a place of the messages that must wait past it (504), given them alone
# (tests.support.held_bot.connect_wait): the connects that must succeed meanwhile (the
# held messages', B's) have the settings' hang bound. One setting bounds both in
# production; at 1 s, then 5 s for both, a busy machine's connect on loopback could pass
# it (a spurious 504).
PAST_WAIT_S = 1.0


async def post(
    http: aiohttp.ClientSession,
    url: str,
    user: str,
    body: bytes = b"hi",
    headers: dict[str, str] | None = None,
) -> int:
    headers = {"X-Channel-User-Id": user, **(headers or {})}
    async with http.post(url, headers=headers, data=body) as resp:
        await resp.read()
        return resp.status


async def until(cond: Callable[[], Awaitable[bool]]) -> bool:
    """Poll ``cond`` (state the gateway changes) until true or a long while."""
    for _ in range(1200):
        if await cond():
            return True
        await asyncio.sleep(0.05)
    return await cond()


def spent(rclient: RedisClient, ws: str, sessions: int) -> Callable[[], Awaitable[bool]]:
    """Whether ``ws``'s apps together paid exactly ``sessions`` sessions."""

    async def cond() -> bool:
        apps = (await read_balances(rclient, ws)).app
        return sum(FUNDS - funds for funds in apps.values()) == sessions * SESSION

    return cond


def metric(http: aiohttp.ClientSession, gw: Running, line: str) -> Callable[[], Awaitable[bool]]:
    """Whether the gateway's metrics show ``line``."""

    async def cond() -> bool:
        async with http.get(f"{gw.admin_url}/metrics") as resp:
            return line in (await resp.text()).splitlines()

    return cond


def waits(http: aiohttp.ClientSession, gw: Running, n: int) -> Callable[[], Awaitable[bool]]:
    return metric(http, gw, f"creditgate_tenant_share_waits_total {float(n)}")


def parked(
    http: aiohttp.ClientSession, gw: Running, n: int, before: Callable[[], bool]
) -> Callable[[], Awaitable[bool]]:
    """Whether A's messages over its share got as far as they go: ``n`` of them wait for
    a place of the share or, before the share, ``before()``: they took the places the
    share keeps for others (never true with the share)."""
    waiting = waits(http, gw, n)

    async def cond() -> bool:
        return before() or await waiting()

    return cond


async def served(task: Answer) -> int:
    """The status of a message expected at once: fails (not hangs) if it waits."""
    assert await eventually(task.done), "served only once another tenant's places free"
    return task.result()


Raw = tuple[asyncio.StreamReader, asyncio.StreamWriter]
Answer = asyncio.Task[int]


async def raw_post(url: str, path: str, user: str, head: str = "", body: bytes = b"hi") -> Raw:
    """A request sent on a socket of its own (to reset it, or send half a body)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    length = head or f"Content-Length: {len(body)}\r\n"
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: x\r\nX-Channel-User-Id: {user}\r\n{length}\r\n".encode()
        + body
    )
    return reader, writer


def reset(writer: asyncio.StreamWriter) -> None:
    """Gone for good (a reset, not a half-close)."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


Gateway = Callable[..., contextlib.AbstractAsyncContextManager[Running]]


@pytest.fixture
async def slow() -> AsyncIterator[HeldBot]:
    async with held_bot() as b:
        yield b


@pytest.fixture
def one_bot(redis_url: str, tmp_path: Path, rclient: RedisClient, slow: HeldBot) -> Gateway:
    """``one_bot(**settings)``: B's app on the held bot, and A's app too; ``CAP`` places
    per bot."""

    @contextlib.asynccontextmanager
    async def start(**overrides: Any) -> AsyncIterator[Running]:
        caps = {"upstream_connections_per_bot": CAP, "upstream_connections_per_tenant_bot": SHARE}
        settings = make_settings(redis_url, tmp_path, **caps, **overrides)
        for ws, app in ((A, APP_A), (B, APP_B)):
            apps = {app: {"product": "automation", "upstream_url": slow.url, "funds": FUNDS}}
            await seed(rclient, settings, ws, apps)
        async with running_gateway(settings) as gw:
            yield gw

    return start


async def hold_a_share(http: aiohttp.ClientSession, gw: Running, slow: HeldBot) -> list[Answer]:
    """A's ``SHARE`` messages, held by B's bot; their tasks once the bot holds them."""
    url = f"{gw.url}/hooks/web/{APP_A}/a"
    held = [asyncio.create_task(post(http, f"{url}/{i}", f"a{i}")) for i in range(SHARE)]
    assert await eventually(lambda: slow.held == SHARE)
    return held


async def test_a_tenant_at_another_tenants_bot_holds_its_share_and_no_more(
    one_bot: Gateway, slow: HeldBot, http: aiohttp.ClientSession, rclient: RedisClient
) -> None:
    async with one_bot(**LONG_WAIT) as gw:
        held = await hold_a_share(http, gw, slow)
        url = f"{gw.url}/hooks/web/{APP_A}/a"
        late = []
        for n in (1, 2):  # one by one: each admitted, then waiting its turn
            late.append(asyncio.create_task(post(http, f"{url}/{SHARE + n}", f"late{n}")))
            assert await until(spent(rclient, A, SHARE + n))
            assert await until(parked(http, gw, n, lambda: slow.held == CAP))
        # B's message has the bot's last place at once, while A's excess waits.
        b = asyncio.create_task(post(http, f"{gw.url}/hooks/web/{APP_B}/b", "b1"))
        assert await eventually(lambda: "/b" in slow.paths)
        assert (slow.held, slow.paths[SHARE:]) == (CAP, ["/b"])
        slow.release.set()
        assert await asyncio.gather(*held, *late, b) == [200] * (SHARE + 3)
        # A's waiters went once its own places freed, on connections kept alive.
        assert sorted(slow.paths[CAP:]) == [f"/a/{SHARE + 1}", f"/a/{SHARE + 2}"]
        assert (slow.peak, slow.accepted) == (CAP, CAP)
    assert await spent(rclient, A, SHARE + 2)()
    assert await spent(rclient, B, 1)()


async def test_slow_bodies_hold_only_their_tenants_share_of_a_bot(
    one_bot: Gateway, slow: HeldBot, http: aiohttp.ClientSession, rclient: RedisClient
) -> None:
    # A's clients send half a body to B's bot (streamed: the bot connection is open
    # meanwhile) and stall; B's message (a large body: the same pool on both servers)
    # is served at once. The bot answers each request as soon as it has read it.
    slow.release.set()
    async with one_bot(body_timeout_s=600, **LONG_WAIT) as gw, contextlib.AsyncExitStack() as stack:
        half = "Content-Length: 100000\r\n"
        for i in range(SHARE + 1):
            path = f"/hooks/web/{APP_A}/a/{i}"
            _, writer = await raw_post(gw.url, path, f"a{i}", half, b"x" * 1000)
            stack.callback(reset, writer)
            assert await until(spent(rclient, A, i + 1))
        assert await until(parked(http, gw, 1, lambda: slow.open == CAP))
        url = f"{gw.url}/hooks/web/{APP_B}/b"
        assert await served(asyncio.create_task(post(http, url, "b1", b"y" * 70_000))) == 200
        assert slow.paths == ["/b"]
        assert await waits(http, gw, 1)()


async def test_a_wait_for_the_share_past_the_connect_timeout_is_504_and_refunded(
    one_bot: Gateway, slow: HeldBot, http: aiohttp.ClientSession, rclient: RedisClient
) -> None:
    # Only the connect timeout ends a wait here (a message sent is held past this test).
    async with one_bot(upstream_read_timeout_s=600) as gw:
        held = await hold_a_share(http, gw, slow)
        url = f"{gw.url}/hooks/web/{APP_A}/late"
        with connect_wait(gw, PAST_WAIT_S):
            late = [asyncio.create_task(post(http, f"{url}/{i}", f"late{i}")) for i in (1, 2)]
            assert await until(lambda: asyncio.sleep(0, all(t.done() for t in late)))
        assert [t.result() for t in late] == [504, 504]
        assert await spent(rclient, A, SHARE)()  # each refunded, exactly once
        assert await metric(http, gw, "creditgate_refunds_total 2.0")()
        assert await waits(http, gw, 2)()
        b = asyncio.create_task(post(http, f"{gw.url}/hooks/web/{APP_B}/b", "b1"))
        assert await eventually(lambda: "/b" in slow.paths)
        slow.release.set()
        assert await asyncio.gather(*held, b) == [200] * (SHARE + 1)
    assert sorted(slow.paths) == sorted([*(f"/a/{i}" for i in range(SHARE)), "/b"])
    assert await spent(rclient, A, SHARE)()


async def test_a_client_gone_while_waiting_for_its_share_is_refunded_and_never_sent(
    one_bot: Gateway, slow: HeldBot, http: aiohttp.ClientSession, rclient: RedisClient
) -> None:
    async with one_bot(**LONG_WAIT) as gw:
        held = await hold_a_share(http, gw, slow)
        _, writer = await raw_post(gw.url, f"/hooks/web/{APP_A}/gone", "gone")
        assert await until(spent(rclient, A, SHARE + 1))
        assert await until(parked(http, gw, 1, lambda: slow.held == CAP))
        reset(writer)
        assert await until(spent(rclient, A, SHARE))  # refunded at once
        b = asyncio.create_task(post(http, f"{gw.url}/hooks/web/{APP_B}/b", "b1"))
        assert await eventually(lambda: "/b" in slow.paths)
        nxt = asyncio.create_task(post(http, f"{gw.url}/hooks/web/{APP_A}/next", "next"))
        assert await until(waits(http, gw, 2))  # its turn comes once A's places free
        slow.release.set()
        assert await asyncio.gather(*held, nxt, b) == [200] * (SHARE + 2)
        assert await metric(http, gw, "creditgate_client_disconnects_total 1.0")()
        assert await metric(http, gw, "creditgate_refunds_total 1.0")()
    assert "/gone" not in slow.paths
    assert slow.paths[CAP:] == ["/next"]
    assert await spent(rclient, A, SHARE + 1)()


async def test_notifications_hold_only_their_tenants_share_of_a_delivery_endpoint(
    one_bot: Gateway, slow: HeldBot, http: aiohttp.ClientSession, rclient: RedisClient
) -> None:
    # /notify goes out to the channel's delivery endpoint: one for every tenant.
    out = {"web": ChannelRule(delivery_url=slow.url + "/out")}
    async with one_bot(channels=out, secret_key=SECRET_KEY, **LONG_WAIT) as gw:
        for app in (APP_A, APP_B):
            await set_secret(rclient, gw.gateway.settings, app, "web", notify=NOTIFY)
        token = hs256(None, NOTIFY, aud=NOTIFY_AUDIENCE)

        def notify(app: str, tail: str, user: str) -> Answer:
            url, headers = f"{gw.url}/notify/web/{app}{tail}", {"Authorization": f"Bearer {token}"}
            return asyncio.create_task(post(http, url, user, headers=headers))

        held = [notify(APP_A, f"/{i}", f"a{i}") for i in range(SHARE)]
        assert await eventually(lambda: slow.held == SHARE)
        over = notify(APP_A, "/over", "over")
        assert await until(parked(http, gw, 1, lambda: slow.held == CAP))
        b = notify(APP_B, "/b", "b1")
        assert await eventually(lambda: "/out/b" in slow.paths)
        slow.release.set()
        assert await asyncio.gather(*held, over, b) == [200] * (SHARE + 2)
    assert slow.paths[CAP:] == ["/out/over"]


async def test_sigterm_refuses_a_wait_for_the_share(
    redis_url: str, tmp_path: Path, rclient: RedisClient, slow: HeldBot
) -> None:
    apps = {APP_A: {"product": "automation", "upstream_url": slow.url, "funds": FUNDS}}
    served = seeded_serve(
        rclient, redis_url, tmp_path, A, apps,
        workers=1, upstream_connections_per_bot=CAP, upstream_connections_per_tenant_bot=SHARE,
        **LONG_WAIT, shutdown_grace_s=1,
    )  # fmt: skip
    async with served as gw, aiohttp.ClientSession() as http:
        url = f"{gw.traffic}/hooks/web/{APP_A}/a"
        held = [asyncio.create_task(post(http, f"{url}/{i}", f"a{i}")) for i in range(SHARE)]
        assert await eventually(lambda: slow.held == SHARE)
        over = asyncio.create_task(post(http, f"{url}/over", "over"))
        assert await until(spent(rclient, A, SHARE + 1))
        line = "creditgate_tenant_share_waits_total 1.0"

        async def waiting() -> bool:
            async with http.get(f"{gw.admin}/metrics") as resp:
                return slow.held == CAP or line in (await resp.text()).splitlines()

        assert await until(waiting)
        gw.proc.terminate()  # the bot never answers, the waiter's timeout is far away
        assert await gw.proc.wait() == 0, tail(tmp_path / "serve.log")
        for task in held:
            with pytest.raises(aiohttp.ClientError):
                await task  # the bot has them: reset after the grace, charged
        assert await over == 502  # answered, never sent, refunded at once
        assert await spent(rclient, A, SHARE)()
    assert "/a/over" not in slow.paths


# ------------------------------------------------------------------ the total

T = 4  # upstream_connections of the tests below: A's share in all is 3


@pytest.fixture
async def ports() -> AsyncIterator[list[HeldBot]]:
    async with held_bot() as p1, held_bot() as p2, held_bot() as p3:
        yield [p1, p2, p3]


@pytest.fixture
def many(
    redis_url: str, tmp_path: Path, rclient: RedisClient, bot: Bot, ports: list[HeldBot]
) -> Gateway:
    """``many(**settings)``: A's apps at the three held bots, B's on the counting bot; two
    connections per bot, ``T`` in all."""

    @contextlib.asynccontextmanager
    async def start(**overrides: Any) -> AsyncIterator[Running]:
        caps: dict[str, Any] = {
            "upstream_connections": T,
            "upstream_connections_per_bot": 2,
            "upstream_connections_per_tenant": 3,
            "upstream_connections_per_tenant_bot": 2,
            **overrides,
        }
        settings = make_settings(redis_url, tmp_path, **caps)
        apps = {
            app: {"product": "automation", "upstream_url": held.url, "funds": FUNDS}
            for app, held in zip(APPS, ports, strict=True)
        }
        await seed(rclient, settings, A, apps)
        b = {APP_B: {"product": "automation", "upstream_url": bot.url, "funds": FUNDS}}
        await seed(rclient, settings, B, b)
        async with running_gateway(settings) as gw:
            yield gw

    return start


async def test_a_tenant_on_many_addresses_leaves_room_for_others(
    many: Gateway,
    ports: list[HeldBot],
    bot: Bot,
    http: aiohttp.ClientSession,
    rclient: RedisClient,
) -> None:
    async with many(**LONG_WAIT) as gw:
        url = f"{gw.url}/hooks/web"
        # Two messages to each of A's first two ports: one over A's share in all.
        sent = [
            asyncio.create_task(post(http, f"{url}/{APPS[i // 2]}/m/{i}", f"u{i}"))
            for i in range(T)
        ]
        assert await until(spent(rclient, A, T))
        assert await until(parked(http, gw, 1, lambda: ports[0].held + ports[1].held == T))
        assert await eventually(lambda: ports[0].held + ports[1].held == T - 1)
        assert await served(asyncio.create_task(post(http, f"{url}/{APP_B}/b", "b1"))) == 200
        assert bot.count() == 1
        ports[0].release.set()
        ports[1].release.set()
        assert await asyncio.gather(*sent) == [200] * T
    assert ports[0].peak + ports[1].peak == T - 1  # A's last went on a connection freed
    assert await spent(rclient, A, T)()


async def test_a_share_freed_goes_to_the_tenants_next_waiter(
    many: Gateway,
    ports: list[HeldBot],
    bot: Bot,
    http: aiohttp.ClientSession,
    rclient: RedisClient,
) -> None:
    async with many(**LONG_WAIT) as gw:
        url = f"{gw.url}/hooks/web"
        paths = [(0, "/m/0"), (0, "/m/1"), (1, "/m/2")]  # A's share in all
        held = [
            asyncio.create_task(post(http, f"{url}/{APPS[p]}{path}", f"u{i}"))
            for i, (p, path) in enumerate(paths)
        ]
        assert await eventually(lambda: (ports[0].held, ports[1].held) == (2, 1))
        waiting = []
        for n in (1, 2):  # to A's third port, under its cap there: waiting for a share
            waiting.append(asyncio.create_task(post(http, f"{url}/{APPS[2]}/w/{n}", f"w{n}")))
            assert await until(spent(rclient, A, 3 + n))
            assert await until(parked(http, gw, n, lambda: ports[2].held == 1))
        assert await served(asyncio.create_task(post(http, f"{url}/{APP_B}/b", "b1"))) == 200
        ports[1].release.set()  # one of A's places frees: its first waiter's
        assert await eventually(lambda: ports[2].held == 1)
        assert ports[2].paths == ["/w/1"]
        ports[0].release.set()
        assert await eventually(lambda: ports[2].held == 2)
        assert ports[2].paths == ["/w/1", "/w/2"]
        ports[2].release.set()
        assert await asyncio.gather(*held, *waiting) == [200] * 5
    assert await spent(rclient, A, 5)()
    assert await spent(rclient, B, 1)()
