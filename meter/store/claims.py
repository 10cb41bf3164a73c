"""Claimed payment identifiers: one payment is credited once, whoever credits it.

A payment through the provider has several names: the checkout's id here, the
provider's session id (``cs_…``) and its payment intent (``pi_…``, known here only once
the webhook told). The webhook credits it under ledger reference
``checkout:<session id>``, an operator by hand under ``funds:<their reference>``: two
ledger references that never meet. So every credit of a payment also claims each of
its identifiers in ``payment_claims`` (primary key: the identifier), in the
transaction that writes its ledger entry: the second credit of one payment, whatever
name it uses and however close in time, finds an identifier held by another ledger
entry and writes nothing. Claims are never released.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from meter.store.db import Conn, dumps, loads

# Spellings of one identifier: the ledger's own (``checkout:cs_…``, ``funds:pi_…``) and
# the provider's name as an operator may write it (``stripe:pi_…``).
_PREFIXES = ("funds:", "checkout:", "stripe:")
# Identifiers of the provider's payment objects the webhook may claim (charges, ``ch_``
# and ``py_``, are never claimed: they cannot be matched to a checkout; a dispute naming
# only its charge is resolved to its payment intent at the provider first).
PROVIDER_PREFIXES = ("cs_", "pi_")


@dataclass(frozen=True, slots=True)
class Holder:
    """The ledger entry a payment identifier was credited under."""

    workspace_id: str
    reference: str


def payment_id(reference: str) -> str:
    """``reference`` without the prefixes that spell the same identifier."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in _PREFIXES:
            if reference[: len(prefix)].lower() == prefix and len(reference) > len(prefix):
                reference, stripped = reference[len(prefix) :], True
    return reference


async def claim(
    c: Conn, identifiers: Iterable[str], holder: Holder, at: int
) -> tuple[Holder | None, list[str]]:
    """Claim ``identifiers`` for ``holder`` inside ``c``'s transaction: the other holder
    of one of them, if any (then the caller must not credit), and those claimed now.

    Inserted in sorted order, so two transactions claiming overlapping sets queue on the
    first identifier they share instead of deadlocking (PostgreSQL: the second waits on
    the unique key until the first commits, then sees its row).
    """
    idents = sorted({i for i in identifiers if i})
    fresh: list[str] = []
    for ident in idents:
        inserted = await c.execute(
            "INSERT INTO payment_claims (identifier, workspace_id, reference, created_at) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (identifier) DO NOTHING",
            ident,
            holder.workspace_id,
            holder.reference,
            at,
        )
        if inserted:
            fresh.append(ident)
    if not idents:
        return None, fresh
    marks = ", ".join("?" for _ in idents)
    rows = await c.fetch(
        "SELECT workspace_id, reference FROM payment_claims "
        f"WHERE identifier IN ({marks}) ORDER BY identifier",
        *idents,
    )
    others = [Holder(r["workspace_id"], r["reference"]) for r in rows]
    return next((h for h in others if h != holder), None), fresh


async def hand_over(c: Conn, identifiers: Iterable[str], mine: Holder, to: Holder) -> None:
    """Give the ``identifiers`` that ``mine`` claimed (just now) to ``to``, the entry
    that credited the payment: every name of it then leads to that one credit."""
    idents = sorted({i for i in identifiers if i})
    if not idents:
        return
    marks = ", ".join("?" for _ in idents)
    await c.execute(
        "UPDATE payment_claims SET workspace_id = ?, reference = ? "
        f"WHERE identifier IN ({marks}) AND workspace_id = ? AND reference = ?",
        to.workspace_id,
        to.reference,
        *idents,
        mine.workspace_id,
        mine.reference,
    )


async def mark_by_hand(
    c: Conn,
    checkout_id: str,
    holder: Holder,
    at: int,
    session_id: str | None,
    payment_intent: str | None,
    note: dict[str, Any] | None = None,
) -> None:
    """The checkout's payment was credited by hand under ``holder``'s entry: it says so
    (and keeps the session and payment intent the provider reported, if it did; ``note``
    joins its detail)."""
    raw = await c.fetchval("SELECT detail FROM checkouts WHERE id = ?", checkout_id)
    detail = {**(loads(raw) or {}), "credited_as": holder.reference,
              "credited_to": holder.workspace_id, **(note or {})}  # fmt: skip
    await c.execute(
        "UPDATE checkouts SET status = 'credited_by_hand', detail = ?, completed_at = ? "
        "WHERE id = ? AND status NOT IN ('paid', 'credited_by_hand')",
        dumps(detail),
        at,
        checkout_id,
    )
    await c.execute(
        "UPDATE checkouts SET session_id = COALESCE(session_id, ?), "
        "payment_intent = COALESCE(payment_intent, ?) WHERE id = ? AND status <> 'paid'",
        session_id,
        payment_intent,
        checkout_id,
    )
