"""The exactly-once write path of the flusher: one batch, one transaction.

``write_flush_batch`` first inserts the batch id into ``flush_batches``; if that id is
already there the transaction does nothing else and the call returns ``False``, so a
re-flush after a crash (or a second flusher racing for the same claim) is a no-op.

A batch the store keeps rejecting is quarantined instead (``quarantine_flush_batch``):
its id goes into ``flush_batches`` with ``rows = 0`` and its raw content into
``flush_dead_letters``, in one transaction, so the batch id is resolved exactly once
either way and a flusher re-taking the same claim later finds it done. A dead letter
that a later version can read is replayed (``replay_dead_letter``): its rows written by the
same merge and the dead letter deleted, in one transaction, so it is written once.

Merge rules, for rows of the same key coming from different batches (a late write after
a claim produces a second batch for the same bucket) or repeated within one batch:

* usage rows, key ``(workspace, bucket_start, app, channel, product, unit)``: every counter
  (units, messages, the four amounts, each refusal reason) is **added**;
* session rows, key ``(workspace, id)``: ``start_ms`` takes the minimum, ``end_ms`` and
  ``messages`` the maximum; ``amount`` (and ``seq``) come from the snapshot with the
  higher ``seq``, and on equal ``seq`` from the one written last (the newest batch, or the
  later row within a batch). ``app_id``, ``channel``, ``channel_user`` and ``product``
  never change once written.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from meter.store.db import Conn, StoreCore, row_as
from meter.store.flush_merge import (
    SESSION_COLUMNS,
    USAGE_COLUMNS,
    merge_sessions,
    merge_usage,
    session_upsert_tail,
    usage_upsert_tail,
)
from meter.store.flush_rollback import after_lost_claims
from meter.store.ledger import insert_ledger_entries, ledger_params
from meter.store.models import LedgerEntry, OutboxEvent, now_ms
from meter.store.outbox import insert_events
from meter.store.usage_rows import DeadLetter, FlushBatch, SessionRow, UsageRow

_BATCH_COLUMNS = "id, workspace_id, kind, bucket_start, rows, flushed_at"


class Flush(StoreCore):
    async def write_flush_batch(
        self,
        batch_id: str,
        workspace_id: str,
        kind: str,
        bucket_start: int,
        *,
        usage_rows: Sequence[UsageRow] = (),
        session_rows: Sequence[SessionRow] = (),
        ledger_entries: Sequence[LedgerEntry] = (),
        outbox_events: Sequence[OutboxEvent] = (),
        flushed_at: int | None = None,
        known_gen: int | None = None,
    ) -> bool:
        """Write one claimed batch exactly once (see the module doc for merge rules).

        Returns ``True`` when this call committed the batch, ``False`` when a batch with
        this id was already committed (nothing is written). Ledger entries and outbox
        events already present (same reference / event id) are skipped, not duplicated.
        ``known_gen`` (batch ids ``<ws>:<kind>:<bucket>:<gen>``): a batch of the same
        bucket above it means Redis lost the claim of that batch, and only what exceeds
        the store's rows is written (:mod:`meter.store.flush_rollback`).
        """
        usage = merge_usage(workspace_id, usage_rows)
        sessions = merge_sessions(workspace_id, session_rows)
        for entry in ledger_entries:
            ledger_params(entry)  # validate before the transaction
            if entry.workspace_id != workspace_id:
                raise ValueError("ledger entry of another workspace in the batch")
        if any(e.workspace_id != workspace_id for e in outbox_events):
            raise ValueError("outbox event of another workspace in the batch")
        count = len(usage_rows) + len(session_rows) + len(ledger_entries) + len(outbox_events)
        at = now_ms() if flushed_at is None else flushed_at

        async def attempt() -> bool:
            async with self.transaction() as c:
                claimed = await c.execute(
                    "INSERT INTO flush_batches (id, workspace_id, kind, bucket_start, rows, "
                    "flushed_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                    batch_id,
                    workspace_id,
                    kind,
                    bucket_start,
                    count,
                    at,
                )
                if not claimed:
                    return False
                rows = usage, sessions
                if known_gen is not None:
                    rows = await after_lost_claims(
                        c,
                        batch_id,
                        workspace_id,
                        kind,
                        bucket_start,
                        known_gen,
                        rows,
                        advisory_lock=self.dialect == "postgresql",
                    )
                if rows[0]:
                    await self._upsert_usage(c, rows[0])
                if rows[1]:
                    await self._upsert_sessions(c, rows[1])
                await insert_ledger_entries(c, ledger_entries)
                await insert_events(c, outbox_events)
                return True

        return await self._retry(attempt)

    async def get_flush_batch(self, batch_id: str) -> FlushBatch | None:
        """The committed batch with this id, if any (lets a flusher ack after a crash)."""
        return await self.one(
            lambda r: row_as(FlushBatch, r, _BATCH_COLUMNS),
            f"SELECT {_BATCH_COLUMNS} FROM flush_batches WHERE id = ?",
            batch_id,
        )

    async def resolved_gens(self, workspace_id: str, kind: str, bucket_start: int) -> set[int]:
        """The gens of a bucket's batches resolved so far (written or quarantined), from
        their ids ``<ws>:<kind>:<bucket_s>:<gen>``; ``bucket_start`` in ms."""
        async with self.connection() as c:
            rows = await c.fetch(
                "SELECT id FROM flush_batches WHERE workspace_id = ? AND bucket_start = ? "
                "AND kind = ?",
                workspace_id,
                bucket_start,
                kind,
            )
        return {int(str(r["id"]).rsplit(":", 1)[1]) for r in rows}

    async def quarantine_flush_batch(self, dead: DeadLetter) -> bool:
        """Resolve batch ``dead.id`` as quarantined: ``True`` when this call did, ``False``
        when the id was already resolved (written, or quarantined before)."""

        async def attempt() -> bool:
            async with self.transaction() as c:
                claimed = await c.execute(
                    "INSERT INTO flush_batches (id, workspace_id, kind, bucket_start, rows, "
                    "flushed_at) VALUES (?, ?, ?, ?, 0, ?) ON CONFLICT (id) DO NOTHING",
                    dead.id,
                    dead.workspace_id,
                    dead.kind,
                    dead.bucket_start,
                    dead.last_failed_at,
                )
                if not claimed:
                    return False
                await c.execute(
                    "INSERT INTO flush_dead_letters (id, workspace_id, kind, bucket_start, "
                    "content, error, attempts, first_failed_at, last_failed_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    dead.id,
                    dead.workspace_id,
                    dead.kind,
                    dead.bucket_start,
                    dead.content,
                    dead.error,
                    dead.attempts,
                    dead.first_failed_at,
                    dead.last_failed_at,
                )
                return True

        return await self._retry(attempt)

    async def replay_dead_letter(
        self,
        dead: DeadLetter,
        *,
        usage_rows: Sequence[UsageRow] = (),
        session_rows: Sequence[SessionRow] = (),
        ledger_entries: Sequence[LedgerEntry] = (),
        outbox_events: Sequence[OutboxEvent] = (),
        replayed_at: int | None = None,
    ) -> bool:
        """Write the rows of quarantined batch ``dead.id`` and remove its dead letter, in
        one transaction: ``True`` when this call did, ``False`` when the dead letter was
        gone (another replayer took it first; nothing is written).

        The rows are merged into the store as :meth:`write_flush_batch` merges a batch
        (usage added, session snapshots by ``seq``, ledger entries and outbox events
        once by reference / id); the batch's ``flush_batches`` row, written with
        ``rows = 0`` by the quarantine, then counts them. Not checked against claims
        Redis lost (the dead letter does not record the claim's ``known`` gen).
        """
        ws = dead.workspace_id
        usage = merge_usage(ws, usage_rows)
        sessions = merge_sessions(ws, session_rows)
        for entry in ledger_entries:
            ledger_params(entry)
            if entry.workspace_id != ws:
                raise ValueError("ledger entry of another workspace in the batch")
        if any(e.workspace_id != ws for e in outbox_events):
            raise ValueError("outbox event of another workspace in the batch")
        count = len(usage_rows) + len(session_rows) + len(ledger_entries) + len(outbox_events)
        at = now_ms() if replayed_at is None else replayed_at

        async def attempt() -> bool:
            async with self.transaction() as c:
                # First: a concurrent replayer's delete waits for this commit, then
                # finds nothing (PostgreSQL's row lock; SQLite's one writer).
                if not await c.execute("DELETE FROM flush_dead_letters WHERE id = ?", dead.id):
                    return False
                await c.execute(
                    "INSERT INTO flush_batches (id, workspace_id, kind, bucket_start, rows, "
                    "flushed_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                    "rows = excluded.rows, flushed_at = excluded.flushed_at",
                    dead.id,
                    ws,
                    dead.kind,
                    dead.bucket_start,
                    count,
                    at,
                )
                if usage:
                    await self._upsert_usage(c, usage)
                if sessions:
                    await self._upsert_sessions(c, sessions)
                await insert_ledger_entries(c, ledger_entries)
                await insert_events(c, outbox_events)
                return True

        return await self._retry(attempt)

    async def dead_letters(
        self,
        workspace_id: str | None = None,
        *,
        limit: int = 100,
        after: tuple[int, str] | None = None,
    ) -> list[DeadLetter]:
        """Quarantined flush batches, oldest bucket first (``bucket_start, id``), those
        after the cursor ``after`` (such a pair) only."""
        conds: list[str] = []
        args: list[Any] = []
        if workspace_id:
            conds.append("workspace_id = ?")
            args.append(workspace_id)
        if after is not None:
            conds.append("(bucket_start > ? OR (bucket_start = ? AND id > ?))")
            args += [after[0], after[0], after[1]]
        where = f"WHERE {' AND '.join(conds)} " if conds else ""
        async with self.connection() as c:
            rows = await c.fetch(
                "SELECT id, workspace_id, kind, bucket_start, content, error, attempts, "
                f"first_failed_at, last_failed_at FROM flush_dead_letters {where}"
                "ORDER BY bucket_start, id LIMIT ?",
                *args,
                limit,
            )
        return [
            DeadLetter(
                r["id"],
                r["workspace_id"],
                r["kind"],
                int(r["bucket_start"]),
                r["content"],
                r["error"],
                int(r["attempts"]),
                int(r["first_failed_at"]),
                int(r["last_failed_at"]),
            )
            for r in rows
        ]

    async def _upsert_usage(self, c: Conn, rows: list[tuple[Any, ...]]) -> None:
        """Portable bulk path: one upsert per row via ``executemany``."""
        marks = ", ".join("?" for _ in USAGE_COLUMNS)
        await c.executemany(
            f"INSERT INTO usage_buckets ({', '.join(USAGE_COLUMNS)}) VALUES ({marks}) "
            + usage_upsert_tail(),
            rows,
        )

    async def _upsert_sessions(self, c: Conn, rows: list[tuple[Any, ...]]) -> None:
        marks = ", ".join("?" for _ in SESSION_COLUMNS)
        await c.executemany(
            f"INSERT INTO billing_sessions ({', '.join(SESSION_COLUMNS)}) VALUES ({marks}) "
            + session_upsert_tail(self.greatest, self.least),
            rows,
        )
