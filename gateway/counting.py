"""Each traffic request counted in flight and by outcome (``/hooks`` and ``/notify``)."""

from __future__ import annotations

from collections.abc import Awaitable

from aiohttp import web

from gateway.metering import Admission
from gateway.metrics import Metrics
from gateway.problems import Refused

Forwarded = tuple[web.StreamResponse, Admission | None]  # the answer, and what was admitted


async def counted(metrics: Metrics, label: str, handle: Awaitable[Forwarded]) -> web.StreamResponse:
    """One traffic request, counted in flight and by outcome: ``admitted`` or
    ``unmetered`` by its admission, ``refused`` for a problem, ``error`` otherwise."""
    outcome = "error"
    metrics.in_flight.inc()
    try:
        resp, admission = await handle
        outcome = "unmetered" if admission is None else "admitted"
        return resp
    except Refused:
        outcome = "refused"
        raise
    finally:
        metrics.in_flight.dec()
        metrics.count(label, outcome)
