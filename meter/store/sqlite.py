"""SQLite backend: the stdlib ``sqlite3`` on one dedicated worker thread, WAL mode.

One connection per store, used only from its own thread; an ``asyncio.Lock`` hands it
to one coroutine (or transaction) at a time, and the single-thread executor keeps
statements in submission order even when an awaiting coroutine is cancelled. Writes
take the database write lock up front (``BEGIN IMMEDIATE``), so concurrent processes
on the same file serialize instead of failing to upgrade a read lock; they wait up to
``busy_timeout_s``. ``synchronous=FULL``: a committed flush survives power loss.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar, cast

from meter.store.base import Store
from meter.store.db import Conn, Row
from meter.store.errors import BadValue, DuplicateKey, MissingReference, Rejected, StoreError
from meter.store.models import now_ms
from meter.store.schema import CREATE_MIGRATIONS_TABLE, MIGRATIONS

T = TypeVar("T")


def _guard(fn: Callable[[sqlite3.Connection], T], conn: sqlite3.Connection) -> T:
    """Run ``fn`` on the worker thread, turning sqlite3 errors into store errors."""
    try:
        return fn(conn)
    except sqlite3.IntegrityError as exc:
        text = str(exc)
        if "UNIQUE" in text or "PRIMARY KEY" in text:
            raise DuplicateKey(text) from exc
        if "FOREIGN KEY" in text:
            raise MissingReference(text) from exc
        raise Rejected(text) from exc
    except (sqlite3.DataError, sqlite3.InterfaceError, OverflowError, UnicodeError) as exc:
        # This data cannot be stored (out-of-range integer, unbindable value).
        raise BadValue(f"sqlite: {exc}") from exc
    except sqlite3.Error as exc:
        raise StoreError(f"sqlite: {exc}") from exc


def _enter_wal(conn: sqlite3.Connection, timeout_s: float) -> None:
    """Switch ``conn`` to WAL, waiting up to ``timeout_s`` for other openers.

    The switch upgrades a read lock to the write lock. Two connections doing that at
    once (processes starting together on a fresh file) would deadlock, so SQLite
    answers SQLITE_BUSY at once instead of calling the busy handler: retry it here.
    """
    deadline = time.monotonic() + timeout_s
    pause = 0.001
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            if time.monotonic() >= deadline:
                raise
        time.sleep(pause)  # on the store's own thread, never the event loop
        pause = min(pause * 2, 0.05)


class _SqliteConn(Conn):
    def __init__(self, store: SqliteStore) -> None:
        self._store = store

    async def execute(self, sql: str, *args: Any) -> int:
        return await self._store._call(lambda c: c.execute(sql, args).rowcount)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self._store._call(lambda c: c.executemany(sql, rows))

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return await self._store._call(lambda c: cast(list[Row], c.execute(sql, args).fetchall()))


class SqliteStore(Store):
    dialect = "sqlite"
    greatest = "MAX"
    least = "MIN"
    skip_locked = ""  # BEGIN IMMEDIATE already serializes writers
    for_update = ""
    for_key_share = ""

    def __init__(self, path: str, *, busy_timeout_s: float = 30.0) -> None:
        self.url = f"sqlite:///{path}"
        self.path = path
        self._busy_timeout_s = busy_timeout_s
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()
        self._connect_lock = asyncio.Lock()

    async def connect(self) -> None:
        if self._conn is not None:
            return
        async with self._connect_lock:
            if self._conn is not None:
                return
            executor = ThreadPoolExecutor(1, thread_name_prefix="creditgate-sqlite")
            try:
                loop = asyncio.get_running_loop()
                self._conn = await loop.run_in_executor(executor, self._open)
            except BaseException:
                executor.shutdown(wait=False)
                raise
            self._executor = executor

    def _open(self) -> sqlite3.Connection:
        if self.path != ":memory:":
            # Never created here: a mistyped path should say so, not grow directories.
            parent = Path(self.path).parent
            if not parent.is_dir():
                raise StoreError(f"sqlite: directory {parent} does not exist")
        try:
            conn = sqlite3.connect(self.path, timeout=self._busy_timeout_s, isolation_level=None)
            conn.row_factory = sqlite3.Row
            _enter_wal(conn, self._busy_timeout_s)
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite: cannot open {self.path}: {exc}") from exc
        return conn

    async def close(self) -> None:
        async with self._connect_lock:
            conn, executor = self._conn, self._executor
            self._conn = self._executor = None
            if conn is None or executor is None:
                return
            loop = asyncio.get_running_loop()
            async with self._lock:
                await loop.run_in_executor(executor, conn.close)
            executor.shutdown(wait=False)

    async def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn, executor = self._conn, self._executor
        if conn is None or executor is None:
            raise StoreError("sqlite store is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, _guard, fn, conn)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Conn]:
        if (pinned := self.pinned()) is not None:
            yield pinned  # inside snapshot(): its read transaction, its lock already held
            return
        await self.connect()
        async with self._lock:
            yield _SqliteConn(self)

    @asynccontextmanager
    async def read_snapshot(self) -> AsyncIterator[Conn]:
        await self.connect()
        async with self._lock:
            # A deferred transaction reads one WAL snapshot, taken at its first read.
            await self._call(lambda c: c.execute("BEGIN"))
            try:
                yield _SqliteConn(self)
            finally:
                await asyncio.shield(self._call(_rollback))

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Conn]:
        if self.pinned() is not None:
            raise StoreError("a write inside a read snapshot")
        await self.connect()
        async with self._lock:
            await self._call(lambda c: c.execute("BEGIN IMMEDIATE"))
            try:
                yield _SqliteConn(self)
                await self._call(lambda c: c.execute("COMMIT"))
            except BaseException:
                # Queued behind whatever is still running, so it runs even if we are
                # cancelled again while waiting for it.
                await asyncio.shield(self._call(_rollback))
                raise

    async def migrate(self) -> list[int]:
        applied: list[int] = []
        for step in MIGRATIONS:
            # One BEGIN IMMEDIATE per step: concurrent migrators queue on the write lock
            # and find the step recorded when their turn comes.
            async with self.transaction() as c:
                await c.execute(CREATE_MIGRATIONS_TABLE)
                if await c.fetchval(
                    "SELECT 1 FROM schema_migrations WHERE version = ?", step.version
                ):
                    continue
                for statement in step.statements(self.dialect):
                    await c.execute(statement)
                if step.then is not None:
                    await step.then(c)
                await c.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    step.version,
                    step.name,
                    now_ms(),
                )
                applied.append(step.version)
        return applied


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        conn.rollback()
