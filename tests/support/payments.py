"""Money-in test helpers shared by the payment, refund and dispute tests: an admin
server whose Stripe is the local stand-in (:func:`paying`), signed webhook deliveries,
and the ledger and Redis reads they assert on (integer micro-dollars)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from gateway.webhooks import WebhookOptions
from meter.accounts import projection
from meter.usage.reconcile import reconcile
from tests.support.adminkit import Admin, admin_server
from tests.support.clock import Clock
from tests.support.stripe_standin import (
    SECRET_KEY,
    StripeStandIn,
    intent_of,
    paid,
    settings_with_stripe,
    signed,
    stripe_standin,
)

USD = 1_000_000
HOOK = "/v1/payments/stripe/webhook"

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]

Paying = tuple[Admin, StripeStandIn]


@asynccontextmanager
async def paying(
    store_url: str,
    redis_url: str,
    *,
    clock: Clock | None = None,
    traffic: bool = False,
    key: str = SECRET_KEY,
    **overrides: Any,
) -> AsyncIterator[Paying]:
    """An admin server whose Stripe is the local stand-in (accepting API key ``key``)."""
    async with stripe_standin(key) as standin:
        settings = settings_with_stripe(store_url, redis_url, standin, **overrides)
        # Owner notifications stay in the outbox: the tests count them there.
        options = WebhookOptions(poll_s=3600)
        kw: dict[str, Any] = {"clock": clock} if clock is not None else {}
        async with admin_server(settings, webhooks=options, traffic=traffic, **kw) as admin:
            yield admin, standin


async def deliver(admin: Admin, payload: bytes, signature: str | None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["Stripe-Signature"] = signature
    return await admin.api("POST", HOOK, data=payload, headers=headers)


async def paid_state(admin: Admin, ws: str) -> tuple[int, int, int, int]:
    """Checkout top-up rows in the ledger, funds.added events, Redis pool, Redis app funds."""
    rows = [
        e
        for e in await admin.store.ledger_entries(ws, kind="topup")
        if e.reference.startswith("checkout:")
    ]
    events = [e for e in await admin.store.list_events(ws) if e.event_type == "funds.added"]
    bal = await projection.read_balances(admin.redis, ws)
    return len(rows), len(events), bal.pool, sum(bal.app.values())


async def outcome(admin: Admin, payload: bytes) -> str:
    status, body = await deliver(admin, payload, signed(payload))
    assert status == 200, body  # acknowledged whatever it did: a retry changes nothing
    return str(body["outcome"])


async def bought(
    admin: Admin, standin: StripeStandIn, token: str, ws: str, amount: str, app: str | None = None
) -> str:
    """A checkout paid and credited; its payment intent."""
    body: dict[str, Any] = {"amount": amount, **({"app_id": app} if app else {})}
    co = await admin.ok("POST", f"/v1/workspaces/{ws}/checkout", token, body)
    session = standin.session_for(co["id"])
    assert await outcome(admin, paid(session)) == "credited"
    return intent_of(session)


async def reversals(admin: Admin, ws: str) -> list[tuple[str, int]]:
    """The workspace's reversal entries (kind, amount) in order."""
    return [
        (e.kind, e.amount)
        for e in await admin.store.ledger_entries(ws)
        if e.kind in ("payment_reversed", "dispute_reinstated")
    ]


async def paid_funds(admin: Admin, ws: str) -> tuple[int, dict[str, int]]:
    """Paid funds the ledger holds (shared, per app); Redis must hold the same."""
    totals = await admin.store.ledger_balance(ws)
    bal = await projection.read_balances(admin.redis, ws)
    assert (bal.pool, {a: v for a, v in bal.app.items() if v}) == (
        totals.shared,
        {a: v for a, v in totals.apps.items() if v},
    )
    return totals.shared, {a: v for a, v in totals.apps.items() if v}


async def no_discrepancy(admin: Admin, ws: str) -> None:
    [report] = await reconcile(admin.store, admin.redis, admin.settings, workspace=ws)
    assert report.differences == [], report
