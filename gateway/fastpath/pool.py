"""Connections to bots, at most ``per_bot`` per ``(host, port)``, under the egress policy.

A bot's connections (idle, busy and being opened) never pass ``per_bot``
(``upstream_connections_per_bot``): one tenant's slow bot cannot take every descriptor
of the process, and a flood towards it doubles no one's file descriptors past that.
A message that finds its bot at the cap waits in FIFO order, woken by callbacks (no
polling): a connection released after a clean keep-alive response is handed to the
first waiter as it is, and a connection that ends (closed by either side, failed, swept)
hands its place to the first waiter, which opens a new one. The wait counts toward
``upstream_connect_timeout_s``: the whole of waiting, resolving and connecting ends
with :class:`ConnectTimeout` at that deadline (answered and refunded as a connect
timeout). A waiter whose client goes away (:class:`ClientGone`) leaves the queue and
never gets a connection; what was handed to it in the same loop pass is passed on.

Connections are opened by :func:`~gateway.fastpath.dial.dial`, under the egress policy.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Protocol

from gateway.egress import GuardedResolver, Verdicts
from gateway.fastpath.dial import dial
from gateway.fastpath.upstream import ConnectFailed, ConnectTimeout, UpstreamConnection
from meter.accounts.egress import Policy

IDLE_S = 30.0  # an idle connection is closed after this long (aiohttp's keepalive_timeout)
Key = tuple[str, int]
# What a waiter is woken with: a connection to use, or None: a place to open one in.
Wait = asyncio.Future[UpstreamConnection | None]


class ClientGone(Exception):
    """The client went away while its message waited for a bot connection."""


class Waiter(Protocol):
    """The message waiting (:class:`gateway.fastpath.exchange.Exchange`): told of its
    wait, so that its client going away can end it (with :class:`ClientGone`)."""

    def waiting(self, wait: Wait | None) -> None: ...


class _Bot:
    """One ``(host, port)``: its idle connections, how many it holds, who waits."""

    __slots__ = ("count", "gone", "idle", "key", "waiters")

    def __init__(self, key: Key) -> None:
        self.key = key
        self.idle: list[UpstreamConnection] = []
        self.count = 0  # connections open or being opened, idle ones included
        self.waiters: deque[Wait] = deque()
        self.gone = 0  # waiters that gave up, still in the deque (dropped lazily)

    def next_waiter(self) -> Wait | None:
        while self.waiters:
            wait = self.waiters.popleft()
            if not wait.done():
                return wait
        return None


class Pool:
    """Connections per ``(host, port)``; see the module."""

    def __init__(self, policy: Policy, *, connect_timeout: float, per_bot: int) -> None:
        self.loop = asyncio.get_running_loop()
        self.verdicts = Verdicts(policy)
        self.per_bot = per_bot
        self._resolver = GuardedResolver(policy)
        self._connect_timeout = connect_timeout
        self._bots: dict[Key, _Bot] = {}
        self._closed = False

    async def acquire(self, host: str, port: int, waiter: Waiter) -> UpstreamConnection:
        """An idle connection, else a new one, else the first one released or whose place
        frees; :class:`UpstreamForbidden`, :class:`ConnectTimeout`,
        :class:`ConnectFailed` or :class:`ClientGone` when none can be had."""
        if self._closed:
            raise ConnectFailed("the gateway is stopping")
        key = (host, port)
        deadline = self.loop.time() + self._connect_timeout
        while True:
            bot = self._bots.get(key)
            if bot is None:
                bot = self._bots[key] = _Bot(key)
            while bot.idle:
                conn = bot.idle.pop()
                if _alive(conn):
                    return conn
            if bot.count < self.per_bot:
                bot.count += 1  # a place for the connection about to be opened
                break
            handed = await self._wait(bot, deadline, waiter)
            if handed is None:
                break  # a place was kept for this message
            if _alive(handed):
                return handed
            # ended between its release and now: its end freed its place; again
        try:
            conn = await dial(
                self.loop, self._resolver, key, deadline, lambda: UpstreamConnection(self, key)
            )
        except BaseException:
            self._freed(bot)
            raise
        conn.counted = True
        return conn

    async def _wait(self, bot: _Bot, deadline: float, waiter: Waiter) -> UpstreamConnection | None:
        wait: Wait = self.loop.create_future()
        bot.waiters.append(wait)
        timer = self.loop.call_at(deadline, _expire, wait)
        waiter.waiting(wait)
        try:
            return await wait
        except BaseException:
            if wait.done() and not wait.cancelled() and wait.exception() is None:
                self._pass_on(bot, wait.result())  # woken in the pass it gave up in
            else:
                bot.gone += 1
                if bot.gone > 16 and bot.gone * 2 > len(bot.waiters):
                    bot.waiters = deque(w for w in bot.waiters if not w.done())
                    bot.gone = 0
            raise
        finally:
            timer.cancel()
            waiter.waiting(None)

    def _freed(self, bot: _Bot) -> None:
        """A place of ``bot`` is free: the first waiter's, else given up."""
        wait = bot.next_waiter()
        if wait is not None:
            wait.set_result(None)  # the place stays counted: the waiter opens in it
            return
        bot.count -= 1
        if bot.count <= 0 and not bot.idle and self._bots.get(bot.key) is bot:
            del self._bots[bot.key]  # no state kept for bots no longer called

    def _pass_on(self, bot: _Bot, got: UpstreamConnection | None) -> None:
        if got is None:
            self._freed(bot)
        else:
            self.release(got)

    def release(self, conn: UpstreamConnection) -> None:
        """``conn`` answered cleanly and may be kept alive: to the first waiter, else idle."""
        if not _alive(conn):
            return  # its end frees its place (lost)
        bot = self._bots.get(conn.key)
        if bot is None or self._closed:
            conn.close()
            return
        wait = bot.next_waiter()
        if wait is not None:
            wait.set_result(conn)
            return
        conn.idle_since = self.loop.time()
        bot.idle.append(conn)

    def lost(self, conn: UpstreamConnection) -> None:
        """A counted connection ended: its place frees."""
        bot = self._bots.get(conn.key)
        if bot is None:
            return
        if conn in bot.idle:
            bot.idle.remove(conn)
        self._freed(bot)

    def sweep(self, now: float) -> None:
        """Close connections idle for more than ``IDLE_S``."""
        for bot in list(self._bots.values()):
            idle = bot.idle
            if idle and now - idle[0].idle_since > IDLE_S:
                old = [c for c in idle if now - c.idle_since > IDLE_S]
                idle[:] = [c for c in idle if now - c.idle_since <= IDLE_S]
                for conn in old:
                    conn.close()  # its end frees its place

    def close(self) -> None:
        """Shutting down: idle connections closed, waiters refused (ConnectFailed)."""
        self._closed = True
        for bot in list(self._bots.values()):
            idle, bot.idle = bot.idle, []
            for conn in idle:
                conn.close()
            while (wait := bot.next_waiter()) is not None:
                wait.set_exception(ConnectFailed("the gateway is stopping"))


def _alive(conn: UpstreamConnection) -> bool:
    transport = conn.transport
    return not conn.closed and transport is not None and not transport.is_closing()


def _expire(wait: Wait) -> None:
    if not wait.done():
        wait.set_exception(ConnectTimeout("no connection to the bot came free in time"))
