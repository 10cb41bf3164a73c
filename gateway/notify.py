"""``/notify``: a bot-initiated message on its way out to the channel (docs/design.md §3),
one ``notification`` unit, forwarded like ``/hooks`` by :class:`gateway.proxy.Proxy`."""

from __future__ import annotations

from aiohttp import web

from gateway.channels import USER_HEADER
from gateway.forwarding import target_url
from gateway.problems import Problem, Refused
from gateway.proxy import Body, Proxy
from gateway.traffic_rules import check_loop, message_digest


async def notify(proxy: Proxy, request: web.Request) -> web.StreamResponse:
    """``ANY /notify/{channel}/{app_id}[/{tail}]``: one ``notification`` unit, then out to
    the channel's ``delivery_url``."""
    match = request.match_info
    channel, app_id = match["channel"], match["app_id"]
    rule = proxy.channels.get(channel)
    metrics = proxy.metrics
    outcome = "error"
    metrics.in_flight.inc()
    try:
        check_loop(request.headers)
        verified = await proxy.auth.verify_notify(request, channel, app_id)
        if not rule.delivery_url:
            raise Problem(
                404, "no_delivery_url", "No delivery endpoint", f"channel {channel} has none"
            )
        url = target_url(
            rule.delivery_url,
            request.raw_path,
            f"/notify/{channel}/{app_id}",
            request.match_info.get("tail", ""),
        )
        proxy.check_length(request)
        headers = request.headers
        # The recipient is not part of the price of a notification; it is recorded if given.
        user = headers.get(USER_HEADER) or "-"
        key = headers.get("Idempotency-Key") or headers.get("X-Request-Id") or ""
        admission = None
        state = [False]
        body: Body = None
        if proxy.metering:
            digest = ""
            if key:
                body = await proxy.read_body(request)
                digest = message_digest(request.method, request.raw_path, body)
            admission = await proxy.meter.admit(app_id, channel, user, key, "n", digest=digest)
        if body is None:
            body = await proxy.body_of(request, state)
        resp = await proxy.forward(request, url, body, admission, state, verified)
        outcome = "unmetered" if admission is None else "admitted"
        return resp
    except Refused:
        outcome = "refused"
        raise
    finally:
        metrics.in_flight.dec()
        metrics.count(rule.label, outcome)
