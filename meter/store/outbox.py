"""The outbox of owner notifications: kept until delivered, retried with backoff.

An event is *due* when it is undelivered and ``next_attempt_at <= now``. A dispatcher
claims due events with a lease (``due_events(now, limit, lease_ms=...)`` pushes their
``next_attempt_at`` to ``now + lease``) so replicas do not send the same event at once;
``mark_failed(..., next_attempt_at=None)`` gives up on an event (it stays, never due).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from meter.store.db import Conn, Row, StoreCore, dumps, loads, row_as
from meter.store.models import OutboxEvent, now_ms

_COLS = (
    "id, workspace_id, event_id, event_type, payload, created_at, attempts, "
    "next_attempt_at, delivered_at, last_error"
)
_INSERT = (
    "INSERT INTO outbox (workspace_id, event_id, event_type, payload, created_at, attempts, "
    "next_attempt_at) VALUES (?, ?, ?, ?, ?, 0, ?) ON CONFLICT (event_id) DO NOTHING"
)


def _params(e: OutboxEvent) -> tuple[Any, ...]:
    due = e.created_at if e.next_attempt_at is None else e.next_attempt_at
    return (e.workspace_id, e.event_id, e.event_type, dumps(e.payload), e.created_at, due)


async def insert_events(c: Conn, events: Sequence[OutboxEvent]) -> None:
    if events:
        await c.executemany(_INSERT, [_params(e) for e in events])


def _event(r: Row) -> OutboxEvent:
    return row_as(OutboxEvent, r, _COLS, payload=loads(r["payload"]))


class Outbox(StoreCore):
    async def enqueue(self, event: OutboxEvent) -> bool:
        """Queue an event; ``False`` (a no-op) if its ``event_id`` is already queued."""
        async with self.connection() as c:
            return await c.execute(_INSERT, *_params(event)) > 0

    async def get_event(self, event_id: str) -> OutboxEvent | None:
        return await self.one(_event, f"SELECT {_COLS} FROM outbox WHERE event_id = ?", event_id)

    async def list_events(self, workspace_id: str, *, limit: int = 100) -> list[OutboxEvent]:
        """The workspace's events, newest first, delivered or not."""
        return await self.many(
            _event,
            f"SELECT {_COLS} FROM outbox WHERE workspace_id = ? ORDER BY id DESC LIMIT ?",
            workspace_id,
            limit,
        )

    async def pending_events(self) -> int:
        """How many events still wait for delivery (those given up on excluded)."""
        async with self.connection() as c:
            row = await c.fetchrow(
                "SELECT COUNT(*) AS n FROM outbox "
                "WHERE delivered_at IS NULL AND next_attempt_at IS NOT NULL"
            )
        return int(row["n"]) if row else 0

    async def due_events(
        self, now_ms: int, limit: int = 100, *, lease_ms: int = 0
    ) -> list[OutboxEvent]:
        """Undelivered events due at ``now_ms``, oldest due first.

        With ``lease_ms > 0`` the events are claimed: their ``next_attempt_at`` moves to
        ``now_ms + lease_ms`` in the same transaction, and a concurrent caller does not
        get them (the ``next_attempt_at <= now`` re-check loses the row race).
        """
        due = (
            f"SELECT {_COLS} FROM outbox WHERE delivered_at IS NULL AND next_attempt_at <= ? "
            "ORDER BY next_attempt_at, id LIMIT ?"
        )
        if lease_ms <= 0:
            async with self.connection() as c:
                return [_event(r) for r in await c.fetch(due, now_ms, limit)]
        async with self.transaction() as c:
            rows = await c.fetch(due + self.skip_locked, now_ms, limit)
            ids = [int(r["id"]) for r in rows]
            if not ids:
                return []
            marks = ", ".join("?" for _ in ids)
            rows = await c.fetch(
                f"UPDATE outbox SET next_attempt_at = ? WHERE id IN ({marks}) "
                f"AND delivered_at IS NULL AND next_attempt_at <= ? RETURNING {_COLS}",
                now_ms + lease_ms,
                *ids,
                now_ms,
            )
        order = {i: n for n, i in enumerate(ids)}
        return sorted((_event(r) for r in rows), key=lambda e: order[e.id or 0])

    async def mark_delivered(self, outbox_id: int, *, at: int | None = None) -> bool:
        return await self.changed(
            "UPDATE outbox SET delivered_at = ?, attempts = attempts + 1, last_error = NULL "
            "WHERE id = ? AND delivered_at IS NULL",
            now_ms() if at is None else at,
            outbox_id,
        )

    async def mark_failed(self, outbox_id: int, error: str, next_attempt_at: int | None) -> bool:
        """Record a failed attempt; retry at ``next_attempt_at`` (``None``: give up)."""
        return await self.changed(
            "UPDATE outbox SET attempts = attempts + 1, last_error = ?, next_attempt_at = ? "
            "WHERE id = ? AND delivered_at IS NULL",
            error[:2000],
            next_attempt_at,
            outbox_id,
        )
