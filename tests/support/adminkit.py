"""Test helpers for the admin API: a real admin server (real socket, real Redis, real store).

``admin_server`` wires the admin application with :func:`gateway.app.create_app` (the
production wiring) on a free 127.0.0.1 port; ``Admin.api`` makes one HTTP call and
returns status and decoded body; ``snapshot`` captures every row of the store and every
key of Redis, so a test can prove that a refused request changed nothing. The fixture
``any_admin`` (loaded by ``pytest_plugins`` in tests/conftest.py) is the admin server on
each store in turn.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from config import Settings
from gateway.app import Gateway, create_app
from gateway.webhooks import OPTIONS, WebhookOptions
from meter.redis_layer.client import RedisClient, connect
from meter.store import Store, open_store
from tests.support.bot import serve
from tests.support.settings import OPERATOR_TOKEN, make_settings

TABLES = (
    "users",
    "workspaces",
    "memberships",
    "apps",
    "app_channels",
    "collaborators",
    "invitations",
    "licences",
    "upgrade_requests",
    "api_tokens",
    "ledger",
    "audit_log",
    "outbox",
    "free_grants",
    "checkouts",
    "payment_events",
)


@dataclass
class Admin:
    client: TestClient[Any, Any]
    store: Store
    redis: RedisClient
    settings: Settings
    gateway: Gateway
    traffic_url: str = ""

    @property
    def url(self) -> str:
        return str(self.client.make_url("/")).rstrip("/")

    async def api(
        self,
        method: str,
        path: str,
        token: str | None = None,
        json: Any = None,
        *,
        data: bytes | str | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        """One call; the body is decoded JSON (or text when not JSON)."""
        h = dict(headers or {})
        if token is not None:
            h["Authorization"] = f"Bearer {token}"
        if json is not None:
            data = orjson.dumps(json)
            h.setdefault("Content-Type", "application/json")
        async with self.client.request(method, path, data=data, headers=h) as resp:
            raw = await resp.read()
            if "json" in resp.headers.get("Content-Type", ""):
                return resp.status, orjson.loads(raw) if raw else None
            return resp.status, raw.decode()

    async def ok(self, method: str, path: str, token: str | None, json: Any = None) -> Any:
        status, body = await self.api(method, path, token, json)
        assert 200 <= status < 300, (method, path, status, body)
        return body

    async def new_user(self, name: str) -> tuple[str, str]:
        """Create a user through the API; returns ``(id, token)``."""
        email = f"{name}.{time.time_ns()}@example.com"
        body = await self.ok("POST", "/v1/users", OPERATOR_TOKEN, {"email": email, "name": name})
        return body["id"], body["token"]

    async def accept_invitations(self, token: str) -> list[Any]:
        """Accept every pending invitation of ``token``'s user (adding a member or a
        collaborator only invites them); returns the answers."""
        listed = await self.ok("GET", "/v1/invitations?limit=200", token)
        return [
            await self.ok("POST", f"/v1/invitations/{i['id']}/accept", token)
            for i in listed["invitations"]
        ]

    async def join(self, ws: str, owner_token: str, user: tuple[str, str]) -> None:
        """Make ``user`` (``(id, token)``) a member of ``ws``: invited, then accepted."""
        await self.ok("POST", f"/v1/workspaces/{ws}/members", owner_token, {"user_id": user[0]})
        await self.accept_invitations(user[1])

    async def new_members(self, ws: str, owner_token: str, *names: str) -> list[tuple[str, str]]:
        """New users named ``names`` (:meth:`new_user`), then each made a member of ``ws``
        (:meth:`join`) in that order; returns their ``(id, token)``."""
        users = [await self.new_user(name) for name in names]
        for user in users:
            await self.join(ws, owner_token, user)
        return users

    async def owner_workspace(self, user: str = "owner", name: str = "Acme") -> tuple[str, str]:
        """A new user and a workspace it owns; returns ``(token, workspace id)``."""
        _, token = await self.new_user(user)
        return token, await self.new_workspace(token, name)

    async def new_workspace(self, token: str, name: str) -> str:
        """Create a workspace as ``token``'s user; returns its id."""
        ws: str = (await self.ok("POST", "/v1/workspaces", token, {"name": name}))["id"]
        return ws

    async def new_app(
        self,
        token: str,
        ws: str,
        upstream_url: str | None = None,
        *,
        name: str = "bot",
        product: str = "automation",
    ) -> str:
        """Create an app in workspace ``ws`` as ``token``'s user; returns its id."""
        body = {"name": name, "product": product}
        if upstream_url is not None:
            body["upstream_url"] = upstream_url
        app: str = (await self.ok("POST", f"/v1/workspaces/{ws}/apps", token, body))["id"]
        return app


def admin_settings(redis_url: str, tmp_path: Path, **overrides: Any) -> Settings:
    """Settings for an admin server: the operator token and a SQLite store in
    ``tmp_path``; then ``overrides``."""
    store_url = f"sqlite:///{tmp_path}/store.db"
    return make_settings(redis_url, store_url=store_url, operator=True, **overrides)


@asynccontextmanager
async def admin_server(
    settings: Settings,
    *,
    clock: Callable[[], float] = time.time,
    webhooks: WebhookOptions | None = None,
    traffic: bool = False,
    run_flusher: bool = False,
) -> AsyncIterator[Admin]:
    """The admin application of ``create_app`` serving on a free loopback port; with
    ``traffic`` also its traffic application (``Admin.traffic_url``)."""
    store = open_store(settings.store_url)
    await store.migrate()
    redis = connect(settings.redis_url)
    gw = create_app(settings, clock=clock, redis=redis, store=store, run_flusher=run_flusher)
    gw.admin[OPTIONS] = webhooks or WebhookOptions(poll_s=0.05, backoff_base_s=0.05)
    server = TestServer(gw.admin, host="127.0.0.1")
    # The admin port's lingering close as the gateway's (GatewayRunner): body_linger_s.
    await server.start_server(lingering_time=settings.body_linger_s)
    client: TestClient[Any, Any] = TestClient(server)
    await client.start_server()  # the server's already: started once
    try:
        async with AsyncExitStack() as stack:
            url = (
                await stack.enter_async_context(serve(gw.traffic, settings=settings))
                if traffic
                else ""
            )
            yield Admin(client, store, redis, settings, gw, url)
    finally:
        await client.close()
        await redis.aclose()
        await store.close()


@pytest.fixture(name="any_admin", params=["sqlite", "postgresql"])
async def any_admin_fixture(
    request: pytest.FixtureRequest, redis_url: str, tmp_path: Path
) -> AsyncIterator[Admin]:
    """The admin server (operator token, webhooks not polled) on either store: what runs
    SQL the two dialects must agree on."""
    url = f"sqlite:///{tmp_path}/store.db"
    if request.param == "postgresql":
        url = request.getfixturevalue("pg_dsn")
    settings = make_settings(redis_url, store_url=url, operator=True)
    async with admin_server(settings, webhooks=WebhookOptions(poll_s=3600)) as a:
        yield a


async def snapshot(admin: Admin) -> dict[str, Any]:
    """Every row of the account tables and every Redis key with its value."""
    out: dict[str, Any] = {}
    async with admin.store.connection() as c:
        for table in TABLES:
            rows = await c.fetch(f"SELECT * FROM {table}")
            out[table] = sorted(repr(tuple(r)) for r in rows)
    redis: dict[str, Any] = {}
    for key in await admin.redis.keys("*"):
        kind = (await admin.redis.type(key)).decode()
        if kind == "hash":
            redis[key.decode()] = await admin.redis.hgetall(key)
        elif kind == "set":
            redis[key.decode()] = sorted(await admin.redis.smembers(key))
        elif kind == "list":
            redis[key.decode()] = await admin.redis.lrange(key, 0, -1)
        elif kind == "zset":
            redis[key.decode()] = await admin.redis.zrange(key, 0, -1, withscores=True)
        else:
            redis[key.decode()] = await admin.redis.get(key)
    out["redis"] = redis
    return out
