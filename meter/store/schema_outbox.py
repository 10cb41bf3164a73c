"""Migrations of the owner-notification outbox (:mod:`meter.store.outbox`).

Append-only like every step: never edit this text once applied, add a migration instead.
"""

from __future__ import annotations

# Migration 20: events an earlier version gave up on (``next_attempt_at`` NULL, never
# due again) are retried like any other, at once: notifications are kept until delivered.
RETRY_GIVEN_UP = (
    "UPDATE outbox SET next_attempt_at = created_at "
    "WHERE delivered_at IS NULL AND next_attempt_at IS NULL"
)

# Migration 21: delivered events by delivery time, for the retention sweep
# (:meth:`meter.store.outbox.Outbox.forget_delivered`). ``IF NOT EXISTS`` (added after
# the step shipped; where it ran, it built the same index) lets an operator build it
# beforehand on a big PostgreSQL outbox with ``CREATE INDEX CONCURRENTLY``: a step runs
# in a transaction, where a plain build holds outbox writes for its whole length (README
# "upgrading").
DELIVERED_BY_AGE = (
    "CREATE INDEX IF NOT EXISTS outbox_delivered ON outbox (delivered_at) "
    "WHERE delivered_at IS NOT NULL"
)
