"""Migration 15: the ledger kinds of payments given back at the provider.

Append-only like every step: never edit this text once applied, add a migration instead.

``payment_reversed`` (a refund or a dispute took a payment's funds back, amount <= 0)
and ``dispute_reinstated`` (a won dispute gave them back, amount >= 0) join the ledger's
CHECK constraint (:mod:`meter.store.reversals`). SQLite cannot change a CHECK constraint
in place, so its ledger is rebuilt, ids kept (AUTOINCREMENT continues past the highest);
PostgreSQL replaces the constraint in place (``ALTER TABLE`` holds the table's lock
until the step commits), keeping its identity column as it is.
"""

from __future__ import annotations

_KINDS = (
    "'grant_free', 'lapse', 'topup', 'refund_adjust', 'reconcile', "
    "'payment_reversed', 'dispute_reinstated'"
)

SQLITE = f"""
CREATE TABLE ledger_v15 (
    id {{id}},
    workspace_id TEXT NOT NULL,
    app_id TEXT,
    kind TEXT NOT NULL CHECK (kind IN ({_KINDS})),
    pool TEXT NOT NULL CHECK (pool IN ('free', 'paid')),
    amount BIGINT NOT NULL,
    reference TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    detail {{json}} NOT NULL,
    UNIQUE (workspace_id, reference)
);
INSERT INTO ledger_v15 (id, workspace_id, app_id, kind, pool, amount, reference, created_at,
        detail)
    SELECT id, workspace_id, app_id, kind, pool, amount, reference, created_at, detail
    FROM ledger;
DROP TABLE ledger;
ALTER TABLE ledger_v15 RENAME TO ledger;
CREATE INDEX ledger_workspace_id ON ledger (workspace_id, id)
"""

POSTGRESQL = f"""
ALTER TABLE ledger DROP CONSTRAINT ledger_kind_check;
ALTER TABLE ledger ADD CONSTRAINT ledger_kind_check CHECK (kind IN ({_KINDS}))
"""

# Migration 16: refunds and disputes of a payment not credited yet, kept for its credit
# (meter.store.reversals.settle_pending). Portable: a new table only.
PENDING = """
CREATE TABLE pending_reversals (
    payment_intent TEXT NOT NULL,
    reference TEXT NOT NULL,
    cause TEXT NOT NULL,
    object_id TEXT NOT NULL,
    amount BIGINT NOT NULL,
    detail {json} NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (payment_intent, reference)
)
"""

# Migration 18: refunds that failed at the provider after their charge.refunded debited
# them (meter.store.refund_failures), one row a refund, for the operator's credit back
# and reconcile's report. Portable: a new table only.
REFUND_FAILURES = """
CREATE TABLE refund_failures (
    refund TEXT PRIMARY KEY,
    payment_intent TEXT,
    charge TEXT,
    amount BIGINT NOT NULL,
    currency TEXT,
    status TEXT NOT NULL,
    event_id TEXT NOT NULL,
    received_at BIGINT NOT NULL
)
"""

# Migration 19: how many provider events about a payment reached its reversals (each
# counts, whatever it wrote: an entry, nothing as a repeated key, a skip), kept on the
# payment's claim and bumped in the transaction that locks it (meter.store.reversals).
# An operator's credit back asks Stripe outside that lock and writes only if the count
# did not move meanwhile (meter.store.refund_failures). Portable: a column with a default.
REVERSAL_EVENTS = "ALTER TABLE payment_claims ADD COLUMN reversal_events BIGINT NOT NULL DEFAULT 0"
