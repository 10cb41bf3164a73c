"""One payment, one credit: by its webhook or by an operator's hand, whichever comes first.

A hostile review credited one $500 Stripe payment twice: by hand under its payment intent
(``pi_…``, as Stripe's dashboard names it) while the webhook was late, then by the
webhook; or both at once; or by hand under ``checkout:cs_…`` / ``stripe:cs_…`` after the
webhook. The store now claims each name of a payment in the ledger's transaction
(``payment_claims``), on SQLite and PostgreSQL alike. Real admin server, real Redis, real
stores, the real ``stripe`` library against the local stand-in, signed deliveries.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway import cli_commands
from meter.accounts import projection
from meter.store import Checkout, LedgerEntry, Store, User, Workspace, open_store
from meter.store.schema import MIGRATIONS
from tests.support.adminkit import Admin
from tests.support.payments import (
    BACKENDS,
    USD,
    deliver,
    no_discrepancy,
    outcome,
    paid_funds,
    paying,
)
from tests.support.settings import OPERATOR_TOKEN
from tests.support.stripe_standin import paid, refunded, signed


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/store.db"
    dsn: str = request.getfixturevalue("pg_dsn")
    return dsn


async def _credited(admin: Admin, ws: str) -> int:
    """Paid funds in the ledger (top-ups) and in Redis; they must agree."""
    ledger = sum(e.amount for e in await admin.store.ledger_entries(ws, kind="topup"))
    bal = await projection.read_balances(admin.redis, ws)
    assert bal.pool + sum(bal.app.values()) == ledger
    return ledger


async def _funds(admin: Admin, ws: str, reference: str, amount: str = "500.00") -> Any:
    return await admin.api(
        "POST", f"/v1/workspaces/{ws}/funds", OPERATOR_TOKEN,
        {"amount": amount, "reference": reference},
    )  # fmt: skip


async def _paid_checkout(admin: Admin, standin: Any, amount: str = "500.00") -> Any:
    """A workspace, its checkout, the provider's paid event and its payment intent."""
    token, ws = await admin.owner_workspace()
    co = await admin.ok("POST", f"/v1/workspaces/{ws}/checkout", token, {"amount": amount})
    session = standin.session_for(co["id"])
    body = paid(session)
    intent = orjson.loads(body)["data"]["object"]["payment_intent"]
    return ws, co["id"], session["id"], intent, body


async def test_a_payment_credited_by_hand_first_is_not_credited_by_its_webhook(
    store_url: str, redis_url: str
) -> None:
    async with paying(store_url, redis_url) as (admin, standin):
        ws, co, sid, intent, body = await _paid_checkout(admin, standin)
        # The webhook is late; the operator credits the payment Stripe's dashboard shows.
        status, answer = await _funds(admin, ws, intent)
        assert (status, answer["created"]) == (201, True), answer
        for _ in range(2):  # the delivery, then a redelivery: acknowledged, nothing credited
            status, answer = await deliver(admin, body, signed(body))
            assert (status, answer["outcome"]) == (200, "credited_by_hand"), answer
        assert await _credited(admin, ws) == 500 * USD
        stored = await admin.store.get_checkout(co)
        assert stored is not None
        assert (stored.status, stored.payment_intent) == ("credited_by_hand", intent)
        assert stored.detail["credited_as"] == f"funds:{intent}"
        # Every other name of that payment, in every spelling, is now refused.
        for ref in (sid, co, f"checkout:{sid}", f"stripe:{sid}", f"stripe:{intent}"):
            status, answer = await _funds(admin, ws, ref)
            assert (status, answer["code"]) == (409, "reference_is_checkout"), (ref, answer)
        status, answer = await _funds(admin, ws, intent)  # the same call again: idempotent
        assert (status, answer["created"]) == (200, False), answer
        assert await _credited(admin, ws) == 500 * USD


async def test_after_the_webhook_no_spelling_of_the_payment_is_credited_by_hand(
    store_url: str, redis_url: str
) -> None:
    async with paying(store_url, redis_url) as (admin, standin):
        ws, co, sid, intent, body = await _paid_checkout(admin, standin)
        assert (await deliver(admin, body, signed(body)))[1]["outcome"] == "credited"
        refs = (sid, co, intent, f"checkout:{sid}", f"stripe:{sid}", f"stripe:{intent}",
                f"funds:{intent}", f"CHECKOUT:{sid}")  # fmt: skip
        for ref in refs:
            status, answer = await _funds(admin, ws, ref)
            assert (status, answer["code"]) == (409, "reference_is_checkout"), (ref, answer)
        assert await _credited(admin, ws) == 500 * USD


async def test_by_hand_and_the_webhook_at_once_credit_once(store_url: str, redis_url: str) -> None:
    async with paying(store_url, redis_url) as (admin, standin):
        for ref_of in (lambda sid, pi: pi, lambda sid, pi: f"stripe:{sid}"):
            ws, _, sid, intent, body = await _paid_checkout(admin, standin)
            results = await asyncio.gather(
                *(_funds(admin, ws, ref_of(sid, intent)) for _ in range(3)),
                *(deliver(admin, body, signed(body)) for _ in range(3)),
            )
            assert all(200 <= s < 300 or s == 409 for s, _ in results), results
            assert await _credited(admin, ws) == 500 * USD, results


async def test_a_checkout_of_another_workspace_or_a_payment_credited_there_is_refused(
    store_url: str, redis_url: str
) -> None:
    async with paying(store_url, redis_url) as (admin, standin):
        ws, co, sid, intent, _ = await _paid_checkout(admin, standin)
        _, other = await admin.owner_workspace("other")
        for ref in (sid, co):
            status, answer = await _funds(admin, other, ref)
            assert (status, answer["code"]) == (409, "reference_is_checkout"), answer
        assert (await _funds(admin, ws, intent))[0] == 201
        status, answer = await _funds(admin, other, intent)  # not known as a checkout's yet
        assert (status, answer["code"]) == (409, "reference_reused"), answer
        assert ws in answer["detail"]
        assert await _credited(admin, other) == 0
        # References that name no payment stay per workspace (a bank transfer's number).
        assert [(await _funds(admin, w, "WIRE-42"))[0] for w in (ws, other)] == [201, 201]


async def test_limits_changed_after_the_checkout_do_not_refuse_its_payment(
    redis_url: str, tmp_path: Path
) -> None:
    """Was ``outside_limits``, never credited: by its webhook nor (as a checkout's
    reference) by hand."""
    url = f"sqlite:///{tmp_path}/store.db"
    async with paying(url, redis_url, topup_min="50.00") as (old, standin):
        ws, co, _, _, body = await _paid_checkout(old, standin, "60.00")
    async with paying(url, redis_url) as (admin, _):  # the minimum is back to $100
        for want in ("credited", "already_credited"):
            status, answer = await deliver(admin, body, signed(body))
            assert (status, answer["outcome"]) == (200, want), answer
        assert await _credited(admin, ws) == 60 * USD
        stored = await admin.store.get_checkout(co)
        assert stored is not None
        assert stored.status == "paid"


async def test_a_checkout_is_credited_by_hand_under_its_payment_intent(
    store_url: str, redis_url: str
) -> None:
    """Before its paid event the gateway does not know a checkout's payment intent, and
    a refund or a dispute names only that: a credit by hand under the checkout's id or
    session id was never found by them (the refund kept, ``awaiting_payment``, for ever
    if the paid event never came, the payer refunded and still credited). Refused now
    (409 ``payment_intent_required``, whatever the amount), nothing credited; under its
    ``pi_…`` the refund is taken, whichever came first."""
    async with paying(store_url, redis_url) as (admin, standin):
        for refund_first in (True, False):
            ws, co, sid, intent, body = await _paid_checkout(admin, standin, "500.00")
            if refund_first:
                assert await outcome(admin, refunded(intent, 10000, amount=50000)) == (
                    "awaiting_payment"
                )
            for ref, amount in itertools.product(
                (sid, co, f"CHECKOUT:{sid}", f"stripe:{co}"), ("100.00", "500.00")
            ):
                status, answer = await _funds(admin, ws, ref, amount)
                assert (status, answer["code"]) == (409, "payment_intent_required"), answer
                assert intent not in answer["detail"]  # not known: the operator reads it
            assert await _credited(admin, ws) == 0
            stored = await admin.store.get_checkout(co)
            assert stored is not None
            assert stored.status == "open"
            assert (await _funds(admin, ws, intent, "500.00"))[0] == 201
            if not refund_first:
                assert await outcome(admin, refunded(intent, 10000, amount=50000)) == "reversed"
            assert await paid_funds(admin, ws) == (400 * USD, {})
            status, answer = await deliver(admin, body, signed(body))
            assert (status, answer["outcome"]) == (200, "credited_by_hand"), answer
            assert await paid_funds(admin, ws) == (400 * USD, {})
            await no_discrepancy(admin, ws)


async def test_a_rejected_checkout_is_credited_by_hand_at_the_sum_found_right(
    store_url: str, redis_url: str
) -> None:
    """Its paid event did not match it (never credited by its webhook): the operator
    credits what was paid under its payment intent, as the README says."""
    async with paying(store_url, redis_url) as (admin, standin):
        ws, co, sid, intent, _ = await _paid_checkout(admin, standin, "500.00")
        body = paid(standin.session_for(co), amount_total=10000)  # $100 paid
        status, answer = await deliver(admin, body, signed(body))
        assert (status, answer["outcome"]) == (200, "amount_mismatch"), answer
        status, answer = await _funds(admin, ws, sid, "100.00")
        assert (status, answer["code"]) == (409, "payment_intent_required"), answer
        status, answer = await _funds(admin, ws, intent, "100.00")
        assert (status, answer["created"]) == (201, True), answer
        assert await _credited(admin, ws) == 100 * USD


async def test_a_payment_credited_by_hand_at_another_amount_is_flagged(
    store_url: str, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Under its ``pi_…`` (the only name a checkout not paid yet is credited by hand
    under) no checkout is known to check the amount against: an operator's $5,000 for a
    $500 payment was taken, its paid event answered ``credited_by_hand`` and reconcile
    said nothing. The paid event now compares: ``credited_by_hand_mismatch``, both sums
    on the checkout, and reconcile lists it; nothing is debited (the operator decides)."""
    async with paying(store_url, redis_url) as (admin, standin):
        ws, co, _, intent, body = await _paid_checkout(admin, standin, "500.00")
        status, answer = await _funds(admin, ws, intent, "5000.00")
        assert (status, answer["created"]) == (201, True), answer
        for _ in range(2):  # the delivery, then a redelivery: flagged alike
            status, answer = await deliver(admin, body, signed(body))
            assert (status, answer["outcome"]) == (200, "credited_by_hand_mismatch"), answer
        assert await _credited(admin, ws) == 5000 * USD
        stored = await admin.store.get_checkout(co)
        assert stored is not None
        assert stored.status == "credited_by_hand"
        assert (stored.detail["credited_amount"], stored.detail["paid_amount"]) == (
            5000 * USD, 500 * USD,
        )  # fmt: skip
        assert [c.id for c in await admin.store.hand_credit_mismatches(ws)] == [co]
        capsys.readouterr()
        args = argparse.Namespace(workspace=None, apply=False)
        assert await asyncio.to_thread(cli_commands.reconcile, admin.settings, args) == 0
        lines = [ln for ln in capsys.readouterr().out.splitlines() if co in ln]
        assert lines == [
            f"hand_credit_mismatch: {ws}: checkout {co} ({intent}) paid 500.00, "
            f"credited by hand as funds:{intent} 5000.00"
        ]
        # The same sum by hand is no mismatch.
        ws, co, _, intent, body = await _paid_checkout(admin, standin, "500.00")
        assert (await _funds(admin, ws, intent, "500.00"))[0] == 201
        status, answer = await deliver(admin, body, signed(body))
        assert (status, answer["outcome"]) == (200, "credited_by_hand"), answer
        assert await admin.store.hand_credit_mismatches(ws) == []


# ------------------------------------------------------------------ the migration


async def _before_claims(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    import meter.store.postgres as pg
    import meter.store.sqlite as lite

    with monkeypatch.context() as m:
        for module in (lite, pg):
            m.setattr(module, "MIGRATIONS", tuple(s for s in MIGRATIONS if s.version < 14))
        await store.migrate()


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
async def test_the_migration_claims_what_was_credited_before_it(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path}/m.db"
    store = open_store(url if backend == "sqlite" else request.getfixturevalue("pg_dsn"))
    try:
        await _before_claims(store, monkeypatch)
        await store.create_user(User("u1", "a@example.com", "A", "h1", 1))
        await store.create_workspace(Workspace("wold1", "Old", "u1", 1))
        co = Checkout("coold1", "wold1", 500 * USD, "usd", "stripe", "open", "user:u1", 1)
        assert await store.create_checkout_within(co, 5, since=0)
        await store.open_checkout(co.id, "cs_old1", "https://pay.test/x")
        entry = LedgerEntry("wold1", "topup", 500 * USD, "checkout:cs_old1", 2)
        assert await store.add_ledger_entry(entry)  # as the webhook of before credited it
        async with store.connection() as c:
            await c.execute(
                "UPDATE checkouts SET status = 'paid', payment_intent = ?, completed_at = ? "
                "WHERE id = ?",
                "pi_old1", 2, co.id,
            )  # fmt: skip
        manual = LedgerEntry("wold1", "topup", 100 * USD, "funds:stripe:pi_wire7", 3)
        assert await store.add_ledger_entry(manual)

        assert 14 in await store.migrate()
        stored = await store.get_checkout(co.id)
        assert stored is not None
        assert stored.status == "paid"
        for ident, holder in (("cs_old1", entry), ("pi_old1", entry), ("coold1", entry),
                              ("pi_wire7", manual)):  # fmt: skip
            again = LedgerEntry("wold1", "topup", 100 * USD, f"funds:{ident}", 4)
            done = await store.credit_by_hand(again, ident)
            assert done.holder is not None, ident
            assert done.holder.reference == holder.reference
        assert len(await store.ledger_entries("wold1")) == 2
    finally:
        await store.close()


async def _checkout_then_migrate(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Store:
    """A store before migration 14 with an open checkout ``co1`` (session ``cs_w1``) of
    workspace ``w1``, and a workspace ``w2``; the caller adds entries, then migrates."""
    url = f"sqlite:///{tmp_path}/m.db"
    store = open_store(url if backend == "sqlite" else request.getfixturevalue("pg_dsn"))
    await _before_claims(store, monkeypatch)
    await store.create_user(User("u1", "a@example.com", "A", "h1", 1))
    for ws in ("w1", "w2"):
        await store.create_workspace(Workspace(ws, ws, "u1", 1))
    co = Checkout("co1", "w1", 500 * USD, "usd", "stripe", "open", "user:u1", 1)
    assert await store.create_checkout_within(co, 5, since=0)
    assert await store.open_checkout(co.id, "cs_w1", "https://pay.test/x")
    return store


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
@pytest.mark.parametrize(
    "reference",
    ["funds:funds:pi_w1", "funds:Stripe:pi_w1", "funds:stripe:checkout:pi_w1",
     "funds:checkout:co1", "funds:stripe:co1", "funds:CHECKOUT:cs_w1"],
)  # fmt: skip
async def test_the_migration_claims_a_manual_credit_as_the_runtime_reads_it(
    backend: str,
    reference: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each spelling that ``payment_id`` reads as the payment (an operator credited the
    late payment by hand before the upgrade): the webhook after it credits nothing."""
    store = await _checkout_then_migrate(backend, request, tmp_path, monkeypatch)
    try:
        assert await store.add_ledger_entry(LedgerEntry("w1", "topup", 500 * USD, reference, 2))
        assert 14 in await store.migrate()
        entry = LedgerEntry("w1", "topup", 500 * USD, "checkout:cs_w1", 3)
        assert await store.complete_checkout("co1", "cs_w1", "pi_w1", entry, 3) == (
            "credited_by_hand"
        )
        assert [e.reference for e in await store.ledger_entries("w1")] == [reference]
    finally:
        await store.close()


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
async def test_the_migration_leaves_another_workspaces_checkout_to_its_webhook(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A manual credit of before that named another workspace's checkout (refused now)
    claims none of its names: the payer's webhook still credits the payer."""
    store = await _checkout_then_migrate(backend, request, tmp_path, monkeypatch)
    try:
        manual = LedgerEntry("w2", "topup", 500 * USD, "funds:stripe:cs_w1", 2)
        assert await store.add_ledger_entry(manual)
        assert 14 in await store.migrate()
        entry = LedgerEntry("w1", "topup", 500 * USD, "checkout:cs_w1", 3)
        assert await store.complete_checkout("co1", "cs_w1", "pi_w1", entry, 3) == "credited"
        assert [e.reference for e in await store.ledger_entries("w1")] == ["checkout:cs_w1"]
    finally:
        await store.close()
