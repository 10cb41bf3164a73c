"""PostgreSQL backend on an asyncpg pool.

Portable ``?`` SQL is rewritten to ``$n``. A flush writes its usage and session rows
with one ``INSERT ... SELECT FROM unnest($1::text[], ...) ON CONFLICT DO UPDATE`` each
(one round trip per table, whatever the row count); rows arrive pre-merged and sorted
by key, so concurrent flushes lock rows in the same order. Migrations run under a
session advisory lock, so concurrent ``migrate()`` calls from any number of processes
apply each step once.

A migration step waits at most ``lock_timeout_s`` for each table lock it takes (an
``ALTER``, a rebuild's ``LOCK TABLE``): while it waits in PostgreSQL's lock queue, every
later query on that table queues behind it, so a step stuck behind a long transaction
(an export, an operator's open ``psql``) would stall the gateways' traffic on that table
for as long as it waited. It gives up instead, rolls the step back and tries again, up
to ``lock_tries`` times, then fails naming the step.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any, cast

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from meter.store.base import Store
from meter.store.db import Conn, Row
from meter.store.errors import (
    BadValue,
    DuplicateKey,
    MissingReference,
    Rejected,
    Retryable,
    StoreError,
)
from meter.store.flush_merge import (
    SESSION_COLUMNS,
    USAGE_COLUMNS,
    session_upsert_tail,
    usage_upsert_tail,
)
from meter.store.models import now_ms
from meter.store.schema import CREATE_MIGRATIONS_TABLE, MIGRATIONS, Migration

_MIGRATION_LOCK = 0x6372656469746761  # "creditga"
_USAGE_TYPES = ("text", "bigint", "text", "text", "text", "text")  # then bigint counters
_SESSION_TYPES = ("text", "text", "text", "text", "text", "text")  # then bigint numbers


@functools.lru_cache(maxsize=2048)
def to_pg(sql: str) -> str:
    """Rewrite ``?`` placeholders (outside string literals) to ``$1, $2, ...``."""
    out: list[str] = []
    n = 0
    quoted = False
    for ch in sql:
        if ch == "'":
            quoted = not quoted
        if ch == "?" and not quoted:
            n += 1
            out.append(f"${n}")
        else:
            out.append(ch)
    return "".join(out)


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except asyncpg.UniqueViolationError as exc:
        raise DuplicateKey(str(exc)) from exc
    except asyncpg.ForeignKeyViolationError as exc:
        raise MissingReference(str(exc)) from exc
    except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError) as exc:
        raise Retryable(str(exc)) from exc
    except asyncpg.DataError as exc:
        # SQLSTATE class 22: a value the database cannot hold (e.g. a NUL in text).
        raise BadValue(f"postgresql: {exc}") from exc
    except asyncpg.IntegrityConstraintViolationError as exc:
        # SQLSTATE class 23 (but unique and foreign keys): this data, not the database.
        raise Rejected(f"postgresql: {exc}") from exc
    except asyncpg.PostgresError as exc:
        raise StoreError(f"postgresql: {exc}") from exc
    except asyncpg.InterfaceError as exc:
        if isinstance(exc, ValueError):  # asyncpg could not encode an argument
            raise BadValue(f"postgresql: {exc}") from exc
        raise StoreError(f"postgresql unreachable: {exc}") from exc
    except OSError as exc:
        raise StoreError(f"postgresql unreachable: {exc}") from exc


def _rowcount(status: str) -> int:
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


class _PgConn(Conn):
    def __init__(self, raw: asyncpg.Connection | PoolConnectionProxy) -> None:
        self._raw = raw

    async def execute(self, sql: str, *args: Any) -> int:
        with _errors():
            return _rowcount(await self._raw.execute(to_pg(sql), *args))

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with _errors():
            await self._raw.executemany(to_pg(sql), rows)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        with _errors():
            return cast(list[Row], await self._raw.fetch(to_pg(sql), *args))


def _unnest_insert(table: str, columns: Sequence[str], types: Sequence[str]) -> str:
    arrays = ", ".join(f"${i}::{t}[]" for i, t in enumerate(types, 1))
    return f"INSERT INTO {table} ({', '.join(columns)}) SELECT * FROM unnest({arrays}) "


class PostgresStore(Store):
    dialect = "postgresql"
    greatest = "GREATEST"
    least = "LEAST"
    skip_locked = " FOR UPDATE SKIP LOCKED"
    for_update = " FOR UPDATE"
    for_key_share = " FOR KEY SHARE"

    def __init__(
        self,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        command_timeout: float = 60.0,
        lock_timeout_s: float = 1.0,
        lock_tries: int = 5,
    ) -> None:
        self.url = dsn
        self._lock_timeout_ms = max(1, round(lock_timeout_s * 1000))
        self._lock_tries = lock_tries
        self._pool_args: dict[str, Any] = {
            "min_size": min_size,
            "max_size": max_size,
            "command_timeout": command_timeout,
        }
        self._pool: asyncpg.Pool | None = None
        self._connect_lock = asyncio.Lock()
        n_usage = len(USAGE_COLUMNS) - len(_USAGE_TYPES)
        n_session = len(SESSION_COLUMNS) - len(_SESSION_TYPES)
        self._usage_sql = (
            _unnest_insert("usage_buckets", USAGE_COLUMNS, (*_USAGE_TYPES, *["bigint"] * n_usage))
            + usage_upsert_tail()
        )
        self._session_sql = _unnest_insert(
            "billing_sessions", SESSION_COLUMNS, (*_SESSION_TYPES, *["bigint"] * n_session)
        ) + session_upsert_tail(self.greatest, self.least)

    async def _get_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            await self.connect()
        assert self._pool is not None
        return self._pool

    async def connect(self) -> None:
        if self._pool is not None:
            return
        async with self._connect_lock:
            if self._pool is None:
                with _errors():
                    self._pool = await asyncpg.create_pool(self.url, **self._pool_args)

    async def close(self) -> None:
        async with self._connect_lock:
            pool, self._pool = self._pool, None
            if pool is not None:
                await pool.close()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Conn]:
        if (pinned := self.pinned()) is not None:
            yield pinned  # inside snapshot(): its transaction
            return
        pool = await self._get_pool()
        with _errors():
            async with pool.acquire() as raw:
                yield _PgConn(raw)

    @asynccontextmanager
    async def read_snapshot(self) -> AsyncIterator[Conn]:
        pool = await self._get_pool()
        with _errors():
            async with (
                pool.acquire() as raw,
                raw.transaction(isolation="repeatable_read", readonly=True),
            ):
                yield _PgConn(raw)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Conn]:
        if self.pinned() is not None:
            raise StoreError("a write inside a read snapshot")
        pool = await self._get_pool()
        with _errors():
            async with pool.acquire() as raw, raw.transaction():
                yield _PgConn(raw)

    async def _upsert_usage(self, c: Conn, rows: list[tuple[Any, ...]]) -> None:
        await c.execute(self._usage_sql, *(list(col) for col in zip(*rows, strict=True)))

    async def _upsert_sessions(self, c: Conn, rows: list[tuple[Any, ...]]) -> None:
        await c.execute(self._session_sql, *(list(col) for col in zip(*rows, strict=True)))

    async def migrate(self) -> list[int]:
        pool = await self._get_pool()
        applied: list[int] = []
        with _errors():
            async with pool.acquire() as raw:
                await raw.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
                try:
                    await raw.execute(CREATE_MIGRATIONS_TABLE)
                    done = {
                        r["version"]
                        for r in await raw.fetch("SELECT version FROM schema_migrations")
                    }
                    for step in MIGRATIONS:
                        if step.version not in done:
                            await self._apply(raw, step)
                            applied.append(step.version)
                finally:
                    await raw.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
        return applied

    async def _apply(self, raw: PoolConnectionProxy, step: Migration) -> None:
        """One step in one transaction, retried while a table lock is not granted in time."""
        for attempt in range(1, self._lock_tries + 1):
            try:
                async with raw.transaction():
                    # SET LOCAL: the step's own transaction only, not the pooled session.
                    await raw.execute(f"SET LOCAL lock_timeout = {self._lock_timeout_ms}")
                    for statement in step.statements(self.dialect):
                        await raw.execute(statement)
                    if step.then is not None:
                        await step.then(_PgConn(raw))
                    await raw.execute(
                        "INSERT INTO schema_migrations (version, name, applied_at) "
                        "VALUES ($1, $2, $3)",
                        step.version,
                        step.name,
                        now_ms(),
                    )
                return
            except (asyncpg.LockNotAvailableError, StoreError) as exc:
                # A ``then`` step's query comes back wrapped (``_PgConn``): the cause tells.
                if not isinstance(exc, asyncpg.LockNotAvailableError) and not isinstance(
                    exc.__cause__, asyncpg.LockNotAvailableError
                ):
                    raise
                if attempt < self._lock_tries:
                    await asyncio.sleep(min(1.0, 0.05 * 2**attempt))
        raise StoreError(
            f"migration {step.version} ({step.name}) waited {self._lock_tries} times "
            f"{self._lock_timeout_ms} ms for a table lock held by another transaction "
            "(see pg_stat_activity) and gave up, so as not to stall traffic; "
            "nothing of it was applied: run `creditgate migrate` again"
        )
