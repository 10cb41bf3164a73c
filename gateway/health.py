"""Admin-port probes: ``/healthz`` (alive), ``/readyz`` (Redis, and the store if wired,
answer, and Redis may not evict keys; the store's schema version is reported and must
not be behind the code's) and ``/metrics`` (Prometheus text)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from gateway.appkeys import METRICS, REDIS, SETTINGS, STORE
from gateway.metrics import CONTENT_TYPE, exposition
from gateway.problems import problem_response
from meter.redis_layer.eviction import eviction_problem
from meter.store.schema import latest_version


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    app = request.app
    timeout = app[SETTINGS].redis_timeout_s
    checks: dict[str, str] = {}
    try:
        await asyncio.wait_for(app[REDIS].ping(), timeout)
        problem = await asyncio.wait_for(eviction_problem(app[REDIS]), timeout)
        checks["redis"] = "ok" if problem is None else f"error: {problem}: set noeviction"
    except Exception as exc:
        checks["redis"] = f"error: {type(exc).__name__}"
    store = app.get(STORE)
    extra: dict[str, object] = {}
    if store is not None:
        expected = latest_version()
        try:
            ok = await asyncio.wait_for(store.ping(), max(timeout, 2.0))
            version = (
                await asyncio.wait_for(store.schema_version(), max(timeout, 2.0)) if ok else None
            )
        except Exception as exc:
            checks["store"] = f"error: {type(exc).__name__}"
        else:
            checks["store"] = "ok" if ok else "error: ping failed"
            if version is not None:
                extra["schema"] = {"version": version, "expected": expected}
                if version < expected:
                    checks["store"] = "error: schema behind: run creditgate migrate"
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
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
