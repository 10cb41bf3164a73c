"""The admin port refuses requests that came through this gateway's traffic path.

The traffic path adds this deployment's ``Via`` entry (``1.1 creditgate`` by default,
:mod:`gateway.via`) to everything it forwards. No client of the admin API (operators, owners, the
console, probes, Prometheus) sends that, so a request with it is an upstream that
points at an admin port: this replica's or a sibling's. The egress policy already
refuses such upstreams (:mod:`meter.accounts.egress`); this is the second line, answered 508
``loop_detected`` before any handler runs.
"""

from __future__ import annotations

from aiohttp import web

from gateway.problems import Handler
from gateway.traffic_rules import check_loop


@web.middleware
async def refuse_forwarded(request: web.Request, handler: Handler) -> web.StreamResponse:
    """508 ``loop_detected`` for a request carrying the gateway's own ``Via`` entry."""
    check_loop(request.headers)  # raises the 508 Problem; problem_middleware answers it
    return await handler(request)
