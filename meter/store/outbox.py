"""The outbox of owner notifications: kept until delivered, retried with backoff.

An event is *due* when it is undelivered and ``next_attempt_at <= now``. A dispatcher
claims due events with a lease (``due_events(now, limit, lease_ms=...)`` pushes their
``next_attempt_at`` to ``now + lease``) so replicas do not send the same event at once;
``mark_failed`` schedules the next attempt: an event is never given up on (one failed
many times is *overdue*, :meth:`Outbox.overdue_events`, and still retried).
``due_events(..., per_workspace=k)`` takes at most ``k`` events of a workspace, the
workspaces in turn; ``postpone_events`` moves events later without counting an attempt
(or parks them while their workspace has no webhook). ``set_webhook`` makes the
workspace's parked and overdue events due at once (:data:`WAKE`).
Delivered events are reduced to tombstones after a retention time (``forget_delivered``,
run by the notifier): the event id stays, so the same notification is never queued (and
sent) again however old; undelivered ones stay until delivered.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from meter.store.db import Conn, Row, StoreCore, dumps, loads, row_as
from meter.store.models import OutboxEvent, now_ms

_COLS = (
    "id, workspace_id, event_id, event_type, payload, created_at, attempts, "
    "next_attempt_at, delivered_at, last_error"
)
FORGOTTEN = 0
"""``delivered_at`` of a tombstone: delivered, its payload and delivery time dropped."""
NO_WEBHOOK = "no webhook configured"
"""``last_error`` of events parked until their workspace has a webhook."""
_NO_WEBHOOK = (
    " AND NOT EXISTS (SELECT 1 FROM workspaces w WHERE w.id = outbox.workspace_id "
    "AND w.webhook_url <> '' AND w.webhook_secret <> '')"
)
WAKE = (
    "UPDATE outbox SET next_attempt_at = created_at, "
    "last_error = CASE WHEN last_error = ? THEN NULL ELSE last_error END "
    "WHERE workspace_id = ? AND delivered_at IS NULL "
    "AND (last_error = ? OR next_attempt_at IS NULL OR (attempts >= ? AND next_attempt_at > ?))"
)
"""Makes a workspace's events due at once, oldest first (its webhook was saved): those
parked for want of a webhook, the overdue ones (failed that many times or more) and any
an earlier version gave up on (``next_attempt_at`` NULL). Not those waiting for a
shorter retry, nor an overdue one due by the end of a lease taken now: a notifier may
have claimed it (a claim moves ``next_attempt_at`` to the claim's time plus the lease)
and be sending it, and moving it would let another notifier send it again."""
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
        """How many events still wait for delivery (overdue ones included)."""
        async with self.connection() as c:
            row = await c.fetchrow("SELECT COUNT(*) AS n FROM outbox WHERE delivered_at IS NULL")
        return int(row["n"]) if row else 0

    async def overdue_events(self, attempts: int, workspace_id: str | None = None) -> int:
        """How many undelivered events (of ``workspace_id``, else of all) have failed
        ``attempts`` times or more."""
        sql = "SELECT COUNT(*) AS n FROM outbox WHERE delivered_at IS NULL AND attempts >= ?"
        args: list[Any] = [attempts]
        if workspace_id is not None:
            sql += " AND workspace_id = ?"
            args.append(workspace_id)
        async with self.connection() as c:
            row = await c.fetchrow(sql, *args)
        return int(row["n"]) if row else 0

    async def undelivered_events(
        self, *, min_attempts: int = 0, workspace_id: str | None = None, limit: int = 1000
    ) -> list[OutboxEvent]:
        """Undelivered events (of ``workspace_id``, else of all) that have failed
        ``min_attempts`` times or more, by workspace, oldest first: what
        :meth:`overdue_events` counts, for an operator to look at."""
        sql = f"SELECT {_COLS} FROM outbox WHERE delivered_at IS NULL AND attempts >= ?"
        args: list[Any] = [min_attempts]
        if workspace_id is not None:
            sql += " AND workspace_id = ?"
            args.append(workspace_id)
        return await self.many(_event, sql + " ORDER BY workspace_id, id LIMIT ?", *args, limit)

    async def due_events(
        self,
        now_ms: int,
        limit: int = 100,
        *,
        lease_ms: int = 0,
        per_workspace: int | None = None,
        exclude: Collection[str] = (),
    ) -> list[OutboxEvent]:
        """Undelivered events due at ``now_ms``, oldest due first.

        With ``per_workspace`` at most that many of one workspace's (its oldest due), the
        workspaces taking turns: every workspace's first event comes before any second
        one, so one workspace's backlog never crowds out the others. Workspaces in
        ``exclude`` are left out (those a dispatcher is delivering already).

        With ``lease_ms > 0`` the events are claimed: their ``next_attempt_at`` moves to
        ``now_ms + lease_ms`` in the same transaction, and a concurrent caller does not
        get them (the ``next_attempt_at <= now`` re-check loses the row race).
        """
        marks = ", ".join("?" for _ in exclude)
        due = "delivered_at IS NULL AND next_attempt_at <= ?" + (
            f" AND workspace_id NOT IN ({marks})" if exclude else ""
        )
        args: list[Any] = [now_ms, *exclude]
        if per_workspace is None:
            pick = f"SELECT id FROM outbox WHERE {due} ORDER BY next_attempt_at, id LIMIT ?"
        else:
            ranked = (
                "SELECT id, next_attempt_at, ROW_NUMBER() OVER (PARTITION BY workspace_id "
                f"ORDER BY next_attempt_at, id) AS turn FROM outbox WHERE {due}"
            )
            pick = (
                f"SELECT id FROM ({ranked}) ranked WHERE turn <= ? "
                "ORDER BY turn, next_attempt_at, id LIMIT ?"
            )
            args.append(per_workspace)
        args.append(limit)
        # The oldest due first; within a workspace this is the order they are sent in.
        if lease_ms <= 0:
            select = f"SELECT {_COLS} FROM outbox WHERE id IN ({pick}) ORDER BY next_attempt_at, id"
            async with self.connection() as c:
                return [_event(r) for r in await c.fetch(select, *args)]
        async with self.transaction() as c:
            select = f"SELECT id, next_attempt_at FROM outbox WHERE id IN ({pick})"
            rows = await c.fetch(select + self.skip_locked, *args)
            if not rows:
                return []
            order = {int(r["id"]): (int(r["next_attempt_at"]), int(r["id"])) for r in rows}
            marks = ", ".join("?" for _ in order)
            rows = await c.fetch(
                f"UPDATE outbox SET next_attempt_at = ? WHERE id IN ({marks}) "
                f"AND delivered_at IS NULL AND next_attempt_at <= ? RETURNING {_COLS}",
                now_ms + lease_ms,
                *order,
                now_ms,
            )
        return sorted((_event(r) for r in rows), key=lambda e: order[e.id or 0])

    async def postpone_events(
        self,
        workspace_id: str,
        ids: Sequence[int],
        until_ms: int,
        *,
        due_at: int | None = None,
        park: bool = False,
    ) -> int:
        """Move undelivered events to ``until_ms`` without counting an attempt: ``ids``
        (events this caller claimed) and, with ``due_at``, every other event of the
        workspace due at that time (not those leased to someone else). With ``park``
        only while the workspace has no webhook, marked :data:`NO_WEBHOOK` so that
        :meth:`set_webhook` makes them due again. Returns how many moved."""
        which = [f"id IN ({', '.join('?' for _ in ids)})"] if ids else []
        if due_at is not None:
            which.append("next_attempt_at <= ?")
        if not which:
            return 0
        sql = (
            "UPDATE outbox SET next_attempt_at = ?{note} WHERE workspace_id = ? "
            "AND delivered_at IS NULL AND next_attempt_at IS NOT NULL AND ({which}){unless}"
        ).format(
            note=", last_error = ?" if park else "",
            which=" OR ".join(which),
            unless=_NO_WEBHOOK if park else "",
        )
        args: list[Any] = [until_ms, *([NO_WEBHOOK] if park else []), workspace_id, *ids]
        if due_at is not None:
            args.append(due_at)
        async with self.connection() as c:
            return await c.execute(sql, *args)

    async def forget_delivered(self, before_ms: int, limit: int) -> int:
        """Turn at most ``limit`` events delivered before ``before_ms`` into tombstones,
        the oldest first; how many. A tombstone keeps the row's ``event_id`` (so
        :meth:`enqueue` of the same notification stays a no-op for ever: a retried
        top-up, a redelivered payment event) with its payload emptied and
        ``delivered_at`` :data:`FORGOTTEN`, outside the range this sweeps again.
        Undelivered events are never touched."""
        async with self.connection() as c:
            return await c.execute(
                "UPDATE outbox SET payload = ?, last_error = NULL, delivered_at = ? "
                "WHERE id IN (SELECT id FROM outbox WHERE delivered_at IS NOT NULL "
                "AND delivered_at > ? AND delivered_at < ? ORDER BY delivered_at LIMIT ?)",
                dumps({}),
                FORGOTTEN,
                FORGOTTEN,
                before_ms,
                limit,
            )

    async def mark_delivered(self, outbox_id: int, *, at: int | None = None) -> bool:
        return await self.changed(
            "UPDATE outbox SET delivered_at = ?, attempts = attempts + 1, last_error = NULL "
            "WHERE id = ? AND delivered_at IS NULL",
            now_ms() if at is None else at,
            outbox_id,
        )

    async def mark_failed(self, outbox_id: int, error: str, next_attempt_at: int) -> bool:
        """Record a failed attempt; retry at ``next_attempt_at``."""
        return await self.changed(
            "UPDATE outbox SET attempts = attempts + 1, last_error = ?, next_attempt_at = ? "
            "WHERE id = ? AND delivered_at IS NULL",
            error[:2000],
            next_attempt_at,
            outbox_id,
        )
