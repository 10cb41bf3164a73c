"""Payments given back at the provider, against every recovery path and every order.

``creditgate reconcile --apply`` after a crash between the ledger and Redis, then the
projection check or a redelivery (each ledger entry applied once, markers set by the
correction); refunds and disputes delivered in any order, before or after the payment
itself. Everything real: the admin application, redis-server, SQLite and PostgreSQL, the
official ``stripe`` library verifying deliveries signed as Stripe signs them.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from config import load_catalog
from meter.accounts import projection, projection_check
from meter.accounts.deps import Deps
from meter.redis_layer import keys
from meter.store import LedgerEntry
from meter.store.reversals import Reversal
from meter.usage.reconcile import reconcile
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
)
from tests.support.settings import OPERATOR_TOKEN
from tests.support.stripe_standin import disputed, intent_of, paid, refunded, signed


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/store.db"
    dsn: str = request.getfixturevalue("pg_dsn")
    return dsn


@pytest.mark.parametrize("then", ["projection_check", "redelivery"])
async def test_reconcile_apply_marks_what_it_corrected(
    store_url: str, redis_url: str, then: str
) -> None:
    async with paying(store_url, redis_url) as (admin, standin):
        token, ws = await admin.owner_workspace()
        intent = await bought(admin, standin, token, ws, "100.00")
        d = Deps(admin.store, admin.redis, admin.settings, load_catalog())
        # In the ledger, never in Redis (the process died in between): a refund of 40 and
        # a top-up credited by hand.
        rev = Reversal(intent, "refund", "ch_" + intent[3:], 40 * USD)
        assert (await admin.store.reverse_payment(rev, d.now_ms())).result == "reversed"
        await admin.store.add_ledger_entry(
            LedgerEntry(ws, "topup", 50 * USD, "funds:bank1", d.now_ms())
        )
        assert (await projection.read_balances(admin.redis, ws)).pool == 100 * USD

        [report] = await reconcile(
            admin.store, admin.redis, admin.settings, workspace=ws, apply=True
        )
        assert report.applied
        assert await paid_funds(admin, ws) == (110 * USD, {})
        # Neither path applies either entry again: the correction holds both.
        if then == "projection_check":
            for _ in range(2):
                assert not (await projection_check.check_workspace(d, ws))["grant"]
        else:
            assert await outcome(admin, refunded(intent, 4000, amount=10000)) == (
                "already_reversed"
            )
        assert await paid_funds(admin, ws) == (110 * USD, {})
        await no_discrepancy(admin, ws)


ORDERS = {
    # events -> paid funds left of a $100 payment, whatever order they come in
    ("refund_30", "refund_100", "dispute", "won"): 0,
    ("refund_30", "dispute", "won"): 70 * USD,
    ("refund_30", "dispute", "lost"): 0,
    ("refund_100", "dispute", "won"): 0,
}


def _events(intent: str, dispute: str) -> dict[str, bytes]:
    return {
        "refund_30": refunded(intent, 3000, amount=10000),
        "refund_100": refunded(intent, 10000, amount=10000),
        "dispute": disputed("charge.dispute.created", intent, dispute, 10000, "needs_response"),
        "won": disputed("charge.dispute.closed", intent, dispute, 10000, "won"),
        "lost": disputed("charge.dispute.closed", intent, dispute, 10000, "lost"),
    }


@pytest.mark.parametrize("names", list(ORDERS), ids="+".join)
async def test_every_delivery_order_ends_the_same(
    store_url: str, redis_url: str, names: tuple[str, ...]
) -> None:
    async with paying(store_url, redis_url) as (admin, standin):
        for n, order in enumerate(itertools.permutations(names)):
            token, ws = await admin.owner_workspace()
            intent = await bought(admin, standin, token, ws, "100.00")
            events = _events(intent, f"dp_{n}")
            for _ in range(2):  # ... and each delivered again changes nothing
                for name in order:
                    await outcome(admin, events[name])
                assert await paid_funds(admin, ws) == (ORDERS[names], {}), order
            await no_discrepancy(admin, ws)


@pytest.mark.parametrize("first", ["refund", "dispute", "both"])
async def test_reversals_before_the_payment_are_kept_for_its_credit(
    store_url: str, redis_url: str, first: str
) -> None:
    async with paying(store_url, redis_url) as (admin, standin):
        token, ws = await admin.owner_workspace()
        co = await admin.ok("POST", f"/v1/workspaces/{ws}/checkout", token, {"amount": "100.00"})
        session = standin.session_for(co["id"])
        intent = intent_of(session)
        events = _events(intent, "dp_early")
        early = {"refund": ["refund_30"], "dispute": ["dispute"], "both": ["refund_30", "dispute"]}
        for name in early[first]:
            assert await outcome(admin, events[name]) == "awaiting_payment"
        assert await paid_funds(admin, ws) == (0, {})
        # Stripe's paid event comes (late, or retried): credited, less what was given back.
        assert await outcome(admin, paid(session)) == "credited"
        left = {"refund": 70 * USD, "dispute": 0, "both": 0}[first]
        assert await paid_funds(admin, ws) == (left, {})
        # Redelivered, each event changes nothing; the dispute won gives back its part.
        for name in early[first]:
            await outcome(admin, events[name])
        assert await outcome(admin, paid(session)) == "already_credited"
        assert await paid_funds(admin, ws) == (left, {})
        if first != "refund":
            assert await outcome(admin, events["won"]) == "reinstated"
            assert await paid_funds(admin, ws) == ({"dispute": 100, "both": 70}[first] * USD, {})
        await no_discrepancy(admin, ws)


async def test_a_refund_before_a_credit_by_hand_is_taken_with_it(
    store_url: str, redis_url: str
) -> None:
    async with paying(store_url, redis_url) as (admin, _standin):
        _token, ws = await admin.owner_workspace()
        assert await outcome(admin, refunded("pi_bank", 5000, amount=30000)) == ("awaiting_payment")
        funds = {"amount": "300.00", "reference": "pi_bank"}
        await admin.ok("POST", f"/v1/workspaces/{ws}/funds", OPERATOR_TOKEN, funds)
        await admin.ok("POST", f"/v1/workspaces/{ws}/funds", OPERATOR_TOKEN, funds)  # idempotent
        assert await paid_funds(admin, ws) == (250 * USD, {})
        await no_discrepancy(admin, ws)


async def test_a_refund_racing_the_paid_event_is_taken_once(store_url: str, redis_url: str) -> None:
    async with paying(store_url, redis_url) as (admin, standin):
        for _ in range(5):
            token, ws = await admin.owner_workspace()
            co = await admin.ok(
                "POST", f"/v1/workspaces/{ws}/checkout", token, {"amount": "100.00"}
            )
            session = standin.session_for(co["id"])
            both = [paid(session), refunded(intent_of(session), 4000, amount=10000)]
            answers = await asyncio.gather(*(deliver(admin, p, signed(p)) for p in both))
            assert [status for status, _ in answers] == [200, 200]
            assert await paid_funds(admin, ws) == (60 * USD, {})
            await no_discrepancy(admin, ws)


async def _announced(admin: Any, ws: str) -> list[str]:
    """Event types of ``ws``: those Redis holds and those the store has."""
    raw = await admin.redis.lrange(keys.ws_prefix(ws) + ":ev", 0, -1)
    stored = [e.event_type for e in await admin.store.list_events(ws)]
    return [orjson.loads(r)["type"] for r in raw] + stored


async def test_paid_balance_zero_is_announced_below_zero_too(
    redis_url: str, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path}/store.db"
    async with (
        running_bot() as bot,
        paying(url, redis_url, traffic=True, topup_min="1.00") as (admin, standin),
        aiohttp.ClientSession() as http,
    ):

        async def send(app: str, user: str) -> int:
            target = f"{admin.traffic_url}/hooks/web/{app}/m"
            async with http.post(target, json={}, headers={"X-Channel-User-Id": user}) as resp:
                return resp.status

        token, _first = await admin.owner_workspace()
        ws = await admin.new_workspace(token, "Second")  # no free credits
        body = {"name": "a", "product": "automation", "upstream_url": bot.url}
        a = (await admin.ok("POST", f"/v1/workspaces/{ws}/apps", token, body))["id"]
        b = await admin.ok("POST", f"/v1/workspaces/{ws}/apps", token, body | {"name": "b"})
        # App a's own $1 mostly refunded after it served: its funds go below zero.
        intent = await bought(admin, standin, token, ws, "1.00", a)
        assert await send(a, "ua") == 200
        assert await outcome(admin, refunded(intent, 90, amount=100)) == "reversed"
        before = (await _announced(admin, ws)).count("paid_balance.zero")
        await bought(admin, standin, token, ws, "1.00")  # the shared pool
        n = 0
        while await send(b["id"], f"ub{n}") == 200:
            n += 1
        bal = await projection.read_balances(admin.redis, ws)
        assert bal.pool + sum(bal.app.values()) < 0
        # The paid total went from above zero to below it: announced once more.
        assert (await _announced(admin, ws)).count("paid_balance.zero") == before + 1


async def test_a_reversal_taking_the_paid_total_to_zero_announces_it(
    store_url: str, redis_url: str
) -> None:
    async with paying(store_url, redis_url) as (admin, standin):
        token, ws = await admin.owner_workspace()
        intent = await bought(admin, standin, token, ws, "100.00")
        assert await outcome(admin, refunded(intent, 4000, amount=10000)) == "reversed"
        assert "paid_balance.zero" not in await _announced(admin, ws)
        dispute = disputed("charge.dispute.created", intent, "dp_1", 10000, "needs_response")
        assert await outcome(admin, dispute) == "reversed"
        assert await outcome(admin, dispute) == "already_reversed"
        assert (await _announced(admin, ws)).count("paid_balance.zero") == 1


async def test_a_reversal_kept_for_its_credit_is_audited_when_taken(
    store_url: str, redis_url: str
) -> None:
    """A refund or dispute delivered before its payment's credit is taken by the credit's
    transaction: it is audited there (``payment.reversed``, when it came), as one taken
    at once is; by the paid event and by a credit by hand under the ``pi_…`` alike."""
    async with paying(store_url, redis_url) as (admin, standin):
        token, ws = await admin.owner_workspace()
        co = await admin.ok("POST", f"/v1/workspaces/{ws}/checkout", token, {"amount": "100.00"})
        session = standin.session_for(co["id"])
        intent = intent_of(session)
        assert await outcome(admin, refunded(intent, 4000, amount=10000)) == "awaiting_payment"
        assert await outcome(admin, paid(session)) == "credited"
        funds = {"amount": "300.00", "reference": "pi_bank2"}
        assert await outcome(admin, refunded("pi_bank2", 5000, amount=30000)) == (
            "awaiting_payment"
        )
        await admin.ok("POST", f"/v1/workspaces/{ws}/funds", OPERATOR_TOKEN, funds)
        later = await bought(admin, standin, token, ws, "100.00")  # taken at once: the same
        assert await outcome(admin, refunded(later, 1000, amount=10000)) == "reversed"
        audits = await admin.store.list_audit(target=f"workspace:{ws}")
        taken = [
            (a.actor, a.after["reference"], a.after["amount"], a.after["credit"])
            for a in audits
            if a.action == "payment.reversed"
        ]
        assert sorted(taken) == sorted([
            ("provider:stripe", f"refund:ch_{intent[3:]}:4000", "-40.00",
             f"checkout:{session['id']}"),
            ("provider:stripe", f"refund:ch_{later[3:]}:1000", "-10.00",
             f"checkout:{standin_session_of(standin, later)}"),
            ("provider:stripe", "refund:ch_bank2:5000", "-50.00", "funds:pi_bank2"),
        ])  # fmt: skip
        assert await paid_funds(admin, ws) == (400 * USD, {})
        await no_discrepancy(admin, ws)


def standin_session_of(standin: Any, payment_intent: str) -> str:
    [sid] = [s["id"] for s in standin.sessions.values() if intent_of(s) == payment_intent]
    return sid
