"""Paid funds: top-ups of the shared workspace pool or of one app.

Funds are paid for: an owner's top-up is a checkout with the payment provider
(:mod:`meter.accounts.payments`), credited when the provider confirms; operators credit funds by
hand (e.g. a bank transfer) with :func:`add_funds`, always with a reference.

One payment is credited once, by its webhook or by hand, whichever comes first
(:mod:`meter.store.claims`): a reference that names a payment (a checkout's id, the
provider's session id ``cs_…`` or payment intent ``pi_…``, in any spelling the ledger
uses) claims it; crediting a payment claimed already is 409 (``reference_is_checkout``
when its checkout is known), and a webhook that comes after a credit by hand credits
nothing. A checkout whose payment intent is not known yet (its paid event did not come)
is credited by hand under its ``pi_…`` only (409 ``payment_intent_required`` for its id
or session id: its refunds and disputes, which name the payment intent, would not find
that credit). A credit by hand naming a known checkout is of that checkout's amount
(else 409 ``amount_mismatch``).

A top-up is idempotent by its ledger ``reference`` across three writes, each keyed by
it: the ledger entry (unique ``(workspace, reference)``), the live balance in Redis
(``grant.lua``'s marker) and the ``funds.added`` outbox event (its ``event_id``). A retry
with the same reference after a crash between them completes the missing parts and
changes nothing twice; the same reference with a different amount or app is a conflict.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from config.money import MICROS_PER_DOLLAR, InvalidAmount, format_amount, parse_amount
from meter.accounts import projection
from meter.accounts.deps import Deps, audit
from meter.accounts.reversals import apply_reversals_of
from meter.errors import Conflict, InvalidInput
from meter.store import LedgerEntry, OutboxEvent, Workspace
from meter.store.claims import payment_id
from meter.store.payments import ManualCredit

REFERENCE_RE = re.compile(r"^[A-Za-z0-9._:-]{1,100}$")
CENT = MICROS_PER_DOLLAR // 100


@dataclass(frozen=True, slots=True)
class TopUp:
    """The ledger entry of a top-up and whether this call created it."""

    entry: LedgerEntry
    created: bool


def parse_topup(d: Deps, amount: str) -> int:
    """A top-up amount in micro-dollars: plain decimal, whole cents, within the limits."""
    try:
        micros = parse_amount(amount)
    except InvalidAmount:
        raise InvalidInput("amount", "must be a plain decimal string such as '100.00'") from None
    if micros % CENT:
        raise InvalidInput("amount", "must be whole cents (at most 2 decimals)")
    lo, hi = d.settings.topup_min, d.settings.topup_max
    if not lo <= micros <= hi:
        raise InvalidInput("amount", f"must be between {format_amount(lo)} and {format_amount(hi)}")
    return micros


def funds_reference(reference: str) -> str:
    if not REFERENCE_RE.fullmatch(reference):
        raise InvalidInput("reference", "must be 1-100 of A-Z a-z 0-9 . _ : -")
    return "funds:" + reference


async def add_funds(
    d: Deps,
    actor: str,
    ws: Workspace,
    amount: str,
    *,
    app_id: str | None = None,
    reference: str,
) -> TopUp:
    """Credit paid funds by hand (operators) to the shared pool, or to ``app_id`` only."""
    if ws.type != "standard":
        raise Conflict(
            f"workspace {ws.id} is enterprise: usage is invoiced, not prepaid",
            code="postpaid_workspace",
        )
    micros = parse_topup(d, amount)
    if app_id is not None:
        app = await d.store.get_app(app_id)
        if app is None or app.workspace_id != ws.id:
            raise InvalidInput("app_id", f"no app {app_id} in workspace {ws.id}")
    ref = funds_reference(reference)
    entry = LedgerEntry(
        workspace_id=ws.id,
        kind="topup",
        amount=micros,
        reference=ref,
        created_at=d.now_ms(),
        app_id=app_id,
        detail={"by": actor, "source": "manual"},
    )
    done = await d.store.credit_by_hand(entry, payment_id(reference))
    _refuse_paid_twice(reference, ws, done)
    created = done.created
    if not created:
        prior = await d.store.get_ledger_entry(ws.id, ref)
        if prior is None or prior.amount != micros or prior.app_id != app_id:
            raise Conflict(
                f"reference {reference} was used for another top-up",
                code="reference_reused",
                field="reference",
            )
        entry = prior
    await apply_topup(d, entry, shown_reference=reference)
    co = done.checkout
    for pi in {payment_id(reference), co.payment_intent if co else None}:
        await apply_reversals_of(d, pi if pi and pi.startswith("pi_") else None)
    if created:
        after = {"amount": format_amount(micros), "app_id": app_id, "reference": ref}
        await audit(d, actor, "funds.add", f"workspace:{ws.id}", None, after)
    return TopUp(entry=entry, created=created)


def _refuse_paid_twice(reference: str, ws: Workspace, done: ManualCredit) -> None:
    """409 when the payment ``reference`` names is another workspace's checkout, was
    credited already (by its webhook or by hand under another reference), or is a
    checkout of another amount (``amount_mismatch``) or whose payment intent is not known
    (``payment_intent_required``)."""
    co, holder = done.checkout, done.holder
    if co is not None and co.workspace_id != ws.id:
        raise Conflict(
            f"reference {reference} names a checkout of another workspace",
            code="reference_is_checkout",
            field="reference",
        )
    if done.no_intent and co is not None:
        raise Conflict(
            f"reference {reference} names checkout {co.id}, whose payment intent is not "
            "known here yet: credit its payment by hand under its payment intent (pi_…, "
            "shown on the payment in Stripe's dashboard), so that its refunds and disputes "
            "find the credit",
            code="payment_intent_required",
            field="reference",
        )
    if done.mismatch and co is not None:
        raise Conflict(
            f"reference {reference} names checkout {co.id} of {format_amount(co.amount)} "
            f"{co.currency.upper()}: a credit by hand of its payment is that amount (its "
            "webhook then credits nothing); credit another sum under another reference",
            code="amount_mismatch",
            field="amount",
        )
    if holder is None:
        return
    where = "" if holder.workspace_id == ws.id else f" of workspace {holder.workspace_id}"
    if co is not None or holder.reference.startswith("checkout:"):
        raise Conflict(
            f"reference {reference} names a checkout's payment, credited already as "
            f"{holder.reference}{where}",
            code="reference_is_checkout",
            field="reference",
        )
    raise Conflict(
        f"reference {reference} names a payment credited already as {holder.reference}{where}",
        code="reference_reused",
        field="reference",
    )


async def apply_topup(d: Deps, entry: LedgerEntry, *, shown_reference: str, **extra: str) -> None:
    """The live balance and the ``funds.added`` notification of a recorded top-up.

    Both are idempotent by the entry's reference, so this runs again on every retry: a
    crash after the ledger commit is completed by the next attempt, never doubled.
    """
    ws_id = entry.workspace_id
    await projection.grant(
        d.redis,
        ws_id,
        reference=entry.reference,
        kind="funds",
        amount=entry.amount,
        low_threshold=d.settings.low_balance_threshold,
        app_id=entry.app_id or "",
    )
    payload = {
        "amount": format_amount(entry.amount),
        "app_id": entry.app_id,
        "reference": shown_reference,
        **extra,
    }
    await d.store.enqueue(
        OutboxEvent(
            workspace_id=ws_id,
            event_id=f"{ws_id}:{entry.reference}",
            event_type="funds.added",
            payload=payload,
            created_at=entry.created_at,
        )
    )
