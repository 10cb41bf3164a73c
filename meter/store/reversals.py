"""Payments given back at the provider: what a refund or a dispute takes back, once.

A payment credited here (by its checkout's webhook or by hand under its ``pi_…``) is
found by its payment intent in ``payment_claims`` (:mod:`meter.store.claims`), which
names the ledger entry that credited it. A refund or dispute of a payment intent not
credited yet (Stripe delivers events in any order: a refund may come before the
checkout's paid event) is kept in ``pending_reversals`` (``awaiting_payment``) and
recorded by the transaction that credits that payment (:func:`settle_pending`, called
by the checkout's credit and by a credit by hand); one of a payment never credited here
stays there, harmless. Each provider event about a payment writes at most one ledger
entry, keyed by what the event says (the ledger's unique ``(workspace, reference)``
makes a redelivery write nothing):

* a refund ``refund:<charge>:<cumulative cents>`` (the charge's ``amount_refunded``
  after that refund), kind ``payment_reversed``; after ``n`` credit backs of the charge
  ``refund:<charge>:<cumulative cents>:<n>`` (a failed refund lowers ``amount_refunded``,
  so a later refund can repeat a cumulative amount), an event handled before skipped,
  the cumulative amount no more than Stripe lists refunded (``syncs`` in its detail: the
  credit backs seen when Stripe was asked; another count is ``changed``, asked again);
* a dispute that took the funds ``dispute:<dispute id>`` (opened, or closed lost),
  kind ``payment_reversed``;
* a dispute won ``dispute_won:<dispute id>``, kind ``dispute_reinstated``;
* an operator's credit back of refunds that failed ``refund_sync:<charge>:<n>`` (the
  n-th; ``refund_failed:<refund id>`` before), kind ``payment_reversed``, amount >= 0:
  the refunded part lowered to what Stripe says (:mod:`meter.store.refund_failures`).

The amount of each is the difference between what the payment's entries took back so
far and what all of them, this one included, say must be taken back:
``min(credited, refunded part + disputes not won)``, the refunded part the highest
cumulative refund since the last credit back (:func:`refund_state`). So partial refunds
debit each their own part, a late smaller cumulative amount debits nothing, and nothing
ever takes back more than was credited. The entries of one payment are written one at a
time (PostgreSQL: the payment's claim row is locked first; SQLite: ``BEGIN IMMEDIATE``).
Every entry is written even when it moves nothing (amount 0: a dispute whose won entry
came first, a refund already covered by an open dispute or a larger refund), so the
payment's state is known whatever order the events come in, and the final balance is the
same for every order (a dispute won after a full refund gives nothing back). An entry of
amount 0 changes no live balance and carries no marker (:func:`meter.accounts.rebuild.marked`);
its event answers ``already_reversed`` (never ``reversed`` or ``reinstated``), and it is
listed in the workspace's transactions like any entry (bookkeeping: 0.00).

An entry that takes money back (amount below 0) queues the owner notification
``funds.reversed`` in the same transaction (outbox, event id ``<ws>:<reference>``): once
per reversal, whatever redelivers it, and never for one that moved nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from config.money import format_amount
from meter.store.db import Conn, Row, StoreCore, dumps, loads, row_as
from meter.store.ledger import insert_ledger_entry
from meter.store.models import REVERSAL_KINDS, LedgerEntry, OutboxEvent
from meter.store.outbox import insert_events
from meter.store.refund_state import SYNCS, refund_state, seen, syncs, taken_back

__all__ = ["SYNCS", "refund_state", "syncs", "taken_back"]  # re-exported

Cause = Literal["refund", "dispute", "dispute_won"]
ReversalResult = Literal[
    "reversed",
    "reinstated",
    "already_reversed",
    "unknown_payment",
    "awaiting_payment",
    "changed",
]

ACTOR = "provider:stripe"  # the audit's actor of a reversal (the accounts layer's too)
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


async def _record(c: Conn, claim: Row, rev: Reversal, at: int) -> Reversed:
    """Record ``rev`` against the payment ``claim`` names, inside ``c``'s transaction;
    every event counts on the claim (``reversal_events``), whatever it writes."""
    await c.execute("UPDATE payment_claims SET reversal_events = reversal_events + 1 "
                    "WHERE identifier = ?", rev.payment_intent)  # fmt: skip
    ws = claim["workspace_id"]
    row = await c.fetchrow(
        f"SELECT {_LEDGER} FROM ledger WHERE workspace_id = ? AND reference = ?",
        ws,
        claim["reference"],
    )
    credit = _entry(row) if row else None
    if credit is None or credit.kind != "topup" or credit.amount <= 0:
        return Reversed("unknown_payment")
    prior = await _reversals(c, credit)
    reference = rev.reference
    n = syncs(prior, rev.key) if rev.cause == "refund" else 0
    if n:  # after n credit backs a cumulative amount may come again: a key of its own
        reference = f"{reference}:{n}"
        if await seen(c, str(rev.detail.get("event_id")), prior):
            return Reversed("already_reversed", credit, tuple(prior))
    if rev.detail.get("syncs", n) != n:  # Stripe asked before a credit back committed
        return Reversed("changed", credit, tuple(prior))
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
    if entry.amount < 0:
        await insert_events(c, [_reversed_notice(entry, rev, credit)])
    result: ReversalResult = "reinstated" if rev.cause == "dispute_won" else "reversed"
    if not entry.amount:  # recorded, moves nothing: a dispute or a win after a full refund
        result = "already_reversed"
    return Reversed(result, credit, (*prior, entry), entry)


def _reversed_notice(e: LedgerEntry, rev: Reversal, credit: LedgerEntry) -> OutboxEvent:
    """``funds.reversed``: what ``e`` took back (a positive amount), why, from where."""
    payload = {
        "amount": format_amount(-e.amount),
        "reason": "refund" if rev.cause == "refund" else "dispute",
        "app_id": e.app_id,
        "reference": e.reference,  # as the transactions list it
        "payment_intent": rev.payment_intent,
        "charge": rev.detail.get("charge") or (rev.key if rev.cause == "refund" else None),
        "dispute_id": None if rev.cause == "refund" else rev.key,
        "credit": credit.reference.removeprefix("checkout:").removeprefix("funds:"),
    }
    ws = e.workspace_id
    return OutboxEvent(ws, f"{ws}:{e.reference}", "funds.reversed", payload, e.created_at)


async def _reversals(c: Conn, credit: LedgerEntry) -> list[LedgerEntry]:
    rows = await c.fetch(
        f"SELECT {_LEDGER} FROM ledger WHERE workspace_id = ? AND kind IN ({_KINDS}) ORDER BY id",
        credit.workspace_id,
    )
    return [e for e in map(_entry, rows) if e.detail.get("credit") == credit.reference]


async def _claim(c: Conn, payment_intent: str, lock: str = "") -> Row | None:
    return await c.fetchrow(
        f"SELECT workspace_id, reference, reversal_events FROM payment_claims "
        f"WHERE identifier = ?{lock}",
        payment_intent,
    )


async def _hold(c: Conn, rev: Reversal, at: int) -> bool:
    """Keep ``rev`` for a payment not credited yet (``pending_reversals``); ``False``
    when its credit committed meanwhile (then it is recorded against that credit).

    A placeholder claim of the payment intent, deleted before the commit, orders this
    with a credit of the same payment committing now: on PostgreSQL the credit's claim
    waits on the placeholder's key until this commits (then it reads the held reversal),
    or this waits on the credit's claim (then it finds the claim). SQLite's ``BEGIN
    IMMEDIATE`` orders them already."""
    if not await c.execute(
        "INSERT INTO payment_claims (identifier, workspace_id, reference, created_at) "
        "VALUES (?, '', '', ?) ON CONFLICT (identifier) DO NOTHING",
        rev.payment_intent,
        at,
    ):
        return False
    await c.execute(
        "INSERT INTO pending_reversals (payment_intent, reference, cause, object_id, amount, "
        "detail, received_at) VALUES (?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (payment_intent, reference) DO NOTHING",
        rev.payment_intent, rev.reference, rev.cause, rev.key, rev.amount, dumps(rev.detail),
        at,
    )  # fmt: skip
    await c.execute(
        "DELETE FROM payment_claims WHERE identifier = ? AND reference = ''", rev.payment_intent
    )
    return True


async def settle_pending(c: Conn, identifiers: Iterable[str], at: int) -> None:
    """Record the reversals held for the payment intents among ``identifiers`` against
    the credit that claimed them, inside the transaction of that credit (which claimed
    them first: see :func:`_hold`), each that moves money with its audit entry (as one
    recorded when its event came, ``held_since``: when it came)."""
    for pi in sorted({i for i in identifiers if i.startswith("pi_")}):
        rows = await c.fetch(
            "SELECT cause, object_id, amount, detail, received_at FROM pending_reversals "
            "WHERE payment_intent = ? ORDER BY received_at, reference",
            pi,
        )
        claim = await _claim(c, pi) if rows else None
        if claim is None:
            continue
        for r in rows:
            rev = Reversal(pi, r["cause"], r["object_id"], int(r["amount"]),
                           loads(r["detail"]) or {})  # fmt: skip
            done = await _record(c, claim, rev, at)
            if done.entry is not None and done.credit is not None and done.entry.amount:
                await _audit(c, done.entry, done.credit, done.result, r["received_at"], at)
        await c.execute("DELETE FROM pending_reversals WHERE payment_intent = ?", pi)


async def _audit(
    c: Conn, e: LedgerEntry, credit: LedgerEntry, result: str, held_since: int, at: int
) -> None:
    after = {"amount": format_amount(e.amount), "app_id": e.app_id, "reference": e.reference,
             "credit": credit.reference, "held_since": int(held_since)}  # fmt: skip
    await c.execute(
        "INSERT INTO audit_log (at, actor, action, target, before, after) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        at, ACTOR, f"payment.{result}", f"workspace:{e.workspace_id}", dumps(None), dumps(after),
    )  # fmt: skip


class Reversals(StoreCore):
    async def reverse_payment(self, rev: Reversal, at: int) -> Reversed:
        """Record ``rev`` against the payment its payment intent names, in one
        transaction (see the module's docstring); ``awaiting_payment``: no credit of it
        yet, kept for the credit to record."""
        async with self.transaction() as c:
            claim = await _claim(c, rev.payment_intent, self.for_update)
            if claim is None and rev.payment_intent.startswith("pi_"):
                if await _hold(c, rev, at):
                    return Reversed("awaiting_payment")
                claim = await _claim(c, rev.payment_intent, self.for_update)
            if claim is None:
                return Reversed("unknown_payment")
            return await _record(c, claim, rev, at)

    async def kept_reversals(self, before: int) -> list[tuple[str, str, int]]:
        """Refunds and disputes kept (``awaiting_payment``) since before ``before`` (ms):
        ``(payment intent, reference, received at)``, oldest first."""
        async with self.connection() as c:
            rows = await c.fetch(
                "SELECT payment_intent, reference, received_at FROM pending_reversals "
                "WHERE received_at < ? ORDER BY received_at, payment_intent, reference",
                before,
            )
        return [(r["payment_intent"], r["reference"], int(r["received_at"])) for r in rows]

    async def reversals_of(self, payment_intent: str) -> list[LedgerEntry]:
        """Every reversal entry of the payment credited under ``payment_intent``."""
        async with self.connection() as c:
            claim = await _claim(c, payment_intent)
            row = claim and await c.fetchrow(
                f"SELECT {_LEDGER} FROM ledger WHERE workspace_id = ? AND reference = ?",
                claim["workspace_id"],
                claim["reference"],
            )
            return await _reversals(c, _entry(row)) if row else []
