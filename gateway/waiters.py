"""Messages waiting for a connection to one bot, in arrival order: the queue both traffic
servers' pools keep per bot (:mod:`gateway.fastpath.pool`, :mod:`gateway.bot_connector`).
A waiter that gives up (its client left, its connect timeout) stays in the deque until
it reaches the head or most of the deque has given up: no search per departure."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class Waiters(Generic[T]):
    """``waiters``: ``(arrival, wait)`` pairs, oldest first; a wait is handed a ``T``."""

    __slots__ = ("gone", "waiters")

    def __init__(self) -> None:
        self.waiters: deque[tuple[int, asyncio.Future[T]]] = deque()
        self.gone = 0  # waiters that gave up, still in the deque (dropped lazily)

    def head(self) -> tuple[int, asyncio.Future[T]] | None:
        """The first waiter still waiting (those before it that gave up are dropped)."""
        waiters = self.waiters
        while waiters:
            if not waiters[0][1].done():
                return waiters[0]
            waiters.popleft()
        return None

    def left(self) -> None:
        """A waiter gave up: the deque is rebuilt once most of it has."""
        self.gone += 1
        if self.gone > 16 and self.gone * 2 > len(self.waiters):
            self.waiters = deque(w for w in self.waiters if not w[1].done())
            self.gone = 0
