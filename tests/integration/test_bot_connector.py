"""The aiohttp path's bot connector (gateway/bot_connector.py) in an aiohttp session against
real bots that count their connections (tests/support/held_bot.py): what is handed to a
waiter cancelled in the very pass it is woken is passed on, and no place leaks however
waiters leave. The gateway-level behaviour (caps, idle connections, arrival order, a
client that leaves) is tested on both traffic servers in
tests/system/test_bot_connections.py."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace

import aiohttp
import pytest

from gateway.bot_connector import BotConnector, ShuttingDown
from tests.support.bot import eventually
from tests.support.held_bot import HeldBot, held_bot

GUARD_S = 60.0  # a connect timeout that only stops a hang (a lost wake-up)


@pytest.fixture
async def bots() -> AsyncIterator[list[HeldBot]]:
    journal: list[str] = []
    async with held_bot(journal) as b0, held_bot(journal) as b1, held_bot(journal) as b2:
        yield [b0, b1, b2]


@contextlib.asynccontextmanager
async def session(total: int, per_bot: int) -> AsyncIterator[aiohttp.ClientSession]:
    """A session on a :class:`BotConnector`; a request made with ``trace_request_ctx=
    GIVE_UP`` is cancelled as its wait is handed something, before its task runs again
    (the callback is the wait's first: added as the request queues, before it waits)."""
    connector = BotConnector(limit=total, limit_per_host=per_bot, keepalive_timeout=30)
    timeout = aiohttp.ClientTimeout(total=None, connect=GUARD_S)
    traces = aiohttp.TraceConfig()
    traces.on_connection_queued_start.append(_queued)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, trace_configs=[traces]
    ) as http:
        yield http


GIVE_UP = {"give_up": True}


async def _queued(
    http: aiohttp.ClientSession, ctx: SimpleNamespace, _: aiohttp.TraceConnectionQueuedStartParams
) -> None:
    if ctx.trace_request_ctx is GIVE_UP:
        task = asyncio.current_task()
        assert task is not None
        waits(http)[-1].add_done_callback(functools.partial(_woken, task))


def _woken(task: asyncio.Task[object], wait: asyncio.Future[object]) -> None:
    if not wait.cancelled() and wait.exception() is None:
        task.cancel()


async def get(http: aiohttp.ClientSession, url: str, ctx: object = None) -> bytes:
    async with http.get(url, trace_request_ctx=ctx) as resp:
        assert resp.status == 200
        return await resp.read()


def waits(http: aiohttp.ClientSession) -> list[asyncio.Future[object]]:
    """The live waits of the session's connector, in arrival order."""
    connector = http.connector
    assert isinstance(connector, BotConnector)
    live = [w for q in connector._queues.values() for w in q.waiters if not w[1].done()]
    return [wait for _, wait in sorted(live, key=lambda w: w[0])]


def queued(http: aiohttp.ClientSession, n: int) -> Callable[[], bool]:
    return lambda: len(waits(http)) == n


@pytest.mark.parametrize("handed", ["connection", "place"])
async def test_what_a_waiter_cancelled_as_it_is_woken_gets_is_passed_on(
    bots: list[HeldBot], handed: str
) -> None:
    # One place in all, held at bot 0; a waiter for ``target`` is cancelled as it is
    # handed bot 0's connection kept alive (same bot) or its place (bot 0 closes after
    # answering). The next waiter gets it. aiohttp's own queue lost the wake-up: the
    # next waiter waited for a place that was free.
    b0 = bots[0]
    path, target = ("/m", b0) if handed == "connection" else ("/close", bots[1])
    async with session(total=1, per_bot=1) as http:
        first = asyncio.create_task(get(http, f"{b0.url}{path}/1"))
        assert await eventually(lambda: b0.held == 1)
        gone = asyncio.create_task(get(http, f"{target.url}/m/gone", GIVE_UP))
        assert await eventually(queued(http, 1))
        nxt = asyncio.create_task(get(http, f"{target.url}/m/next"))
        assert await eventually(queued(http, 2))
        for b in bots:
            b.release.set()
        assert await first == f"{path}/1".encode()
        assert await nxt == b"/m/next"
        with pytest.raises(asyncio.CancelledError):
            await gone
        connector = http.connector
        assert isinstance(connector, BotConnector)
        assert not connector._acquired  # every place given back
    assert b0.journal == [f"{path}/1", "/m/next"]
    # Kept alive and handed on (one connection), or a new one in the freed place.
    assert [b.accepted for b in bots] == ([1, 0, 0] if handed == "connection" else [1, 1, 0])


async def test_no_place_leaks_however_waiters_leave(bots: list[HeldBot]) -> None:
    # Two places in all, one per bot, three bots: waiters cancelled while queued, as
    # they are woken, and served, in turn; then every place is free and the bots hold at
    # most two connections.
    async with session(total=2, per_bot=1) as http:
        tasks: list[asyncio.Task[bytes]] = []
        for n in range(24):
            url = f"{bots[n % 3].url}/m/{n}"
            give_up = n >= 2 and (n - 2) % 3 == 1
            tasks.append(asyncio.create_task(get(http, url, GIVE_UP if give_up else None)))
            if n >= 2:  # the first two hold both places; the rest wait
                assert await eventually(queued(http, n - 1))
        for task in tasks[2::3]:
            task.cancel()  # leaves while queued
        for b in bots:
            b.release.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        served = [r for r in results if isinstance(r, bytes)]
        assert len(served) == 2 + 22 - 8 - 7
        assert served == [f"/m/{n}".encode() for n in range(24) if n < 2 or (n - 2) % 3 == 2]
        connector = http.connector
        assert isinstance(connector, BotConnector)
        assert not connector._acquired
        assert not waits(http)
        assert await eventually(lambda: sum(b.open for b in bots) <= 2)
    assert sorted(bots[0].journal) == sorted(r.decode() for r in served)


async def test_refused_waiters_are_never_sent_and_a_freed_place_goes_to_no_one(
    bots: list[HeldBot],
) -> None:
    # One place, held at bot 0; two messages wait. Stopping refuses both, and one that
    # comes after; the held message is answered and its place handed to no one.
    b0 = bots[0]
    async with session(total=1, per_bot=1) as http:
        first = asyncio.create_task(get(http, f"{b0.url}/m/1"))
        assert await eventually(lambda: b0.held == 1)
        waiting = [asyncio.create_task(get(http, f"{b.url}/m/w")) for b in bots[:2]]
        assert await eventually(queued(http, 2))
        connector = http.connector
        assert isinstance(connector, BotConnector)
        connector.refuse_waiters()
        for task in waiting:
            with pytest.raises(ShuttingDown):
                await task
        with pytest.raises(ShuttingDown):
            await get(http, f"{bots[2].url}/m/late")
        b0.release.set()
        assert await first == b"/m/1"
        assert not waits(http)
    assert b0.journal == ["/m/1"]
    assert [b.accepted for b in bots] == [1, 0, 0]
