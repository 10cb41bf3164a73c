"""``/notify``: a bot-initiated message on its way out to the channel (docs/design.md §3),
one ``notification`` unit, forwarded like ``/hooks`` by :class:`gateway.proxy.Proxy`."""

from __future__ import annotations

import contextlib

from aiohttp import web

from gateway import chunk_framing as framing
from gateway.channels import IDEMPOTENCY_HEADER, USER_HEADER, request_id
from gateway.counting import Forwarded, counted
from gateway.fingerprint import keyed_digest
from gateway.forwarding import target_url
from gateway.problems import Problem
from gateway.proxy import Body, Proxy
from gateway.request_body import BodyState
from gateway.traffic_rules import check_loop
from meter.errors import MeteringUnavailable


async def notify(proxy: Proxy, request: web.Request) -> web.StreamResponse:
    """``ANY /notify/{channel}/{app_id}[/{tail}]``: one ``notification`` unit, then out to
    the channel's ``delivery_url``."""
    channel = request.match_info["channel"]
    rule = proxy.channels.get(channel)
    handle = _notify(proxy, request, channel, rule.delivery_url)
    return await counted(proxy.metrics, rule.label, handle)


async def _notify(
    proxy: Proxy, request: web.Request, channel: str, delivery_url: str | None
) -> Forwarded:
    app_id = request.match_info["app_id"]
    check_loop(request.headers)
    verified = await proxy.auth.verify_notify(request, channel, app_id)
    if not delivery_url:
        raise Problem(404, "no_delivery_url", "No delivery endpoint", f"channel {channel} has none")
    url = target_url(
        delivery_url,
        request.raw_path,
        f"/notify/{channel}/{app_id}",
        request.match_info.get("tail", ""),
    )
    proxy.check_length(request)
    framing.check(request)  # a chunked body refused as it arrived (gateway.chunk_framing)
    # The app's tenant (its workspace's owner), whose share of the delivery endpoint's
    # connections it takes, is cached with its upstream (read once a second at most).
    with contextlib.suppress(MeteringUnavailable):
        await proxy.upstreams.resolve(app_id)
    headers = request.headers
    # The recipient is not part of the price of a notification; it is recorded if given.
    user = headers.get(USER_HEADER) or "-"
    key = headers.get(IDEMPOTENCY_HEADER) or request_id(headers)
    admission = None
    state = BodyState()
    body: Body = None
    if proxy.metering:
        digest = ""
        if key:
            body = await proxy.read_body(request)
            digest = keyed_digest(request.method, request.raw_path, body, b"", headers)
        admission = await proxy.meter.admit(app_id, channel, user, key, "n", digest=digest)
    await framing.refund_refused(request, proxy.meter, admission)
    if body is None:
        body = await proxy.body_of(request, state)
    return await proxy.forward(request, url, body, admission, state, verified), admission
