"""A refund that fails at Stripe afterwards is recognised and logged; nothing moves by itself.

``charge.refund.updated`` (or ``refund.failed`` / ``refund.updated``) with the refund's
``status`` ``failed`` or ``canceled`` answers ``refund_failed`` with a warning naming the
refund, its charge and payment intent, and the failure is kept; the debit
``charge.refunded`` made stands until an operator credits it back
(``POST /v1/workspaces/{ws}/refund-credits``, tests/system/test_refund_credit_back.py),
by what Stripe says is refunded of the charge then: refunds are keyed by the charge's
cumulative ``amount_refunded``, which a refund made again after the failure can repeat,
so the failed refund's own amount is not what the payer is owed (README).
Everything real: the admin application, redis-server, SQLite and PostgreSQL, deliveries
signed as Stripe signs them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.support.payments import (
    BACKENDS,
    USD,
    bought,
    no_discrepancy,
    outcome,
    paid_funds,
    paying,
    reversals,
)
from tests.support.stripe_standin import refund_updated, refunded


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/store.db"
    dsn: str = request.getfixturevalue("pg_dsn")
    return dsn


async def test_a_failed_refund_is_reported_and_its_debit_stands(
    store_url: str, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with paying(store_url, redis_url) as (admin, standin):
        token, ws = await admin.owner_workspace()
        intent = await bought(admin, standin, token, ws, "100.00")
        assert await outcome(admin, refunded(intent, 3000, amount=10000)) == "reversed"
        events = len(await admin.store.list_events(ws))
        caplog.set_level(logging.WARNING, logger="meter.accounts.reversals")
        for event_type, status in (("charge.refund.updated", "failed"),
                                   ("refund.failed", "failed"),
                                   ("charge.refund.updated", "canceled")):  # fmt: skip
            failed = refund_updated(intent, "re_1", 3000, status, event_type=event_type)
            assert [await outcome(admin, failed) for _ in range(2)] == ["refund_failed"] * 2
        assert "refund re_1 of charge ch_" in caplog.text
        for status in ("pending", "succeeded", "requires_action"):
            assert await outcome(admin, refund_updated(intent, "re_2", 500, status)) == "ignored"
        created = refund_updated(intent, "re_3", 500, "failed", event_type="refund.created")
        assert await outcome(admin, created) == "ignored"
        live = refund_updated(intent, "re_1", 3000, "failed", livemode=True)
        assert await outcome(admin, live) == "wrong_mode"
        # The debit stands, nothing else moved or was announced.
        assert await reversals(admin, ws) == [("payment_reversed", -30 * USD)]
        assert await paid_funds(admin, ws) == (70 * USD, {})
        assert len(await admin.store.list_events(ws)) == events
        # Refunded again after the failure, reported at the same cumulative 30: the
        # failed refund's key, so it debits nothing (the failure's debit stands for it).
        assert await outcome(admin, refunded(intent, 3000, amount=10000)) == "already_reversed"
        assert await paid_funds(admin, ws) == (70 * USD, {})
        await no_discrepancy(admin, ws)
