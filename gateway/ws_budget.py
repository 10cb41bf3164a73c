"""Each traffic worker's WebSockets: a budget of their own, and bot connections of their own.

A WebSocket's bot connection is open as long as the socket. Taken from the pool the
HTTP messages wait on (:mod:`gateway.bot_connector`, :mod:`gateway.tenant_share`), a few
hundred idle sockets, which cost nothing to open on a channel without a secret, held
their tenant's whole share (its messages timed out 504), and the sockets of two tenants
the worker's caps (every other tenant's messages too). So WebSockets never take a place
there: their bot connections come from a session of their own
(:func:`gateway.egress.guarded_session` with no tenant shares: the same egress policy,
connect and handshake timeouts and headers; no cap of its own, the budget is its cap).

The budget (:class:`WebSockets`): ``ws_max_connections`` sockets per worker, of which one
tenant (the owner of the route's app's workspace, as for the shares:
:meth:`gateway.upstreams.Upstreams.tenant`) holds at most
``ws_max_connections_per_tenant`` (three eighths unless set: two tenants at their share
leave a quarter to the others). A seat is taken once the app is known, before anything
else is done with the upgrade, and held until the socket is closed; one more upgrade is
refused 503 ``too_many_websockets`` with ``Retry-After``: nothing metered or checked,
the bot never contacted, counted in ``creditgate_refusals_total{reason="too_many_websockets"}``.
``creditgate_open_websockets`` shows the seats held (handshakes under way included).

A socket whose client sent no text or binary message for ``ws_idle_timeout_s`` is closed
1001 ``idle`` (:meth:`WebSockets.next_message`), its bot connection too; one whose client
sent none yet, after ``ws_first_message_timeout_s`` (a socket that never sends is never
charged: it holds a seat for free only that long).

When the gateway shuts down (:meth:`WebSockets.close_all`, before the grace) every pump
ends at once (:meth:`WebSockets.going_away`), a send stalled on the bot included, and each
handler closes its sockets 1001 ``shutting down`` as it closes them for any other reason
(the bot's first, then the client's, each bounded), so the bot connections still end
with what the kernel took delivered (:class:`gateway.ws_wire.Linger`) within the grace.
Nothing is closed from the shutting-down task itself: a client that does not read never
takes a close frame, and aiohttp's wait for it shares one future with the handler's own
writes (one cancelled, every waiter gets its CancelledError: the worker died at once,
or waited forever, and the bots' connections were reset, charged messages lost).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import aiohttp
from aiohttp import WSMsgType, web

from gateway.metrics import Metrics
from gateway.problems import Problem

GOING_AWAY = 1001
TOO_MANY = "too_many_websockets"
RETRY_AFTER_S = 1  # as the other 503s: the budget frees as sockets close


class WebSockets:
    """The WebSockets of one traffic worker: their budget (``total``, ``per_tenant``),
    the idle timeouts of each (``idle_s``; ``first_s`` before the client's first
    message), whether the gateway is going away and the session their bot connections
    come from."""

    def __init__(
        self, total: int, per_tenant: int, idle_s: float, metrics: Metrics, first_s: float = 30.0
    ) -> None:
        self.total = total
        self.per_tenant = per_tenant
        self.idle_s = idle_s
        self.first_s = min(first_s, idle_s)
        self._going: asyncio.Future[None] | None = None
        self._metrics = metrics
        self._gauge = metrics.open_websockets
        self._held: dict[str | None, int] = {}
        self._count = 0
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """The session WebSockets connect to bots with (set as the traffic app starts)."""
        if self._session is None:
            raise RuntimeError("the traffic application has not started")
        return self._session

    @session.setter
    def session(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    async def next_message(
        self, client: web.WebSocketResponse, first: bool = False, until: float | None = None
    ) -> aiohttp.WSMessage | None:
        """The client's next text or binary message (``first``: it sent none yet), None
        once it closes; TimeoutError when it sent none for ``idle_s`` (``first_s`` for the
        first), or once the loop's clock reaches ``until`` (the caller's own deadline: a
        credential's expiry): only its messages keep a socket open (its pings are answered
        inside ``receive()`` and never end the wait; the bot's are not its)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.first_s if first else self.idle_s)
        async with asyncio.timeout_at(deadline if until is None else min(deadline, until)):
            async for msg in client:
                if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                    return msg
        return None

    def going_away(self) -> asyncio.Future[None]:
        """Done once the gateway shuts down: every pump waits on it too (see the module)."""
        if self._going is None:
            self._going = asyncio.get_running_loop().create_future()
        return self._going

    async def close_all(self) -> None:
        """On shutdown: every socket's pump ends, its handler closes it 1001."""
        going = self.going_away()
        if not going.done():
            going.set_result(None)

    def held(self, tenant: str | None) -> int:
        """The seats ``tenant`` holds now."""
        return self._held.get(tenant, 0)

    @contextlib.contextmanager
    def seat(self, tenant: str | None) -> Iterator[None]:
        """A seat of the budget for one WebSocket of ``tenant``, held inside the block;
        :class:`~gateway.problems.Problem` 503 ``too_many_websockets`` when there is none."""
        held = self._held.get(tenant, 0)
        if self._count >= self.total or held >= self.per_tenant:
            self._metrics.refused(TOO_MANY)
            whose = "this worker's" if self._count >= self.total else "this tenant's"
            raise Problem(
                503,
                TOO_MANY,
                "Too many WebSockets",
                f"{whose} WebSockets are all open; retry later",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        self._held[tenant] = held + 1
        self._count += 1
        self._gauge.inc()
        try:
            yield
        finally:
            self._count -= 1
            self._gauge.dec()
            left = self._held[tenant] - 1
            if left:
                self._held[tenant] = left
            else:
                del self._held[tenant]
