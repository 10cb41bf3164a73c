"""Payments given back at the provider: what a refund or a dispute takes back, once.

A payment credited here (by its checkout's webhook or by hand under its ``pi_…``) is
found by its payment intent in ``payment_claims`` (:mod:`meter.store.claims`), which
names the ledger entry that credited it. Each provider event about it writes at most one
ledger entry, keyed by what the event says (the ledger's unique ``(workspace,
reference)`` makes a redelivery write nothing):

* a refund ``refund:<charge>:<cumulative cents>`` (the charge's ``amount_refunded``
  after that refund), kind ``payment_reversed``;
* a dispute that took the funds ``dispute:<dispute id>`` (opened, or closed lost),
  kind ``payment_reversed``;
* a dispute won ``dispute_won:<dispute id>``, kind ``dispute_reinstated``.

The amount of each is the difference between what the payment's entries took back so
far and what all of them, this one included, say must be taken back:
``min(credited, highest cumulative refund + disputes not won)``. So partial refunds
debit each their own part, a late smaller cumulative amount debits nothing, and nothing
ever takes back more than was credited. The entries of one payment are written one at a
time (PostgreSQL: the payment's claim row is locked first; SQLite: ``BEGIN IMMEDIATE``).
Every entry is written even when it moves nothing (amount 0: a dispute whose won entry
came first, a refund already covered by an open dispute or a larger refund), so the
payment's state is known whatever order the events come in, and the final balance is the
same for every order (a dispute won after a full refund gives nothing back). An entry of
amount 0 changes no live balance and carries no marker (:func:`meter.accounts.rebuild.marked`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from meter.store.db import StoreCore, loads, row_as
from meter.store.ledger import insert_ledger_entry
from meter.store.models import REVERSAL_KINDS, LedgerEntry

Cause = Literal["refund", "dispute", "dispute_won"]
ReversalResult = Literal["reversed", "reinstated", "already_reversed", "unknown_payment"]

_LEDGER = "id, workspace_id, app_id, kind, pool, amount, reference, created_at, detail"
_KINDS = ", ".join(f"'{k}'" for k in REVERSAL_KINDS)


@dataclass(frozen=True, slots=True)
class Reversal:
    """What one provider event says about a payment (``amount``: micro-dollars, the
    cumulative refund of a charge, or the disputed amount)."""

    payment_intent: str
    cause: Cause
    key: str  # the charge id (refund) or the dispute id
    amount: int
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def reference(self) -> str:
        if self.cause == "refund":
            return f"refund:{self.key}:{self.amount // 10_000}"
        return f"{self.cause}:{self.key}"


@dataclass(frozen=True, slots=True)
class Reversed:
    """What :meth:`Reversals.reverse_payment` did; ``credit`` the entry that credited the
    payment, ``entries`` every reversal of that payment (this one included)."""

    result: ReversalResult
    credit: LedgerEntry | None = None
    entries: tuple[LedgerEntry, ...] = ()
    entry: LedgerEntry | None = None  # the one written now, if any


def _entry(r: Any) -> LedgerEntry:
    return row_as(LedgerEntry, r, _LEDGER, detail=loads(r["detail"]) or {})


def taken_back(credited: int, entries: list[LedgerEntry]) -> int:
    """What a payment's reversal entries say must be taken back (micro-dollars, >= 0)."""
    refunded, disputed, won = 0, {}, set()
    for e in entries:
        cause, amount = e.detail.get("cause"), int(e.detail.get("amount", 0))
        key = str(e.detail.get("key", ""))
        if cause == "refund":
            refunded = max(refunded, amount)
        elif cause == "dispute":
            disputed[key] = amount
        elif cause == "dispute_won":
            won.add(key)
    open_disputes = sum(a for k, a in disputed.items() if k not in won)
    return max(0, min(credited, refunded + open_disputes))


class Reversals(StoreCore):
    async def reverse_payment(self, rev: Reversal, at: int) -> Reversed:
        """Record ``rev`` against the payment its payment intent names, in one
        transaction (see the module's docstring)."""
        async with self.transaction() as c:
            claim = await c.fetchrow(
                "SELECT workspace_id, reference FROM payment_claims "
                f"WHERE identifier = ?{self.for_update}",
                rev.payment_intent,
            )
            if claim is None:
                return Reversed("unknown_payment")
            ws = claim["workspace_id"]
            row = await c.fetchrow(
                f"SELECT {_LEDGER} FROM ledger WHERE workspace_id = ? AND reference = ?",
                ws,
                claim["reference"],
            )
            credit = _entry(row) if row else None
            if credit is None or credit.kind != "topup" or credit.amount <= 0:
                return Reversed("unknown_payment")
            rows = await c.fetch(
                f"SELECT {_LEDGER} FROM ledger WHERE workspace_id = ? AND kind IN ({_KINDS}) "
                "ORDER BY id",
                ws,
            )
            prior = [e for e in map(_entry, rows) if e.detail.get("credit") == credit.reference]
            reference = rev.reference
            if any(e.reference == reference for e in prior):
                return Reversed("already_reversed", credit, tuple(prior))
            detail = {**rev.detail, "cause": rev.cause, "key": rev.key, "amount": rev.amount,
                      "credit": credit.reference, "payment_intent": rev.payment_intent}  # fmt: skip
            entry = LedgerEntry(
                workspace_id=ws,
                kind="dispute_reinstated" if rev.cause == "dispute_won" else "payment_reversed",
                amount=0,
                reference=reference,
                created_at=at,
                app_id=credit.app_id,
                detail=detail,
            )
            before = taken_back(credit.amount, prior)
            after = taken_back(credit.amount, [*prior, entry])
            entry = replace(entry, amount=before - after)
            await insert_ledger_entry(c, entry)
        result: ReversalResult = "reinstated" if rev.cause == "dispute_won" else "reversed"
        if rev.cause == "refund" and not entry.amount:
            result = "already_reversed"  # recorded, nothing more to take back now
        return Reversed(result, credit, (*prior, entry), entry)
