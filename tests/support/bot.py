"""A real counting test bot, and helpers to run a gateway in-process on real sockets.

The bot is an aiohttp app on a free 127.0.0.1 port that records every call. Paths:

* ``/ws`` - WebSocket echo (each received message is recorded in ``ws_messages``);
* ``/status/<code>`` - answers with that status;
* ``/slow/<seconds>`` - answers after sleeping;
* ``/stream/<bytes>`` - streams that many bytes (64 KiB chunks); the first chunk is sent
  at once, the rest only after ``bot.release`` is set (so a test can prove the gateway
  streams instead of buffering);
* ``/hop`` - answers with hop-by-hop headers that must not reach the client;
* anything else - echoes method, path, query, headers and body as JSON.

Usage::

    async with running_bot() as bot:
        ...  bot.url, bot.calls, bot.count()
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict
from prometheus_client import CollectorRegistry
from yarl import URL

from config import Settings
from gateway.app import Gateway, create_app
from gateway.appkeys import WEBSOCKETS
from gateway.http_server import GatewayRunner
from gateway.traffic_site import TrafficPort
from meter.accounts.seeding import seed
from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient, connect
from meter.store import open_store
from tests.support.settings import HOST, TRAFFIC_SERVER_ENV, make_settings

CHUNK = 64 * 1024


@dataclass
class Call:
    method: str
    path_qs: str
    headers: CIMultiDict[str]
    raw_headers: list[tuple[str, str]]
    body: bytes


@dataclass
class Bot:
    """State of a running test bot."""

    url: str = ""
    calls: list[Call] = field(default_factory=list)
    ws_messages: list[str | bytes] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)

    def count(self, path_prefix: str = "") -> int:
        return sum(1 for c in self.calls if c.path_qs.startswith(path_prefix))


def bot_app(bot: Bot) -> web.Application:
    async def ws(request: web.Request) -> web.StreamResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        async for msg in sock:
            if msg.type is aiohttp.WSMsgType.TEXT:
                bot.ws_messages.append(msg.data)
                await sock.send_str("echo:" + msg.data)
            elif msg.type is aiohttp.WSMsgType.BINARY:
                bot.ws_messages.append(msg.data)
                await sock.send_bytes(msg.data)
        return sock

    async def any_route(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        bot.calls.append(
            Call(
                request.method,
                request.raw_path,
                CIMultiDict(request.headers),
                [(k, v) for k, v in request.headers.items()],
                body,
            )
        )
        parts = request.path.split("/")
        head = parts[1] if len(parts) > 1 else ""
        if head == "status":
            return web.Response(status=int(parts[2]), text="bot says " + parts[2])
        if head == "slow":
            await asyncio.sleep(float(parts[2]))
            return web.Response(text="slow done")
        if head == "stream":
            return await _stream(bot, request, int(parts[2]))
        if head == "hop":
            return web.Response(
                text="hop",
                headers={
                    "Connection": "X-Resp-Hop",
                    "X-Resp-Hop": "1",
                    "Keep-Alive": "timeout=5",
                    "Proxy-Authenticate": "Basic",
                    "X-End-To-End": "kept",
                },
            )
        return web.json_response(
            {
                "method": request.method,
                "path": request.path,
                "raw_path": request.raw_path,
                "query": request.query_string,
                "body": body.decode("latin-1"),
            },
            headers={"X-Bot": "1"},
            status=201 if request.method == "PUT" else 200,
        )

    app = web.Application(client_max_size=64 * 1024 * 1024, handler_args={"auto_decompress": False})
    app.router.add_get("/ws", ws)
    app.router.add_route("*", "/{tail:.*}", any_route)
    return app


async def _stream(bot: Bot, request: web.Request, size: int) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    resp.content_length = size
    await resp.prepare(request)
    sent = 0
    pattern = bytes(range(256)) * (CHUNK // 256)
    first = True
    while sent < size:
        n = min(CHUNK, size - sent)
        await resp.write(pattern[:n])
        sent += n
        if first:
            first = False
            await bot.release.wait()
    await resp.write_eof()
    bot.finished.set()
    return resp


@contextlib.asynccontextmanager
async def serve(
    app: web.Application, port: int = 0, *, settings: Settings | None = None, **runner_kw: Any
) -> AsyncIterator[str]:
    """Run ``app`` on 127.0.0.1 (a free port unless given); yields its base URL. With
    ``settings``, as the gateway runs its ports (:class:`gateway.http_server.GatewayRunner`;
    the traffic application by ``settings.traffic_server``, :mod:`gateway.traffic_site`)."""
    if settings is not None and WEBSOCKETS in app:  # the traffic application
        port_ = TrafficPort(app, settings, **runner_kw)
        bound = await port_.start(HOST, port)
        try:
            yield f"http://{HOST}:{bound}"
        finally:
            await port_.cleanup()
        return
    runner = (
        GatewayRunner(app, settings, **runner_kw)
        if settings is not None
        else web.AppRunner(app, access_log=None, **runner_kw)
    )
    await runner.setup()
    site = web.TCPSite(runner, HOST, port)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://{HOST}:{port}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def running_bot() -> AsyncIterator[Bot]:
    bot = Bot()
    async with serve(bot_app(bot)) as url:
        bot.url = url
        yield bot


@dataclass
class WsBot:
    """A WebSocket echo bot on any path, recording each upgrade it accepted."""

    url: str = ""
    upgrades: list[tuple[str, str]] = field(default_factory=list)  # (raw path, user header)
    auth: list[str] = field(default_factory=list)  # each upgrade's X-Creditgate-Channel-Auth

    @property
    def paths(self) -> list[str]:
        return [path for path, _ in self.upgrades]


@contextlib.asynccontextmanager
async def running_ws_bot() -> AsyncIterator[WsBot]:
    b = WsBot()

    async def ws(request: web.Request) -> web.StreamResponse:
        b.upgrades.append((request.raw_path, request.headers.get("X-Channel-User-Id", "")))
        b.auth.append(request.headers.get("X-Creditgate-Channel-Auth", ""))
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        async for msg in sock:
            await sock.send_str("echo:" + msg.data)
        return sock

    app = web.Application()
    app.router.add_get("/{tail:.*}", ws)
    async with serve(app) as url:
        b.url = url
        yield b


@dataclass
class Running:
    """A gateway served in-process: traffic and admin base URLs."""

    gateway: Gateway
    url: str
    admin_url: str


@contextlib.asynccontextmanager
async def running_gateway(
    settings: Settings, *, clock: Callable[[], float] = time.time
) -> AsyncIterator[Running]:
    store = open_store(settings.store_url)
    await store.migrate()
    try:
        gw = create_app(settings, clock=clock, store=store, registry=CollectorRegistry())
        async with (
            serve(gw.traffic, settings=settings) as url,
            serve(gw.admin, settings=settings) as admin_url,
        ):
            yield Running(gw, url, admin_url)
    finally:
        await store.close()


class SeededGateway(Protocol):
    """What the ``seeded_gateway`` fixture gives: ``seeded_gateway(ws, apps, ...)``."""

    def __call__(
        self,
        ws: str,
        apps: Mapping[str, Mapping[str, Any]],
        *,
        free: int = 0,
        pool: int = 0,
        **overrides: Any,
    ) -> contextlib.AbstractAsyncContextManager[Running]: ...


# ---------------------------------------------------------------------- fixtures
# Loaded for every test by ``pytest_plugins`` in tests/conftest.py; the fixtures are
# named ``bot``, ``http``, ``traffic_server``, ``rclient`` and ``seeded_gateway``.


@pytest.fixture(name="bot")
async def bot_fixture() -> AsyncIterator[Bot]:
    """A fresh counting bot per test."""
    async with running_bot() as b:
        yield b


@pytest.fixture(name="http")
async def http_fixture() -> AsyncIterator[aiohttp.ClientSession]:
    """A client that leaves bodies as they come (no decompression)."""
    async with aiohttp.ClientSession(auto_decompress=False) as s:
        yield s


@pytest.fixture(name="traffic_server", params=["aiohttp", "fast"])
def traffic_server_fixture(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a test once per traffic server: ``make_settings`` and ``creditgate serve``
    (tests/support/serving.py) read it from the environment. A module opts in with
    ``pytestmark = pytest.mark.usefixtures("traffic_server")``."""
    monkeypatch.setenv(TRAFFIC_SERVER_ENV, request.param)
    return str(request.param)


@pytest.fixture(name="rclient")
async def rclient_fixture(redis_url: str) -> AsyncIterator[RedisClient]:
    """A redis-py client on the (FLUSHALLed) test Redis."""
    c = connect(redis_url)
    yield c
    await c.aclose()


@pytest.fixture(name="seeded_gateway")
def seeded_gateway_fixture(
    redis_url: str, tmp_path: Path, rclient: RedisClient, bot: Bot
) -> SeededGateway:
    """``async with seeded_gateway(ws, apps, free=.., pool=.., **overrides) as gw``: a
    gateway in-process on ``make_settings(redis_url, tmp_path, **overrides)``, in front of
    workspace ``ws`` seeded with ``apps`` and that credit (meter.accounts.seeding.seed).
    An app without an ``upstream_url`` is the test's counting bot."""

    @contextlib.asynccontextmanager
    async def seeded(
        ws: str,
        apps: Mapping[str, Mapping[str, Any]],
        *,
        free: int = 0,
        pool: int = 0,
        **overrides: Any,
    ) -> AsyncIterator[Running]:
        settings = make_settings(redis_url, tmp_path, **overrides)
        apps = {app: {"upstream_url": bot.url, **options} for app, options in apps.items()}
        await seed(rclient, settings, ws, apps, free=free, pool=pool)
        async with running_gateway(settings) as running:
            yield running

    return seeded


async def seed_self_loop(rclient: RedisClient, gw: Running, ws: str, app: str, free: int) -> str:
    """Seed ``app`` of workspace ``ws`` with the gateway itself as its upstream (a loop)
    and ``free`` credit; returns the app's traffic URL."""
    url = f"{gw.url}/hooks/web/{app}"
    apps = {app: {"product": "automation", "upstream_url": url}}
    await seed(rclient, gw.gateway.settings, ws, apps, free=free)
    return url


# ---------------------------------------------------------------------- requests
# Shared by the abuse, red-team and crash tests.


async def free_credit(client: RedisClient, ws: str) -> int:
    """The workspace's free credit left in Redis (micro-dollars)."""
    return int(await client.hget(keys.ws_key(ws), "free") or 0)


async def post_message(
    http: aiohttp.ClientSession,
    url: str,
    user: str,
    key: str = "",
    body: bytes = b"{}",
    headers: dict[str, str] | None = None,
) -> int:
    """POST one channel message as ``user`` (with ``key`` as Idempotency-Key); the status."""
    h = {"X-Channel-User-Id": user, **(headers or {})}
    if key:
        h["Idempotency-Key"] = key
    async with http.post(url, data=body, headers=h) as resp:
        await resp.read()
        return resp.status


async def raw_exchange(url: str, data: bytes) -> bytes:
    """Send raw bytes (what aiohttp's client refuses to send) to ``url``'s host and port
    and read the answer until the server closes."""
    u = URL(url)
    reader, writer = await asyncio.open_connection(u.host, u.port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 60)
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def running_replica(settings: Settings, host: str) -> AsyncIterator[Gateway]:
    """One gateway replica, traffic and admin, listening on ``host`` at the ports its
    settings name (two replicas on 127.0.0.1 and 127.0.0.2 stand in for two pods)."""
    store = open_store(settings.store_url)
    await store.migrate()
    gw = create_app(settings, store=store, registry=CollectorRegistry())
    traffic = TrafficPort(gw.traffic, settings)
    runner = GatewayRunner(gw.admin, settings)
    try:
        await traffic.start(host, settings.traffic_port)
        await runner.setup()
        await web.TCPSite(runner, host, settings.admin_port).start()
        yield gw
    finally:
        await runner.cleanup()
        await traffic.cleanup()
        await store.close()


async def eventually(cond: Callable[[], bool], within_s: float = 60.0) -> bool:
    """Poll ``cond`` (state owned by another task or process) until true or timeout: a hang
    bound (60 s), waited out only when something is wrong, not on a busy machine."""
    for _ in range(int(within_s / 0.05)):
        if cond():
            return True
        await asyncio.sleep(0.05)
    return cond()
