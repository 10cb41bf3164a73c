"""Hold a store's write transaction inside itself, before one statement, to force an
interleaving of two transactions (a lock order, a read made under a lock) without
timing: ``held_statement`` pauses the first statement of a ``store.transaction()``
that starts with a given prefix until released, the locks taken before it held;
``lock_waiters`` counts the PostgreSQL sessions of this database waiting for a lock,
so a test knows another transaction is queued behind the held one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from meter.store import Store
from meter.store.db import Conn, Row


class _Paused(Conn):
    """A transaction's connection whose first statement starting ``prefix`` waits."""

    def __init__(self, raw: Conn, prefix: str, reached: asyncio.Event, go: asyncio.Event):
        self._raw, self._prefix, self._reached, self._go = raw, prefix, reached, go

    async def _gate(self, sql: str) -> None:
        if not self._reached.is_set() and sql.lstrip().startswith(self._prefix):
            self._reached.set()
            await self._go.wait()

    async def execute(self, sql: str, *args: Any) -> int:
        await self._gate(sql)
        return await self._raw.execute(sql, *args)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self._gate(sql)
        await self._raw.executemany(sql, rows)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        await self._gate(sql)
        return await self._raw.fetch(sql, *args)


@asynccontextmanager
async def held_statement(
    store: Store, prefix: str
) -> AsyncIterator[tuple[Callable[[], Awaitable[None]], Callable[[], None]]]:
    """Hold the first statement starting with ``prefix`` run in any ``store.transaction()``
    until released; yields ``(reached, release)``: a waiter that returns once it is held,
    and the release (also done on leaving the block)."""
    real = store.transaction
    reached, go = asyncio.Event(), asyncio.Event()

    @asynccontextmanager
    async def paused() -> AsyncIterator[Conn]:
        async with real() as c:
            yield _Paused(c, prefix, reached, go)

    store.transaction = paused  # type: ignore[method-assign]
    try:
        yield reached.wait, go.set
    finally:
        go.set()
        store.transaction = real  # type: ignore[method-assign]


async def lock_waiters(store: Store) -> int:
    """The sessions of the store's PostgreSQL database now waiting for a lock."""
    async with store.connection() as c:
        n = await c.fetchval(
            "SELECT COUNT(*) AS n FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
    return int(n)


async def until_waiting(store: Store, task: asyncio.Future[Any], n: int = 1) -> None:
    """Return once ``n`` sessions wait for a lock (``task``, the one expected to queue,
    must not end instead: its answer is shown). Polls what the server reports; the
    pause between polls only spares the CPU (never a bound on anything)."""
    while await lock_waiters(store) < n:
        assert not task.done(), await task
        await asyncio.sleep(0.01)
