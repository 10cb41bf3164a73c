"""An operator's credit back of a refund that failed at the provider (operators only).

The refund's ``charge.refunded`` took the funds back; its failure, announced by the
provider's signed event, is kept (:mod:`meter.accounts.reversals`). Nothing credits it
back by itself: refunds are keyed by the charge's cumulative ``amount_refunded``, so a
refund made again after the failure can carry a failed one's key and debit nothing. The
operator, once it is settled that no refund of it follows, credits it back here: the
failed refund's amount, not bound by the top-up limits but by what the payment's
reversals took and was not given back yet, once per refund, into the pool the payment
credited (:mod:`meter.store.refund_failures`). The live balance follows through
``grant.lua`` under the entry's marker, so a retry, the projection check and
``reconcile --apply`` never apply it twice.
"""

from __future__ import annotations

import re

from config.money import format_amount
from meter.accounts.deps import Deps, audit
from meter.accounts.reversals import apply_reversal
from meter.errors import Conflict, InvalidInput, NotFound
from meter.store import Workspace
from meter.store.refund_failures import CreditBack

REFUND_ID = re.compile(r"^(re|pyr)_[A-Za-z0-9_]{1,200}$")


async def credit_back(d: Deps, actor: str, ws: Workspace, refund: str) -> CreditBack:
    """Credit back the failed ``refund`` of a payment of ``ws``; a retry answers the same
    entry (``result`` ``already``) and completes its live balance."""
    if not REFUND_ID.fullmatch(refund):
        raise InvalidInput("refund", "must be a refund id such as re_…")
    done = await d.store.credit_back_refund(ws.id, refund, actor, d.now_ms())
    f = done.failure
    if done.result == "unknown_refund" or f is None:
        raise NotFound("failed refund", refund)
    if done.result == "other_workspace":  # said as for an unknown one: no other tenant's data
        raise NotFound("failed refund", refund)
    if done.result == "unknown_payment":
        raise Conflict(
            f"refund {refund} is of payment intent {f.payment_intent}, not credited here: "
            "nothing of it was taken back",
            code="payment_not_credited",
            field="refund",
        )
    if done.result == "refunded_since":
        raise Conflict(
            f"a refund of charge {f.charge} was recorded after refund {refund} failed: "
            "perhaps the failed part refunded again (check Stripe's refunded total against "
            "the payment's refund: transactions); not credited back",
            code="refunded_after_failure",
            field="refund",
        )
    if done.result == "currency_mismatch":
        raise Conflict(f"refund {refund} is in {f.currency}, not usd", code="currency_mismatch")
    e = done.entry
    assert e is not None
    await apply_reversal(d, e)  # idempotent by its reference (a retry completes it)
    if done.result == "credited":
        after = {"amount": format_amount(e.amount), "app_id": e.app_id,
                 "reference": e.reference, "refund_amount": format_amount(f.amount)}  # fmt: skip
        await audit(d, actor, "funds.refund_credit", f"workspace:{ws.id}", None, after)
    return done
