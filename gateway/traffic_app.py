"""The traffic application's own parts, for :func:`gateway.app.create_app`: its routes,
its WebSocket budget and the resources its ``cleanup_ctx`` opens (HTTP, ADMITTER, OWED,
PROXY). Imported only where a traffic application is built: the parent of ``creditgate
serve`` serves the admin port alone and does not load the traffic path's modules.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
from aiohttp import web

from config import Settings
from gateway.appkeys import ADMITTER, HTTP, OWED, PROXY, REDIS, TRAFFIC_STATS, WEBSOCKETS
from gateway.channel_auth import ChannelAuth
from gateway.channels import Channels
from gateway.egress import guarded_session
from gateway.http_rules import close_announced, http_rules
from gateway.metering import Meter
from gateway.metrics import Metrics
from gateway.owed import Owed
from gateway.problems import problem_middleware
from gateway.proxy import Proxy
from gateway.routes import setup_traffic_routes
from gateway.tenant_share import Shares
from gateway.traffic_stats import TrafficStats
from gateway.upstreams import Upstreams
from gateway.ws_budget import WebSockets
from meter.admission.admitter import Admitter
from meter.admission.reservations import Confirmations
from meter.timestamps import Clock

Ctx = Callable[[web.Application], AsyncIterator[None]]
# aiohttp adds these when absent; a transparent proxy must not.
SKIP_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")


def traffic_application(settings: Settings) -> web.Application:
    """The empty traffic application: its middlewares and limits."""
    traffic = web.Application(
        middlewares=[http_rules, problem_middleware],
        client_max_size=settings.max_body_bytes,
        handler_args={"auto_decompress": False},
    )
    traffic.on_response_prepare.append(close_announced)
    return traffic


def setup_traffic(
    traffic: web.Application,
    settings: Settings,
    clock: Clock,
    channels: Channels,
    metrics: Metrics,
    metering: bool,
) -> None:
    """The traffic application's budget, resources and routes (after the shared ones)."""
    traffic[WEBSOCKETS] = WebSockets(
        settings.ws_max_connections,
        settings.ws_tenant_connections,
        settings.ws_idle_timeout_s,
        metrics,
        settings.ws_first_message_timeout_s,
    )
    traffic[TRAFFIC_STATS] = TrafficStats()
    traffic.cleanup_ctx.append(_traffic_ctx(settings, clock, channels, metrics, metering))
    traffic.on_shutdown.append(_close_websockets)
    setup_traffic_routes(traffic)


def _traffic_ctx(
    settings: Settings, clock: Clock, channels: Channels, metrics: Metrics, metering: bool
) -> Ctx:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        client = app[REDIS]
        session = _bot_session(
            settings,
            {
                "limit": settings.upstream_connections,
                "limit_per_host": settings.upstream_connections_per_bot,
                "shares": Shares(
                    per_bot=settings.tenant_connections_per_bot,
                    total=settings.tenant_connections,
                    waited=metrics.tenant_share_waits.inc,
                ),
                "keepalive_timeout": 30,
            },
        )
        # WebSockets' bot connections, out of that pool: bounded by their budget
        # (gateway/ws_budget.py), each used once.
        sockets = app[WEBSOCKETS]
        sockets.session = ws_session = _bot_session(
            settings, {"limit": 0, "limit_per_host": 0, "force_close": True}, tenant_shares=False
        )
        admitter = Admitter(client, settings, clock=clock, on_batch=metrics.batch_size.observe)
        owed = Owed(
            admitter, metrics, timeout=settings.redis_timeout_s, state_dir=settings.state_dir
        )
        owed.recover()  # what processes that died before settling left in their journals
        confirmations = (
            Confirmations(client, settings.state_dir, settings.redis_timeout_s)
            if metering
            else None
        )
        meter = Meter(
            admitter,
            owed,
            metrics,
            fail_open=settings.fail_mode == "open",
            refund_on=frozenset(settings.refund_on),
            timeout=settings.redis_timeout_s,
            confirmations=confirmations,
        )
        upstreams = Upstreams(
            client, default_url=settings.default_upstream_url, timeout=settings.redis_timeout_s
        )
        app[HTTP] = session
        app[ADMITTER] = admitter
        app[OWED] = owed
        auth = ChannelAuth(client, settings)
        app[PROXY] = Proxy(
            session,
            upstreams,
            channels,
            meter,
            metrics,
            settings.max_body_bytes,
            auth,
            metering,
            settings.body_timeout_s,
            min(settings.body_timeout_s, settings.refund_window_s / 4),
        )
        settler = asyncio.create_task(owed.run(), name="creditgate-settle")
        metric_flusher = asyncio.create_task(
            metrics.buffer.run(settings.metrics_flush_s), name="creditgate-metrics-flush"
        )
        try:
            yield
        finally:
            metric_flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await metric_flusher
            settler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await settler
            await owed.close(min(5.0, settings.shutdown_grace_s))
            await admitter.close()
            if confirmations is not None:
                await confirmations.close(min(5.0, settings.shutdown_grace_s))
            await auth.close()
            await session.close()
            await ws_session.close()

    return ctx


def _bot_session(
    settings: Settings, connector: dict[str, Any], *, tenant_shares: bool = True
) -> aiohttp.ClientSession:
    """A session to bots (``connector``: its pool's options): the egress policy, the
    connect and read timeouts, headers passed as they are."""
    return guarded_session(
        settings,
        connector=connector,
        tenant_shares=tenant_shares,
        timeout=aiohttp.ClientTimeout(
            total=None,
            # Waiting for a place in the pool (a bot at its cap) counts toward the
            # connect timeout, as on the fast path (gateway/fastpath/pool.py).
            connect=settings.upstream_connect_timeout_s,
            sock_connect=settings.upstream_connect_timeout_s,
            sock_read=settings.upstream_read_timeout_s,
        ),
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=SKIP_AUTO_HEADERS,
    )


async def _close_websockets(app: web.Application) -> None:
    await app[WEBSOCKETS].close_all()
