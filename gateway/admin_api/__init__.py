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
    setup_console(app)
    app.cleanup_ctx.append(payments_ctx)
    if deliver_webhooks:
        app.cleanup_ctx.append(webhooks.delivery_ctx)
