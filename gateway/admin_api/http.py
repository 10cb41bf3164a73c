"""The admin API's request pipeline: authenticate, authorize, validate, run.

Every route is a :class:`Route` of the table in :mod:`gateway.admin_api.routes`. Its
:func:`endpoint` authenticates the caller (401), checks the path ids (404), applies the
route's :class:`~gateway.admin_api.access.Access` policy (403, or 404 for what the
caller may not see), and only then reads the query and the body. The body must be in
within ``admin_body_timeout_s`` (408, the connection closed); as it may have taken that
long, the caller is authenticated and the policy decided again once it is in (a token
revoked, a console session ended, a member removed or an app handed over meanwhile
counts), before the body is parsed with the route's model (400 for malformed JSON, 422
naming the field); the handler runs on that second grant. A handler whose answer
outlives its start (a streamed CSV) decides it again through :attr:`Call.again`.
Nothing is changed before all of this succeeded. Errors become problem+json in
:func:`gateway.admin_api.errors.errors`.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel

from gateway import appkeys
from gateway.admin_api.access import Access, Grant
from gateway.admin_api.validation import parse_body, read_query, read_raw
from meter.accounts.authz import ANONYMOUS, Principal, authenticate
from meter.accounts.deps import Deps
from meter.errors import NotFound, Unauthorized
from meter.redis_layer.clock import clock_ready
from meter.store import App, Workspace

log = logging.getLogger(__name__)
# The caller of a request authenticated by the console's session cookie (set by
# gateway.console.session.cookie_auth).
SESSION_PRINCIPAL = web.RequestKey("console_principal", Principal)
# Set with it: the same session loaded again (None once it ended: signed out, expired,
# its token revoked), for the caller of a body that arrived later.
SessionReload = Callable[[], Awaitable[Principal | None]]
SESSION_RELOAD: web.RequestKey[SessionReload] = web.RequestKey("console_session_reload")
M = TypeVar("M", bound=BaseModel)
KINDS = {"ws": "workspace", "app": "app", "channel": "channel"}  # path parameter -> what it names
Handler = Callable[["Call"], Awaitable[web.StreamResponse]]
Regrant = Callable[[], Awaitable[tuple[Principal, Grant]]]


@dataclass(frozen=True, slots=True)
class Route:
    """One admin API operation: the single source for routing, access, validation and
    OpenAPI."""

    method: str
    path: str
    handler: Handler
    summary: str
    access: Access
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    also: tuple[int, ...] = ()  # other success statuses (e.g. 200 for an idempotent repeat)
    params: Mapping[str, re.Pattern[str]] = field(default_factory=dict)
    csv: bool = False
    errors: tuple[int, ...] = (400, 401, 403, 404, 409, 422)

    def __post_init__(self) -> None:
        name = f"{self.method} {self.path}"
        if not isinstance(self.access, Access):
            raise TypeError(f"{name}: access must be a policy of gateway.admin_api.access")
        if self.access.param and self.access.param not in self.params:
            raise TypeError(f"{name}: access names {{{self.access.param}}}, not in params")

    @property
    def who(self) -> str:
        return self.access.who

    @property
    def public(self) -> bool:
        """No bearer token: the caller proves itself otherwise (the provider signs)."""
        return not self.access.authenticated


@dataclass(frozen=True, slots=True)
class Call:
    """A validated request, handed to a route handler."""

    request: web.Request
    principal: Principal
    deps: Deps
    body: BaseModel | None
    query: BaseModel | None
    grant: Grant = field(default_factory=Grant)
    # The caller authenticated and the route's policy decided anew (401/403/404 raised
    # as for a new request): for a handler whose answer outlives its start (a stream).
    again: Regrant | None = None

    def path(self, name: str) -> str:
        return self.request.match_info[name]

    @property
    def workspace(self) -> Workspace:
        """The workspace the route's access policy checked."""
        assert self.grant.workspace is not None, "route access is not a workspace policy"
        return self.grant.workspace

    @property
    def app(self) -> App:
        """The app the route's access policy checked."""
        assert self.grant.app is not None, "route access is not an app policy"
        return self.grant.app

    @property
    def roles(self) -> frozenset[str]:
        return self.grant.roles

    def parsed(self, model: type[M]) -> M:
        assert isinstance(self.body, model), f"route body is not {model.__name__}"
        return self.body

    def query_as(self, model: type[M]) -> M:
        assert isinstance(self.query, model), f"route query is not {model.__name__}"
        return self.query


def deps(request: web.Request) -> Deps:
    cd = request.config_dict
    return Deps(
        store=cd[appkeys.STORE],
        redis=cd[appkeys.REDIS],
        settings=cd[appkeys.SETTINGS],
        catalog=cd[appkeys.CATALOG],
        clock=cd.get(appkeys.CLOCK) or time.time,
    )


def json_response(
    model: BaseModel, status: int = 200, *, exclude: frozenset[str] = frozenset()
) -> web.Response:
    """``model`` as JSON, less the fields ``exclude`` names (left out, not null)."""
    body = orjson.dumps(model.model_dump(mode="json", by_alias=True, exclude=set(exclude)))
    return web.Response(status=status, body=body, content_type="application/json")


async def _caller(request: web.Request, route: Route, d: Deps, *, again: bool) -> Principal:
    """The request's caller (401 when none); ``again``: loaded anew from the store."""
    if not route.access.authenticated:
        return ANONYMOUS
    auth = request.headers.get("Authorization")
    # The console's session cookie (gateway.console.session.cookie_auth) stands in
    # for a bearer token when no Authorization header came.
    session: Principal | None = request.get(SESSION_PRINCIPAL)
    if auth is None and session is not None:
        reload: SessionReload | None = request.get(SESSION_RELOAD)
        if again and (reload is None or await reload() != session):
            raise Unauthorized("the console session has ended")
        return session
    return await authenticate(d.store, d.settings.operator_token, auth)


def endpoint(route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The aiohttp handler of ``route``."""

    async def handle(request: web.Request) -> web.StreamResponse:
        d = deps(request)
        # Best effort: before the clock's first sync, a sync if Redis answers (what the
        # call writes to Redis is then stamped with Redis's clock, not the host's).
        await clock_ready(d.clock, d.redis, d.settings.redis_timeout_s)
        principal = await _caller(request, route, d, again=False)
        for name, pattern in route.params.items():
            if not pattern.fullmatch(request.match_info[name]):
                raise NotFound(KINDS.get(name, name), request.match_info[name])
        # Authorization before the query or body is even read (docs/design.md §3).
        grant = await route.access.grant(d.store, principal, request.match_info)
        query = read_query(request, route.query) if route.query else None
        body = None

        async def again() -> tuple[Principal, Grant]:
            caller = await _caller(request, route, d, again=True)
            return caller, await route.access.grant(d.store, caller, request.match_info)

        if route.body:
            raw = await read_raw(request, d.settings.admin_body_timeout_s)
            # What the caller may do is decided again now that the body is in, before
            # it is looked at: the grant above may be as old as the body took.
            principal, grant = await again()
            body = parse_body(raw, route.body, lambda data: route.access.check_members(grant, data))
        return await route.handler(Call(request, principal, d, body, query, grant, again))

    handle.__name__ = route.handler.__name__
    return handle
