"""Paid top-ups through the payment provider's hosted checkout (Stripe Checkout).

1. :func:`meter.accounts.checkouts.start_checkout` (the workspace owner): checks the
   amount, the app and the workspace's open checkouts, records a ``creating`` checkout,
   asks the provider for a checkout session (the HTTP call is a :data:`CreateSession`
   supplied by the gateway, so the metering core stays free of HTTP clients) and records
   the session as ``open``. Nothing is credited yet.
2. The provider calls the webhook with a signed event; the gateway verifies the
   signature and hands the event's session to :func:`handle_event`, which credits a
   paid session **exactly once per payment**: the checkout becomes ``paid`` and the
   ledger gets the top-up in one transaction keyed by ``checkout:<session id>``
   (unique), then the live balance and the ``funds.added`` notification follow, each
   idempotent by that same reference. Redeliveries, concurrent deliveries and a retry
   after a crash between these steps change nothing twice.

The same transaction claims the payment's identifiers (checkout id, session id, payment
intent; :mod:`meter.store.claims`): a payment an operator credited by hand first
(:func:`meter.accounts.credits.add_funds`) is not credited again, the checkout becomes
``credited_by_hand`` and the event is acknowledged (``credited_by_hand``;
``credited_by_hand_mismatch``, with a warning, when the operator credited another amount
than the payer paid: nothing is debited, ``creditgate reconcile`` lists it).

Events that must not credit (unknown session, an amount or currency that differs from
the checkout, a workspace that is no longer prepaid) are recorded with their outcome and
acknowledged, so the provider stops retrying; the checkout becomes ``rejected`` for an
operator to look at. The top-up limits are not checked again: the amount was checked
when the checkout was created, and the payer paid it. Events arrive in any order: a paid
checkout never becomes ``expired`` or ``failed``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from config.money import format_amount
from meter.accounts import credits
from meter.accounts.deps import Deps, audit
from meter.accounts.reversals import apply_reversals_of
from meter.errors import MeterError
from meter.store import Checkout, LedgerEntry

log = logging.getLogger(__name__)

PROVIDER = "stripe"
COMPLETED = "checkout.session.completed"
ASYNC_SUCCEEDED = "checkout.session.async_payment_succeeded"
ASYNC_FAILED = "checkout.session.async_payment_failed"
EXPIRED = "checkout.session.expired"
HANDLED = frozenset({COMPLETED, ASYNC_SUCCEEDED, ASYNC_FAILED, EXPIRED})

# What an event did (the webhook's answer and payment_events.outcome).
Outcome = Literal["credited", "already_credited", "credited_by_hand",
                  "credited_by_hand_mismatch", "pending", "expired",
                  "failed", "ignored", "unknown_checkout", "amount_mismatch", "outside_limits",
                  "not_prepaid", "wrong_mode"]  # fmt: skip

REFUSED = frozenset(
    {"unknown_checkout", "amount_mismatch", "outside_limits", "not_prepaid", "wrong_mode"}
)
REJECTED: dict[str, Outcome] = {
    "amount_mismatch": "amount_mismatch",
    "outside_limits": "outside_limits",
    "not_prepaid": "not_prepaid",
}


class PaymentsNotConfigured(MeterError):
    """The payment provider is not configured (no secret key or webhook secret)."""


class ProviderError(MeterError):
    """The provider refused or could not be reached; nothing was charged (HTTP 502)."""


@dataclass(frozen=True, slots=True)
class SessionRequest:
    """What the provider is asked for: one line item of ``amount_cents``."""

    checkout_id: str
    workspace_id: str
    app_id: str | None
    amount_cents: int
    currency: str
    success_url: str
    cancel_url: str

    @property
    def metadata(self) -> dict[str, str]:
        return {
            "checkout_id": self.checkout_id,
            "workspace_id": self.workspace_id,
            "app_id": self.app_id or "",
        }


@dataclass(frozen=True, slots=True)
class ProviderSession:
    """The provider's answer: its session id, where to send the payer, what it charges."""

    id: str
    url: str
    amount_total: int | None
    currency: str | None


CreateSession = Callable[[SessionRequest], Awaitable[ProviderSession]]


@dataclass(frozen=True, slots=True)
class SessionEvent:
    """A verified provider event about a checkout session (only the fields used)."""

    event_id: str
    type: str
    session_id: str | None = None
    payment_status: str | None = None
    amount_total: int | None = None
    currency: str | None = None
    payment_intent: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    livemode: bool | None = None  # the event's mode, None when it does not say


def cents(micros: int) -> int:
    return micros // credits.CENT


async def _find(d: Deps, ev: SessionEvent) -> Checkout | None:
    """The checkout an event is about: by session id, or by the checkout id in the
    metadata for a checkout whose session was not recorded yet."""
    if not ev.session_id:
        return None
    co = await d.store.get_checkout_by_session(ev.session_id)
    if co is not None:
        return co
    checkout_id = ev.metadata.get("checkout_id", "")
    co = await d.store.get_checkout(checkout_id) if checkout_id else None
    if co is None or co.session_id is not None:
        return None
    return co


async def handle_event(d: Deps, ev: SessionEvent) -> Outcome:
    """Act on one verified provider event; returns (and records) what it did."""
    co = await _find(d, ev) if ev.type in HANDLED else None
    outcome = await _decide(d, ev, co)
    await d.store.record_payment_event(
        ev.event_id,
        provider=PROVIDER,
        event_type=ev.type,
        session_id=ev.session_id,
        checkout_id=co.id if co else None,
        outcome=outcome,
        at=d.now_ms(),
    )
    if outcome in REFUSED:
        log.warning(
            "payment event %s (%s) for session %s not credited: %s",
            ev.event_id,
            ev.type,
            ev.session_id,
            outcome,
        )
    return outcome


async def _decide(d: Deps, ev: SessionEvent, co: Checkout | None) -> Outcome:
    if ev.type not in HANDLED:
        return "ignored"
    expected = d.settings.stripe_livemode
    if expected is not None and ev.livemode is not expected:
        # A test-mode event (a test card) must never credit, expire or fail a live
        # deployment's checkout, nor a live one a test deployment's.
        return "wrong_mode"
    if co is None or ev.session_id is None:
        return "unknown_checkout"
    if ev.metadata.get("workspace_id", co.workspace_id) != co.workspace_id:
        return "unknown_checkout"
    if ev.type == EXPIRED:
        await d.store.set_checkout_status(co.id, "expired", only_from=("creating", "open"))
        return "expired"
    if ev.type == ASYNC_FAILED:
        await d.store.set_checkout_status(co.id, "failed", only_from=("creating", "open"))
        return "failed"
    if ev.payment_status != "paid":
        return "pending"  # completed, the payment itself still on its way (async methods)
    rejected = await _reject_reason(d, ev, co)
    if rejected is not None:
        detail = {**co.detail, "rejected": rejected, "event_id": ev.event_id,
                  "amount_total": ev.amount_total, "currency": ev.currency}  # fmt: skip
        await d.store.set_checkout_status(
            co.id, "rejected", only_from=("creating", "open", "expired", "failed"), detail=detail
        )
        return rejected
    return await _credit(d, ev, co)


async def _credit(d: Deps, ev: SessionEvent, co: Checkout) -> Outcome:
    """Credit a paid event's checkout (once: a redelivery or a payment credited by hand
    first credits nothing)."""
    assert ev.session_id is not None
    entry = LedgerEntry(
        workspace_id=co.workspace_id,
        kind="topup",
        amount=co.amount,
        reference=f"checkout:{ev.session_id}",
        created_at=d.now_ms(),
        app_id=co.app_id,
        detail={
            "source": "checkout",
            "checkout_id": co.id,
            "session_id": ev.session_id,
            "payment_intent": ev.payment_intent,
            "event_id": ev.event_id,
            "by": co.created_by,
        },
    )
    done = await d.store.complete_checkout(
        co.id, ev.session_id, ev.payment_intent, entry, entry.created_at
    )
    if done in ("credited_by_hand", "credited_by_hand_mismatch"):
        if done == "credited_by_hand":
            log.info("payment event %s: checkout %s was credited by hand", ev.event_id, co.id)
        else:
            log.warning("payment event %s: checkout %s (%s paid) was credited by hand at "
                        "another amount: the operator settles the difference (reconcile "
                        "lists it)", ev.event_id, co.id, format_amount(co.amount))  # fmt: skip
        await apply_reversals_of(d, ev.payment_intent)
        return done
    if done == "already_credited":
        prior = await d.store.get_ledger_entry(co.workspace_id, entry.reference)
        entry = prior if prior is not None else entry
    await credits.apply_topup(d, entry, shown_reference=ev.session_id, checkout_id=co.id)
    await apply_reversals_of(d, ev.payment_intent)  # refunds or disputes that came first
    if done == "credited":
        after = {"checkout_id": co.id, "amount": format_amount(co.amount),
                 "app_id": co.app_id, "session_id": ev.session_id}  # fmt: skip
        await audit(d, f"provider:{PROVIDER}", "checkout.paid", f"workspace:{co.workspace_id}",
                    None, after)  # fmt: skip
    return done


async def _reject_reason(d: Deps, ev: SessionEvent, co: Checkout) -> Outcome | None:
    """Why a paid event must not be credited, if it must not.

    The amount was checked against the top-up limits when the checkout was created: the
    payment is what the payer was asked for, so limits changed since do not matter (a
    checkout refused ``outside_limits`` by an earlier version is credited by a
    redelivery). A workspace no longer prepaid (upgraded since) is refused: an operator
    settles that payment (a refund in the provider's dashboard, or the invoice).
    """
    if co.status in ("paid", "credited_by_hand"):
        # Credited before (by this webhook or by hand): the redelivery credits nothing,
        # and records the payment intent of one credited by hand (one more of its names).
        return None
    reason = str(co.detail.get("rejected"))
    if co.status == "rejected" and reason != "outside_limits":  # stays rejected
        return REJECTED.get(reason, "amount_mismatch")
    if ev.amount_total != cents(co.amount) or (ev.currency or "").lower() != co.currency:
        return "amount_mismatch"
    ws = await d.store.get_workspace(co.workspace_id)
    if ws is None or ws.type != "standard":
        return "not_prepaid"
    return None
