"""Connections to bots on the aiohttp path, bounded as on the fast path
(:mod:`gateway.fastpath.pool`): ``limit_per_host`` per bot, ``limit`` in all.

aiohttp's ``TCPConnector`` (3.x) is kept for what it does well (reusing an idle
connection, oldest first; resolving, TCP and TLS; the keep-alive sweep; closing) and
changed where it does not match the fast path:

* **Idle connections hold places.** aiohttp's ``limit`` counts connections in use or
  being opened (``_acquired``), not idle keep-alive ones (``_conns``): idle connections
  of many bots added up past ``limit``. Here, before a connection is opened, the oldest
  idle connections (any bot) are closed while idle and acquired ones together exceed
  ``limit``, so keeping them never makes a message wait. (Per bot nothing changes: a
  connection is opened only when its bot has no idle one.)
* **Arrival order.** aiohttp wakes a waiting bot at random, and a woken waiter only
  looks again for a free place, which a newcomer may take first. Here a place that frees
  goes to the message that has waited longest among the bots under their cap, reserved
  for it at once (a placeholder counted in ``_acquired``, as aiohttp's own while it
  opens). A connection released keep-alive goes as it is to its own bot's first waiter
  if none waited longer, else it is closed and its place is that waiter's.
* **Stopping.** :meth:`refuse_waiters` (at the end of SIGTERM's grace) refuses every
  message still waiting; aiohttp's own shutdown would cancel them one by one, and a place
  freed by the first cancelled could be taken by a waiter cancelled a moment later, its
  message sent and reset.
* **A bot that talks out of turn.** Bytes a bot writes while its connection idles (an
  unasked-for second answer) would answer the next message sent on it, another tenant's
  maybe: a connection holding them (``should_close``: parsed into its buffer; or waiting
  unread in its socket) is closed instead of reused; one handed to a request with a
  body is not read until that body's first bytes go out (:mod:`gateway.unread`).
* **A client that leaves** (:mod:`gateway.client_gone`) ends its wait at once with
  :class:`ClientGone`, and what was handed to a waiter in the loop pass it gave up in
  (its client left, or the connect timeout) is passed on; aiohttp's queue lost it.

The wait counts toward the connect timeout, as in aiohttp. Proxies are not supported
(sessions never use one). These are private methods of aiohttp's connector: an upgrade
that changes them fails tests/system/test_bot_connections.py. Finding the longest
waiter looks at each bot that has one, as aiohttp's wake-up did.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
from typing import TYPE_CHECKING, Any, cast

import aiohttp
from aiohttp.client_proto import ResponseHandler
from aiohttp.connector import Connection
from aiohttp.helpers import ceil_timeout

from gateway.bot_answers import BotAnswers
from gateway.client_gone import CLIENT_GONE, ClientGone, ClientWatch
from gateway.unread import transport_unread
from gateway.unsent import unsent
from gateway.waiters import Waiters

if TYPE_CHECKING:
    from aiohttp.client_reqrep import ClientRequest, ConnectionKey
    from aiohttp.tracing import Trace


class ShuttingDown(Exception):
    """The process is stopping: a message still waiting for a place is refused (never
    sent; the caller refunds it and answers 502, as the fast path does)."""


class _Place:
    """A place held in ``_acquired`` for a connection not opened yet (reserved for a
    waiter, or being opened), as aiohttp's own placeholder, whose form changes between
    releases: ``_close`` closes it and waits for nothing."""

    __slots__ = ()
    transport = None
    closed = None

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


# What a waiter is handed: a connection to use, or a _Place: a place to open one in.
Wait = asyncio.Future[ResponseHandler]
_Queue = Waiters[ResponseHandler]


class BotConnector(aiohttp.TCPConnector):
    """A ``TCPConnector`` bounding idle connections too, serving waiters in arrival
    order, and never handing a connection to a client that left; see the module."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        # A subclass of aiohttp's protocol (gateway.bot_answers): mypy reads partial invariant.
        self._factory = functools.partial(BotAnswers, loop=self._loop)  # type: ignore[assignment]
        self._queues: dict[ConnectionKey, _Queue] = {}
        self._arrivals = itertools.count()
        self._refusing = False

    async def connect(
        self,
        req: ClientRequest,
        traces: list[Trace],
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109
    ) -> Connection:
        if req.proxy is not None:
            raise aiohttp.ClientConnectionError("proxies are not supported")
        watch = CLIENT_GONE.get()
        if watch is not None and watch.gone():
            raise ClientGone
        key = req.connection_key
        conn = await self._get(key, traces)  # an idle connection of the bot
        while conn is not None and _stale(conn):
            conn.close()  # it holds bytes nobody asked for: never reused
            conn = await self._get(key, traces)
        kept = conn is not None
        if conn is None:
            async with ceil_timeout(timeout.connect, timeout.ceil_threshold):
                conn, kept = await self._new(req, key, traces, timeout, watch)
        if watch is not None:
            if watch.gone():
                conn.release()  # unused: to the next waiter, or kept alive
                raise ClientGone
            watch.connected()
            if kept and req.body and conn.transport is not None:
                watch.hold(conn.transport)  # its body is written later (gateway.unread)
        return conn

    async def _new(
        self,
        req: ClientRequest,
        key: ConnectionKey,
        traces: list[Trace],
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109
        watch: ClientWatch | None,
    ) -> tuple[Connection, bool]:
        """A place now, else the first connection or place handed over; a connection
        opened in the place. True: a kept connection was handed over."""
        if self._available_connections(key) > 0:
            place = self._placeholder()
            self._take(key, place)
        else:
            place = await self._wait(key, traces, watch)
            if not isinstance(place, _Place):
                if place.is_connected() and not _stale(place):
                    return Connection(self, key, place, self._loop), True
                dead, place = place, self._placeholder()  # ended since: open one instead
                self._drop(key, dead)
                self._take(key, place)
                dead.close()
        try:
            self._make_room()
            for trace in traces:
                await trace.send_connection_create_start()
            proto = await self._create_connection(req, traces, timeout)
            for trace in traces:
                await trace.send_connection_create_end()
        except BaseException:
            self._release_acquired(key, place)
            raise
        if self._closed:
            proto.close()
            raise aiohttp.ClientConnectionError("Connector is closed.")
        self._drop(key, place)
        self._take(key, proto)
        return Connection(self, key, proto, self._loop), False

    def refuse_waiters(self) -> None:
        """Stopping: every message waiting for a place now, or from now on, gets
        :class:`ShuttingDown`. A place freed afterwards is handed to no one."""
        self._refusing = True
        queues, self._queues = self._queues, {}
        for queue in queues.values():
            for _, wait in queue.waiters:
                if not wait.done():
                    wait.set_exception(ShuttingDown())

    async def _wait(
        self, key: ConnectionKey, traces: list[Trace], watch: ClientWatch | None
    ) -> ResponseHandler:
        if watch is not None and watch.gone():
            raise ClientGone
        if self._refusing:
            raise ShuttingDown
        wait: Wait = self._loop.create_future()
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = _Queue()
        queue.waiters.append((next(self._arrivals), wait))
        forget = watch.on_lost(functools.partial(_leave, wait)) if watch is not None else None
        try:
            for trace in traces:
                await trace.send_connection_queued_start()
            handed = await wait
            for trace in traces:
                await trace.send_connection_queued_end()
            return handed
        except BaseException:
            if wait.done() and not wait.cancelled() and wait.exception() is None:
                self._pass_on(key, wait.result())  # handed over in the pass it gave up in
            else:
                queue.left()
            raise
        finally:
            if forget is not None:
                forget()

    def _pass_on(self, key: ConnectionKey, handed: ResponseHandler) -> None:
        if isinstance(handed, _Place):
            self._release_acquired(key, handed)
        else:
            self._release(key, handed)

    def _first(self) -> ConnectionKey | None:
        """The bot under its caps whose first waiter has waited longest."""
        best: ConnectionKey | None = None
        since = -1
        done = []
        for key, queue in self._queues.items():
            head = queue.head()
            if head is None:
                done.append(key)
            elif (best is None or head[0] < since) and self._available_connections(key) > 0:
                best, since = key, head[0]
        for key in done:
            del self._queues[key]
        return best

    def _release_waiter(self) -> None:
        """A place freed: to the longest waiters that can take one, reserved for them."""
        while self._queues and (key := self._first()) is not None:  # most often: none
            _, wait = self._queues[key].waiters.popleft()  # its head: live (_first)
            place = self._placeholder()
            self._take(key, place)
            wait.set_result(place)

    def _release(
        self, key: ConnectionKey, protocol: ResponseHandler, *, should_close: bool = False
    ) -> None:
        should_close = should_close or unsent(protocol.transport)  # early (gateway.unsent)
        keep = not (should_close or self._force_close or protocol.should_close)
        if keep and self._queues and not self._closed:
            self._drop(key, protocol)
            first = self._first()
            self._take(key, protocol)
            if first == key:
                _, wait = self._queues[key].waiters.popleft()  # its head: live (_first)
                wait.set_result(protocol)  # still acquired: the waiter's now
                return
            should_close = first is not None  # its place is an older waiter's
        super()._release(key, protocol, should_close=should_close)

    def _make_room(self) -> None:
        """Close the oldest idle connections (any bot) while idle and acquired ones
        (the one about to be opened included) exceed ``limit``."""
        if not self._limit:
            return
        conns = self._conns
        excess = len(self._acquired) + sum(len(c) for c in conns.values()) - self._limit
        while excess > 0 and (keys := [k for k, c in conns.items() if c]):
            oldest = min(keys, key=lambda k: conns[k][0][1])  # deques: oldest first
            proto, _ = conns[oldest].popleft()
            if not conns[oldest]:
                del conns[oldest]
            proto.close()
            excess -= 1

    def _close(self, *args: Any, **kw: Any) -> Any:  # its signature varies by release
        queues, self._queues = self._queues, {}
        for queue in queues.values():
            for _, wait in queue.waiters:
                wait.cancel()
        return super()._close(*args, **kw)

    def _placeholder(self) -> ResponseHandler:
        return cast(ResponseHandler, _Place())

    def _take(self, key: ConnectionKey, proto: ResponseHandler) -> None:
        self._acquired.add(proto)
        if self._limit_per_host:
            self._acquired_per_host[key].add(proto)

    def _drop(self, key: ConnectionKey, proto: ResponseHandler) -> None:
        self._acquired.discard(proto)
        if self._limit_per_host and (held := self._acquired_per_host.get(key)) is not None:
            held.discard(proto)
            if not held:
                del self._acquired_per_host[key]


def _stale(conn: Connection | ResponseHandler) -> bool:
    """Bytes nobody asked for: parsed into its buffer, or waiting unread in its socket."""
    proto = conn.protocol if isinstance(conn, Connection) else conn
    return proto is None or proto.should_close or transport_unread(proto.transport)


def _leave(wait: Wait) -> None:
    """The client went away: its message stops waiting."""
    if not wait.done():
        wait.set_exception(ClientGone())
