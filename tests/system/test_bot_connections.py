"""Tenant isolation of the gateway's connections to bots: ``upstream_connections_per_bot``
per bot, ``upstream_connections`` in all.

Tenant A's bot holds every request until the test releases it (a real listening socket
counting what it accepts, tests/support/held_bot.py); tenant B's bot answers at once.
The tests of the total give A three apps at three ports of the bot host (three held
bots): one cap per port, which only the total bounds.
Each message comes from its own user, so each admitted message is one session charged:
a test sees a message admitted (and so waiting for its bot) by its charge in Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import orjson
import pytest

from config import Settings
from meter.accounts.projection import read_balances
from meter.accounts.seeding import seed
from meter.redis_layer.client import RedisClient
from tests.support.bot import Bot, Running, eventually, running_gateway
from tests.support.held_bot import HeldBot, connect_wait, held_bot
from tests.support.serving import seeded_serve, tail
from tests.support.settings import make_settings

# Each test runs against both traffic servers (aiohttp, the fast path) unless it says.
pytestmark = pytest.mark.usefixtures("traffic_server")

A, B = "capa", "capb"  # two tenants (workspaces)
APP_A, APP_B = f"{A}_app1", f"{B}_app1"
SESSION = 200_000  # one automation session: what each message of a new user costs
FUNDS = 100 * SESSION
N = 3  # the per-bot cap of these tests
# Messages wait for a place as long as a test needs; the refund window must outlast that.
LONG_WAIT = {"upstream_connect_timeout_s": 600, "refund_window_s": 1200}
# The wait for a place of the messages that must wait past it (504), given them alone
# (tests.support.held_bot.connect_wait): the connects that must succeed meanwhile (the
# held messages', B's) have the settings' hang bound. One setting bounds both in
# production; at 1 s, then 5 s for both, a busy machine's connect on loopback could pass
# it (a spurious 504).
PAST_WAIT_S = 1.0


async def post(http: aiohttp.ClientSession, url: str, user: str) -> tuple[int, bytes]:
    async with http.post(url, headers={"X-Channel-User-Id": user}, data=b"hi") as resp:
        return resp.status, await resp.read()


async def until(cond: Callable[[], Awaitable[bool]]) -> bool:
    """Poll ``cond`` (state in Redis, changed by the gateway) until true or a long while."""
    for _ in range(1200):
        if await cond():
            return True
        await asyncio.sleep(0.05)
    return await cond()


@pytest.fixture
async def slow() -> AsyncIterator[HeldBot]:
    async with held_bot() as b:
        yield b


Gateway = Callable[..., contextlib.AbstractAsyncContextManager[Running]]


def whole_shares(caps: dict[str, object]) -> dict[str, object]:
    """``caps`` with each tenant's share the whole of its cap unless they say otherwise:
    these test the caps (test_tenant_share.py and test_tenant_owner.py the shares)."""
    total = Settings.model_fields["upstream_connections"].default
    per_bot = Settings.model_fields["upstream_connections_per_bot"].default
    return {
        "upstream_connections_per_tenant": caps.get("upstream_connections", total),
        "upstream_connections_per_tenant_bot": caps.get("upstream_connections_per_bot", per_bot),
        **caps,
    }


@pytest.fixture
def gateway(
    redis_url: str, tmp_path: Path, rclient: RedisClient, bot: Bot, slow: HeldBot
) -> Gateway:
    """``gateway(**settings)``: tenant A on the held bot, tenant B on the counting bot."""

    @contextlib.asynccontextmanager
    async def start(**overrides: object) -> AsyncIterator[Running]:
        settings = make_settings(redis_url, tmp_path, **whole_shares(overrides))
        for ws, app, url in ((A, APP_A, slow.url), (B, APP_B, bot.url)):
            apps = {app: {"product": "automation", "upstream_url": url, "funds": FUNDS}}
            await seed(rclient, settings, ws, apps)
        async with running_gateway(settings) as gw:
            yield gw

    return start


Answer = asyncio.Task[tuple[int, bytes]]
OnePlace = Callable[[float, str], contextlib.AbstractAsyncContextManager[tuple[Running, Answer]]]


@pytest.fixture
def one_place(gateway: Gateway, http: aiohttp.ClientSession, slow: HeldBot) -> OnePlace:
    """``one_place(connect_timeout, path)``: the gateway with one place per bot, taken by
    user u1's message to A's ``path``, seen held by the bot; yields the gateway and the
    task of that message."""

    @contextlib.asynccontextmanager
    async def start(connect_timeout: float, path: str) -> AsyncIterator[tuple[Running, Answer]]:
        cap = {"upstream_connections_per_bot": 1, "upstream_connect_timeout_s": connect_timeout}
        async with gateway(**cap, refund_window_s=max(120, 2 * connect_timeout)) as gw:
            task = asyncio.create_task(post(http, f"{gw.url}/hooks/web/{APP_A}{path}", "u1"))
            assert await eventually(lambda: slow.held == 1)
            yield gw, task

    return start


def charged(rclient: RedisClient, sessions: int) -> Callable[[], Awaitable[bool]]:
    async def cond() -> bool:
        return (await read_balances(rclient, A)).app[APP_A] == FUNDS - sessions * SESSION

    return cond


async def test_a_slow_bot_gets_at_most_its_cap_and_other_tenants_are_served(
    gateway: Gateway,
    slow: HeldBot,
    bot: Bot,
    http: aiohttp.ClientSession,
    rclient: RedisClient,
) -> None:
    extra = 4
    async with gateway(upstream_connections_per_bot=N, **LONG_WAIT) as gw:
        url = f"{gw.url}/hooks/web/{APP_A}/m"
        sent = [asyncio.create_task(post(http, f"{url}/{i}", f"u{i}")) for i in range(N)]
        assert await eventually(lambda: slow.held == N)
        for i in range(N, N + extra):  # one by one, each admitted before the next
            sent.append(asyncio.create_task(post(http, f"{url}/{i}", f"u{i}")))
            assert await until(charged(rclient, i + 1))
        # Tenant B is served while A's bot holds all A may have.
        assert (await post(http, f"{gw.url}/hooks/web/{APP_B}/now", "b1"))[0] == 200
        assert bot.count() == 1
        assert (slow.held, slow.peak, slow.accepted) == (N, N, N)
        slow.release.set()
        answers = await asyncio.gather(*sent)
        assert answers == [(200, f"/m/{i}".encode()) for i in range(N + extra)]
        # The waiters went in the order they came, on the cap's connections (kept alive).
        assert slow.paths[N:] == [f"/m/{i}" for i in range(N, N + extra)]
        assert (slow.peak, slow.accepted) == (N, N)
        assert await charged(rclient, N + extra)()


async def test_a_waiter_past_the_connect_timeout_is_504_and_refunded(
    one_place: OnePlace, slow: HeldBot, http: aiohttp.ClientSession, rclient: RedisClient
) -> None:
    async with one_place(600, "/m/held") as (gw, first):
        url = f"{gw.url}/hooks/web/{APP_A}/m"
        with connect_wait(gw, PAST_WAIT_S):
            status, body = await post(http, f"{url}/late", "u2")  # waits, then gives up
        assert (status, orjson.loads(body)["code"]) == (504, "upstream_timeout")
        assert await charged(rclient, 1)()  # the late one's session refunded
        slow.release.set()
        assert await first == (200, b"/m/held")
        assert slow.paths == ["/m/held"]  # the late one never reached the bot
        assert slow.accepted == 1
        assert await charged(rclient, 1)()
        async with http.get(f"{gw.admin_url}/metrics") as resp:
            text = await resp.text()
        assert "creditgate_refunds_total 1.0" in text


async def test_a_closed_connection_frees_its_place(
    one_place: OnePlace, slow: HeldBot, http: aiohttp.ClientSession, rclient: RedisClient
) -> None:
    async with one_place(600, "/close/1") as (gw, first):
        url = f"{gw.url}/hooks/web/{APP_A}/close"  # the bot closes after each answer
        second = asyncio.create_task(post(http, f"{url}/2", "u2"))
        assert await until(charged(rclient, 2))
        slow.release.set()
        assert await first == (200, b"/close/1")
        assert await second == (200, b"/close/2")
        assert (slow.paths, slow.accepted, slow.peak) == (["/close/1", "/close/2"], 2, 1)


async def test_a_client_gone_while_waiting_never_reaches_the_bot(
    one_place: OnePlace, slow: HeldBot, http: aiohttp.ClientSession, rclient: RedisClient
) -> None:
    async with one_place(600, "/m/1") as (gw, first):
        url = f"{gw.url}/hooks/web/{APP_A}/m"
        host, port = gw.url.removeprefix("http://").split(":")
        _, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            f"POST /hooks/web/{APP_A}/m/2 HTTP/1.1\r\nHost: x\r\nX-Channel-User-Id: u2\r\n"
            "Content-Length: 2\r\n\r\nhi".encode()
        )
        assert await until(charged(rclient, 2))  # admitted: waiting for the bot
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # a reset: gone for good, not a half-close
        # The wait ends at once, refunded (before, aiohttp's connector kept the message
        # queued until its turn came, then passed the connection on unsent).
        assert await until(charged(rclient, 1))
        third = asyncio.create_task(post(http, f"{url}/3", "u3"))
        assert await until(charged(rclient, 2))
        slow.release.set()
        assert await first == (200, b"/m/1")
        assert await third == (200, b"/m/3")
        assert slow.paths == ["/m/1", "/m/3"]  # before, aiohttp sent /m/2 (charged)
        assert (slow.accepted, slow.peak) == (1, 1)
        assert await charged(rclient, 2)()  # refunded once: it was never sent
        async with http.get(f"{gw.admin_url}/metrics") as resp:
            text = await resp.text()
        assert "creditgate_client_disconnects_total 1.0" in text
        assert "creditgate_refunds_total 1.0" in text


async def test_a_half_closed_client_still_gets_its_answer_after_waiting(
    one_place: OnePlace, slow: HeldBot, rclient: RedisClient
) -> None:
    # Decided: a client that half-closes after its request (RFC 9112 allows it) keeps
    # its place in the queue and is answered, as when it does not wait (the conformance
    # suite) and as on aiohttp; only a client seen gone (reset) leaves the queue.
    async with one_place(600, "/m/1") as (gw, first):
        host, port = gw.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            f"POST /hooks/web/{APP_A}/m/2 HTTP/1.1\r\nHost: x\r\nX-Channel-User-Id: u2\r\n"
            "Content-Length: 2\r\n\r\nhi".encode()
        )
        assert await until(charged(rclient, 2))  # admitted: waiting for the bot
        writer.write_eof()
        slow.release.set()
        assert await first == (200, b"/m/1")
        answer = await reader.read()  # until the gateway closes, after the answer
        writer.close()
        assert answer.startswith(b"HTTP/1.1 200 ")
        assert answer.endswith(b"/m/2")
        assert slow.paths == ["/m/1", "/m/2"]
        assert await charged(rclient, 2)()


async def test_sigterm_does_not_wait_for_waiters(
    redis_url: str, tmp_path: Path, rclient: RedisClient, slow: HeldBot, traffic_server: str
) -> None:
    apps = {APP_A: {"product": "automation", "upstream_url": slow.url, "funds": FUNDS}}
    served = seeded_serve(
        rclient, redis_url, tmp_path, A, apps,
        workers=1, upstream_connections_per_bot=1, **LONG_WAIT,
        shutdown_grace_s=1,
    )  # fmt: skip
    async with served as gw, aiohttp.ClientSession() as http:
        url = f"{gw.traffic}/hooks/web/{APP_A}/m"
        first = asyncio.create_task(post(http, f"{url}/1", "u1"))
        assert await eventually(lambda: slow.held == 1)
        second = asyncio.create_task(post(http, f"{url}/2", "u2"))
        assert await until(charged(rclient, 2))
        gw.proc.terminate()  # the bot never answers, the waiter's timeout is far away
        assert await gw.proc.wait() == 0, tail(tmp_path / "serve.log")
        with pytest.raises(aiohttp.ClientError):
            await first  # the bot has it: reset after the grace, charged
        status, body = await second  # answered, never sent, refunded at once
        assert (status, orjson.loads(body)["code"]) == (502, "upstream_unavailable")
        assert await charged(rclient, 1)()
    assert slow.paths == ["/m/1"]
    log = (tmp_path / "serve.log").read_text()
    assert "open files limit" in log


# ------------------------------------------------------------------ the total


T = 4  # upstream_connections of the tests below: two of A's ports' worth
APPS = [f"{A}_app{i}" for i in (1, 2, 3)]  # A's apps, each at its own port


@pytest.fixture
async def ports() -> AsyncIterator[list[HeldBot]]:
    journal: list[str] = []  # what the three read, in order across them
    async with held_bot(journal) as p1, held_bot(journal) as p2, held_bot(journal) as p3:
        yield [p1, p2, p3]


@pytest.fixture
def many(
    redis_url: str, tmp_path: Path, rclient: RedisClient, bot: Bot, ports: list[HeldBot]
) -> Gateway:
    """``many(**settings)``: A's apps at the three held bots, B's on the counting bot; two
    connections per bot, ``T`` in all, unless ``settings`` say otherwise; a tenant's
    share the whole of each cap (:func:`whole_shares`)."""

    @contextlib.asynccontextmanager
    async def start(**overrides: object) -> AsyncIterator[Running]:
        caps = {"upstream_connections": T, "upstream_connections_per_bot": 2, **overrides}
        settings = make_settings(redis_url, tmp_path, **whole_shares(caps))
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


def spent(
    rclient: RedisClient, ws: str, apps: list[str], sessions: int
) -> Callable[[], Awaitable[bool]]:
    """Whether ``ws``'s ``apps`` together paid exactly ``sessions`` sessions."""

    async def cond() -> bool:
        balances = (await read_balances(rclient, ws)).app
        return sum(FUNDS - balances[app] for app in apps) == sessions * SESSION

    return cond


async def hold_every_place(
    http: aiohttp.ClientSession, url: str, ports: list[HeldBot]
) -> list[asyncio.Task[tuple[int, bytes]]]:
    """Two messages to each of A's first two ports, held there: every place of the
    process (``T``); returns their tasks once the bots hold them all."""
    held = [
        asyncio.create_task(post(http, f"{url}/{APPS[i // 2]}/m/{i}", f"u{i}")) for i in range(T)
    ]
    assert await eventually(lambda: ports[0].held + ports[1].held == T)
    return held


async def test_a_tenant_on_many_ports_holds_at_most_the_total(
    many: Gateway,
    ports: list[HeldBot],
    bot: Bot,
    http: aiohttp.ClientSession,
    rclient: RedisClient,
) -> None:
    async with many() as gw:
        url = f"{gw.url}/hooks/web"
        held = await hold_every_place(http, url, ports)
        # The third port is under its own cap, but the process has no place left: its
        # messages wait past the connect timeout, answered 504 and refunded.
        with connect_wait(gw, PAST_WAIT_S):
            late = [
                asyncio.create_task(post(http, f"{url}/{APPS[2]}/m/{i}", f"u{i}"))
                for i in (T, T + 1)
            ]
            assert await until(lambda: asyncio.sleep(0, all(t.done() for t in late)))
        for status, body in [t.result() for t in late]:
            assert (status, orjson.loads(body)["code"]) == (504, "upstream_timeout")
        assert ports[2].accepted == 0
        assert await spent(rclient, A, APPS, T)()
        # Connections released by A's first port make room: tenant B is served.
        ports[0].release.set()
        assert await asyncio.gather(*held[:2]) == [(200, b"/m/0"), (200, b"/m/1")]
        assert (await post(http, f"{url}/{APP_B}/now", "b1"))[0] == 200
        assert bot.count() == 1
        assert await spent(rclient, B, [APP_B], 1)()
        ports[1].release.set()
        assert await asyncio.gather(*held[2:]) == [(200, b"/m/2"), (200, b"/m/3")]
    assert sum(p.peak for p in ports) == T  # nothing closed while they held: at once
    assert [p.accepted for p in ports] == [2, 2, 0]
    assert ports[2].paths == []
    assert await spent(rclient, A, APPS, T)()


async def test_places_go_to_the_longest_waiting_and_a_client_gone_is_refunded(
    many: Gateway,
    ports: list[HeldBot],
    bot: Bot,
    http: aiohttp.ClientSession,
    rclient: RedisClient,
) -> None:
    # Before, on aiohttp (fast path only then): the gone client's message was refunded
    # only when its turn came, never here at once; places went to waiting bots at random.
    async with many(**LONG_WAIT) as gw:
        url = f"{gw.url}/hooks/web"
        held = await hold_every_place(http, url, ports)
        # Waiting, in this order: A at its third port (its client then leaves), B, A again.
        host, port = gw.url.removeprefix("http://").split(":")
        _, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            f"POST /hooks/web/{APPS[2]}/m/gone HTTP/1.1\r\nHost: x\r\n"
            "X-Channel-User-Id: gone\r\nContent-Length: 2\r\n\r\nhi".encode()
        )
        assert await until(spent(rclient, A, APPS, T + 1))  # admitted: waiting
        b = asyncio.create_task(post(http, f"{url}/{APP_B}/b", "b1"))
        assert await until(spent(rclient, B, [APP_B], 1))
        late = asyncio.create_task(post(http, f"{url}/{APPS[2]}/m/late", "late"))
        assert await until(spent(rclient, A, APPS, T + 2))
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # a reset: gone for good
        assert await until(spent(rclient, A, APPS, T + 1))  # refunded: never sent
        # A's first port answers: its two connections make room for B, then A's late one.
        ports[0].release.set()
        assert (await b)[0] == 200
        assert bot.count() == 1
        assert await eventually(lambda: ports[2].held == 1)
        assert sum(p.held for p in ports) == T - 1  # B's connection is the T-th
        ports[1].release.set()
        ports[2].release.set()
        assert await asyncio.gather(*held, late) == [
            *[(200, f"/m/{i}".encode()) for i in range(T)],
            (200, b"/m/late"),
        ]
    assert ports[2].paths == ["/m/late"]  # the gone one never reached a bot
    assert [p.accepted for p in ports] == [2, 2, 1]
    assert await spent(rclient, A, APPS, T + 1)()
    assert await spent(rclient, B, [APP_B], 1)()


async def test_idle_connections_count_toward_the_total(
    many: Gateway, ports: list[HeldBot], http: aiohttp.ClientSession, rclient: RedisClient
) -> None:
    # Decided (docs/design.md): upstream_connections bounds every bot connection of the
    # worker, idle keep-alive ones included; to make room, the oldest idle one (any bot)
    # is closed, never waited for. Before, aiohttp's connector counted only connections
    # in use: here three bots kept three idle sockets open with a total of two.
    for p in ports:
        p.release.set()  # each answers at once, keep-alive
    async with many(upstream_connections=2) as gw:

        async def send(i: int, n: int) -> None:
            url = f"{gw.url}/hooks/web/{APPS[i]}/m/{n}"
            assert await post(http, url, f"u{n}") == (200, f"/m/{n}".encode())

        await send(0, 0)
        await send(1, 1)
        assert [p.open for p in ports] == [1, 1, 0]  # both kept alive
        await send(2, 2)  # no place left: port 0's connection, the oldest idle, closes
        assert await eventually(lambda: ports[0].open == 0)
        await send(1, 3)  # port 1's connection is reused: now port 2's is the oldest idle
        await send(0, 4)
        assert await eventually(lambda: ports[2].open == 0)
        assert [p.open for p in ports] == [1, 1, 0]
        assert [p.accepted for p in ports] == [2, 1, 1]
    assert await spent(rclient, A, APPS, 5)()


async def test_places_go_in_arrival_order_across_bots(
    many: Gateway, ports: list[HeldBot], http: aiohttp.ClientSession, rclient: RedisClient
) -> None:
    # One place in all, held at port 0; messages for ports 1 and 2 wait, alternating.
    # Each place that frees goes to the message that waited longest, whichever its bot
    # (before, aiohttp woke a waiting bot at random: this order came 1 time in 128), and
    # the connection it freed is closed (before, aiohttp kept it idle: three sockets).
    caps = {"upstream_connections": 1, "upstream_connections_per_bot": 1}
    async with many(**caps, **LONG_WAIT) as gw:
        url = f"{gw.url}/hooks/web"
        first = asyncio.create_task(post(http, f"{url}/{APPS[0]}/m/0", "u0"))
        assert await eventually(lambda: ports[0].held == 1)
        waiting = []
        for n in range(1, 9):
            app = APPS[1 + (n - 1) % 2]
            waiting.append(asyncio.create_task(post(http, f"{url}/{app}/m/{n}", f"u{n}")))
            assert await until(spent(rclient, A, APPS, n + 1))  # admitted: waiting
        ports[1].release.set()
        ports[2].release.set()
        ports[0].release.set()
        answers = await asyncio.gather(first, *waiting)
        assert answers == [(200, f"/m/{n}".encode()) for n in range(9)]
        assert ports[0].journal == [f"/m/{n}" for n in range(9)]  # shared by the three
        assert await eventually(lambda: sum(p.open for p in ports) == 1)
        assert [p.accepted for p in ports] == [1, 4, 4]
    assert await spent(rclient, A, APPS, 9)()
