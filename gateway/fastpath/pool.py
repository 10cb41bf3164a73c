"""Connections to bots: at most ``per_bot`` per ``(host, port)`` and ``total`` in all.

Places. Every connection (idle, busy or being opened) holds a place of its bot
(``upstream_connections_per_bot``) and one of the process (``upstream_connections``):
one tenant's slow bot cannot take every descriptor, and neither can a tenant pointing
its apps at many ports of a host (one per-bot cap each). Idle keep-alive connections
hold places too, so they are bounded with the rest; when every place is held, the
oldest idle connection (of any bot) is closed to make room for a new one, so keeping
them never makes a message wait.

Waiting. A message that can have no connection (its bot at its cap, or every place
held by busy connections) waits, woken by callbacks (no polling), in its bot's FIFO
queue. A place that frees (a connection ended by either side, failed, swept or closed
to make room) goes to the message that has waited longest among the bots under their
cap (bots are ordered in a heap by their first waiter's arrival): a bot at its own cap
blocks no one behind it, and one tenant's many bots cannot starve another's. A
connection released after a clean keep-alive response (reading again, if its client's
slowness had paused it) goes to its bot's first waiter, unless another bot's message
has waited longer: then it is closed and its place is that message's. The wait counts
toward ``upstream_connect_timeout_s``: the whole of waiting, resolving and connecting
ends with :class:`ConnectTimeout` at that deadline (answered and refunded as a connect
timeout). A waiter whose client goes away (:class:`ClientGone`: its connection lost; a
half-close is no leaving, see docs/design.md) leaves the queue and never gets a
connection; what was handed to it in the same loop pass is passed on. Connections are
opened by :func:`~gateway.fastpath.dial.dial` under the egress policy (names looked up
by :mod:`meter.accounts.names`, within the tenant's share of lookups).

Tenants. Before it asks for a connection, a message takes a place of its tenant's share
(:attr:`Pool.shares`, :mod:`gateway.tenant_share`; in :mod:`.dispatch`), within the same
deadline; its connection holds it (``ticket``) until released, closed or lost.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import itertools
from typing import Protocol

from config.settings import share
from gateway.egress import GuardedResolver, Verdicts
from gateway.fastpath.dial import dial
from gateway.fastpath.upstream import ConnectFailed, ConnectTimeout, UpstreamConnection
from gateway.tenant_share import Shares
from gateway.tenant_share import Wait as ShareWait
from gateway.waiters import Waiters
from meter.accounts.egress import Policy

IDLE_S = 30.0  # an idle connection is closed after this long (aiohttp's keepalive_timeout)
Key = tuple[str, int]
Wait = asyncio.Future[UpstreamConnection | None]  # a connection, or None: a place to open one


class ClientGone(Exception):
    """The client went away while its message waited for a bot connection."""


class Waiter(Protocol):
    """The message waiting (:class:`gateway.fastpath.exchange.Exchange`): told of its
    wait, so that its client going away can end it (with :class:`ClientGone`)."""

    def waiting(self, wait: Wait | ShareWait | None) -> None: ...


class _Bot(Waiters[UpstreamConnection | None]):
    """One ``(host, port)``: its idle connections, how many it holds, who waits."""

    __slots__ = ("count", "idle", "key", "listed")

    def __init__(self, key: Key) -> None:
        super().__init__()
        self.key = key
        self.idle: list[UpstreamConnection] = []
        self.count = 0  # connections open or being opened, idle ones included
        self.listed = False  # in the pool's heap of bots that may take a freed place


class Pool:
    """Connections per ``(host, port)``, bounded in all; see the module."""

    def __init__(
        self,
        policy: Policy,
        *,
        connect_timeout: float,
        per_bot: int,
        total: int,
        shares: Shares | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.verdicts = Verdicts(policy)
        self.per_bot = per_bot
        self.total = total
        self.shares = shares or Shares(per_bot=share(per_bot), total=share(total))
        self.count = 0  # places held, all bots together
        self._resolver = GuardedResolver(policy)
        self._connect_timeout = connect_timeout
        self._bots: dict[Key, _Bot] = {}
        self._idle: dict[UpstreamConnection, _Bot] = {}  # every idle connection, oldest first
        self._ready: list[tuple[int, _Bot]] = []  # heap: (first waiter's arrival, bot)
        self._arrivals = itertools.count()
        self._closed = False

    def deadline(self) -> float:
        """When a message asking for a connection now must have it."""
        return self.loop.time() + self._connect_timeout

    async def acquire(
        self,
        host: str,
        port: int,
        waiter: Waiter,
        deadline: float | None = None,
        tenant: str | None = None,
    ) -> UpstreamConnection:
        """An idle connection, else a new one, else the first one released or whose place
        frees, by ``deadline`` (``tenant``'s lookup too); :class:`UpstreamForbidden`,
        :class:`ConnectTimeout`, :class:`ConnectFailed` or :class:`ClientGone` if none."""
        if self._closed:
            raise ConnectFailed("the gateway is stopping")
        key = (host, port)
        deadline = self.deadline() if deadline is None else deadline
        while True:
            bot = self._bots.get(key)
            if bot is None:
                bot = self._bots[key] = _Bot(key)
            conn = self._pop_idle(bot)
            if conn is not None:
                return conn
            if bot.count < self.per_bot:
                if self.count >= self.total and self._idle:
                    self._evict(*next(iter(self._idle.items())))  # the oldest idle
                if self.count < self.total:
                    bot.count += 1  # a place for the connection about to be opened
                    self.count += 1
                    break
            handed = await self._wait(bot, deadline, waiter)
            if handed is None:
                break  # a place was kept for this message
            if handed.reusable():
                return handed
            # ended between its release and now: its end freed its place; again
        try:
            new = functools.partial(UpstreamConnection, self, key)
            conn = await dial(self.loop, self._resolver, key, deadline, new, tenant)
        except BaseException:
            self._freed(bot)
            raise
        conn.counted = True
        return conn

    def idle(self, host: str, port: int) -> UpstreamConnection | None:
        """An idle connection to the bot if one is alive, else None (:meth:`acquire`):
        no coroutine for the common case."""
        bot = self._bots.get((host, port))
        return None if bot is None or self._closed else self._pop_idle(bot)

    def _pop_idle(self, bot: _Bot) -> UpstreamConnection | None:
        while bot.idle:
            conn = bot.idle.pop()
            del self._idle[conn]
            if conn.reusable():
                return conn
        return None

    async def _wait(self, bot: _Bot, deadline: float, waiter: Waiter) -> UpstreamConnection | None:
        wait: Wait = self.loop.create_future()
        bot.waiters.append((next(self._arrivals), wait))
        if bot.count < self.per_bot:
            self._list(bot)  # waits for a place of the process only
        timer = self.loop.call_at(deadline, expire, wait)
        waiter.waiting(wait)
        try:
            return await wait
        except BaseException:
            if wait.done() and not wait.cancelled() and wait.exception() is None:
                self._pass_on(bot, wait.result())  # woken in the pass it gave up in
            else:
                bot.left()
                self._forget(bot)
            raise
        finally:
            timer.cancel()
            waiter.waiting(None)

    def _list(self, bot: _Bot) -> None:
        """``bot`` is under its cap: its first waiter may take a place that frees."""
        if not bot.listed and (head := bot.head()) is not None:
            bot.listed = True
            heapq.heappush(self._ready, (head[0], bot))

    def _first(self) -> _Bot | None:
        """The bot under its cap whose first waiter has waited longest (stale entries of
        the heap, whose bot's first waiter or count changed, are fixed as met)."""
        ready = self._ready
        while ready:
            arrival, bot = ready[0]
            head = bot.head()
            if head is None or bot.count >= self.per_bot:
                heapq.heappop(ready)
                bot.listed = False
            elif head[0] != arrival:
                heapq.heapreplace(ready, (head[0], bot))
            else:
                return bot
        return None

    def _freed(self, bot: _Bot) -> None:
        """A place of ``bot`` is free: the longest waiter's that can take it, else given up."""
        bot.count -= 1
        self.count -= 1
        self._list(bot)
        while self.count < self.total and (first := self._first()) is not None:
            _, wait = first.waiters.popleft()  # its head: live (_first)
            first.count += 1  # the place stays counted: the waiter opens in it
            self.count += 1
            wait.set_result(None)
        self._forget(bot)

    def _forget(self, bot: _Bot) -> None:
        """No state kept for a bot no longer called."""
        gone = bot.count <= 0 and not bot.idle and bot.head() is None
        if gone and self._bots.get(bot.key) is bot:
            del self._bots[bot.key]

    def _evict(self, conn: UpstreamConnection, bot: _Bot) -> None:
        """Close ``conn`` (idle, or just released) and free its place now."""
        conn.counted = False  # its end, later, frees nothing more
        if self._idle.pop(conn, None) is not None:
            bot.idle.remove(conn)
        conn.close()
        self._freed(bot)

    def _pass_on(self, bot: _Bot, got: UpstreamConnection | None) -> None:
        if got is None:
            self._freed(bot)
        else:
            self.release(got)

    def release(self, conn: UpstreamConnection) -> None:
        """``conn`` answered cleanly and may be kept alive: to the first waiter of its
        bot, else (another bot's message waited longer) closed for that one, else idle."""
        conn.free_ticket()  # its message is done with it
        if not _alive(conn):
            return  # its end frees its place (lost)
        conn.resume()  # paused for a slow client as its answer ended: read again
        bot = self._bots.get(conn.key)
        if bot is None or self._closed:
            conn.close()
            return
        own = bot.head() if bot.waiters else None  # no call without waiters (most messages)
        first = self._first() if self._ready else None
        if own is not None and (first is None or own[0] <= first.waiters[0][0]):
            bot.waiters.popleft()
            own[1].set_result(conn)
        elif first is not None:
            self._evict(conn, bot)
        else:
            conn.idle_since = self.loop.time()
            bot.idle.append(conn)
            self._idle[conn] = bot

    def lost(self, conn: UpstreamConnection) -> None:
        """A counted connection ended: its place frees."""
        bot = self._bots.get(conn.key)
        if bot is None:
            return
        if self._idle.pop(conn, None) is not None:
            bot.idle.remove(conn)
        self._freed(bot)

    def sweep(self, now: float) -> None:
        """Close connections idle for more than ``IDLE_S``."""
        for conn, bot in list(self._idle.items()):
            if now - conn.idle_since <= IDLE_S:
                break  # the rest were idle for less (oldest first)
            self._evict(conn, bot)

    def close(self) -> None:
        """Shutting down: waiters refused (ConnectFailed), idle connections closed."""
        self._closed = True
        self.shares.refuse(lambda: ConnectFailed("the gateway is stopping"))
        for bot in list(self._bots.values()):
            while (head := bot.head()) is not None:
                bot.waiters.popleft()
                head[1].set_exception(ConnectFailed("the gateway is stopping"))
        self._ready.clear()
        for conn, bot in list(self._idle.items()):
            self._evict(conn, bot)


def _alive(conn: UpstreamConnection) -> bool:
    transport = conn.transport
    return not conn.closed and transport is not None and not transport.is_closing()


def expire(wait: Wait | ShareWait) -> None:
    if not wait.done():
        wait.set_exception(ConnectTimeout("no connection to the bot came free in time"))
