"""The owner hears when paid funds are taken back: ``funds.reversed``, once per reversal.

Each refund or dispute entry that takes money back queues one ``funds.reversed`` in the
transaction that writes it (amount taken, reason ``refund``/``dispute``); redeliveries,
concurrent deliveries, entries that move nothing (a late smaller refund, a dispute after
a full refund) and won disputes queue none. Everything real: the admin application,
redis-server, SQLite and PostgreSQL, deliveries signed as Stripe signs them.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from meter.accounts.notifier import render
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
from tests.support.stripe_standin import disputed, intent_of, paid, refunded, signed


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/store.db"
    dsn: str = request.getfixturevalue("pg_dsn")
    return dsn


async def notices(admin: Any, ws: str) -> list[dict[str, Any]]:
    """The ``funds.reversed`` notifications queued for ``ws``, as their receiver gets them
    (oldest first)."""
    events = [e for e in await admin.store.list_events(ws) if e.event_type == "funds.reversed"]
    return [orjson.loads(render(e)) for e in sorted(events, key=lambda e: e.id)]


def summary(got: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [(n["data"]["amount"], n["data"]["reason"], n["data"]["reference"]) for n in got]


async def test_each_reversal_is_announced_once_with_its_amount_and_reason(
    store_url: str, redis_url: str
) -> None:
    async with paying(store_url, redis_url) as (admin, standin):
        token, ws = await admin.owner_workspace()
        app = (await admin.ok("POST", f"/v1/workspaces/{ws}/apps", token,
                              {"name": "b", "product": "search"}))["id"]  # fmt: skip
        intent = await bought(admin, standin, token, ws, "150.00", app)
        charge = "ch_" + intent[3:]
        part = refunded(intent, 3000, amount=15000)
        assert [await outcome(admin, part) for _ in range(3)] == ["reversed"] + [
            "already_reversed"
        ] * 2
        full = refunded(intent, 15000, amount=15000)
        many = await asyncio.gather(*(deliver(admin, full, signed(full)) for _ in range(8)))
        assert sorted(b["outcome"] for _, b in many) == ["already_reversed"] * 7 + ["reversed"]
        for late in (refunded(intent, 3000, amount=15000), full):  # moves nothing now
            assert await outcome(admin, late) == "already_reversed"
        opened = disputed("charge.dispute.created", intent, "dp_after", 15000, "needs_response")
        assert await outcome(admin, opened) == "already_reversed"  # 0.00: after a full refund
        assert await paid_funds(admin, ws) == (0, {})

        other = await bought(admin, standin, token, ws, "100.00")
        opened = disputed("charge.dispute.created", other, "dp_1", 10000, "needs_response")
        assert [await outcome(admin, opened) for _ in range(2)] == ["reversed", "already_reversed"]
        won = disputed("charge.dispute.closed", other, "dp_1", 10000, "won")
        assert await outcome(admin, won) == "reinstated"  # given back: nothing reversed
        assert await paid_funds(admin, ws) == (100 * USD, {})

        got = await notices(admin, ws)
        assert summary(got) == [
            ("30.00", "refund", f"refund:{charge}:3000"),
            ("120.00", "refund", f"refund:{charge}:15000"),
            ("100.00", "dispute", "dispute:dp_1"),
        ]
        first, _, last = got
        assert first["type"] == "funds.reversed"
        assert first["id"] == f"{ws}:refund:{charge}:3000"
        assert first["data"] == {
            "amount": "30.00",
            "reason": "refund",
            "app_id": app,
            "reference": f"refund:{charge}:3000",
            "payment_intent": intent,
            "charge": charge,
            "dispute_id": None,
            "credit": first["data"]["credit"],
        }
        assert first["data"]["credit"].startswith("cs_test_")
        assert (last["data"]["app_id"], last["data"]["dispute_id"], last["data"]["charge"]) == (
            None,
            "dp_1",
            "ch_" + other[3:],
        )
        await no_discrepancy(admin, ws)


async def test_a_reversal_kept_for_its_credit_is_announced_when_taken(
    store_url: str, redis_url: str
) -> None:
    async with paying(store_url, redis_url) as (admin, standin):
        token, ws = await admin.owner_workspace()
        co = await admin.ok("POST", f"/v1/workspaces/{ws}/checkout", token, {"amount": "100.00"})
        session = standin.session_for(co["id"])
        intent = intent_of(session)
        early = refunded(intent, 4000, amount=10000)
        assert await outcome(admin, early) == "awaiting_payment"
        assert await notices(admin, ws) == []  # nothing taken yet
        assert await outcome(admin, paid(session)) == "credited"
        for again in (early, paid(session)):
            await outcome(admin, again)
        assert summary(await notices(admin, ws)) == [
            ("40.00", "refund", f"refund:ch_{intent[3:]}:4000")
        ]
        assert await paid_funds(admin, ws) == (60 * USD, {})
        await no_discrepancy(admin, ws)
