"""Steps shared by the tests of what a WebSocket bot that stalls is charged
(tests/system/test_ws_taken.py, test_ws_tls_taken.py, test_ws_tls_large.py): the
client floods the gateway until a send to the bot stalls, the bot then reads to its
end, and once nothing is left for the sweeper every charge is a message it read."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any, Protocol

import aiohttp
import pytest
from aiohttp import WSMsgType

from gateway import ws_pump
from meter.accounts.projection import read_balances
from meter.redis_layer.client import RedisClient
from tests.support.ws_frames import settled

HANG_S = 60.0  # a bound for a hang only


class Bot(Protocol):
    read: asyncio.Event  # set: the bot reads again, to the end of its stream
    done: asyncio.Event  # set: it has read to the end


async def _stop(flooding: asyncio.Task[None]) -> None:
    flooding.cancel()
    with contextlib.suppress(asyncio.CancelledError, ConnectionError):
        await flooding


async def flood_until_closed(
    ws: aiohttp.ClientWebSocketResponse, bot: Bot, flood: Coroutine[Any, Any, None]
) -> None:
    """Runs ``flood`` until the gateway closes ``ws`` at a stalled send (1011,
    upstream_timeout), then lets the bot read to its end."""
    flooding = asyncio.create_task(flood)
    try:
        closed = await ws.receive(timeout=HANG_S)
    finally:
        bot.read.set()
        await _stop(flooding)
    assert (closed.data, closed.extra) == (1011, "upstream_timeout")
    await asyncio.wait_for(bot.done.wait(), HANG_S)


def watch_stalls(monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """An event set once the pump has dealt with a stalled send (ws_pump._stalled)."""
    dropped = asyncio.Event()
    stalled = ws_pump._stalled

    async def seen(*args: Any) -> None:
        await stalled(*args)
        dropped.set()

    monkeypatch.setattr(ws_pump, "_stalled", seen)
    return dropped


async def flood_until_dropped(
    ws: aiohttp.ClientWebSocketResponse,
    bot: Bot,
    dropped: asyncio.Event,
    flood: Coroutine[Any, Any, None],
) -> None:
    """Runs ``flood`` (the client reads nothing either: the gateway stops reading the
    bot) until a send stalls (``dropped``), lets the bot read to its end, and reads the
    client's socket to its close."""
    flooding = asyncio.create_task(flood)
    try:
        await asyncio.wait_for(dropped.wait(), HANG_S)
        bot.read.set()
        await asyncio.wait_for(bot.done.wait(), HANG_S)
        while (closed := await ws.receive(timeout=HANG_S)).type is WSMsgType.TEXT:
            pass
    finally:
        bot.read.set()
        await _stop(flooding)
    assert closed.type is not WSMsgType.TEXT


async def settled_charges(
    rclient: RedisClient, workspace: str, app: str, funds: int, price: int
) -> int:
    """How many messages ``app`` was charged (at ``price`` each, from ``funds``), once
    nothing is left for the sweeper."""
    assert await settled(rclient, workspace)
    return (funds - (await read_balances(rclient, workspace)).app[app]) // price
