"""An operator's credit back of refunds that failed at the provider (operators only).

A refund's ``charge.refunded`` took the funds back; its failure, announced by the
provider's signed event, is kept (:mod:`meter.accounts.reversals`). Nothing credits it
back by itself. The operator asks, naming the failed refund, and what is credited back
comes from Stripe's truth, not from the failed refund's amount: Stripe is asked what is
refunded of the charge now (its refunds neither failed nor canceled, one short attempt:
:data:`ProviderRefunded`), and the payment's refunded part here is lowered to that
(:mod:`meter.store.refund_failures`): never more than the payment's reversals took and
did not give back, into the pool the payment credited. Nothing to lower (the refund's
own debit has not come yet, the failed part was refunded again, or it was credited back
already) is 409 ``nothing_to_credit_back`` with nothing written, so a later retry works;
a refund recorded while Stripe was asked is 409 ``refunded_meanwhile`` (ask again). The
live balance follows through ``grant.lua`` under the entry's marker, so the projection
check and ``reconcile --apply`` never apply it twice.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from config.money import MICROS_PER_DOLLAR, format_amount
from meter.accounts.deps import Deps, audit
from meter.accounts.reversals import apply_reversal
from meter.errors import Conflict, InvalidInput, NotFound
from meter.store import Workspace
from meter.store.refund_failures import CreditBack

REFUND_ID = re.compile(r"^(re|pyr)_[A-Za-z0-9_]{1,200}$")
CENT = MICROS_PER_DOLLAR // 100

ProviderRefunded = Callable[[str], Awaitable[int]]
"""What the provider says is refunded of a charge now (cents: the sum of its refunds
neither failed nor canceled); raises ``ProviderError`` when it could not tell (502)."""


async def credit_back(
    d: Deps, actor: str, ws: Workspace, refund: str, refunded: ProviderRefunded | None
) -> CreditBack:
    """Credit back what the payment of the failed ``refund`` of ``ws`` has taken for
    refunds above what the provider says is refunded of its charge (see the module)."""
    if not REFUND_ID.fullmatch(refund):
        raise InvalidInput("refund", "must be a refund id such as re_…")
    basis = await d.store.credit_back_basis(ws.id, refund)
    _refuse(basis, refund)
    if refunded is None:
        raise Conflict(
            "the payment provider is not configured (no secret key): what is refunded at "
            "Stripe cannot be asked",
            code="credit_back_unavailable",
        )
    f = basis.failure
    assert f is not None
    assert f.charge
    truth = await refunded(f.charge) * CENT
    done = await d.store.credit_back_refund(ws.id, refund, actor, d.now_ms(), truth, basis.seen)
    _refuse(done, refund)
    if done.result == "changed":
        raise Conflict(
            f"a refund or dispute of charge {f.charge} was recorded while Stripe was asked: "
            "ask again",
            code="refunded_meanwhile",
            field="refund",
        )
    if done.result == "nothing":
        for prior in done.prior:  # a crash before Redis is completed (each idempotent)
            await apply_reversal(d, prior)
        raise Conflict(
            f"nothing to credit back: Stripe says {format_amount(truth)} of charge {f.charge} "
            "is refunded, no less than the payment's refunds here (the refund's own debit "
            "may not have come yet: ask again once it has)",
            code="nothing_to_credit_back",
            field="refund",
        )
    e = done.entry
    assert e is not None
    await apply_reversal(d, e)  # idempotent by its reference (the projection check too)
    after = {"amount": format_amount(e.amount), "app_id": e.app_id, "reference": e.reference,
             "refund": refund, "provider_refunded": format_amount(truth)}  # fmt: skip
    await audit(d, actor, "funds.refund_credit", f"workspace:{ws.id}", None, after)
    return done


def _refuse(done: CreditBack, refund: str) -> None:
    f = done.failure
    if done.result in ("unknown_refund", "other_workspace") or f is None:
        # said as for an unknown one: no other tenant's data
        raise NotFound("failed refund", refund)
    if done.result == "unknown_payment":
        raise Conflict(
            f"refund {refund} is of payment intent {f.payment_intent} (charge {f.charge}), "
            "not credited here: nothing of it was taken back",
            code="payment_not_credited",
            field="refund",
        )
    if done.result == "currency_mismatch":
        raise Conflict(f"refund {refund} is in {f.currency}, not usd", code="currency_mismatch")
