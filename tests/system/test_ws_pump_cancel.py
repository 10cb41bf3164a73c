"""A pump cancelled with its handler (gateway/ws_pump.py) leaves nothing running: its
two directions are cancelled with it. They kept
waiting on the client and the bot for as long as either stayed open."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway import websocket
from meter.accounts.seeding import seed
from meter.redis_layer.client import RedisClient
from tests.support.bot import Bot, eventually, running_gateway
from tests.support.settings import make_settings

WS = "wspump"
APP = f"{WS}_app1"
PUMPING = {"_client_to_bot", "_bot_to_client"}


def pumping() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if not t.done() and t.get_coro().__name__ in PUMPING]


async def test_a_cancelled_pump_leaves_no_task_behind(
    redis_url: str,
    tmp_path: Path,
    rclient: RedisClient,
    bot: Bot,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    handlers: list[asyncio.Task[Any]] = []
    real = websocket.pump

    async def recorded(*args: Any, **kw: Any) -> tuple[int, str]:
        task = asyncio.current_task()
        assert task is not None
        handlers.append(task)
        return await real(*args, **kw)

    monkeypatch.setattr(websocket, "pump", recorded)
    settings = make_settings(redis_url, tmp_path)
    app = {"product": "contact_center", "upstream_url": bot.url, "funds": 10**6}
    await seed(rclient, settings, WS, {APP: app})
    async with (
        running_gateway(settings) as gw,
        http.ws_connect(f"{gw.url}/hooks/web/{APP}/ws?user=u1") as ws,
    ):
        await ws.send_str("hi")
        assert (await ws.receive(timeout=60)).data == "echo:hi"
        assert len(pumping()) == 2
        handlers[0].cancel()
        assert await eventually(handlers[0].done)
        assert await eventually(lambda: not pumping())
