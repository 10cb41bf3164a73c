"""Refunds that failed at the provider, and an operator's credit back of them.

A refund's ``charge.refunded`` debits the payment (:mod:`meter.store.reversals`); when
that refund then fails (its own event says ``failed`` or ``canceled``), the failure is
kept here, one row a refund (:meth:`RefundFailures.record_refund_failure`). Nothing is
credited back by itself: an operator asks for it, naming the failed refund.

The amount comes from Stripe, not from the failed refund's: the payment's refunded part
(:func:`meter.store.refund_state.refund_state`: cumulative ``amount_refunded`` of its
charge as the events said, lowered by earlier credit backs) is lowered to what Stripe
says is refunded of the charge now (its refunds neither failed nor canceled), asked
between :meth:`RefundFailures.credit_back_basis` and
:meth:`RefundFailures.credit_back_refund`; the latter writes only if the payment's
reversal entries are still those the former saw and no provider event reached them
meanwhile (the claim's ``reversal_events``: a refund recorded meanwhile may be one
Stripe's answer did not count yet, even one whose repeated cumulative key wrote nothing:
``changed``, ask again) and only if the refunded part
is above Stripe's (else ``nothing``, nothing written: a retry later, once the refund's
own debit came, works). A replay finds them equal: nothing to credit back.

The credit back is one ledger entry of the payment's reversals, kind
``payment_reversed``, reference ``refund_sync:<charge>:<n>`` (the n-th of that charge;
``refund_failed:<refund id>`` entries of before count as one each), in the pool the
payment credited, written in the payment's lock like every reversal. Its amount is what
lowering the refunded part changes in what the payment's reversals take back
(:func:`meter.store.refund_state.taken_back`): never more than they took and was not
given back yet, 0.00 when a dispute holds the funds anyway. A credit that moves money
queues the owner notification ``funds.added`` (reason ``refund_failed``) in its
transaction. A refund recorded after it whose cumulative amount repeats an earlier one
is keyed apart (``refund:<charge>:<cumulative>:<n>``) and debits from there.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

from config.money import format_amount
from meter.store.db import Conn, Row, StoreCore
from meter.store.ledger import insert_ledger_entry
from meter.store.models import LedgerEntry, OutboxEvent
from meter.store.outbox import insert_events
from meter.store.refund_state import refund_state, syncs, taken_back
from meter.store.reversals import _claim, _entry, _reversals

PREFIX = "refund_sync:"
OLD_PREFIX = "refund_failed:"  # one refund's credit back, before refund_sync
_LEDGER = "id, workspace_id, app_id, kind, pool, amount, reference, created_at, detail"
CreditResult = Literal["credited", "nothing", "changed", "unknown_refund", "unknown_payment",
                       "other_workspace", "currency_mismatch"]  # fmt: skip


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
    entry: LedgerEntry | None = None  # the credit back written
    credit: LedgerEntry | None = None  # the payment's credit
    prior: tuple[LedgerEntry, ...] = ()  # the payment's reversal entries before
    events: int = 0  # the provider events that reached the payment's reversals so far

    @property
    def seen(self) -> tuple[int | None, ...]:
        """What :meth:`RefundFailures.credit_back_refund` compares: the events counted
        and the reversal entries' ids."""
        return (self.events, *(e.id for e in self.prior))


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
        first, each with its payment's workspace and the last credit back of its charge."""
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
                like = (PREFIX + (r["charge"] or "")).replace("_", "\\_") + ":%"
                done = ws and await c.fetchrow(
                    f"SELECT {_LEDGER} FROM ledger WHERE workspace_id = ? AND (reference = ? "
                    "OR reference LIKE ? ESCAPE '\\') ORDER BY id DESC LIMIT 1",
                    ws, OLD_PREFIX + r["refund"], like,
                )  # fmt: skip
                back = _entry(done) if done else None
                out.append(_failure(r, workspace_id=ws, credited_back=back))
        return out

    async def credit_back_basis(self, workspace: str, refund: str) -> CreditBack:
        """What a credit back of the failed ``refund`` starts from: the failure, the
        payment's credit, its reversal entries and the count of provider events that
        reached them (``seen``: a credit back is written only if they are the same then),
        or why there is none (``result``)."""
        async with self.connection() as c:
            return await _basis(c, workspace, refund)

    async def credit_back_refund(
        self, workspace: str, refund: str, by: str, at: int, provider_refunded: int,
        seen: tuple[int | None, ...],
    ) -> CreditBack:  # fmt: skip
        """Lower the refunded part of the payment of the failed ``refund`` to
        ``provider_refunded`` (micro-dollars: what Stripe says is refunded of its charge,
        asked after :meth:`credit_back_basis` gave ``seen``): one entry
        ``refund_sync:<charge>:<n>`` of what that gives back; ``nothing`` (nothing
        written) when the refunded part is not above it, ``changed`` when the payment's
        reversals are no longer ``seen`` or an event reached them meanwhile, even one
        that wrote nothing (a repeated cumulative key): Stripe's answer may be older."""
        async with self.transaction() as c:
            done = await _basis(c, workspace, refund, self.for_update)
            failure, credit, prior = done.failure, done.credit, list(done.prior)
            if done.result != "credited" or failure is None or credit is None:
                return done
            if done.seen != seen:
                return replace(done, result="changed")
            charge = failure.charge or ""
            refunded, _ = refund_state(prior)
            if refunded - provider_refunded <= 0:
                return replace(done, result="nothing")
            n = syncs(prior, charge) + 1
            detail = {"cause": "refund_sync", "key": charge, "amount": refunded - provider_refunded,
                      "refunded": refunded, "provider_refunded": provider_refunded,
                      "credit": credit.reference, "payment_intent": failure.payment_intent,
                      "charge": charge, "refund": refund, "by": by}  # fmt: skip
            entry = LedgerEntry(workspace_id=workspace, kind="payment_reversed", amount=0,
                                reference=f"{PREFIX}{charge}:{n}", created_at=at,
                                app_id=credit.app_id, detail=detail)  # fmt: skip
            before = taken_back(credit.amount, prior)
            entry = replace(entry, amount=before - taken_back(credit.amount, [*prior, entry]))
            await insert_ledger_entry(c, entry)
            if entry.amount > 0:
                await insert_events(c, [_added_notice(entry, failure, credit)])
        return replace(done, entry=entry)


async def _basis(c: Conn, workspace: str, refund: str, lock: str = "") -> CreditBack:
    row = await c.fetchrow(f"SELECT {_COLS} FROM refund_failures WHERE refund = ?", refund)
    if row is None:
        return CreditBack("unknown_refund")
    failure = _failure(row)
    if (failure.currency or "").lower() != "usd":
        return CreditBack("currency_mismatch", failure)
    claim = await _claim(c, failure.payment_intent or "", lock)
    credit_row = claim and await c.fetchrow(
        f"SELECT {_LEDGER} FROM ledger WHERE workspace_id = ? AND reference = ?",
        claim["workspace_id"],
        claim["reference"],
    )
    credit = _entry(credit_row) if credit_row else None
    if credit is None or credit.kind != "topup" or not failure.charge:
        return CreditBack("unknown_payment", failure)
    if credit.workspace_id != workspace:
        return CreditBack("other_workspace", failure)
    prior = await _reversals(c, credit)
    events = int(claim["reversal_events"]) if claim else 0
    return CreditBack("credited", failure, None, credit, tuple(prior), events)


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
