"""A refund that failed at Stripe is credited back by an operator: once, bounded, in place.

The failure is kept when its signed event comes (``refund_failed``); nothing moves by
itself. ``POST /v1/workspaces/{ws}/refund-credits`` (operator token) credits back that
refund's amount, not bound by the top-up limits (a 30.00 refund is below the minimum
top-up) but by what the payment's reversals took back: once per refund, into the pool
the payment credited (here the app's funds), its live balance under its own marker so
that ``reconcile --apply`` and the projection check never apply it again. A refund made
again afterwards debits from there. ``creditgate reconcile`` lists every failed refund
and whether it was credited back. Real admin application, redis-server, SQLite and
PostgreSQL, deliveries signed as Stripe signs them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from config import load_catalog
from gateway.cli_commands import _reconcile
from meter.accounts import projection, projection_check, rebuild
from meter.accounts.deps import Deps
from meter.usage.reconcile import reconcile
from tests.support.clock import Clock
from tests.support.settings import OPERATOR_TOKEN
from tests.support.stripe_standin import disputed, refund_updated, refunded
from tests.system.test_payment_reversals import bought, outcome, paid_funds, reversals
from tests.system.test_payments import BACKENDS, USD, paying


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/store.db"


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/store.db"
    dsn: str = request.getfixturevalue("pg_dsn")
    return dsn


async def test_a_failed_refund_is_credited_back_once_into_its_pool(
    store_url: str, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async with paying(store_url, redis_url) as (admin, standin):
        token, ws = await admin.owner_workspace()
        app = (await admin.ok("POST", f"/v1/workspaces/{ws}/apps", token,
                              {"name": "b", "product": "search"}))["id"]  # fmt: skip
        pi = await bought(admin, standin, token, ws, "100.00", app)
        assert await outcome(admin, refunded(pi, 3000, amount=10000)) == "reversed"
        assert await outcome(admin, refund_updated(pi, "re_1", 3000, "failed")) == "refund_failed"
        assert await paid_funds(admin, ws) == (0, {app: 70 * USD})
        url = f"/v1/workspaces/{ws}/refund-credits"
        # Operators only; an unknown refund is 404.
        st, body = await admin.api("POST", url, token, {"refund": "re_1"})
        assert st == 403, body
        st, body = await admin.api("POST", url, OPERATOR_TOKEN, {"refund": "re_2"})
        assert (st, body["code"]) == (404, "not_found"), body
        await _reconcile(admin.settings, ws, False)
        assert f"refund_failed: {ws}: refund re_1 of charge ch_" in capsys.readouterr().out
        got = await admin.ok("POST", url, OPERATOR_TOKEN, {"refund": "re_1"})
        assert (got["amount"], got["refund_amount"], got["app_id"], got["created"]) == (
            "30.00", "30.00", app, True)  # fmt: skip
        assert await paid_funds(admin, ws) == (0, {app: 100 * USD})
        # Once: a retry answers the same entry and moves nothing.
        st, again = await admin.api("POST", url, OPERATOR_TOKEN, {"refund": "re_1"})
        assert (st, again["amount"], again["created"]) == (200, "30.00", False), again
        assert await paid_funds(admin, ws) == (0, {app: 100 * USD})
        # Neither reconcile --apply nor the projection check applies it again.
        [rep] = await reconcile(admin.store, admin.redis, admin.settings, workspace=ws, apply=True)
        assert rep.differences == [], rep
        await projection_check.check_workspace(Deps(admin.store, admin.redis, admin.settings,
                                                    load_catalog()), ws)  # fmt: skip
        assert await paid_funds(admin, ws) == (0, {app: 100 * USD})
        await _reconcile(admin.settings, ws, False)
        out = capsys.readouterr().out
        assert "refund re_1" in out
        assert "credited back 30.00 (refund_failed:re_1)" in out
        # The owner is told; the transactions list it.
        added = [e.payload for e in await admin.store.list_events(ws)
                 if e.event_type == "funds.added" and e.payload.get("reason")]  # fmt: skip
        assert [(p["amount"], p["refund"], p["app_id"]) for p in added] == [("30.00", "re_1", app)]
        txs = await admin.ok("GET", f"/v1/workspaces/{ws}/transactions", OPERATOR_TOKEN)
        assert [(t["type"], t["amount"]) for t in txs["transactions"][:2]] == [
            ("refund_failed", "30.00"), ("payment_reversed", "-30.00")]  # fmt: skip
        # The payer is refunded again afterwards, 20.00: Stripe's amount_refunded is 20.
        assert await outcome(admin, refunded(pi, 2000, amount=10000)) == "reversed"
        assert await paid_funds(admin, ws) == (0, {app: 80 * USD})
        assert await reversals(admin, ws) == [
            ("payment_reversed", -30 * USD), ("payment_reversed", 30 * USD),
            ("payment_reversed", -20 * USD)]  # fmt: skip


async def test_a_credit_back_never_gives_more_than_was_taken(
    store_url: str, redis_url: str
) -> None:
    async with paying(store_url, redis_url) as (admin, standin):
        token, ws = await admin.owner_workspace()
        pi = await bought(admin, standin, token, ws, "100.00")
        url = f"/v1/workspaces/{ws}/refund-credits"
        # A failure whose refund never debited anything here credits nothing back.
        assert await outcome(admin, refund_updated(pi, "re_0", 4000, "failed")) == "refund_failed"
        got = await admin.ok("POST", url, OPERATOR_TOKEN, {"refund": "re_0"})
        assert got["amount"] == "0.00"
        assert await paid_funds(admin, ws) == (100 * USD, {})
        # Refunded 30, then the whole payment disputed: all 100 are taken; the failed
        # refund's 30 is still held by the dispute, so its credit back gives nothing.
        assert await outcome(admin, refunded(pi, 3000, amount=10000)) == "reversed"
        lost = disputed("charge.dispute.created", pi, "dp_1", 10000, "needs_response")
        assert await outcome(admin, lost) == "reversed"
        assert await paid_funds(admin, ws) == (0, {})
        assert await outcome(admin, refund_updated(pi, "re_1", 3000, "failed")) == "refund_failed"
        got = await admin.ok("POST", url, OPERATOR_TOKEN, {"refund": "re_1"})
        assert got["amount"] == "0.00"
        assert await paid_funds(admin, ws) == (0, {})
        # A refund of another workspace's payment is not found from this one.
        _, other = await admin.owner_workspace("someone")
        st, body = await admin.api("POST", f"/v1/workspaces/{other}/refund-credits",
                                   OPERATOR_TOKEN, {"refund": "re_1"})  # fmt: skip
        assert st == 404, body


async def test_a_crash_before_redis_is_completed_by_the_retry(
    sqlite_url: str, redis_url: str
) -> None:
    async with paying(sqlite_url, redis_url) as (admin, standin):
        token, ws = await admin.owner_workspace()
        pi = await bought(admin, standin, token, ws, "100.00")
        assert await outcome(admin, refunded(pi, 3000, amount=10000)) == "reversed"
        assert await outcome(admin, refund_updated(pi, "re_1", 3000, "failed")) == "refund_failed"
        d = Deps(admin.store, admin.redis, admin.settings, load_catalog())
        # The ledger committed, the process died before Redis.
        done = await admin.store.credit_back_refund(ws, "re_1", "operator", d.now_ms())
        assert done.result == "credited"
        assert (await projection.read_balances(admin.redis, ws)).pool == 70 * USD
        url = f"/v1/workspaces/{ws}/refund-credits"
        for _ in range(2):
            st, got = await admin.api("POST", url, OPERATOR_TOKEN, {"refund": "re_1"})
            assert (st, got["amount"], got["created"]) == (200, "30.00", False), got
        assert await paid_funds(admin, ws) == (100 * USD, {})
        # Redis lost the workspace: the rebuild holds the credit back and marks it.
        await admin.redis.flushall()
        assert await rebuild.rebuild_workspace(
            admin.store, admin.redis, admin.settings, d.catalog, ws) == "rebuilt"  # fmt: skip
        assert (await admin.api("POST", url, OPERATOR_TOKEN, {"refund": "re_1"}))[0] == 200
        assert await paid_funds(admin, ws) == (100 * USD, {})


async def test_no_credit_back_once_the_charge_was_refunded_since(
    store_url: str, redis_url: str
) -> None:
    clock = Clock.wall()
    async with paying(store_url, redis_url, clock=clock) as (admin, standin):
        token, ws = await admin.owner_workspace()
        pi = await bought(admin, standin, token, ws, "100.00")
        assert await outcome(admin, refunded(pi, 3000, amount=10000)) == "reversed"
        clock.advance(1)
        assert await outcome(admin, refund_updated(pi, "re_1", 3000, "failed")) == "refund_failed"
        clock.advance(1)
        # The payer refunded again, 20.00: Stripe's cumulative 20, an earlier key's
        # amount in other cases; crediting re_1 back now could leave it undebited.
        assert await outcome(admin, refunded(pi, 2000, amount=10000)) == "already_reversed"
        url = f"/v1/workspaces/{ws}/refund-credits"
        st, body = await admin.api("POST", url, OPERATOR_TOKEN, {"refund": "re_1"})
        assert (st, body["code"]) == (409, "refunded_after_failure"), body
        assert await paid_funds(admin, ws) == (70 * USD, {})
