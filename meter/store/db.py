"""What every backend provides: connections that run portable SQL.

SQL in ``meter.store`` is written once, with ``?`` placeholders, in the subset that
SQLite >= 3.35 and PostgreSQL >= 13 share (``ON CONFLICT ... DO UPDATE``, ``RETURNING``,
row values, partial indexes). The PostgreSQL connection rewrites ``?`` to ``$n``.
The only dialect-specific pieces are the functions named by :attr:`StoreCore.greatest`
and :attr:`StoreCore.least`, the row locks (:attr:`StoreCore.skip_locked`, ``for_update``,
``for_key_share``), the migration lock and the bulk upserts of a flush.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from contextvars import ContextVar
from functools import cache
from types import TracebackType
from typing import Any, ClassVar, Protocol, Self, TypeVar

import orjson

from meter.store.errors import Retryable

log = logging.getLogger(__name__)
T = TypeVar("T")
# The read snapshots open in this task: (store, its snapshot connection).
_SNAPSHOTS: ContextVar[tuple[tuple[object, Conn], ...]] = ContextVar("snapshots", default=())


class Row(Protocol):
    """A result row addressable by column name (``sqlite3.Row``, ``asyncpg.Record``)."""

    def __getitem__(self, key: str | int, /) -> Any: ...


class Conn(ABC):
    """One connection (inside a transaction when obtained from ``transaction()``)."""

    @abstractmethod
    async def execute(self, sql: str, *args: Any) -> int:
        """Run one statement; return the number of rows it changed."""

    @abstractmethod
    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run one statement for each parameter tuple."""

    @abstractmethod
    async def fetch(self, sql: str, *args: Any) -> list[Row]: ...

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        rows = await self.fetch(sql, *args)
        return rows[0] if rows else None

    async def fetchval(self, sql: str, *args: Any) -> Any:
        rows = await self.fetch(sql, *args)
        return rows[0][0] if rows else None


def dumps(value: Any) -> str | None:
    """A JSON column value (``None`` stays SQL NULL)."""
    return None if value is None else orjson.dumps(value).decode()


def loads(value: Any) -> Any:
    return None if value is None else orjson.loads(value)


@cache
def names(columns: str) -> tuple[str, ...]:
    """The names of a comma-separated column list."""
    return tuple(c.strip() for c in columns.split(","))


def marks(columns: str) -> str:
    """One ``?`` per column of ``columns``."""
    return ", ".join("?" for _ in names(columns))


def insert_sql(table: str, columns: str) -> str:
    """An INSERT of one row of ``columns`` into ``table``."""
    return f"INSERT INTO {table} ({columns}) VALUES ({marks(columns)})"


def row_as(cls: Callable[..., T], r: Row, columns: str, **computed: Any) -> T:
    """A record whose fields are the row's ``columns`` by name; ``computed`` ones are
    given instead of their raw column (JSON text decoded, SQLite's 0/1 made a bool)."""
    return cls(**{c: r[c] for c in names(columns) if c not in computed}, **computed)


def values(record: Any, columns: str, **computed: Any) -> list[Any]:
    """The parameters of an INSERT of ``columns``: the record's attributes of those names,
    ``computed`` ones instead (a value encoded as JSON)."""
    return [computed[c] if c in computed else getattr(record, c) for c in names(columns)]


class StoreCore(ABC):
    """Connection management shared by the store's parts; backends implement it."""

    dialect: ClassVar[str]
    greatest: ClassVar[str]  # two-argument max() as a scalar SQL function
    least: ClassVar[str]
    skip_locked: ClassVar[str]  # appended to a SELECT that claims rows for an update
    for_update: ClassVar[str]  # appended to a SELECT that locks its row until the commit
    for_key_share: ClassVar[str]  # ... that holds its row's key (as a foreign key check)
    url: str

    @abstractmethod
    def transaction(self) -> AbstractAsyncContextManager[Conn]:
        """A write transaction (on SQLite it holds the database write lock from the start)."""

    @abstractmethod
    def connection(self) -> AbstractAsyncContextManager[Conn]:
        """An autocommit connection for reads and single statements."""

    @abstractmethod
    def read_snapshot(self) -> AbstractAsyncContextManager[Conn]:
        """A read-only transaction whose view of the database is fixed by its first read."""

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[None]:
        """One consistent view of the whole database, fixed by the first read inside the
        block: every read of this store made by this task inside the block sees it,
        whatever other connections commit meanwhile (REPEATABLE READ on PostgreSQL, one
        WAL read transaction on SQLite, where it holds the store's connection: other users
        of the same store object wait). Reads only, one at a time; a nested block shares
        the outer view.
        """
        if self.pinned() is not None:
            yield
            return
        async with self.read_snapshot() as conn:
            token = _SNAPSHOTS.set((*_SNAPSHOTS.get(), (self, conn)))
            try:
                yield
            finally:
                _SNAPSHOTS.reset(token)

    def pinned(self) -> Conn | None:
        """The connection of the :meth:`snapshot` this task has open on this store."""
        for store, conn in _SNAPSHOTS.get():
            if store is self:
                return conn
        return None

    @abstractmethod
    async def connect(self) -> None:
        """Open the connection(s); called lazily by the first operation."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def migrate(self) -> list[int]:
        """Apply missing migration steps in order; return the versions applied now."""

    async def ping(self, wait_s: float = 5.0) -> bool:
        """``True`` when the database answers a trivial query within ``wait_s`` seconds."""
        try:
            async with asyncio.timeout(wait_s), self.connection() as conn:
                return bool(await conn.fetchval("SELECT 1 AS ok") == 1)
        except Exception:
            log.debug("store ping failed", exc_info=True)
            return False

    async def schema_version(self) -> int:
        """The highest applied migration (0 on an empty database)."""
        async with self.connection() as conn:
            exists = await conn.fetchval(_TABLE_EXISTS[self.dialect])
            if not exists:
                return 0
            return int(await conn.fetchval("SELECT MAX(version) AS v FROM schema_migrations") or 0)

    async def insert(self, table: str, columns: str, record: Any, **computed: Any) -> None:
        """Insert ``record`` as one row of ``table`` (its :func:`values` of ``columns``)."""
        async with self.connection() as c:
            await c.execute(insert_sql(table, columns), *values(record, columns, **computed))

    async def insert_capped(
        self,
        table: str,
        columns: str,
        record: Any,
        *,
        owner: tuple[str, str],
        count: str,
        args: Sequence[Any],
        cap: int,
        **computed: Any,
    ) -> bool:
        """Insert ``record`` unless ``count`` (a ``SELECT COUNT(*)`` with ``args``) already
        finds ``cap`` rows; whether it was inserted. Count and insert
        are one step: the owner's row (``(table, id)``) is locked first, so concurrent
        inserts for one owner queue instead of all seeing room (PostgreSQL: ``FOR
        UPDATE``; SQLite: the transaction holds the write lock from the start)."""
        lock = f"SELECT id FROM {owner[0]} WHERE id = ?{self.for_update}"
        async with self.transaction() as c:
            await c.fetch(lock, owner[1])
            if int(await c.fetchval(count, *args) or 0) >= cap:
                return False
            await c.execute(insert_sql(table, columns), *values(record, columns, **computed))
        return True

    async def one(self, read: Callable[[Row], T], sql: str, *args: Any) -> T | None:
        """The record of the row ``sql`` finds (None when none)."""
        async with self.connection() as c:
            r = await c.fetchrow(sql, *args)
        return read(r) if r else None

    async def many(self, read: Callable[[Row], T], sql: str, *args: Any) -> list[T]:
        """The records of every row ``sql`` finds."""
        async with self.connection() as c:
            rows = await c.fetch(sql, *args)
        return [read(r) for r in rows]

    async def changed(self, sql: str, *args: Any) -> bool:
        """Run one write statement; whether it changed a row."""
        async with self.connection() as c:
            n = await c.execute(sql, *args)
        return n > 0

    async def page(
        self,
        select: str,
        args: Sequence[Any],
        key: Sequence[str],
        after: Sequence[Any] | None,
        limit: int,
        *,
        desc: bool = False,
    ) -> list[Row]:
        """Up to ``limit`` rows of ``select`` (a ``SELECT ... WHERE ...``) in ``key`` order
        (descending with ``desc``) that come after the key ``after``: a cursor, so rows
        added meanwhile never shift a page."""
        if after is not None:
            cols, marks = _tuple(key), _tuple(["?"] * len(key))
            select += f" AND {cols} {'<' if desc else '>'} {marks}"
            args = [*args, *after]
        order = ", ".join(f"{k} DESC" if desc else k for k in key)
        async with self.connection() as c:
            return await c.fetch(f"{select} ORDER BY {order} LIMIT ?", *args, limit)

    async def keyset(
        self, select: str, args: Sequence[Any], key: Sequence[str], page: int
    ) -> AsyncGenerator[Row, None]:
        """Every row of ``select`` in ``key`` order, read :meth:`page` by page: a large
        read neither holds a transaction nor loads everything in memory."""
        after: tuple[Any, ...] | None = None
        while True:
            rows = await self.page(select, args, key, after, page)
            for r in rows:
                yield r
            if len(rows) < page:
                return
            after = tuple(rows[-1][k] for k in key)

    async def _retry(self, fn: Callable[[], Awaitable[T]], attempts: int = 5) -> T:
        """Run ``fn`` again when it lost a deadlock or serialization race."""
        for attempt in range(attempts):
            try:
                return await fn()
            except Retryable:
                if attempt == attempts - 1:
                    raise
                await asyncio.sleep(0.01 * (attempt + 1))
        raise AssertionError("unreachable")

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


def one_column(after: Any) -> tuple[Any] | None:
    """A one-column cursor as the key :meth:`StoreCore.page` takes (None: from the start)."""
    return None if after is None else (after,)


def _tuple(items: Sequence[str]) -> str:
    """A SQL row value of ``items``, or the one item alone."""
    return items[0] if len(items) == 1 else f"({', '.join(items)})"


_TABLE_EXISTS = {
    "sqlite": "SELECT 1 AS x FROM sqlite_master WHERE name = 'schema_migrations'",
    "postgresql": "SELECT to_regclass('schema_migrations') IS NOT NULL AS x",
}
