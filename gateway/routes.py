"""Traffic routes: ``/hooks`` (HTTP and WebSocket) and ``/notify``."""

from __future__ import annotations

from aiohttp import web

from gateway.appkeys import PROXY, WEBSOCKETS
from gateway.http_rules import expect_continue
from gateway.notify import notify
from gateway.proxy import hooks
from gateway.traffic_rules import upstream_base
from gateway.websocket import handshake_refusal, is_upgrade, proxy_websocket, upgrade_refusal


async def hooks_handler(request: web.Request) -> web.StreamResponse:
    proxy = request.app[PROXY]
    if not is_upgrade(request):
        return await hooks(proxy, request)
    refused = handshake_refusal(request)
    if refused is not None:
        return refused
    match = request.match_info
    channel, app_id = match["channel"], match["app_id"]
    base = await upstream_base(proxy, app_id)
    prefix = f"/hooks/{channel}/{app_id}"
    sockets = request.app[WEBSOCKETS]
    # 503 past the worker's or tenant's (owner's) budget (ws_budget)
    with sockets.seat(proxy.upstreams.tenant(app_id)):
        return await proxy_websocket(proxy, request, base, prefix, sockets)


async def notify_handler(request: web.Request) -> web.StreamResponse:
    if is_upgrade(request):
        # No WebSocket here: a client asking for one is not charged a notification it
        # cannot use (docs/design.md, as a malformed handshake on /hooks).
        return upgrade_refusal("there is no WebSocket on /notify")
    return await notify(request.app[PROXY], request)


def setup_traffic_routes(app: web.Application) -> None:
    for prefix, handler in (("/hooks", hooks_handler), ("/notify", notify_handler)):
        for path in (prefix + "/{channel}/{app_id}", prefix + "/{channel}/{app_id}/{tail:.*}"):
            app.router.add_route("*", path, handler, expect_handler=expect_continue)
