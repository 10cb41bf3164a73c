"""The aiohttp path's connections to bots within each tenant's share
(:mod:`gateway.tenant_share`), as the fast path's (:func:`gateway.fastpath.dispatch`).

A traffic request (``/hooks``, ``/notify``; a WebSocket's bot connection is not of this
pool: :mod:`gateway.ws_budget`) runs with a :class:`~gateway.client_gone.ClientWatch`
naming its tenant in
:data:`~gateway.client_gone.CLIENT_GONE`; :class:`TenantConnector` takes a place of that
tenant's share before it asks :class:`~gateway.bot_connector.BotConnector` for a
connection, and the connection holds it until it is released or closed (the
connector's ``_release``, whichever way it comes). The wait for the share counts
toward the connect timeout (what is left of it bounds the wait for the pool); the client
leaving ends it (:class:`ClientGone`), and stopping refuses it
(:class:`ShuttingDown`), as a wait for the pool. Requests without a tenant (none of
the traffic port) take no share.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import aiohttp
import attr
from aiohttp.client_proto import ResponseHandler
from aiohttp.connector import Connection
from aiohttp.helpers import ceil_timeout

from config.settings import share
from gateway.bot_connector import BotConnector, ShuttingDown
from gateway.client_gone import CLIENT_GONE, ClientGone, ClientWatch
from gateway.tenant_share import Shares, Ticket, Wait

if TYPE_CHECKING:
    from aiohttp.client_reqrep import ClientRequest, ConnectionKey
    from aiohttp.tracing import Trace

SOON = 0.001  # a deadline already past: ceil_timeout takes 0 for no timeout at all


class TenantConnector(BotConnector):
    """A :class:`BotConnector` whose connections hold a place of their tenant's share."""

    def __init__(self, *, shares: Shares | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        per_bot, total = self._limit_per_host or sys.maxsize, self._limit or sys.maxsize
        self.shares = shares or Shares(per_bot=share(per_bot), total=share(total))
        self._tickets: dict[ResponseHandler, Ticket] = {}

    async def connect(
        self,
        req: ClientRequest,
        traces: list[Trace],
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109
    ) -> Connection:
        watch = CLIENT_GONE.get()
        if watch is None or watch.tenant is None:
            return await super().connect(req, traces, timeout)
        if watch.gone():
            raise ClientGone
        start = self._loop.time()
        async with ceil_timeout(timeout.connect, timeout.ceil_threshold):
            on_wait = functools.partial(_on_wait, watch)
            ticket = await self.shares.enter(watch.tenant, req.connection_key, on_wait)
        try:
            if timeout.connect is not None:
                left = timeout.connect - (self._loop.time() - start)
                timeout = attr.evolve(timeout, connect=max(left, SOON))
            conn = await super().connect(req, traces, timeout)
        except BaseException:
            ticket.free()
            raise
        assert conn.protocol is not None
        self._tickets[conn.protocol] = ticket
        return conn

    def _release(
        self, key: ConnectionKey, protocol: ResponseHandler, *, should_close: bool = False
    ) -> None:
        ticket = self._tickets.pop(protocol, None)
        if ticket is not None:
            ticket.free()  # its request is done with it, whether it is kept or closed
        super()._release(key, protocol, should_close=should_close)

    def refuse_waiters(self) -> None:
        self.shares.refuse(ShuttingDown)
        super().refuse_waiters()

    def _close(self, *args: Any, **kw: Any) -> Any:
        self.shares.refuse(ShuttingDown)
        return super()._close(*args, **kw)


def _on_wait(watch: ClientWatch, wait: Wait) -> Callable[[], None]:
    """The client leaving ends the wait for a place of its tenant's share."""
    forget = watch.on_lost(functools.partial(_leave, wait))
    return forget if forget is not None else _nothing


def _leave(wait: Wait) -> None:
    if not wait.done():
        wait.set_exception(ClientGone())


def _nothing() -> None:
    pass
