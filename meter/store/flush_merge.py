"""Rows of flush batches as the store writes them: columns, upsert tails, merging.

The merge rules are :mod:`meter.store.flush`'s (its module doc).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from meter.store.models import REFUSAL_REASONS, normalise_refused
from meter.store.usage_rows import SessionRow, UsageRow

USAGE_KEY = ("workspace_id", "bucket_start", "app_id", "channel", "product", "unit")
USAGE_COUNTERS = (
    "units",
    "messages",
    "amount_free",
    "amount_app",
    "amount_pool",
    "amount_invoiced",
    *(f"refused_{r}" for r in REFUSAL_REASONS),
)
USAGE_COLUMNS = (*USAGE_KEY, *USAGE_COUNTERS)
SESSION_COLUMNS = (
    "workspace_id",
    "id",
    "app_id",
    "channel",
    "channel_user",
    "product",
    "start_ms",
    "end_ms",
    "messages",
    "amount",
    "seq",
)


def usage_upsert_tail() -> str:
    sets = ", ".join(f"{c} = usage_buckets.{c} + excluded.{c}" for c in USAGE_COUNTERS)
    return f"ON CONFLICT ({', '.join(USAGE_KEY)}) DO UPDATE SET {sets}"


def session_upsert_tail(greatest: str, least: str) -> str:
    t = "billing_sessions"
    return (
        "ON CONFLICT (workspace_id, id) DO UPDATE SET "
        f"start_ms = {least}({t}.start_ms, excluded.start_ms), "
        f"end_ms = {greatest}({t}.end_ms, excluded.end_ms), "
        f"messages = {greatest}({t}.messages, excluded.messages), "
        f"amount = CASE WHEN excluded.seq >= {t}.seq THEN excluded.amount ELSE {t}.amount END, "
        f"seq = {greatest}({t}.seq, excluded.seq)"
    )


def merge_usage(workspace_id: str, rows: Sequence[UsageRow]) -> list[tuple[Any, ...]]:
    """Rows as column tuples (:data:`USAGE_COLUMNS`), duplicates summed, sorted by key."""
    merged: dict[tuple[int, str, str, str, str], list[int]] = {}
    width = len(USAGE_COUNTERS)
    for row in rows:
        if row.workspace_id != workspace_id:
            raise ValueError(f"usage row of workspace {row.workspace_id!r} in another batch")
        refused = normalise_refused(row.refused)
        counters = (
            row.units,
            row.messages,
            row.amount_free,
            row.amount_app,
            row.amount_pool,
            row.amount_invoiced,
            *(refused.get(r, 0) for r in REFUSAL_REASONS),
        )
        acc = merged.setdefault(row.key, [0] * width)
        for i, v in enumerate(counters):
            acc[i] += int(v)
    return [(workspace_id, *key, *merged[key]) for key in sorted(merged)]


def merge_sessions(workspace_id: str, rows: Sequence[SessionRow]) -> list[tuple[Any, ...]]:
    """Rows as column tuples (:data:`SESSION_COLUMNS`), merged per id, sorted by id."""
    merged: dict[str, SessionRow] = {}
    for row in rows:
        if row.workspace_id != workspace_id:
            raise ValueError(f"session row of workspace {row.workspace_id!r} in another batch")
        old = merged.get(row.id)
        if old is None:
            merged[row.id] = row
            continue
        newer = row if row.seq >= old.seq else old
        merged[row.id] = SessionRow(
            workspace_id=workspace_id,
            id=row.id,
            app_id=old.app_id,
            channel=old.channel,
            channel_user=old.channel_user,
            product=old.product,
            start_ms=min(old.start_ms, row.start_ms),
            end_ms=max(old.end_ms, row.end_ms),
            messages=max(old.messages, row.messages),
            amount=newer.amount,
            seq=max(old.seq, row.seq),
        )
    return [
        (
            workspace_id,
            s.id,
            s.app_id,
            s.channel,
            s.channel_user,
            s.product,
            int(s.start_ms),
            int(s.end_ms),
            int(s.messages),
            int(s.amount),
            int(s.seq),
        )
        for s in (merged[k] for k in sorted(merged))
    ]
