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

import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Literal

from aiohttp import web
from prometheus_client import CollectorRegistry

from config import Settings, load_catalog
from gateway.appkeys import CATALOG, CLOCK, METRICS, REDIS, SETTINGS, STORE
from gateway.channels import Channels
from gateway.metrics import Metrics
from gateway.via import name_via
from meter.accounts.egress import check_settings
from meter.redis_layer.client import RedisClient, connect, warm_up
from meter.redis_layer.clock import RedisClock, following
from meter.store import Store, open_store
from meter.timestamps import Clock

log = logging.getLogger(__name__)
Ctx = Callable[[web.Application], AsyncIterator[None]]


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
    only: Literal["traffic", "admin"] | None = None,
) -> Gateway:
    """Build the traffic and admin applications (nothing is opened until startup).
    ``metering`` defaults to ``settings.metering``; off proxies without admission (a
    benchmark baseline only). ``clock`` stamps admissions, refunds, sweeps and flushes: by
    default a :class:`RedisClock` (Redis's, synced while the applications run).
    ``only``: the other application stays bare (no routes, nothing opened), for a process
    that never serves it (a worker of ``creditgate serve`` runs traffic, its parent admin)."""
    name_via(settings.via_name)  # this deployment's Via entry, for the process
    if metering is None:
        metering = settings.metering
    check_settings(settings)  # operator-set targets obey the egress policy too
    channels = Channels(settings.channels)
    metrics = Metrics(registry if registry is not None else CollectorRegistry(), channels.names)
    if clock is None:
        clock = RedisClock(on_offset=metrics.clock_followed)
    catalog = load_catalog(settings.catalog_path)

    # Each side's modules load only where it is built (start-up CPU of every process).
    if only == "admin":
        traffic = web.Application()
    else:
        from gateway.traffic_app import traffic_application

        traffic = traffic_application(settings)
    if only == "traffic":
        admin = web.Application()
    else:
        from gateway.admin_guard import refuse_forwarded
        from gateway.problems import problem_middleware

        admin = web.Application(middlewares=[problem_middleware, refuse_forwarded])
    for app in (traffic, admin):
        app[SETTINGS] = settings
        app[CATALOG] = catalog
        app[CLOCK] = clock
        app[METRICS] = metrics
        app.cleanup_ctx.append(_redis_ctx(settings, redis))
        if isinstance(clock, RedisClock):
            app.cleanup_ctx.append(_clock_ctx(settings, clock))

    if only != "admin":
        from gateway.traffic_app import setup_traffic

        setup_traffic(traffic, settings, clock, channels, metrics, metering)
    if only != "traffic":
        _setup_admin(admin, settings, store, run_flusher)
    return Gateway(settings, traffic, admin, metrics)


def _setup_admin(
    admin: web.Application, settings: Settings, store: Store | None, run_flusher: bool
) -> None:
    from gateway.admin_api import setup_admin_api
    from gateway.health import setup_health
    from gateway.http_rules import close_announced

    admin.cleanup_ctx.append(_store_ctx(settings, store))
    # As on the traffic port: no request follows a chunked one (its trailer would reach
    # the next request as a header) nor a declined upgrade on a connection.
    admin.on_response_prepare.append(close_announced)
    if run_flusher:
        from gateway.flusher_ctx import run_flusher_ctx

        admin.cleanup_ctx.append(run_flusher_ctx)
    setup_health(admin)
    setup_admin_api(admin)


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
