"""Refunds that failed at the provider, and an operator's credit back of one, once.

A refund's ``charge.refunded`` debits the payment (:mod:`meter.store.reversals`); when
that refund then fails (its own event says ``failed`` or ``canceled``), the failure is
kept here, one row a refund (:meth:`RefundFailures.record_refund_failure`). Nothing is
credited back by itself: refunds are keyed by the charge's cumulative
``amount_refunded``, which a refund made again after the failure can repeat (its debit
is then skipped), so only an operator who knows no refund of it follows credits it back
(:meth:`RefundFailures.credit_back_refund`).

The credit back is one ledger entry of the payment's reversals, kind
``payment_reversed``, reference ``refund_failed:<refund id>`` (the ledger's unique
``(workspace, reference)``: once per refund), in the pool the payment credited (its
app's funds or the shared pool), written in the payment's lock like every reversal. It
lowers the payment's refunded part by the failed refund's amount (never below zero),
and its amount is what that changes in what the payment's reversals take back
(:func:`meter.store.reversals.taken_back`): never more than they took and was not given
back yet, 0.00 when a dispute holds the funds anyway. A credit that moves money queues
the owner notification ``funds.added`` (reason ``refund_failed``) in its transaction.
It is refused (``refunded_since``) once a refund of the same charge was recorded after
the failure came: that may be the failed part refunded again, which a repeated
cumulative key leaves undebited, so a credit back could give the payer twice.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

from config.money import format_amount
from meter.store.db import Row, StoreCore
from meter.store.ledger import insert_ledger_entry
from meter.store.models import LedgerEntry, OutboxEvent
from meter.store.outbox import insert_events
from meter.store.reversals import _claim, _entry, _reversals, taken_back

PREFIX = "refund_failed:"
_LEDGER = "id, workspace_id, app_id, kind, pool, amount, reference, created_at, detail"
CreditResult = Literal["credited", "already", "unknown_refund", "unknown_payment",
                       "other_workspace", "currency_mismatch", "refunded_since"]  # fmt: skip


@dataclass(frozen=True, slots=True)
class RefundFailure:
    """One refund that failed (``amount``: micro-dollars, that refund's own)."""

    refund: str
    payment_intent: str | None
    charge: str | None
    amount: int
    currency: str | None
    status: str
    event_id: str
    received_at: int
    workspace_id: str | None = None  # of the payment's credit, when it was credited here
    credited_back: LedgerEntry | None = None  # the operator's credit back, if any


@dataclass(frozen=True, slots=True)
class CreditBack:
    """What :meth:`RefundFailures.credit_back_refund` did."""

    result: CreditResult
    failure: RefundFailure | None = None
    entry: LedgerEntry | None = None  # the credit back (written now or before)


def _failure(r: Row, **extra: Any) -> RefundFailure:
    return RefundFailure(
        refund=r["refund"], payment_intent=r["payment_intent"], charge=r["charge"],
        amount=int(r["amount"]), currency=r["currency"], status=r["status"],
        event_id=r["event_id"], received_at=int(r["received_at"]), **extra,
    )  # fmt: skip


_COLS = "refund, payment_intent, charge, amount, currency, status, event_id, received_at"


class RefundFailures(StoreCore):
    async def record_refund_failure(self, f: RefundFailure) -> None:
        """Keep ``f`` (the first event about that refund's failure wins)."""
        async with self.connection() as c:
            await c.execute(
                f"INSERT INTO refund_failures ({_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (refund) DO NOTHING",
                f.refund, f.payment_intent, f.charge, f.amount, f.currency, f.status,
                f.event_id, f.received_at,
            )  # fmt: skip

    async def refund_failures(self, workspace: str | None = None) -> list[RefundFailure]:
        """Every refund failure kept (of ``workspace``'s payments only, if given), oldest
        first, each with its payment's workspace and its credit back, if any."""
        only = "WHERE p.workspace_id = ? " if workspace else ""
        async with self.connection() as c:
            rows = await c.fetch(
                f"SELECT f.refund, f.payment_intent, f.charge, f.amount, f.currency, "
                f"f.status, f.event_id, f.received_at, p.workspace_id AS ws FROM "
                f"refund_failures f LEFT JOIN payment_claims p ON p.identifier = "
                f"f.payment_intent {only}ORDER BY f.received_at, f.refund",
                *([workspace] if workspace else []),
            )
            out = []
            for r in rows:
                ws = r["ws"] or None
                done = ws and await c.fetchrow(
                    f"SELECT {_LEDGER} FROM ledger WHERE workspace_id = ? AND reference = ?",
                    ws,
                    PREFIX + r["refund"],
                )
                back = _entry(done) if done else None
                out.append(_failure(r, workspace_id=ws, credited_back=back))
        return out

    async def credit_back_refund(self, workspace: str, refund: str, by: str, at: int) -> CreditBack:
        """Credit back the failed ``refund`` of a payment of ``workspace``, once (see the
        module's docstring); ``already``: credited before (its entry)."""
        async with self.transaction() as c:
            row = await c.fetchrow(f"SELECT {_COLS} FROM refund_failures WHERE refund = ?", refund)
            if row is None:
                return CreditBack("unknown_refund")
            failure = _failure(row)
            if (failure.currency or "").lower() != "usd":
                return CreditBack("currency_mismatch", failure)
            claim = await _claim(c, failure.payment_intent or "", self.for_update)
            credit_row = claim and await c.fetchrow(
                f"SELECT {_LEDGER} FROM ledger WHERE workspace_id = ? AND reference = ?",
                claim["workspace_id"],
                claim["reference"],
            )
            credit = _entry(credit_row) if credit_row else None
            if credit is None or credit.kind != "topup":
                return CreditBack("unknown_payment", failure)
            if credit.workspace_id != workspace:
                return CreditBack("other_workspace", failure)
            prior = await _reversals(c, credit)
            reference = PREFIX + refund
            for e in prior:
                if e.reference == reference:
                    return CreditBack("already", failure, e)
            if any(_refund_since(e, failure) for e in prior):
                return CreditBack("refunded_since", failure)
            detail = {"cause": "refund_failed", "key": refund, "amount": failure.amount,
                      "credit": credit.reference, "payment_intent": failure.payment_intent,
                      "charge": failure.charge, "event_id": failure.event_id, "by": by}  # fmt: skip
            entry = LedgerEntry(workspace_id=workspace, kind="payment_reversed", amount=0,
                                reference=reference, created_at=at, app_id=credit.app_id,
                                detail=detail)  # fmt: skip
            before = taken_back(credit.amount, prior)
            entry = replace(entry, amount=before - taken_back(credit.amount, [*prior, entry]))
            await insert_ledger_entry(c, entry)
            if entry.amount > 0:
                await insert_events(c, [_added_notice(entry, failure, credit)])
        return CreditBack("credited", failure, entry)


def _refund_since(e: LedgerEntry, f: RefundFailure) -> bool:
    """Whether ``e`` is a refund of ``f``'s charge recorded after ``f`` came: perhaps the
    failed part refunded again, whose cumulative amount may repeat a key (so debit
    nothing), and then a credit back would leave it undebited: the operator checks."""
    return (e.detail.get("cause") == "refund" and e.detail.get("key") == f.charge
            and e.created_at > f.received_at)  # fmt: skip


def _added_notice(e: LedgerEntry, f: RefundFailure, credit: LedgerEntry) -> OutboxEvent:
    """``funds.added`` (reason ``refund_failed``): what the credit back gave, from where."""
    payload = {
        "amount": format_amount(e.amount),
        "reason": "refund_failed",
        "app_id": e.app_id,
        "reference": e.reference,  # as the transactions list it
        "refund": f.refund,
        "payment_intent": f.payment_intent,
        "charge": f.charge,
        "credit": credit.reference.removeprefix("checkout:").removeprefix("funds:"),
    }
    ws = e.workspace_id
    return OutboxEvent(ws, f"{ws}:{e.reference}", "funds.added", payload, e.created_at)
