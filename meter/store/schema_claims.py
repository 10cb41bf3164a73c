"""Migration 14: claimed payment identifiers (see :mod:`meter.store.claims`).

Append-only like every step: never edit this text once applied, add a migration instead.

A checkout whose payment an operator credited by hand first becomes
``credited_by_hand``: SQLite cannot change a CHECK constraint in place, so the table is
rebuilt (the same statements work on PostgreSQL, under a lock: ``Migration.rebuilds``).
Payments credited before this step keep their claims: every name of a paid checkout (its
id, session id and payment intent) for its ``checkout:<session id>`` entry, then
(:func:`claim_manual_credits`) what each manual top-up named, as a credit by hand claims
it now, unless that name was claimed first (a payment credited twice before this step
stays as it is).
"""

from __future__ import annotations

from meter.store.claims import PROVIDER_PREFIXES, payment_id
from meter.store.db import Conn

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


async def claim_manual_credits(c: Conn) -> None:
    """Claim, for each manual top-up (``funds:…``, oldest first), the names a credit by
    hand with its reference claims now (:meth:`Payments.credit_by_hand`): the reference
    normalized by :func:`payment_id` (any spelling: ``funds:Stripe:pi_…``,
    ``funds:checkout:<checkout id>``), and every name of the checkout it names, if that
    checkout is the same workspace's (one of another workspace's is refused now: its
    webhook credits it); else a provider id (``pi_``/``cs_``) unknown here. Normalizing
    in SQL would be a second spelling of :func:`payment_id`, narrower than the runtime.
    """
    rows = await c.fetch(
        "SELECT workspace_id, reference, created_at FROM ledger "
        "WHERE kind = 'topup' AND substr(reference, 1, 6) = 'funds:' ORDER BY id"
    )
    for r in rows:
        ident = payment_id(r["reference"])
        co = await c.fetchrow(
            "SELECT workspace_id, id, session_id, payment_intent FROM checkouts "
            "WHERE id = ? OR session_id = ? OR payment_intent = ?",
            ident,
            ident,
            ident,
        )
        if co is not None and co["workspace_id"] != r["workspace_id"]:
            continue
        if co is not None:
            idents = {ident, co["id"], co["session_id"], co["payment_intent"]}
        else:
            idents = {ident} if ident.startswith(PROVIDER_PREFIXES) else set()
        for name in sorted(i for i in idents if i):
            await c.execute(
                "INSERT INTO payment_claims (identifier, workspace_id, reference, created_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (identifier) DO NOTHING",
                name,
                r["workspace_id"],
                r["reference"],
                r["created_at"],
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
    ]
)
