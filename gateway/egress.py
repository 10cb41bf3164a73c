"""The egress policy (:mod:`meter.accounts.egress`) applied where the gateway connects.

Two public aiohttp hooks together see every address a connection is opened to:

* :class:`GuardedResolver` resolves host names and drops every address the policy
  refuses (checked at each connection, so DNS rebinding after the URL was saved does
  not help); nothing left fails the connection with :class:`UpstreamForbidden`. Names
  are looked up by :mod:`meter.accounts.names` (c-ares, never libc's thread pool; each
  tenant within its share of lookups), so a tenant's name whose DNS never answers
  stalls no one else's lookup.
* :func:`egress_middleware`, a client middleware, checks each request's URL before it is
  sent (also each redirect hop): aiohttp never asks the resolver about IP literals, so
  ``http://10.0.0.1/`` or ``http://[::ffff:127.0.0.1]/`` are refused here, as are
  schemes other than http(s)/ws(s) and legacy numeric hosts (``2130706433``).

:func:`guarded_session` builds a ``ClientSession`` with both; the traffic proxy
(HTTP, and WebSocket in a session of its own: :mod:`gateway.ws_budget`) and the
owner-webhook sender use it. Its third hook,
:func:`no_upgrade_redirects`, keeps a WebSocket upgrade from following the bot's
redirects, as plain HTTP never does (``allow_redirects=False``; ``ws_connect`` has no
such option).
"""

from __future__ import annotations

import socket
from contextvars import ContextVar
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.client_middlewares import ClientHandlerType, ClientMiddlewareType

from config import Settings
from gateway.bot_connector import BotConnector
from gateway.client_gone import CLIENT_GONE
from gateway.tenant_connector import TenantConnector
from meter.accounts import names
from meter.accounts.addresses import EgressRefused, check_host_name, parse_ip
from meter.accounts.egress import Policy

SCHEMES = {"http": 80, "https": 443, "ws": 80, "wss": 443}
REDIRECTS = frozenset({301, 302, 303, 307, 308})  # those aiohttp follows
MAX_VERDICTS = 10_000  # destinations whose verdict the middleware remembers
NUMERIC = socket.AI_NUMERICHOST | socket.AI_NUMERICSERV


class UpstreamForbidden(aiohttp.ClientConnectionError):
    """The egress policy refused the destination; no connection was attempted."""

    def __init__(self, host: str, reason: str) -> None:
        super().__init__(f"{host}: {reason}")
        self.host = host
        self.reason = reason


# Whose share of name lookups a request made outside a traffic request takes (an owner
# webhook: its workspace's tenant, gateway/webhooks.py); None: no share.
LOOKUP_TENANT: ContextVar[str | None] = ContextVar("lookup_tenant", default=None)


class GuardedResolver(AbstractResolver):
    """Resolves with ``inner`` (by default the loop's :func:`meter.accounts.names.shared`)
    and keeps only the addresses ``policy`` allows."""

    def __init__(self, policy: Policy, inner: AbstractResolver | None = None) -> None:
        self.policy = policy
        self._inner = inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        # aiohttp's path: the request's tenant is its ClientWatch's, an owner webhook's
        # its workspace's (LOOKUP_TENANT).
        watch = CLIENT_GONE.get()
        tenant = watch.tenant if watch else LOOKUP_TENANT.get()
        return await self.lookup(host, port, family, tenant)

    async def lookup(
        self,
        host: str,
        port: int,
        family: socket.AddressFamily = socket.AF_UNSPEC,
        tenant: str | None = None,
    ) -> list[ResolveResult]:
        """``host``'s allowed addresses, looked up within ``tenant``'s share of lookups;
        :class:`UpstreamForbidden` when none, ``OSError`` when the name has no address."""
        try:
            name = check_host_name(host)
        except EgressRefused as exc:
            raise UpstreamForbidden(host, str(exc)) from None
        if self._inner is not None:
            results = await self._inner.resolve(name, port, family)
        else:
            found = await names.shared().lookup(name, family, tenant)
            results = [
                ResolveResult(
                    hostname=name, host=addr, port=port, family=fam, proto=0, flags=NUMERIC
                )
                for fam, addr in found
            ]
        kept: list[ResolveResult] = []
        last = "no address"
        for res in results:
            try:
                self.policy.check_address(res["host"], res["port"] or port, name)
            except EgressRefused as exc:
                last = str(exc)
            else:
                kept.append(res)
        if not kept:
            raise UpstreamForbidden(host, last)
        return kept

    async def close(self) -> None:
        if self._inner is not None:
            await self._inner.close()
        # the loop's Names outlives any one session (meter.accounts.names.shared)


def check_request_url(policy: Policy, url: Any) -> None:
    """Refuse ``url`` (a ``yarl.URL``) if its scheme, host form or literal address may
    not be reached; host names are left to :class:`GuardedResolver`."""
    host = url.raw_host or ""
    scheme = (url.scheme or "").lower()
    if scheme not in SCHEMES:
        raise UpstreamForbidden(host, f"scheme {scheme!r} is not allowed")
    port = url.port or SCHEMES[scheme]
    ip = parse_ip(host)
    try:
        if ip is None:
            name = check_host_name(host)  # refuses legacy numeric IPv4 forms
            ip = parse_ip(name)
        if ip is not None:
            policy.check_address(ip, port)
    except EgressRefused as exc:
        raise UpstreamForbidden(host, str(exc)) from None


class Verdicts:
    """:func:`check_request_url` remembered per destination (bounded): the verdict
    depends only on scheme, host and port, and the policy is fixed for a process's life.
    Host names are still resolved, and checked, whenever a connection is opened."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self._seen: dict[tuple[str, str, int | None], UpstreamForbidden | None] = {}

    def check(self, url: Any) -> None:
        """Raise :class:`UpstreamForbidden` if ``url`` may not be reached."""
        dest = (url.scheme, url.raw_host or "", url.port)
        try:
            refused = self._seen[dest]
        except KeyError:
            try:
                check_request_url(self.policy, url)
                refused = None
            except UpstreamForbidden as exc:
                refused = exc
            if len(self._seen) >= MAX_VERDICTS:
                self._seen.clear()
            self._seen[dest] = refused
        if refused is not None:
            raise UpstreamForbidden(refused.host, refused.reason)


def egress_middleware(policy: Policy) -> ClientMiddlewareType:
    """A client middleware refusing what :func:`check_request_url` refuses (each
    request, and each redirect hop), a known destination at the cost of a dict look-up."""
    verdicts = Verdicts(policy)

    async def middleware(
        req: aiohttp.ClientRequest, handler: ClientHandlerType
    ) -> aiohttp.ClientResponse:
        verdicts.check(req.url)
        return await handler(req)

    return middleware


async def no_upgrade_redirects(
    req: aiohttp.ClientRequest, handler: ClientHandlerType
) -> aiohttp.ClientResponse:
    """A client middleware: a redirect answering a WebSocket upgrade is the bot refusing
    it (aiohttp's own ``WSServerHandshakeError``, as for any other non-101 answer), never
    followed to where it points."""
    resp = await handler(req)
    if resp.status in REDIRECTS and req.headers.get("Upgrade", "").lower() == "websocket":
        resp.close()
        raise aiohttp.WSServerHandshakeError(
            resp.request_info,
            (),
            message="Invalid response status",
            status=resp.status,
            headers=resp.headers,
        )
    return resp


def guarded_connector(
    policy: Policy, *, tenant_shares: bool = True, **kw: Any
) -> aiohttp.TCPConnector:
    # Bounded and ordered as on the fast path, and never sending the message of a client
    # that left (gateway.bot_connector); each tenant within its share (gateway.tenant_share)
    # unless ``tenant_shares`` is false (WebSockets have a budget of their own).
    kind = TenantConnector if tenant_shares else BotConnector
    return kind(resolver=GuardedResolver(policy), **kw)


def guarded_session(
    settings: Settings,
    *,
    connector: dict[str, Any] | None = None,
    tenant_shares: bool = True,
    **kw: Any,
) -> aiohttp.ClientSession:
    """A ``ClientSession`` that only connects where the egress policy allows and never sends
    a request twice; ``connector`` holds ``TCPConnector`` options, ``kw`` the session's."""
    policy = Policy.from_settings(settings)
    session = aiohttp.ClientSession(
        connector=guarded_connector(policy, tenant_shares=tenant_shares, **(connector or {})),
        middlewares=(egress_middleware(policy), no_upgrade_redirects),
        trust_env=False,  # proxies from the environment would bypass the address check
        **kw,
    )
    # A request is sent at most once (a message to its bot, as on the fast path): aiohttp's
    # client sends an idempotent one (GET, PUT, DELETE, OPTIONS, HEAD) again when a kept
    # connection fails before the answer, a second delivery of one admission once the bot
    # had read it (both refunded if the second fails too). Such a failure is 502, refunded.
    session._retry_connection = False
    return session
