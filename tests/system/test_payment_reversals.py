"""Money given back at the provider stops buying service: refunds and disputes.

A top-up paid through Stripe Checkout (or credited by hand under its ``pi_…``) that the
operator later refunds in Stripe's dashboard, or that the payer disputes, is taken back
from the pool it credited: once per refund (keyed by charge and cumulative refunded
amount) and per dispute, never more than was credited, given back when a dispute is
won. Everything is real: the admin application on a loopback socket, redis-server,
SQLite and PostgreSQL, the official ``stripe`` library verifying deliveries signed as
Stripe signs them (tests/support/stripe_standin.py), the gateway's traffic path.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from config import load_catalog
from meter.accounts import projection, projection_check, rebuild
from meter.accounts.deps import Deps
from meter.store.reversals import Reversal
from tests.support.adminkit import snapshot
from tests.support.bot import running_bot
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
from tests.support.stripe_standin import (
    disputed,
    refunded,
    signed,
)

CENT = USD // 100


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/store.db"
    dsn: str = request.getfixturevalue("pg_dsn")
    return dsn


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/store.db"


async def test_a_refund_takes_the_payment_back_once(store_url: str, redis_url: str) -> None:
    async with paying(store_url, redis_url) as (admin, standin):
        token, ws = await admin.owner_workspace()
        intent = await bought(admin, standin, token, ws, "150.00")
        await bought(admin, standin, token, ws, "100.00")  # another payment, kept
        full = refunded(intent, 15000, amount=15000)
        assert [await outcome(admin, full) for _ in range(3)] == ["reversed"] + [
            "already_reversed"
        ] * 2
        many = await asyncio.gather(*(deliver(admin, full, signed(full)) for _ in range(8)))
        assert {(s, b["outcome"]) for s, b in many} == {(200, "already_reversed")}
        # The same refund announced again under a new event id: still once.
        again = refunded(intent, 15000, amount=15000)
        assert await outcome(admin, again) == "already_reversed"
        assert await reversals(admin, ws) == [("payment_reversed", -150 * USD)]
        assert await paid_funds(admin, ws) == (100 * USD, {})
        view = await admin.ok("GET", f"/v1/workspaces/{ws}/plan-usage", token)
        assert (view["paid_balance"], view["free_credits"]["remaining"]) == ("100.00", "500.00")
        page = await admin.ok("GET", f"/v1/workspaces/{ws}/transactions", token)
        first = page["transactions"][0]
        assert (first["type"], first["amount"], first["pool"]) == (
            "payment_reversed",
            "-150.00",
            "paid",
        )
        assert first["reference"] == f"refund:ch_{intent[3:]}:15000"
        await no_discrepancy(admin, ws)


async def test_partial_and_out_of_order_refunds_debit_only_what_is_new(
    store_url: str, redis_url: str
) -> None:
    async with paying(store_url, redis_url) as (admin, standin):
        token, ws = await admin.owner_workspace()
        app = (await admin.ok("POST", f"/v1/workspaces/{ws}/apps", token,
                              {"name": "b", "product": "search"}))["id"]  # fmt: skip
        tied = await bought(admin, standin, token, ws, "100.00", app)
        # Cumulative 30, then 100: 30 then 70, from the app's own funds.
        assert await outcome(admin, refunded(tied, 3000, amount=10000)) == "reversed"
        assert await paid_funds(admin, ws) == (0, {app: 70 * USD})
        assert await outcome(admin, refunded(tied, 10000, amount=10000)) == "reversed"
        assert await paid_funds(admin, ws) == (0, {})
        assert await reversals(admin, ws) == [
            ("payment_reversed", -30 * USD),
            ("payment_reversed", -70 * USD),
        ]
        # Out of order: the cumulative 100 first, the late 30 takes nothing.
        shared = await bought(admin, standin, token, ws, "100.00")
        assert await outcome(admin, refunded(shared, 10000, amount=10000)) == "reversed"
        assert await outcome(admin, refunded(shared, 3000, amount=10000)) == "already_reversed"
        assert (await reversals(admin, ws))[2:] == [
            ("payment_reversed", -100 * USD),
            ("payment_reversed", 0),  # recorded: a later won dispute must not give it back
        ]
        # Two refunds delivered at once: 40 and 100 cumulative, 100 in all.
        racing = await bought(admin, standin, token, ws, "100.00")
        both = [refunded(racing, 4000, amount=10000), refunded(racing, 10000, amount=10000)]
        await asyncio.gather(*(deliver(admin, p, signed(p)) for p in both * 3))
        assert sum(a for _, a in (await reversals(admin, ws))[4:]) == -100 * USD
        # Never more than was credited, whatever the event says.
        over = await bought(admin, standin, token, ws, "100.00")
        assert await outcome(admin, refunded(over, 90000, amount=90000)) == "reversed"
        assert (await reversals(admin, ws))[-1] == ("payment_reversed", -100 * USD)
        assert await paid_funds(admin, ws) == (0, {})
        await no_discrepancy(admin, ws)


async def test_disputes_take_back_and_a_won_one_gives_back(store_url: str, redis_url: str) -> None:
    async with paying(store_url, redis_url) as (admin, standin):
        token, ws = await admin.owner_workspace()
        won = await bought(admin, standin, token, ws, "200.00")
        opened = disputed("charge.dispute.created", won, "dp_won", 20000, "needs_response")
        assert [await outcome(admin, opened) for _ in range(2)] == [
            "reversed",
            "already_reversed",
        ]
        assert await paid_funds(admin, ws) == (0, {})
        closed = disputed("charge.dispute.closed", won, "dp_won", 20000, "won")
        assert [await outcome(admin, closed) for _ in range(2)] == [
            "reinstated",
            "already_reversed",
        ]
        back = disputed("charge.dispute.funds_reinstated", won, "dp_won", 20000, "won")
        assert await outcome(admin, back) == "already_reversed"
        assert await outcome(admin, opened) == "already_reversed"  # a late redelivery
        assert await paid_funds(admin, ws) == (200 * USD, {})

        lost = await bought(admin, standin, token, ws, "100.00")
        opened = disputed("charge.dispute.created", lost, "dp_lost", 10000, "needs_response")
        assert await outcome(admin, opened) == "reversed"
        closed = disputed("charge.dispute.closed", lost, "dp_lost", 10000, "lost")
        assert [await outcome(admin, closed) for _ in range(2)] == ["already_reversed"] * 2
        assert await paid_funds(admin, ws) == (200 * USD, {})

        # Out of order: closed won before created, which then takes nothing: both are
        # recorded and move nothing (``already_reversed``, not ``reinstated``/``reversed``).
        late = await bought(admin, standin, token, ws, "100.00")
        closed = disputed("charge.dispute.closed", late, "dp_late", 10000, "won")
        assert await outcome(admin, closed) == "already_reversed"
        opened = disputed("charge.dispute.created", late, "dp_late", 10000, "needs_response")
        assert await outcome(admin, opened) == "already_reversed"
        # An inquiry withdrew no funds.
        inquiry = disputed(
            "charge.dispute.created", late, "dp_inq", 10000, "warning_needs_response"
        )
        assert await outcome(admin, inquiry) == "not_reversed"
        assert await paid_funds(admin, ws) == (300 * USD, {})
        assert await reversals(admin, ws) == [
            ("payment_reversed", -200 * USD),
            ("dispute_reinstated", 200 * USD),
            ("payment_reversed", -100 * USD),
            ("dispute_reinstated", 0),
            ("payment_reversed", 0),
        ]
        await no_discrepancy(admin, ws)


async def test_a_dispute_after_a_full_refund_moves_nothing_and_says_so(
    store_url: str, redis_url: str
) -> None:
    """Refunded in full, then disputed, then won: the dispute and the win are recorded
    (0.00 entries, listed in the transactions as bookkeeping) but take and give nothing,
    so they answer ``already_reversed`` (they answered ``reversed`` / ``reinstated``)."""
    async with paying(store_url, redis_url) as (admin, standin):
        token, ws = await admin.owner_workspace()
        intent = await bought(admin, standin, token, ws, "100.00")
        assert await outcome(admin, refunded(intent, 10000, amount=10000)) == "reversed"
        for event, status in (("charge.dispute.created", "needs_response"),
                              ("charge.dispute.closed", "won")):  # fmt: skip
            dispute = disputed(event, intent, "dp_z", 10000, status)
            assert await outcome(admin, dispute) == "already_reversed"
        assert await paid_funds(admin, ws) == (0, {})
        assert await reversals(admin, ws) == [
            ("payment_reversed", -100 * USD),
            ("payment_reversed", 0),
            ("dispute_reinstated", 0),
        ]
        actions = [a.action for a in await admin.store.list_audit(target=f"workspace:{ws}")]
        assert actions.count("payment.reversed") == 1
        assert "payment.reinstated" not in actions
        listed = await admin.ok("GET", f"/v1/workspaces/{ws}/transactions", token)
        rows = [(t["type"], t["amount"], t["reference"]) for t in listed["transactions"]]
        assert ("payment_reversed", "0.00", "dispute:dp_z") in rows, rows
        assert ("dispute_reinstated", "0.00", "dispute_won:dp_z") in rows, rows
        await no_discrepancy(admin, ws)


async def test_a_negative_balance_stops_the_app_and_free_credits_stay(
    redis_url: str, tmp_path: Path
) -> None:
    """The payment paid for what was used before its refund: the paid balance goes below
    zero and the app, with no other credit, is refused through the gateway. In another
    workspace, paid first, free credits are used for new messages but never pay the debt."""
    url = f"sqlite:///{tmp_path}/store.db"
    async with (
        running_bot() as bot,
        paying(url, redis_url, traffic=True, deduction_order="paid_first") as (admin, standin),
        aiohttp.ClientSession() as http,
    ):

        async def send(app: str, user: str) -> tuple[int, Any]:
            target = f"{admin.traffic_url}/hooks/web/{app}/m"
            async with http.post(target, json={}, headers={"X-Channel-User-Id": user}) as resp:
                return resp.status, await resp.json(content_type=None)

        token, with_free = await admin.owner_workspace()
        no_free = await admin.new_workspace(token, "Second")  # free credits: once per user
        apps = {}
        for ws in (with_free, no_free):
            body = {"name": "b", "product": "automation", "upstream_url": bot.url}
            apps[ws] = (await admin.ok("POST", f"/v1/workspaces/{ws}/apps", token, body))["id"]
        intents = {ws: await bought(admin, standin, token, ws, "100.00") for ws in apps}
        for app in apps.values():
            assert (await send(app, "u1"))[0] == 200  # paid first: $0.20 of the payment
        for ws, intent in intents.items():
            assert await outcome(admin, refunded(intent, 10000, amount=10000)) == "reversed"
            assert (await projection.read_balances(admin.redis, ws)).pool == -20 * CENT

        status, body = await send(apps[no_free], "u2")
        assert (status, body["code"]) == (402, "credits_exhausted"), body
        view = await admin.ok("GET", f"/v1/workspaces/{no_free}/plan-usage", token)
        assert (view["paid_balance"], view["allowed_sessions"]) == ("-0.20", 0)
        assert view["apps"][0]["status"] == "inactive"

        # Free credits serve the next session; the debt stays where it is.
        assert (await send(apps[with_free], "u2"))[0] == 200
        bal = await projection.read_balances(admin.redis, with_free)
        assert (bal.free, bal.pool) == (500 * USD - 20 * CENT, -20 * CENT)
        assert bot.count() == 3


async def test_forged_unknown_and_by_hand(sqlite_url: str, redis_url: str) -> None:
    async with paying(sqlite_url, redis_url) as (admin, standin):
        token, ws = await admin.owner_workspace()
        intent = await bought(admin, standin, token, ws, "100.00")
        full = refunded(intent, 10000, amount=10000)
        before = await snapshot(admin)
        for signature in (signed(full, secret="whsec_" + "z" * 32), None, "t=1,v1=00"):
            status, body = await deliver(admin, full, signature)
            assert (status, body["code"]) == (400, "invalid_signature")
        tampered = full.replace(b'"payment_intent":"' + intent.encode(), b'"payment_intent":"pi_x')
        assert (await deliver(admin, tampered, signed(full)))[0] == 400
        assert await snapshot(admin) == before

        # A payment never credited here: kept for its credit, acknowledged, nothing taken.
        stranger = refunded("pi_neverseen", 10000, amount=10000)
        assert await outcome(admin, stranger) == "awaiting_payment"
        # A dispute naming only a charge that Stripe does not know (its own test:
        # test_reversal_charges.py).
        only_charge = disputed("charge.dispute.created", "pi_elsewhere", "dp_x", 10000,
                               "needs_response", payment_intent=None)  # fmt: skip
        assert await outcome(admin, only_charge) == "unknown_payment"
        euros = refunded(intent, 10000, amount=10000, currency="eur")
        assert await outcome(admin, euros) == "currency_mismatch"
        assert await reversals(admin, ws) == []
        assert await paid_funds(admin, ws) == (100 * USD, {})

        # A payment an operator credited by hand under its payment intent.
        funds = {"amount": "300.00", "reference": "pi_byhand"}
        await admin.ok("POST", f"/v1/workspaces/{ws}/funds", OPERATOR_TOKEN, funds)
        assert await outcome(admin, refunded("pi_byhand", 5000, amount=30000)) == "reversed"
        assert await paid_funds(admin, ws) == (350 * USD, {})
        await no_discrepancy(admin, ws)


async def test_crashes_between_the_ledger_and_redis_heal(sqlite_url: str, redis_url: str) -> None:
    async with paying(sqlite_url, redis_url) as (admin, standin):
        token, ws = await admin.owner_workspace()
        intent = await bought(admin, standin, token, ws, "100.00")
        d = Deps(admin.store, admin.redis, admin.settings, load_catalog())
        # The ledger committed, the process died before Redis: Stripe got no 2xx.
        rev = Reversal(intent, "refund", "ch_" + intent[3:], 40 * USD)
        assert (await admin.store.reverse_payment(rev, d.now_ms())).result == "reversed"
        assert (await projection.read_balances(admin.redis, ws)).pool == 100 * USD
        assert await outcome(admin, refunded(intent, 4000, amount=10000)) == "already_reversed"
        assert await paid_funds(admin, ws) == (60 * USD, {})

        # Once more, healed by the projection check instead, exactly once.
        rev = Reversal(intent, "dispute", "dp_1", 60 * USD)
        assert (await admin.store.reverse_payment(rev, d.now_ms())).result == "reversed"
        for _ in range(2):
            await projection_check.check_workspace(d, ws)
        assert await paid_funds(admin, ws) == (0, {})

        # Redis lost the workspace: the rebuild holds the reversals and marks them.
        await admin.redis.flushall()
        assert (
            await rebuild.rebuild_workspace(admin.store, admin.redis, admin.settings, d.catalog, ws)
            == "rebuilt"
        )
        assert await outcome(admin, refunded(intent, 4000, amount=10000)) == "already_reversed"
        assert await paid_funds(admin, ws) == (0, {})
        await no_discrepancy(admin, ws)


async def test_migration_15_keeps_the_ledger_and_takes_the_new_kinds(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ledger's CHECK constraint takes the reversal kinds; every entry written
    before stays, with its id, and new entries come after it."""
    import meter.store.postgres as pg
    import meter.store.sqlite as sq
    from meter.store import LedgerEntry, open_store
    from meter.store.schema import MIGRATIONS

    store = open_store(store_url)
    try:
        with monkeypatch.context() as m:
            for backend in (pg, sq):
                m.setattr(backend, "MIGRATIONS", tuple(s for s in MIGRATIONS if s.version < 15))
            await store.migrate()
        old = [LedgerEntry("w1", "topup", (i + 1) * USD, f"funds:r{i}", i) for i in range(3)]
        for e in old:
            assert await store.add_ledger_entry(e)
        reversed_ = LedgerEntry("w1", "payment_reversed", -USD, "refund:ch_1:100", 9)
        with pytest.raises(Exception, match=r"(?i)check"):
            await store.add_ledger_entry(reversed_)
        before = [(e.id, e.amount, e.reference) for e in await store.ledger_entries("w1")]
        assert await store.migrate() == [s.version for s in MIGRATIONS if s.version >= 15]
        assert [(e.id, e.amount, e.reference) for e in await store.ledger_entries("w1")] == before
        assert await store.add_ledger_entry(reversed_)
        won = LedgerEntry("w1", "dispute_reinstated", USD, "dispute_won:dp_1", 10)
        assert await store.add_ledger_entry(won)
        after = await store.ledger_entries("w1")
        assert [e.kind for e in after[3:]] == ["payment_reversed", "dispute_reinstated"]
        assert min(e.id or 0 for e in after[3:]) > max(i for i, _, _ in before)
        assert (await store.ledger_balance("w1")).shared == 6 * USD
        with pytest.raises(Exception, match=r"(?i)check"):
            async with store.connection() as c:  # the database's own constraint still holds
                await c.execute(
                    "INSERT INTO ledger (workspace_id, kind, pool, amount, reference, "
                    "created_at, detail) VALUES ('w1', 'nonsense', 'paid', 1, 'x', 1, '{}')"
                )
    finally:
        await store.close()
