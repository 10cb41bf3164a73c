"""``create_app``: the one place that wires creditgate's web applications.

It builds two ``web.Application``s that share settings, the price catalog, the clock
and the metrics:

* **traffic** (``/hooks``, ``/notify``) - run by each worker process;
* **admin** (``/healthz``, ``/readyz``, ``/metrics``, the admin API) - run by the parent.

Resources are opened and closed by ``cleanup_ctx`` generators, in this order (closed in
reverse), and stored under the typed keys of :mod:`gateway.appkeys`:

both: REDIS (client) -> the clock's sync (a :class:`RedisClock` only), then
traffic: HTTP (upstream ``ClientSession``; WebSockets have their own,
in WEBSOCKETS), ADMITTER, OWED (its settlement task), PROXY (everything the handlers use);
admin: STORE -> the flusher (``run_flusher=True`` only).

A ``redis`` client or ``store`` passed in is used as is and left open (the caller owns it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from config import Settings, load_catalog
from gateway.admin_api import setup_admin_api
from gateway.admin_guard import refuse_forwarded
from gateway.appkeys import (
    ADMITTER,
    CATALOG,
    CLOCK,
    HTTP,
    METRICS,
    OWED,
    PROXY,
    REDIS,
    SETTINGS,
    STORE,
    TRAFFIC_STATS,
    WEBSOCKETS,
)
from gateway.channel_auth import ChannelAuth
from gateway.channels import Channels
from gateway.egress import guarded_session
from gateway.flusher_ctx import run_flusher_ctx
from gateway.health import setup_health
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
from gateway.via import name_via
from gateway.ws_budget import WebSockets
from meter.accounts.egress import check_settings
from meter.admission.admitter import Admitter
from meter.admission.reservations import Confirmations
from meter.redis_layer.client import RedisClient, connect, warm_up
from meter.redis_layer.clock import RedisClock, following
from meter.store import Store, open_store
from meter.timestamps import Clock

log = logging.getLogger(__name__)
Ctx = Callable[[web.Application], AsyncIterator[None]]
# aiohttp adds these when absent; a transparent proxy must not.
SKIP_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")


@dataclass(frozen=True, slots=True)
class Gateway:
    """The two applications of one creditgate process."""

    settings: Settings
    traffic: web.Application
    admin: web.Application
    metrics: Metrics


def create_app(
    settings: Settings,
    *,
    clock: Clock | None = None,
    redis: RedisClient | None = None,
    store: Store | None = None,
    registry: CollectorRegistry | None = None,
    run_flusher: bool = False,
    metering: bool | None = None,
) -> Gateway:
    """Build the traffic and admin applications (nothing is opened until startup).
    ``metering`` defaults to ``settings.metering``; off proxies without admission (a
    benchmark baseline only). ``clock`` stamps admissions, refunds, sweeps and flushes: by
    default a :class:`RedisClock` (Redis's, synced while the applications run)."""
    name_via(settings.via_name)  # this deployment's Via entry, for the process
    if metering is None:
        metering = settings.metering
    check_settings(settings)  # operator-set targets obey the egress policy too
    channels = Channels(settings.channels)
    metrics = Metrics(registry if registry is not None else CollectorRegistry(), channels.names)
    if clock is None:
        clock = RedisClock(on_offset=metrics.clock_followed)
    catalog = load_catalog(settings.catalog_path)

    traffic = web.Application(
        middlewares=[http_rules, problem_middleware],
        client_max_size=settings.max_body_bytes,
        handler_args={"auto_decompress": False},
    )
    traffic.on_response_prepare.append(close_announced)
    admin = web.Application(middlewares=[problem_middleware, refuse_forwarded])
    for app in (traffic, admin):
        app[SETTINGS] = settings
        app[CATALOG] = catalog
        app[CLOCK] = clock
        app[METRICS] = metrics
        app.cleanup_ctx.append(_redis_ctx(settings, redis))
        if isinstance(clock, RedisClock):
            app.cleanup_ctx.append(_clock_ctx(settings, clock))

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

    admin.cleanup_ctx.append(_store_ctx(settings, store))
    if run_flusher:
        admin.cleanup_ctx.append(run_flusher_ctx)
    setup_health(admin)
    setup_admin_api(admin)
    return Gateway(settings, traffic, admin, metrics)


def _redis_ctx(settings: Settings, given: RedisClient | None) -> Ctx:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        if given is not None:
            app[REDIS] = given
            yield
            return
        client = connect(settings.redis_url, timeout=settings.redis_timeout_s)
        await warm_up(client)
        app[REDIS] = client
        yield
        await client.aclose()

    return ctx


def _clock_ctx(settings: Settings, clock: RedisClock) -> Ctx:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        app[METRICS].clock_synced.set(int(clock.synced))  # a sample before the first sync
        async with following(clock, app[REDIS], settings.clock_sync_s, settings.redis_timeout_s):
            yield

    return ctx


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


def _store_ctx(settings: Settings, given: Store | None) -> Ctx:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        if given is not None:
            app[STORE] = given
            yield
            return
        # Opened lazily: an unreachable store shows on /readyz instead of failing start-up.
        store = open_store(settings.store_url)
        app[STORE] = store
        yield
        await store.close()

    return ctx
