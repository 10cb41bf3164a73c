"""The admin API under ``/v1`` (docs/design.md §3), its OpenAPI document and the ``/ui`` dashboard.

``setup_admin_api(app)`` mounts everything on the admin application, whose resources
(``gateway.appkeys``: settings, store, Redis, catalog, clock, HTTP session) the
handlers read through ``request.config_dict``; it also starts the delivery loop of owner
notifications (:mod:`gateway.webhooks`).
"""

from __future__ import annotations

from aiohttp import web

from gateway import webhooks
from gateway.admin_api.errors import errors
from gateway.admin_api.http import endpoint
from gateway.admin_api.openapi import document_bytes
from gateway.admin_api.routes import ROUTES
from gateway.payments import payments_ctx

__all__ = ["ROUTES", "admin_api", "setup_admin_api"]


# Every /v1 answer, errors and 404s included: it carries money and may be authenticated by
# the console's cookie, so never cached, never sniffed as another type, never framed.
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
}


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare`` of the admin application: :data:`SECURITY_HEADERS` on
    every ``/v1`` answer (a handler's own value of one stays)."""
    if request.path == "/v1" or request.path.startswith("/v1/"):
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)


async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(body=document_bytes(), content_type="application/json")


def admin_api() -> web.Application:
    """The ``/v1`` sub-application: every route of :data:`ROUTES` plus ``/openapi.json``."""
    api = web.Application(middlewares=[errors])
    for route in ROUTES:
        api.router.add_route(route.method, route.path.removeprefix("/v1"), endpoint(route))
    api.router.add_get("/openapi.json", openapi_json)
    return api


def setup_admin_api(app: web.Application, *, deliver_webhooks: bool = True) -> None:
    """Mount ``/v1``, ``/ui`` and (unless disabled) the webhook delivery loop on ``app``."""
    from gateway.console import setup_console  # the console imports this package

    app.add_subapp("/v1", admin_api())
    app.on_response_prepare.append(security_headers)
    setup_console(app)
    app.cleanup_ctx.append(payments_ctx)
    if deliver_webhooks:
        app.cleanup_ctx.append(webhooks.delivery_ctx)
