"""Migration 14: claimed payment identifiers (see :mod:`meter.store.claims`).

Append-only like every step: never edit this text once applied, add a migration instead.

A checkout whose payment an operator credited by hand first becomes
``credited_by_hand``: SQLite cannot change a CHECK constraint in place, so the table is
rebuilt (the same statements work on PostgreSQL). Payments credited before this step
keep their claims: every name of a paid checkout (its id, session id and payment intent)
for its ``checkout:<session id>`` entry, then each manual top-up whose reference is a
provider id (``pi_``/``cs_``, also spelled ``stripe:…`` or ``checkout:…``), unless that
id was claimed first (a payment credited twice before this step stays as it is).
"""

from __future__ import annotations

_CLAIM = (
    "INSERT INTO payment_claims (identifier, workspace_id, reference, created_at) "
    "SELECT {ident}, {ws}, {ref}, {at} FROM {table} WHERE {where} "
    "ON CONFLICT (identifier) DO NOTHING"
)


def _checkout_claim(column: str) -> str:
    return _CLAIM.format(
        ident=column,
        ws="workspace_id",
        ref="'checkout:' || session_id",
        at="COALESCE(completed_at, created_at)",
        table="checkouts",
        where=f"status = 'paid' AND session_id IS NOT NULL AND {column} IS NOT NULL",
    )


def _manual_claim(prefix: str) -> str:
    """Manual top-ups ``funds:<prefix>pi_…`` / ``funds:<prefix>cs_…``."""
    start = len("funds:" + prefix) + 1
    heads = ", ".join(f"'funds:{prefix}{kind}'" for kind in ("pi_", "cs_"))
    return _CLAIM.format(
        ident=f"substr(reference, {start})",
        ws="workspace_id",
        ref="reference",
        at="created_at",
        table="ledger",
        where=f"kind = 'topup' AND substr(reference, 1, {start + 2}) IN ({heads})",
    )


PAYMENT_CLAIMS = ";\n".join(
    [
        """
CREATE TABLE payment_claims (
    identifier TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL,
    reference TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE checkouts_v14 (
    id TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    app_id TEXT,
    amount BIGINT NOT NULL CHECK (amount > 0),
    currency TEXT NOT NULL,
    provider TEXT NOT NULL,
    session_id TEXT UNIQUE,
    payment_intent TEXT UNIQUE,
    url TEXT,
    status TEXT NOT NULL CHECK (status IN
        ('creating', 'open', 'paid', 'expired', 'failed', 'rejected', 'credited_by_hand')),
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    completed_at BIGINT,
    detail {json} NOT NULL
);
INSERT INTO checkouts_v14 (id, workspace_id, app_id, amount, currency, provider, session_id,
        payment_intent, url, status, created_by, created_at, completed_at, detail)
    SELECT id, workspace_id, app_id, amount, currency, provider, session_id,
        payment_intent, url, status, created_by, created_at, completed_at, detail
    FROM checkouts;
DROP TABLE checkouts;
ALTER TABLE checkouts_v14 RENAME TO checkouts;
CREATE INDEX checkouts_workspace ON checkouts (workspace_id, created_at)
""",
        *(_checkout_claim(col) for col in ("id", "session_id", "payment_intent")),
        *(_manual_claim(prefix) for prefix in ("", "stripe:", "checkout:")),
    ]
)
