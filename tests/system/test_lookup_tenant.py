"""Host names are looked up within a tenant's share of lookups (meter/accounts/names.py):
a WebSocket's bot and an owner webhook's receiver count against the same tenant as an
HTTP message of the workspace (its owner, ``@<user>``). They counted against the
workspace (a WebSocket) and against no one (a webhook, unbounded)."""

from __future__ import annotations

import socket
from collections.abc import Hashable
from pathlib import Path

import aiohttp
import pytest

from gateway.egress import guarded_session
from gateway.webhooks import http_post
from meter.accounts import names
from meter.accounts.notifier import Notifier
from meter.accounts.seeding import seed
from meter.redis_layer.client import RedisClient
from meter.store import OutboxEvent, User, Workspace, open_store
from tests.support.bot import Bot, running_gateway
from tests.support.receiver import receiver
from tests.support.settings import HOST, make_settings

WS = "wslook"
APP = f"{WS}_app1"
OWNER = "usrlook"


@pytest.fixture
def lookups(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Hashable | None]]:
    """Every name looked up through the shared resolver, with its tenant: ``*.test``
    names are loopback."""
    seen: list[tuple[str, Hashable | None]] = []
    real = names.Names.lookup

    async def lookup(
        self: names.Names,
        host: str,
        family: socket.AddressFamily = socket.AF_UNSPEC,
        tenant: Hashable | None = None,
    ) -> list[names.Address]:
        seen.append((host, tenant))
        if host.endswith(".test"):
            return [(socket.AF_INET, HOST)]
        return await real(self, host, family, tenant)

    monkeypatch.setattr(names.Names, "lookup", lookup)
    return seen


async def test_a_websockets_bot_is_looked_up_as_its_owners(
    redis_url: str,
    tmp_path: Path,
    rclient: RedisClient,
    bot: Bot,
    http: aiohttp.ClientSession,
    lookups: list[tuple[str, Hashable | None]],
) -> None:
    settings = make_settings(redis_url, tmp_path)
    port = int(bot.url.rsplit(":", 1)[1])
    app = {"product": "contact_center", "upstream_url": f"http://bot.test:{port}", "funds": 10**6}
    await seed(rclient, settings, WS, {APP: app}, owner=OWNER)
    async with (
        running_gateway(settings) as gw,
        http.ws_connect(f"{gw.url}/hooks/web/{APP}/ws?user=u1") as ws,
    ):
        await ws.send_str("hi")
        assert (await ws.receive(timeout=60)).data == "echo:hi"
    assert ("bot.test", f"@{OWNER}") in lookups
    assert all(tenant == f"@{OWNER}" for host, tenant in lookups if host == "bot.test")


async def test_an_owner_webhook_is_looked_up_as_its_workspaces_tenant(
    redis_url: str, tmp_path: Path, lookups: list[tuple[str, Hashable | None]]
) -> None:
    settings = make_settings(redis_url, tmp_path)  # loopback allowed
    store = open_store(settings.store_url)
    await store.migrate()
    try:
        await store.create_user(User(OWNER, "o@example.com", "O", "h" * 64, 0))
        await store.create_workspace(Workspace(WS, "Acme", OWNER, 0))
        async with receiver() as rec, guarded_session(settings) as session:
            port = int(rec.url.split(":")[2].split("/")[0])
            await store.set_webhook(WS, f"http://hooks.test:{port}/hook", "s" * 32)
            await store.enqueue(OutboxEvent(WS, f"{WS}:e1", "balance.low", {"id": "e1"}, 0))
            notifier = Notifier(store, http_post(session, 60.0), timeout_s=60.0)  # hang bounds
            assert await notifier.deliver_due() == 1
            assert len(rec.got) == 1
    finally:
        await store.close()
    assert lookups == [("hooks.test", f"@{OWNER}")]
