"""The credit ledger (every grant, lapse, top-up and adjustment) and the audit log."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from meter.store.db import Conn, Row, StoreCore, dumps, loads, one_column, row_as
from meter.store.models import LEDGER_KINDS, POOLS, AuditEntry, LedgerEntry, PoolTotals, now_ms

_LEDGER = "id, workspace_id, app_id, kind, pool, amount, reference, created_at, detail"
_INSERT = (
    "INSERT INTO ledger (workspace_id, app_id, kind, pool, amount, reference, created_at, detail) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (workspace_id, reference) DO NOTHING"
)


def ledger_params(e: LedgerEntry) -> tuple[Any, ...]:
    """Validated insert parameters of one entry."""
    if e.kind not in LEDGER_KINDS:
        raise ValueError(f"unknown ledger kind {e.kind!r}")
    if e.resolved_pool not in POOLS:
        raise ValueError(f"unknown pool {e.pool!r}")
    if not e.reference:
        raise ValueError("a ledger entry needs a reference")
    return (
        e.workspace_id,
        e.app_id,
        e.kind,
        e.resolved_pool,
        int(e.amount),
        e.reference,
        e.created_at,
        dumps(e.detail or {}),
    )


async def insert_ledger_entry(c: Conn, entry: LedgerEntry) -> bool:
    """Insert unless ``(workspace, reference)`` exists; ``True`` when inserted."""
    return await c.execute(_INSERT, *ledger_params(entry)) > 0


async def insert_ledger_entries(c: Conn, entries: Sequence[LedgerEntry]) -> None:
    if entries:
        await c.executemany(_INSERT, [ledger_params(e) for e in entries])


def _entry(r: Row) -> LedgerEntry:
    return row_as(LedgerEntry, r, _LEDGER, detail=loads(r["detail"]) or {})


class Ledger(StoreCore):
    """Ledger entries are idempotent by ``(workspace_id, reference)``."""

    async def add_ledger_entry(self, entry: LedgerEntry) -> bool:
        """Record a credit movement; ``False`` (a no-op) if its reference was seen before."""
        async with self.connection() as c:
            return await insert_ledger_entry(c, entry)

    async def get_ledger_entry(self, workspace_id: str, reference: str) -> LedgerEntry | None:
        return await self.one(
            _entry,
            f"SELECT {_LEDGER} FROM ledger WHERE workspace_id = ? AND reference = ?",
            workspace_id,
            reference,
        )

    async def ledger_entries(
        self, workspace_id: str, *, kind: str | None = None, app_id: str | None = None
    ) -> list[LedgerEntry]:
        """The workspace's entries in insertion order, optionally of one kind or app."""
        sql = f"SELECT {_LEDGER} FROM ledger WHERE workspace_id = ?"
        args: list[Any] = [workspace_id]
        if kind is not None:
            sql += " AND kind = ?"
            args.append(kind)
        if app_id is not None:
            sql += " AND app_id = ?"
            args.append(app_id)
        return await self.many(_entry, sql + " ORDER BY id", *args)

    async def ledger_page(
        self, workspace_id: str, *, before_id: int | None = None, limit: int = 50
    ) -> list[LedgerEntry]:
        """Up to ``limit`` entries, newest first, older than entry ``before_id`` if given
        (a cursor: entries added meanwhile never shift a page)."""
        sql = f"SELECT {_LEDGER} FROM ledger WHERE workspace_id = ?"
        before = one_column(before_id)
        rows = await self.page(sql, [workspace_id], ("id",), before, limit, desc=True)
        return [_entry(r) for r in rows]

    async def ledger_balance(self, workspace_id: str) -> PoolTotals:
        """Sum of the ledger per pool: ``free``, ``shared`` (paid, no app) and per-app paid.

        This is what was credited (grants minus lapses, plus adjustments); subtract
        :meth:`usage_spent` for what is left.
        """
        async with self.connection() as c:
            rows = await c.fetch(
                "SELECT pool, app_id, CAST(SUM(amount) AS BIGINT) AS total FROM ledger "
                "WHERE workspace_id = ? GROUP BY pool, app_id",
                workspace_id,
            )
        free = shared = 0
        apps: dict[str, int] = {}
        for r in rows:
            total = int(r["total"])
            if r["pool"] == "free":
                free += total
            elif r["app_id"] is None:
                shared += total
            else:
                apps[r["app_id"]] = apps.get(r["app_id"], 0) + total
        return PoolTotals(free=free, shared=shared, apps=apps)

    # ------------------------------------------------------------------ audit

    async def add_audit(
        self,
        actor: str,
        action: str,
        target: str,
        before: Any = None,
        after: Any = None,
        *,
        at: int | None = None,
    ) -> int:
        """Append to the audit log; return the entry id."""
        async with self.connection() as c:
            new_id = await c.fetchval(
                "INSERT INTO audit_log (at, actor, action, target, before, after) "
                "VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                now_ms() if at is None else at,
                actor,
                action,
                target,
                dumps(before),
                dumps(after),
            )
        return int(new_id)

    async def list_audit(self, *, target: str | None = None, limit: int = 100) -> list[AuditEntry]:
        """Newest audit entries first, optionally for one target."""
        sql = "SELECT id, at, actor, action, target, before, after FROM audit_log"
        args: list[Any] = []
        if target is not None:
            sql += " WHERE target = ?"
            args.append(target)
        async with self.connection() as c:
            rows = await c.fetch(sql + " ORDER BY id DESC LIMIT ?", *args, limit)
        return [
            AuditEntry(
                id=int(r["id"]),
                at=int(r["at"]),
                actor=r["actor"],
                action=r["action"],
                target=r["target"],
                before=loads(r["before"]),
                after=loads(r["after"]),
            )
            for r in rows
        ]
