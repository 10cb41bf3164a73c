"""Admin-port probes: ``/healthz`` (alive), ``/readyz`` (Redis, and the store if wired,
answer, and Redis may not evict keys; the store's schema version is reported and must
not be behind the code's; the metering clock has synced to Redis's, ``clock``) and
``/metrics`` (Prometheus text).

``/readyz`` checks through connections of its own (:class:`Probes`): on the admin's
pools a probe would wait behind the flusher and admin queries for a connection, time
out while Redis and the store are well, and Kubernetes would take a healthy pod out of
its Service. An in-memory SQLite store (tests) cannot be opened twice: it is shared.
Probes that overlap share one check (single flight): a kubelet, an operator's loop and
a blackbox prober never need more than the probes' few connections (a cluster client
refuses a command past its connection bound rather than waiting for one).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web

from config import Settings
from config.urls import sqlite_path
from gateway.appkeys import CLOCK, METRICS, SETTINGS, STORE
from gateway.metrics import CONTENT_TYPE, exposition
from gateway.problems import problem_response
from meter.redis_layer.client import RedisClient, connect
from meter.redis_layer.clock import RedisClock
from meter.redis_layer.eviction import eviction_problem
from meter.store import Store, open_store
from meter.store.schema import latest_version

# A probe at a time, and one more overlapping it (a kubelet's, an operator's curl).
PROBE_CONNECTIONS = 2


Checks = tuple[dict[str, str], dict[str, object]]  # check -> "ok" or the error; extras


@dataclass(slots=True)
class Probes:
    """What ``/readyz`` checks through: its own Redis client and store (``PROBE_CONNECTIONS``
    connections each, opened at the first probe) on the settings' URLs."""

    redis: RedisClient
    store: Store | None  # the admin's store itself where it cannot be opened twice
    own_store: bool
    timeout: float  # per step (Redis); the store's at least 2 s
    running: asyncio.Task[Checks] | None = None  # the check overlapping probes share

    @classmethod
    def open(cls, settings: Settings, store: Store | None) -> Probes:
        redis = connect(
            settings.redis_url, timeout=settings.redis_timeout_s, max_connections=PROBE_CONNECTIONS
        )
        url = settings.store_url
        if store is None or (url.startswith("sqlite://") and sqlite_path(url) == ":memory:"):
            return cls(redis, store, False, settings.redis_timeout_s)
        pool = {} if url.startswith("sqlite://") else {"min_size": 1, "max_size": PROBE_CONNECTIONS}
        return cls(redis, open_store(url, **pool), True, settings.redis_timeout_s)

    async def check(self) -> Checks:
        """The dependencies' state: the check in flight if there is one, else a new one.
        Shielded: a probe whose client leaves does not cancel the others' check."""
        task = self.running
        if task is None or task.done():
            task = self.running = asyncio.ensure_future(self._check())
        return await asyncio.shield(task)

    async def _check(self) -> Checks:
        timeout = self.timeout
        checks: dict[str, str] = {}
        try:
            await asyncio.wait_for(self.redis.ping(), timeout)
            problem = await asyncio.wait_for(eviction_problem(self.redis), timeout)
            checks["redis"] = "ok" if problem is None else f"error: {problem}: set noeviction"
        except Exception as exc:
            checks["redis"] = f"error: {type(exc).__name__}"
        extra: dict[str, object] = {}
        if self.store is not None:
            expected = latest_version()
            try:
                ok = await asyncio.wait_for(self.store.ping(), max(timeout, 2.0))
                version = (
                    await asyncio.wait_for(self.store.schema_version(), max(timeout, 2.0))
                    if ok
                    else None
                )
            except Exception as exc:
                checks["store"] = f"error: {type(exc).__name__}"
            else:
                checks["store"] = "ok" if ok else "error: ping failed"
                if version is not None:
                    extra["schema"] = {"version": version, "expected": expected}
                    if version < expected:
                        checks["store"] = "error: schema behind: run creditgate migrate"
        return checks, extra

    async def close(self) -> None:
        if self.running is not None:
            await asyncio.gather(self.running, return_exceptions=True)
        await self.redis.aclose()
        if self.own_store and self.store is not None:
            await self.store.close()


PROBES = web.AppKey("probes", Probes)


async def _probes_ctx(app: web.Application) -> AsyncIterator[None]:
    app[PROBES] = probes = Probes.open(app[SETTINGS], app.get(STORE))
    try:
        yield
    finally:
        await probes.close()


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    app = request.app
    checks, extra = await app[PROBES].check()
    clock = app.get(CLOCK)
    if isinstance(clock, RedisClock):  # stamps nothing before its first sync
        checks = {**checks, "clock": "ok" if clock.synced else "error: not synced to redis TIME"}
    if all(v == "ok" for v in checks.values()):
        return web.json_response({"status": "ready", "checks": checks, **extra})
    # Fail-open serves without Redis (and settles later): taking every replica out of
    # the Service when Redis blips would turn that into an outage.
    if app[SETTINGS].fail_mode == "open" and checks.get("store", "ok") == "ok":
        return web.json_response({"status": "degraded", "checks": checks, **extra})
    return problem_response(
        503,
        "not_ready",
        "Not ready",
        "a dependency does not answer",
        extra={"checks": checks, **extra},
    )


async def metrics(request: web.Request) -> web.Response:
    body = exposition(request.app[METRICS])
    resp = web.Response(body=body)
    resp.headers["Content-Type"] = CONTENT_TYPE
    return resp


def setup_health(app: web.Application) -> None:
    """The probes' routes, and their connections (opened after the store's ``cleanup_ctx``,
    closed before it)."""
    app.cleanup_ctx.append(_probes_ctx)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
