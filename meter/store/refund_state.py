"""A payment's refunded part: what its reversal entries say must be taken back.

Refunds are keyed by the charge's cumulative ``amount_refunded``, which Stripe lowers
when a refund fails; an operator's credit back (``refund_sync``) lowers the refunded part
to what Stripe says is refunded, and a later refund's cumulative amount counts from
there (:mod:`meter.store.reversals`, :mod:`meter.store.refund_failures`).
"""

from __future__ import annotations

from meter.store.db import Conn
from meter.store.models import LedgerEntry

SYNCS = ("refund_sync", "refund_failed")  # an operator's credit back (refund_failed: older)


def refund_state(entries: list[LedgerEntry]) -> tuple[int, int]:
    """``(refunded, disputed)``: the refunded part a payment's reversal entries say (in
    ledger order: a refund's cumulative amount raises it to that, a credit back lowers it
    by its amount, never below zero) and the disputes not won (micro-dollars)."""
    refunded, disputed, won = 0, {}, set()
    for e in entries:
        cause, amount = e.detail.get("cause"), int(e.detail.get("amount", 0))
        key = str(e.detail.get("key", ""))
        if cause == "refund":
            refunded = max(refunded, amount)
        elif cause in SYNCS:
            refunded = max(0, refunded - amount)
        elif cause == "dispute":
            disputed[key] = amount
        elif cause == "dispute_won":
            won.add(key)
    return refunded, sum(a for k, a in disputed.items() if k not in won)


def syncs(entries: list[LedgerEntry], charge: str) -> int:
    """How many credit backs of ``charge``'s refunds the entries hold."""
    return sum(e.detail.get("cause") in SYNCS and e.detail.get("charge") == charge
               for e in entries)  # fmt: skip


def taken_back(credited: int, entries: list[LedgerEntry]) -> int:
    """What a payment's reversal entries say must be taken back (micro-dollars, >= 0):
    ``min(credited, refunded + disputes not won)`` (:func:`refund_state`)."""
    refunded, disputed = refund_state(entries)
    return max(0, min(credited, refunded + disputed))


async def seen(c: Conn, event: str, prior: list[LedgerEntry]) -> bool:
    """Whether provider event ``event`` was handled before (an entry of it, or its
    delivery recorded): after a credit back a cumulative amount no longer keys it. One
    held while its payment was not credited (``awaiting_payment``) counts too: the
    payment's credit recorded every event held, each an entry or a key already written
    (:func:`meter.store.reversals.settle_pending`), before any credit back of it."""
    if any(e.detail.get("event_id") == event for e in prior):
        return True
    return bool(await c.fetchrow("SELECT 1 AS x FROM payment_events WHERE event_id = ?",
                                 event))  # fmt: skip
