"""A dispute that names only its charge takes the payment back like one naming its intent.

Stripe's dispute object carries ``charge`` always, ``payment_intent`` not always (older
API versions, some payment methods): such a dispute answered ``unknown_payment`` and took
nothing. The gateway now asks Stripe for the charge (``GET /v1/charges/{id}`` with the
secret key, here the local stand-in) and uses the charge's ``payment_intent``, the field
a ``charge.refunded`` event carries. Everything real: the admin application, redis-server,
SQLite and PostgreSQL, the official ``stripe`` library verifying deliveries signed as
Stripe signs them and talking HTTP to the stand-in.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from tests.support.payments import (
    BACKENDS,
    USD,
    bought,
    deliver,
    no_discrepancy,
    outcome,
    paid_funds,
    paying,
    reversals,
)
from tests.support.settings import OPERATOR_TOKEN
from tests.support.stripe_standin import disputed, intent_of, paid, refunded, signed


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/store.db"
    dsn: str = request.getfixturevalue("pg_dsn")
    return dsn


def by_charge(event_type: str, intent: str, dispute: str, amount: int, status: str) -> bytes:
    """A ``charge.dispute.*`` event naming the charge of ``intent`` and no payment intent."""
    return disputed(event_type, intent, dispute, amount, status, payment_intent=None)


def charge_of(intent: str) -> str:
    return "ch_" + intent.removeprefix("pi_")


async def test_a_dispute_naming_only_its_charge_takes_and_gives_back_once(
    store_url: str, redis_url: str
) -> None:
    async with paying(store_url, redis_url) as (admin, standin):
        token, ws = await admin.owner_workspace()
        app = (await admin.ok("POST", f"/v1/workspaces/{ws}/apps", token,
                              {"name": "b", "product": "search"}))["id"]  # fmt: skip
        intent = await bought(admin, standin, token, ws, "200.00", app)
        await bought(admin, standin, token, ws, "100.00")  # another payment, kept
        opened = by_charge("charge.dispute.created", intent, "dp_c", 20000, "needs_response")
        assert [await outcome(admin, opened) for _ in range(3)] == [
            "reversed",
            "already_reversed",
            "already_reversed",
        ]
        assert standin.charge_lookups == [charge_of(intent)] * 3
        assert await paid_funds(admin, ws) == (100 * USD, {})
        [entry] = [e for e in await admin.store.ledger_entries(ws) if e.amount < 0]
        assert (entry.kind, entry.amount, entry.reference, entry.app_id) == (
            "payment_reversed",
            -200 * USD,
            "dispute:dp_c",
            app,
        )
        assert (entry.detail["payment_intent"], entry.detail["charge"]) == (
            intent,
            charge_of(intent),
        )
        # The same dispute spelled with its payment intent is the same dispute.
        spelled = disputed("charge.dispute.funds_withdrawn", intent, "dp_c", 20000,
                           "needs_response")  # fmt: skip
        assert await outcome(admin, spelled) == "already_reversed"
        won = by_charge("charge.dispute.closed", intent, "dp_c", 20000, "won")
        assert [await outcome(admin, won) for _ in range(2)] == ["reinstated", "already_reversed"]
        assert await outcome(admin, opened) == "already_reversed"  # a late redelivery
        assert await paid_funds(admin, ws) == (100 * USD, {app: 200 * USD})
        assert await reversals(admin, ws) == [
            ("payment_reversed", -200 * USD),
            ("dispute_reinstated", 200 * USD),
        ]
        await no_discrepancy(admin, ws)


ORDERS = {
    # events -> paid funds left of a $100 payment, whatever order they come in
    ("refund_30", "dispute", "won"): 70 * USD,
    ("refund_30", "dispute", "lost"): 0,
    ("refund_100", "dispute", "won"): 0,
}


@pytest.mark.parametrize("names", list(ORDERS), ids="+".join)
async def test_every_order_ends_the_same_with_disputes_by_charge(
    store_url: str, redis_url: str, names: tuple[str, ...]
) -> None:
    async with paying(store_url, redis_url) as (admin, standin):
        for n, order in enumerate(itertools.permutations(names)):
            token, ws = await admin.owner_workspace()
            intent = await bought(admin, standin, token, ws, "100.00")
            dp = f"dp_{n}"
            events = {
                "refund_30": refunded(intent, 3000, amount=10000),
                "refund_100": refunded(intent, 10000, amount=10000),
                "dispute": by_charge("charge.dispute.created", intent, dp, 10000, "needs_response"),
                "won": by_charge("charge.dispute.closed", intent, dp, 10000, "won"),
                "lost": by_charge("charge.dispute.closed", intent, dp, 10000, "lost"),
            }
            for _ in range(2):  # ... and each delivered again changes nothing
                for name in order:
                    assert await outcome(admin, events[name]) != "unknown_payment", order
                assert await paid_funds(admin, ws) == (ORDERS[names], {}), order
            await no_discrepancy(admin, ws)


async def test_a_dispute_by_charge_before_the_payment_is_kept_for_its_credit(
    store_url: str, redis_url: str
) -> None:
    async with paying(store_url, redis_url) as (admin, standin):
        token, ws = await admin.owner_workspace()
        co = await admin.ok("POST", f"/v1/workspaces/{ws}/checkout", token, {"amount": "100.00"})
        session = standin.session_for(co["id"])
        intent = intent_of(session)
        opened = by_charge("charge.dispute.created", intent, "dp_e", 10000, "needs_response")
        assert await outcome(admin, opened) == "awaiting_payment"
        assert await outcome(admin, paid(session)) == "credited"
        assert await paid_funds(admin, ws) == (0, {})
        assert await outcome(admin, opened) == "already_reversed"
        won = by_charge("charge.dispute.closed", intent, "dp_e", 10000, "won")
        assert await outcome(admin, won) == "reinstated"
        assert await paid_funds(admin, ws) == (100 * USD, {})
        assert await reversals(admin, ws) == [
            ("payment_reversed", -100 * USD),
            ("dispute_reinstated", 100 * USD),
        ]
        await no_discrepancy(admin, ws)


async def test_a_failed_charge_lookup_records_nothing_and_the_retry_takes_it(
    tmp_path: Path, redis_url: str
) -> None:
    url = f"sqlite:///{tmp_path}/store.db"
    async with paying(url, redis_url, stripe_max_network_retries=0) as (admin, standin):
        token, ws = await admin.owner_workspace()
        intent = await bought(admin, standin, token, ws, "100.00")
        opened = by_charge("charge.dispute.created", intent, "dp_f", 10000, "needs_response")
        standin.fail_with = 500
        status, body = await deliver(admin, opened, signed(opened))
        assert (status, body["code"]) == (502, "payment_provider_error"), body
        assert await reversals(admin, ws) == []
        assert await paid_funds(admin, ws) == (100 * USD, {})
        standin.fail_with = None  # Stripe retries the delivery: now it is taken
        assert await outcome(admin, opened) == "reversed"
        assert await paid_funds(admin, ws) == (0, {})
        # A charge Stripe does not know (404), or one without a payment intent, names no
        # payment: recorded, nothing taken.
        standin.charges["ch_nointent"] = None
        for charge in ("ch_unknown", "ch_nointent"):
            stray = disputed("charge.dispute.created", "pi_x", "dp_s", 10000, "needs_response",
                             payment_intent=None, charge=charge)  # fmt: skip
            assert await outcome(admin, stray) == "unknown_payment"
        assert await reversals(admin, ws) == [("payment_reversed", -100 * USD)]
        await no_discrepancy(admin, ws)


async def test_without_a_secret_key_a_dispute_by_charge_names_no_payment(
    tmp_path: Path, redis_url: str
) -> None:
    url = f"sqlite:///{tmp_path}/store.db"
    none: Any = None
    async with paying(url, redis_url, stripe_secret_key=none) as (admin, standin):
        _, ws = await admin.owner_workspace()
        funds = {"amount": "300.00", "reference": "pi_byhand"}
        await admin.ok("POST", f"/v1/workspaces/{ws}/funds", OPERATOR_TOKEN, funds)
        opened = by_charge("charge.dispute.created", "pi_byhand", "dp_k", 30000, "needs_response")
        assert await outcome(admin, opened) == "unknown_payment"
        assert standin.charge_lookups == []
        assert await paid_funds(admin, ws) == (300 * USD, {})
