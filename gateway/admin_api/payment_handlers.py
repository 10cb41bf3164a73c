"""Handlers of the payment routes: checkout, the provider's webhook, the transactions list."""

from __future__ import annotations

from aiohttp import web

from config.money import format_amount
from gateway.admin_api import list_schemas as ls
from gateway.admin_api import report_schemas as r
from gateway.admin_api.http import Call, json_response
from gateway.admin_api.validation import read_raw
from gateway.payments import PAYMENTS, SIGNATURE_HEADER, BadSignature
from gateway.problems import problem_response
from meter.accounts import checkouts, payments, refund_credits, reversals
from meter.accounts.pages import decode, limit_of, page
from meter.accounts.payments import PaymentsNotConfigured
from meter.store import LedgerEntry
from meter.timestamps import iso

SHOWN_PREFIXES = ("funds:", "checkout:")  # stripped: the reference as its owner knows it


async def create_checkout(call: Call) -> web.Response:
    ws = call.workspace
    body = call.parsed(r.CheckoutCreate)
    provider = call.request.config_dict[PAYMENTS]
    co = await checkouts.start_checkout(
        call.deps,
        call.principal.actor,
        ws,
        body.amount,
        app_id=body.app_id,
        create=provider.create_session if provider.can_checkout else None,
    )
    out = r.CheckoutOut(
        id=co.id,
        url=co.url or "",
        amount=format_amount(co.amount),
        app_id=co.app_id,
        status=co.status,
        created_at=iso(co.created_at) or "",
    )
    return json_response(out, 201)


async def stripe_webhook(call: Call) -> web.Response:
    """The provider's signed event: 400 (nothing changes) unless the signature holds."""
    provider = call.request.config_dict[PAYMENTS]
    if not provider.can_verify:
        raise PaymentsNotConfigured("no webhook secret is configured")
    payload = await read_raw(call.request, call.deps.settings.admin_body_timeout_s)
    try:
        event = provider.parse_event(payload, call.request.headers.get(SIGNATURE_HEADER))
    except BadSignature as exc:
        return problem_response(400, "invalid_signature", "Invalid signature", str(exc))
    if isinstance(event, reversals.ReversalEvent):  # a refund or a dispute
        # A dispute naming only its charge is resolved with the secret key, if there is one.
        resolve = provider.charge_payment_intent if provider.can_checkout else None
        # A refund after a credit back of its charge counts as Stripe says (stale amounts).
        refunded = provider.charge_refunded if provider.can_checkout else None
        outcome: str = await reversals.handle_event(call.deps, event, resolve, refunded)
    else:
        outcome = await payments.handle_event(call.deps, event)
    # Acknowledged whatever the outcome (recorded): a retry could not change it.
    return json_response(r.PaymentWebhookOut(received=True, outcome=outcome))


async def credit_back_refund(call: Call) -> web.Response:
    """An operator credits back what refunds that failed at the provider took (Stripe's
    refunded total of the charge decides)."""
    ws = call.workspace
    body = call.parsed(r.RefundCreditAdd)
    provider = call.request.config_dict[PAYMENTS]
    refunded = provider.charge_refunded if provider.can_checkout else None
    done = await refund_credits.credit_back(
        call.deps, call.principal.actor, ws, body.refund, refunded
    )
    e, f = done.entry, done.failure
    assert e is not None
    assert f is not None
    out = r.RefundCreditOut(
        workspace_id=ws.id,
        reference=e.reference,
        amount=format_amount(e.amount),
        app_id=e.app_id,
        created=True,
        created_at=iso(e.created_at) or "",
        refund=f.refund,
        refund_amount=format_amount(f.amount),
        payment_intent=f.payment_intent,
    )
    return json_response(out, 201)


def transaction_type(e: LedgerEntry) -> r.TransactionType:
    if e.kind == "grant_free":
        return "free_grant"
    if e.kind == "lapse":
        return "free_lapse"
    if e.kind == "topup":
        return "checkout" if e.reference.startswith("checkout:") else "manual_credit"
    if e.kind == "payment_reversed":
        credited_back = e.detail.get("cause") in ("refund_failed", "refund_sync")
        return "refund_failed" if credited_back else "payment_reversed"
    if e.kind == "dispute_reinstated":
        return "dispute_reinstated"
    return "refund_adjustment" if e.kind == "refund_adjust" else "reconcile"


def shown_reference(reference: str) -> str:
    for prefix in SHOWN_PREFIXES:
        if reference.startswith(prefix):
            return reference.removeprefix(prefix)
    return reference


async def list_transactions(call: Call) -> web.Response:
    ws = call.workspace
    q = call.query_as(ls.ListQuery)
    key = decode("transactions", q.cursor, (int,))
    limit = limit_of(q.limit)
    # Newest first by ledger id: entries added meanwhile never shift a page.
    rows = await call.deps.store.ledger_page(
        ws.id, before_id=key[0] if key else None, limit=limit + 1
    )
    p = page("transactions", rows, limit, lambda e: (e.id,))
    items = [
        r.TransactionOut(
            id=str(e.id),
            type=transaction_type(e),
            amount=format_amount(e.amount),
            pool=e.resolved_pool,
            app_id=e.app_id,
            reference=shown_reference(e.reference),
            created_at=iso(e.created_at) or "",
        )
        for e in p.items
    ]
    return json_response(
        r.TransactionsOut(workspace_id=ws.id, transactions=items, next_cursor=p.next_cursor)
    )
