"""Egress that no answer and no environment can redirect: a bot's 3xx is its answer
(passed to the client, never followed by the gateway), an owner webhook's 3xx is a
failed delivery, and the ``*_PROXY`` variables of the gateway's environment are never
used (a proxy would connect where the egress policy never looked). Both traffic servers.

The forbidden place is 127.0.0.2 (loopback, which ``EGRESS_ALLOW`` leaves out here; the
bot is on 127.0.0.1, allowed); the proxy counts what reaches it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.egress import guarded_session
from gateway.webhooks import http_post
from meter.accounts.notifier import Notifier
from meter.accounts.seeding import seed
from meter.redis_layer.client import RedisClient
from meter.store import OutboxEvent, User, Workspace, open_store
from tests.support.bot import running_gateway, serve
from tests.support.settings import make_settings

pytestmark = pytest.mark.usefixtures("traffic_server")

WS = "egredir"
APP = f"{WS}_app1"
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "WS_PROXY", "WSS_PROXY")


async def test_redirects_and_proxy_variables_never_move_egress(
    redis_url: str,
    tmp_path: Path,
    rclient: RedisClient,
    http: aiohttp.ClientSession,
    connects: list[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stolen: list[str] = []

    async def steal(request: web.Request) -> web.Response:
        stolen.append(request.path)
        return web.Response(text="internal secret")

    forbidden = web.Application()
    forbidden.router.add_route("*", "/{tail:.*}", steal)
    runner = web.AppRunner(forbidden)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.2", 0).start()
    inside = f"http://127.0.0.2:{runner.addresses[0][1]}/steal"

    proxied: list[bytes] = []

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        proxied.append(await reader.readline())
        writer.close()

    proxy_server = await asyncio.start_server(proxy, "127.0.0.1", 0)
    proxy_url = f"http://127.0.0.1:{proxy_server.sockets[0].getsockname()[1]}"
    for name in PROXY_VARS:
        monkeypatch.setenv(name, proxy_url)
        monkeypatch.setenv(name.lower(), proxy_url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)

    async def moved(request: web.Request) -> web.Response:
        if request.path.endswith("/moved"):
            raise web.HTTPTemporaryRedirect(inside)
        return web.Response(text="bot")

    bot = web.Application()
    bot.router.add_route("*", "/{tail:.*}", moved)
    settings = make_settings(redis_url, tmp_path, egress_allow=["127.0.0.1/32"])
    try:
        async with serve(bot) as bot_url, running_gateway(settings) as gw:
            app = {"product": "automation", "upstream_url": bot_url, "funds": 1_000_000}
            await seed(rclient, settings, WS, {APP: app})
            headers = {"X-Channel-User-Id": "u1"}
            hook = f"{gw.url}/hooks/web/{APP}"
            async with http.post(f"{hook}/ok", headers=headers, data=b"hi") as resp:
                assert (resp.status, await resp.text()) == (200, "bot")  # straight to the bot
            async with http.post(
                f"{hook}/moved", headers=headers, data=b"hi", allow_redirects=False
            ) as resp:
                assert resp.status == 307  # the bot's answer, for the client to judge
                assert resp.headers["Location"] == inside
                assert "internal secret" not in await resp.text()
            # an owner webhook answered by a redirect: failed, kept, never followed
            store = open_store(settings.store_url)
            try:
                await store.create_user(User("u0001", "o@example.com", "O", "h" * 64, 0))
                await store.create_workspace(Workspace(WS, "Acme", "u0001", 0))
                await store.set_webhook(WS, f"{bot_url}/hook/moved", "whsec-" + "e" * 26)
                await store.enqueue(OutboxEvent(WS, f"{WS}:e1", "balance.low", {"id": "e1"}, 0))
                async with guarded_session(settings) as session:
                    notifier = Notifier(store, http_post(session, 5.0), timeout_s=5.0)
                    assert await notifier.deliver_due() == 0
                ev = await store.get_event(f"{WS}:e1")
                assert ev is not None
                assert (ev.delivered_at, ev.attempts) == (None, 1)
            finally:
                await store.close()
    finally:
        proxy_server.close()
        await runner.cleanup()
    assert stolen == []
    assert proxied == []
    assert [c for c in connects if isinstance(c, tuple) and c[0] == "127.0.0.2"] == []
