"""Payments given back at the provider: refunds and disputes stop buying service.

A top-up paid through Checkout is credited once (:mod:`meter.accounts.payments`). When
the operator refunds it in the provider's dashboard, or the payer disputes it (a
chargeback), the money left: the provider's signed ``charge.refunded`` and
``charge.dispute.*`` events take the funds the payment credited back, from the pool it
credited (the app's own funds or the shared pool), exactly once per refund and dispute
(:mod:`meter.store.reversals`): a ``payment_reversed`` ledger entry, then the live
balance (``reverse.lua``), idempotent by the entry's reference. A dispute won gives
them back (``dispute_reinstated``, through ``grant.lua``). The paid balance may go below
zero (credits already spent are not taken back, free credits are never touched); the
app is then refused for want of credit like any app that cannot pay.

The payment is found by its payment intent, claimed when it was credited: a checkout
credited by its webhook (which reported the intent), or a payment credited by hand under
its ``pi_…`` reference. A dispute that names only its charge (``charge: ch_…``, no
``payment_intent``: Stripe leaves it out for some API versions and payment methods) is
resolved at the provider first (:data:`ResolveCharge`, the gateway's charge lookup with
the secret key): the charge's own ``payment_intent``, the very field a ``charge.refunded``
event carries. An event about a payment intent not credited (yet) is kept
(``awaiting_payment``, acknowledged): the credit of that payment, by its checkout's
paid event or by hand under its ``pi_…``, records it in its own transaction and applies
it right after the top-up (:func:`apply_reversals_of`), so a refund Stripe delivers
before the paid event is not lost. One of a payment never credited here stays kept,
harmless. An event without a payment intent (a charge the provider knows under none,
or no secret key to ask with) is ``unknown_payment``; a lookup that fails raises
:class:`~meter.accounts.payments.ProviderError` before anything is recorded, so the
provider's retry of the delivery resolves it later.
A refund that fails at the provider afterwards (its own object's ``failed`` or
``canceled`` status) is ``refund_failed``: logged and kept (``refund_failures``), nothing
credited back by itself (see :data:`REFUND_UPDATES`); an operator credits it back once
(:mod:`meter.accounts.refund_credits`).
Every event of a payment applies all of that payment's reversals to the live balance
(each idempotent), so a crash between the ledger and Redis is healed by any redelivery;
the projection check heals it too.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Literal

from config.money import MICROS_PER_DOLLAR, format_amount
from meter.accounts import projection
from meter.accounts.deps import Deps, audit
from meter.errors import Conflict
from meter.store import LedgerEntry
from meter.store.refund_failures import RefundFailure
from meter.store.reversals import ACTOR, Cause, Reversal, Reversed, syncs

log = logging.getLogger(__name__)
CENT = MICROS_PER_DOLLAR // 100  # the provider's amounts are cents (as credits.CENT)

PROVIDER = "stripe"
REFUNDED = "charge.refunded"
DISPUTE_CREATED = "charge.dispute.created"
DISPUTE_WITHDRAWN = "charge.dispute.funds_withdrawn"
DISPUTE_CLOSED = "charge.dispute.closed"
DISPUTE_REINSTATED = "charge.dispute.funds_reinstated"
HANDLED = frozenset(
    {REFUNDED, DISPUTE_CREATED, DISPUTE_WITHDRAWN, DISPUTE_CLOSED, DISPUTE_REINSTATED}
)
# A refund that did not happen after all (its object's ``status`` ``failed`` or
# ``canceled``): recognised, kept and logged, never credited back by itself (an
# operator's credit back asks Stripe what is refunded: meter.accounts.refund_credits).
REFUND_UPDATES = frozenset({"charge.refund.updated", "refund.updated", "refund.failed"})

Outcome = Literal["reversed", "reinstated", "already_reversed", "unknown_payment",
                  "awaiting_payment", "not_reversed", "currency_mismatch",
                  "wrong_mode", "refund_failed", "ignored"]  # fmt: skip


ProviderRefunded = Callable[[str], Awaitable[int]]
"""What the provider says is refunded of a charge now (cents, its refunds neither failed
nor canceled); raises ``ProviderError`` when it could not tell (answered 502, retried)."""
ResolveCharge = Callable[[str], Awaitable[str | None]]
"""The payment intent of a charge (``ch_…``/``py_…``) as the provider says, ``None`` when
it has none or the provider knows no such charge; raises ``ProviderError`` when the
provider could not be asked (nothing is recorded: the delivery is answered 502 and
retried)."""


@dataclass(frozen=True, slots=True)
class ReversalEvent:
    """A verified provider event about a charge or a dispute (only the fields used).

    ``object_id``: the charge (``ch_…``) or the dispute (``dp_…``); ``amount``: cents,
    the charge's cumulative ``amount_refunded`` or the dispute's ``amount``."""

    event_id: str
    type: str
    object_id: str | None = None
    payment_intent: str | None = None
    charge: str | None = None
    amount: int | None = None
    currency: str | None = None
    status: str | None = None
    livemode: bool | None = None
    refund: bool = False  # the object is one refund (``re_…``), not a charge or a dispute


def _cause(ev: ReversalEvent) -> Cause | None:
    """What the event does to its payment, if anything. A dispute that is an inquiry
    (``warning_…``) withdrew no funds; one closed won gives them back, lost keeps (or,
    arriving first, takes) them."""
    if ev.type == REFUNDED:
        return "refund"
    if (ev.status or "").startswith("warning_"):
        return None
    if ev.type in (DISPUTE_CREATED, DISPUTE_WITHDRAWN):
        return "dispute"
    if ev.type == DISPUTE_REINSTATED or (ev.type == DISPUTE_CLOSED and ev.status == "won"):
        return "dispute_won"
    if ev.type == DISPUTE_CLOSED and ev.status == "lost":
        return "dispute"
    return None


async def handle_event(
    d: Deps,
    ev: ReversalEvent,
    resolve: ResolveCharge | None = None,
    refunded: ProviderRefunded | None = None,
) -> Outcome:
    """Act on one verified refund or dispute event; returns (and records) what it did.
    ``resolve``: how to find the payment intent of a dispute that names only its charge
    (``None``: such a dispute is ``unknown_payment``); ``refunded``: what Stripe says is
    refunded of a charge (:func:`_as_stripe_says`; ``None``: the event's amount stands)."""
    outcome, checkout = await _decide(d, ev, resolve, refunded)
    await d.store.record_payment_event(
        ev.event_id,
        provider=PROVIDER,
        event_type=ev.type,
        session_id=checkout[1] if checkout else None,
        checkout_id=checkout[0] if checkout else None,
        outcome=outcome,
        at=d.now_ms(),
    )
    if outcome == "refund_failed":
        log.warning(
            "payment event %s (%s): refund %s of charge %s (payment intent %s) of %s cents "
            "%s at the provider: the debit its charge.refunded made stands until an operator "
            "credits it back (README: a refund that fails)",
            ev.event_id, ev.type, ev.object_id, ev.charge, ev.payment_intent, ev.amount,
            ev.status,
        )  # fmt: skip
    if outcome in ("unknown_payment", "currency_mismatch"):
        log.warning(
            "payment event %s (%s) for %s (charge %s) / payment intent %s not reversed: %s",
            ev.event_id, ev.type, ev.object_id, ev.charge, ev.payment_intent, outcome,
        )  # fmt: skip
    return outcome


async def _decide(
    d: Deps, ev: ReversalEvent, resolve: ResolveCharge | None, refunded: ProviderRefunded | None
) -> tuple[Outcome, tuple[str, str | None] | None]:
    expected = d.settings.stripe_livemode
    if expected is not None and ev.livemode is not expected:
        return "wrong_mode", None
    if ev.refund:  # one refund's own events: only a failed or canceled one is news
        return await _refund_update(d, ev)
    cause = _cause(ev)
    if cause is None:
        return "not_reversed", None
    if not ev.payment_intent and ev.charge and ev.charge != ev.object_id and resolve:
        # A dispute naming only its charge: the charge's payment intent, from the provider
        # (a charge event carries its own, or has none).
        ev = replace(ev, payment_intent=await resolve(ev.charge))
    if not ev.payment_intent or not ev.object_id or ev.amount is None or ev.amount < 0:
        return "unknown_payment", None
    if (ev.currency or "").lower() != "usd":  # ledger amounts are micro-dollars
        return "currency_mismatch", None
    rev = Reversal(
        payment_intent=ev.payment_intent,
        cause=cause,
        key=ev.object_id,
        amount=ev.amount * CENT,
        detail={"event_id": ev.event_id, "charge": ev.charge or ev.object_id},
    )
    done = await _reverse(d, rev, refunded)
    assert done.result != "changed"  # _reverse asked again
    if done.result == "awaiting_payment":
        log.warning("payment event %s (%s): payment intent %s not credited yet, kept for "
                    "its credit (reconcile lists it after a day)",
                    ev.event_id, ev.type, ev.payment_intent)  # fmt: skip
        return "awaiting_payment", None
    if done.credit is None:
        return "unknown_payment", None
    for e in done.entries:
        await apply_reversal(d, e)
    if done.entry is not None and done.entry.amount:
        e = done.entry
        after = {"amount": format_amount(e.amount), "app_id": e.app_id,
                 "reference": e.reference, "credit": done.credit.reference}  # fmt: skip
        await audit(d, ACTOR, f"payment.{done.result}",
                    f"workspace:{e.workspace_id}", None, after)  # fmt: skip
    co = await d.store.get_checkout_by_payment_intent(ev.payment_intent)
    return done.result, ((co.id, co.session_id) if co else None)


async def _reverse(d: Deps, rev: Reversal, refunded: ProviderRefunded | None) -> Reversed:
    """Record ``rev``; asked again while a credit back of its charge commits meanwhile
    (a Conflict, retried by the provider, if that keeps happening)."""
    for _ in range(3):
        done = await d.store.reverse_payment(await _as_stripe_says(rev, d, refunded), d.now_ms())
        if done.result != "changed":
            return done
    raise Conflict(f"charge {rev.key} was credited back meanwhile: retry",
                   code="refunded_meanwhile")  # fmt: skip


async def _as_stripe_says(rev: Reversal, d: Deps, refunded: ProviderRefunded | None) -> Reversal:
    """A refund of a charge credited back before counts for no more than Stripe says is
    refunded of it now: its cumulative amount may be stale (a refund made before another
    of the charge failed, delivered after the operator's credit back of that failure),
    and taking it would debit the failed part again. ``syncs`` (the credit backs seen)
    lets the store tell a credit back committed meanwhile (``changed``: asked again)."""
    if rev.cause != "refund" or refunded is None:
        return rev
    n = syncs(await d.store.reversals_of(rev.payment_intent), rev.key)
    detail = {**rev.detail, "syncs": n}
    if not n:
        return replace(rev, detail=detail)
    truth = await refunded(rev.key) * CENT
    detail |= {"event_amount": rev.amount, "provider_refunded": truth}
    return replace(rev, amount=min(rev.amount, truth), detail=detail)


async def _refund_update(
    d: Deps, ev: ReversalEvent
) -> tuple[Outcome, tuple[str, str | None] | None]:
    """A refund's own event: a failed or canceled one is kept for the operator's credit
    back (:mod:`meter.accounts.refund_credits`), any other is ``ignored``."""
    if ev.type not in REFUND_UPDATES or ev.status not in ("failed", "canceled"):
        return "ignored", None
    if ev.object_id and ev.amount is not None and ev.amount >= 0:
        await d.store.record_refund_failure(RefundFailure(
            ev.object_id, ev.payment_intent, ev.charge, ev.amount * CENT,
            ev.currency, ev.status, ev.event_id, d.now_ms(),
        ))  # fmt: skip
    co = await d.store.get_checkout_by_payment_intent(ev.payment_intent or "")
    return "refund_failed", ((co.id, co.session_id) if co else None)


async def apply_reversals_of(d: Deps, payment_intent: str | None) -> None:
    """Apply every reversal of the payment credited under ``payment_intent`` to the live
    balance (each idempotent): those its credit recorded, held since they came first."""
    if payment_intent:
        for e in await d.store.reversals_of(payment_intent):
            await apply_reversal(d, e)


async def apply_reversal(d: Deps, e: LedgerEntry) -> bool:
    """The live balance of a recorded reversal (idempotent by its reference): funds
    taken back (``reverse.lua``), or given back (``grant.lua``: apps may serve again)."""
    if e.amount < 0:
        return await projection.reverse(
            d.redis, e.workspace_id, reference=e.reference, amount=-e.amount,
            app_id=e.app_id or "", now_ms=d.now_ms(),
        )  # fmt: skip
    if e.amount > 0:
        return await projection.grant(
            d.redis, e.workspace_id, reference=e.reference, kind="funds", amount=e.amount,
            low_threshold=d.settings.low_balance_threshold, app_id=e.app_id or "",
        )  # fmt: skip
    return False
