"""A refund that failed at Stripe is credited back by an operator, as Stripe says.

The failure is kept when its signed event comes (``refund_failed``); nothing moves by
itself. ``POST /v1/workspaces/{ws}/refund-credits`` (operator token) asks Stripe what is
refunded of the charge now (``GET /v1/refunds?charge=``: refunds neither failed nor
canceled) and lowers the payment's refunded part here to that: never by the failed
refund's own amount (a refund made again, whose cumulative amount repeats an earlier
one, or events in another order made that give the payer twice), never more than the
payment's reversals took, into the pool the payment credited, its live balance under its
own marker so that ``reconcile --apply`` and the projection check never apply it again.
Nothing to credit back is 409 with nothing written (a retry later works); a refund made
afterwards debits from there. Every delivery order of a refund, its failure, a second
refund and the operator's credit back ends at what Stripe kept. Real admin application,
redis-server, SQLite and PostgreSQL, deliveries signed as Stripe signs them.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import pytest

from config import load_catalog
from gateway.cli_commands import _reconcile
from meter.accounts import projection, projection_check, rebuild
from meter.accounts.deps import Deps
from meter.accounts.reversals import ReversalEvent, handle_event
from meter.usage.reconcile import reconcile
from tests.support.adminkit import Admin
from tests.support.clock import Clock
from tests.support.payments import BACKENDS, USD, bought, outcome, paid_funds, paying, reversals
from tests.support.settings import OPERATOR_TOKEN
from tests.support.stripe_standin import disputed, intent_of, paid, refund_updated, refunded


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/store.db"


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/store.db"
    dsn: str = request.getfixturevalue("pg_dsn")
    return dsn


async def credit(admin: Admin, ws: str, refund: str = "re_1") -> tuple[int, Any]:
    return await admin.api("POST", f"/v1/workspaces/{ws}/refund-credits", OPERATOR_TOKEN,
                           {"refund": refund})  # fmt: skip


async def settle(admin: Admin, ws: str) -> int:
    """reconcile --apply and the projection check, then nothing differs: the paid funds."""
    [rep] = await reconcile(admin.store, admin.redis, admin.settings, workspace=ws, apply=True)
    await projection_check.check_workspace(
        Deps(admin.store, admin.redis, admin.settings, load_catalog()), ws)  # fmt: skip
    [rep] = await reconcile(admin.store, admin.redis, admin.settings, workspace=ws)
    assert rep.differences == [], rep
    funds = await paid_funds(admin, ws)
    return funds[0] + sum(funds[1].values())


async def test_a_failed_refund_is_credited_back_into_its_pool(
    store_url: str, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async with paying(store_url, redis_url) as (admin, standin):
        token, ws = await admin.owner_workspace()
        app = (await admin.ok("POST", f"/v1/workspaces/{ws}/apps", token,
                              {"name": "b", "product": "search"}))["id"]  # fmt: skip
        pi = await bought(admin, standin, token, ws, "100.00", app)
        standin.set_refund(pi, "re_1", 3000)
        assert await outcome(admin, refunded(pi, 3000, amount=10000)) == "reversed"
        standin.set_refund(pi, "re_1", 3000, "failed")
        assert await outcome(admin, refund_updated(pi, "re_1", 3000, "failed")) == "refund_failed"
        assert await paid_funds(admin, ws) == (0, {app: 70 * USD})
        url = f"/v1/workspaces/{ws}/refund-credits"
        # Operators only; an unknown refund is 404.
        st, body = await admin.api("POST", url, token, {"refund": "re_1"})
        assert st == 403, body
        assert (await credit(admin, ws, "re_2"))[0] == 404
        await _reconcile(admin.settings, ws, False)
        assert f"refund_failed: {ws}: refund re_1 of charge ch_" in capsys.readouterr().out
        st, got = await credit(admin, ws)
        assert (st, got["amount"], got["refund_amount"], got["app_id"], got["created"]) == (
            201, "30.00", "30.00", app, True)  # fmt: skip
        charge = "ch_" + pi.removeprefix("pi_")
        assert got["reference"] == f"refund_sync:{charge}:1"
        assert standin.refund_lists == [charge]  # Stripe was asked
        assert await paid_funds(admin, ws) == (0, {app: 100 * USD})
        # A replay finds nothing to credit back (Stripe and the ledger agree): nothing.
        st, again = await credit(admin, ws)
        assert (st, again["code"]) == (409, "nothing_to_credit_back"), again
        assert await settle(admin, ws) == 100 * USD
        await _reconcile(admin.settings, ws, False)
        out = capsys.readouterr().out
        assert f"credited back 30.00 (refund_sync:{charge}:1)" in out
        # The owner is told; the transactions list it.
        added = [e.payload for e in await admin.store.list_events(ws)
                 if e.event_type == "funds.added" and e.payload.get("reason")]  # fmt: skip
        assert [(p["amount"], p["refund"], p["app_id"]) for p in added] == [("30.00", "re_1", app)]
        txs = await admin.ok("GET", f"/v1/workspaces/{ws}/transactions", OPERATOR_TOKEN)
        assert [(t["type"], t["amount"]) for t in txs["transactions"][:2]] == [
            ("refund_failed", "30.00"), ("payment_reversed", "-30.00")]  # fmt: skip
        # Refunded again afterwards, 30.00: Stripe's amount_refunded is 30 again, the
        # same cumulative amount as re_1's: it debits all the same, once.
        standin.set_refund(pi, "re_2", 3000)
        again_30 = refunded(pi, 3000, amount=10000)
        assert await outcome(admin, again_30) == "reversed"
        assert await outcome(admin, again_30) == "already_reversed"
        assert await settle(admin, ws) == 70 * USD
        assert await reversals(admin, ws) == [
            ("payment_reversed", -30 * USD), ("payment_reversed", 30 * USD),
            ("payment_reversed", -30 * USD)]  # fmt: skip


async def test_a_credit_back_never_gives_more_than_was_taken(
    store_url: str, redis_url: str
) -> None:
    async with paying(store_url, redis_url) as (admin, standin):
        token, ws = await admin.owner_workspace()
        pi = await bought(admin, standin, token, ws, "100.00")
        # A failure whose refund debited nothing here: nothing to credit back, nothing
        # written (the refund's own debit, once it comes, can be credited back then).
        standin.set_refund(pi, "re_0", 4000, "failed")
        assert await outcome(admin, refund_updated(pi, "re_0", 4000, "failed")) == "refund_failed"
        st, got = await credit(admin, ws, "re_0")
        assert (st, got["code"]) == (409, "nothing_to_credit_back"), got
        assert await reversals(admin, ws) == []
        # Refunded 30, then the whole payment disputed: all 100 are taken; the failed
        # refund's 30 is still held by the dispute, so its credit back gives nothing.
        standin.set_refund(pi, "re_1", 3000)
        assert await outcome(admin, refunded(pi, 3000, amount=10000)) == "reversed"
        lost = disputed("charge.dispute.created", pi, "dp_1", 10000, "needs_response")
        assert await outcome(admin, lost) == "reversed"
        assert await paid_funds(admin, ws) == (0, {})
        standin.set_refund(pi, "re_1", 3000, "failed")
        assert await outcome(admin, refund_updated(pi, "re_1", 3000, "failed")) == "refund_failed"
        st, got = await credit(admin, ws)
        assert (st, got["amount"]) == (201, "0.00"), got
        assert await settle(admin, ws) == 0
        # The dispute won: the whole payment comes back, not 30 more.
        won = disputed("charge.dispute.closed", pi, "dp_1", 10000, "won")
        assert await outcome(admin, won) == "reinstated"
        assert await settle(admin, ws) == 100 * USD
        # A refund of another workspace's payment is not found from this one.
        _, other = await admin.owner_workspace("someone")
        assert (await credit(admin, other))[0] == 404


async def test_stripe_is_asked_or_nothing_is_credited(sqlite_url: str, redis_url: str) -> None:
    async with paying(sqlite_url, redis_url) as (admin, standin):
        token, ws = await admin.owner_workspace()
        pi = await bought(admin, standin, token, ws, "100.00")
        standin.set_refund(pi, "re_1", 3000, "failed")
        assert await outcome(admin, refunded(pi, 3000, amount=10000)) == "reversed"
        assert await outcome(admin, refund_updated(pi, "re_1", 3000, "failed")) == "refund_failed"
        # More than one page of refunds: no guess (502), nothing written.
        standin.refunds_has_more = True
        st, got = await credit(admin, ws)
        assert (st, got["code"]) == (502, "payment_provider_error"), got
        standin.refunds_has_more = False
        standin.fail_with = 500
        assert (await credit(admin, ws))[0] == 502
        standin.fail_with = None
        assert await settle(admin, ws) == 70 * USD
        # Eight at once: one credits back, the others find nothing (or a change) to do.
        got8 = await asyncio.gather(*[credit(admin, ws) for _ in range(8)])
        assert sorted(s for s, _ in got8) == [201] + [409] * 7, got8
        assert await settle(admin, ws) == 100 * USD


async def test_a_crash_before_redis_is_completed(sqlite_url: str, redis_url: str) -> None:
    async with paying(sqlite_url, redis_url) as (admin, standin):
        token, ws = await admin.owner_workspace()
        pi = await bought(admin, standin, token, ws, "100.00")
        assert await outcome(admin, refunded(pi, 3000, amount=10000)) == "reversed"
        standin.set_refund(pi, "re_1", 3000, "failed")
        assert await outcome(admin, refund_updated(pi, "re_1", 3000, "failed")) == "refund_failed"
        d = Deps(admin.store, admin.redis, admin.settings, load_catalog())
        # The ledger committed, the process died before Redis.
        basis = await admin.store.credit_back_basis(ws, "re_1")
        done = await admin.store.credit_back_refund(ws, "re_1", "op", d.now_ms(), 0, basis.seen)
        assert done.result == "credited"
        assert (await projection.read_balances(admin.redis, ws)).pool == 70 * USD
        for _ in range(2):  # the operator's retry: nothing more, the balance completed
            st, got = await credit(admin, ws)
            assert (st, got["code"]) == (409, "nothing_to_credit_back"), got
            assert await paid_funds(admin, ws) == (100 * USD, {})
        # Redis lost the workspace: the rebuild holds the credit back and marks it.
        await admin.redis.flushall()
        assert await rebuild.rebuild_workspace(
            admin.store, admin.redis, admin.settings, d.catalog, ws) == "rebuilt"  # fmt: skip
        assert (await credit(admin, ws))[0] == 409
        assert await settle(admin, ws) == 100 * USD


# The reviewer's findings: Stripe's history (set_refund) then the deliveries.


async def test_f1_refunded_again_the_same_before_the_credit_back(
    store_url: str, redis_url: str
) -> None:
    async with paying(store_url, redis_url) as (admin, standin):
        token, ws = await admin.owner_workspace()
        pi = await bought(admin, standin, token, ws, "100.00")
        standin.set_refund(pi, "re_1", 3000, "failed")
        standin.set_refund(pi, "re_2", 3000)  # Stripe kept 70
        assert await outcome(admin, refunded(pi, 3000, amount=10000)) == "reversed"
        assert await outcome(admin, refund_updated(pi, "re_1", 3000, "failed")) == "refund_failed"
        await outcome(admin, refunded(pi, 3000, amount=10000))  # re_2: the same key
        st, got = await credit(admin, ws)
        assert (st, got["code"]) == (409, "nothing_to_credit_back"), got
        assert await settle(admin, ws) == 70 * USD


async def test_f2_refunded_again_the_same_after_the_credit_back(
    store_url: str, redis_url: str
) -> None:
    async with paying(store_url, redis_url) as (admin, standin):
        token, ws = await admin.owner_workspace()
        pi = await bought(admin, standin, token, ws, "100.00")
        first = refunded(pi, 3000, amount=10000)
        assert await outcome(admin, first) == "reversed"
        standin.set_refund(pi, "re_1", 3000, "failed")
        assert await outcome(admin, refund_updated(pi, "re_1", 3000, "failed")) == "refund_failed"
        assert (await credit(admin, ws))[0] == 201
        assert await settle(admin, ws) == 100 * USD
        assert await outcome(admin, first) == "already_reversed"  # a redelivery: nothing
        assert await settle(admin, ws) == 100 * USD
        standin.set_refund(pi, "re_2", 3000)  # cumulative 30 again
        assert await outcome(admin, refunded(pi, 3000, amount=10000)) == "reversed"
        assert await settle(admin, ws) == 70 * USD


async def test_f3_the_failure_delivered_after_the_next_refund(
    store_url: str, redis_url: str
) -> None:
    async with paying(store_url, redis_url) as (admin, standin):
        token, ws = await admin.owner_workspace()
        pi = await bought(admin, standin, token, ws, "100.00")
        standin.set_refund(pi, "re_1", 3000, "failed")
        standin.set_refund(pi, "re_2", 2000)  # Stripe kept 80
        assert await outcome(admin, refunded(pi, 3000, amount=10000)) == "reversed"
        await outcome(admin, refunded(pi, 2000, amount=10000))
        assert await outcome(admin, refund_updated(pi, "re_1", 3000, "failed")) == "refund_failed"
        st, got = await credit(admin, ws)
        assert (st, got["amount"]) == (201, "10.00"), got
        assert await settle(admin, ws) == 80 * USD


async def test_f4_a_late_cumulative_from_before_the_failure_takes_nothing_more(
    store_url: str, redis_url: str
) -> None:
    # re_2's charge.refunded (cumulative 50, sent before re_1 failed) delivered after the
    # credit back of re_1: it took 30 more (the payer held 50 of the 80 Stripe kept, until
    # an operator credited back again). A refund after a credit back of its charge now
    # counts for no more than Stripe says is refunded; a later real refund at the same
    # cumulative amount is still debited.
    async with paying(store_url, redis_url) as (admin, standin):
        token, ws = await admin.owner_workspace()
        pi = await bought(admin, standin, token, ws, "100.00")
        standin.set_refund(pi, "re_1", 3000, "failed")
        standin.set_refund(pi, "re_2", 2000)  # Stripe kept 80
        assert await outcome(admin, refunded(pi, 3000, amount=10000)) == "reversed"
        assert await outcome(admin, refund_updated(pi, "re_1", 3000, "failed")) == "refund_failed"
        assert (await credit(admin, ws))[1]["amount"] == "10.00"
        assert await settle(admin, ws) == 80 * USD
        late = refunded(pi, 5000, amount=10000)
        assert await outcome(admin, late) == "already_reversed"
        assert await settle(admin, ws) == 80 * USD
        st, got = await credit(admin, ws)
        assert (st, got["code"]) == (409, "nothing_to_credit_back"), got
        standin.set_refund(pi, "re_3", 3000)  # a real refund: cumulative 50 again
        assert await outcome(admin, refunded(pi, 5000, amount=10000)) == "reversed"
        assert await outcome(admin, late) == "already_reversed"  # redelivered
        assert await settle(admin, ws) == 50 * USD


async def test_f5_the_failure_before_its_refund_burns_nothing(
    store_url: str, redis_url: str
) -> None:
    async with paying(store_url, redis_url) as (admin, standin):
        token, ws = await admin.owner_workspace()
        pi = await bought(admin, standin, token, ws, "100.00")
        standin.set_refund(pi, "re_1", 3000, "failed")  # Stripe kept 100
        assert await outcome(admin, refund_updated(pi, "re_1", 3000, "failed")) == "refund_failed"
        assert (await credit(admin, ws))[0] == 409  # nothing taken yet: nothing written
        assert await outcome(admin, refunded(pi, 3000, amount=10000)) == "reversed"
        st, got = await credit(admin, ws)
        assert (st, got["amount"]) == (201, "30.00"), got
        assert await settle(admin, ws) == 100 * USD


@pytest.mark.parametrize("second", [2000, 3000])
async def test_every_delivery_order_ends_at_what_stripe_kept(
    store_url: str, redis_url: str, second: int
) -> None:
    """Stripe: paid 100; re_1 30 (cumulative 30); re_1 fails (0); re_2 (``second``). Every
    delivery order of the three events and the operator's credit back (after the failure
    came), each step followed by redeliveries of every event so far, reconcile --apply
    and the projection check; a credit back that credits leaves exactly what Stripe
    kept, one that does not writes nothing, and an operator's last credit back once
    everything came ends there; then a dispute of the rest, lost, leaves 0."""
    kept = 10000 - second
    for i, perm in enumerate(itertools.permutations(["r1", "f", "r2", "C"])):
        if perm.index("C") < perm.index("f"):
            continue
        rid = f"re_{second}_{i}"  # failures are kept by refund id (one store for all)
        async with paying(store_url, redis_url, clock=Clock.wall()) as (admin, standin):
            token, ws = await admin.owner_workspace()
            pi = await bought(admin, standin, token, ws, "100.00")
            standin.set_refund(pi, rid, 3000, "failed")
            standin.set_refund(pi, "re_2", second)
            events = {"r1": refunded(pi, 3000, amount=10000),
                      "f": refund_updated(pi, rid, 3000, "failed"),
                      "r2": refunded(pi, second, amount=10000)}  # fmt: skip
            seen: list[bytes] = []
            for step in perm:
                if step == "C":
                    st, got = await credit(admin, ws, rid)
                    assert st in (201, 409), (perm, got)
                    if st == 201:
                        assert await settle(admin, ws) == kept * 100 * 100, perm
                else:
                    await outcome(admin, events[step])
                    seen.append(events[step])
                for payload in seen:
                    await outcome(admin, payload)
                await settle(admin, ws)
            await credit(admin, ws, rid)  # the operator's check once all came
            assert await settle(admin, ws) == kept * 100 * 100, perm
            lost = disputed("charge.dispute.closed", pi, "dp_1", kept, "lost")
            await outcome(admin, lost)
            assert await settle(admin, ws) == 0, perm


async def test_a_refund_recorded_while_stripe_is_asked_is_not_credited_back(
    sqlite_url: str, redis_url: str
) -> None:
    # Stripe's answer can be older than a refund recorded meanwhile (which it may not
    # count): nothing is written then (409 refunded_meanwhile), and asking again works.
    async with paying(sqlite_url, redis_url) as (admin, standin):
        token, ws = await admin.owner_workspace()
        pi = await bought(admin, standin, token, ws, "100.00")
        assert await outcome(admin, refunded(pi, 3000, amount=10000)) == "reversed"
        standin.set_refund(pi, "re_1", 3000, "failed")
        assert await outcome(admin, refund_updated(pi, "re_1", 3000, "failed")) == "refund_failed"
        standin.misbehave = "stall_head"
        asked = asyncio.ensure_future(credit(admin, ws))
        await standin.stalled.wait()  # Stripe holds the answer (it lists no refund)
        standin.set_refund(pi, "re_2", 5000)
        assert await outcome(admin, refunded(pi, 5000, amount=10000)) == "reversed"
        standin.set_refund(pi, "re_2", 5000, "failed")  # the answer: 0 refunded (older)
        standin.misbehave = None
        standin.release.set()
        st, got = await asked
        assert (st, got["code"]) == (409, "refunded_meanwhile"), got
        assert await settle(admin, ws) == 50 * USD
        standin.set_refund(pi, "re_2", 5000)  # Stripe's truth now: 50 refunded
        st, got = await credit(admin, ws)
        assert (st, got["code"]) == (409, "nothing_to_credit_back"), got
        assert await settle(admin, ws) == 50 * USD


async def test_a_repeated_cumulative_refund_recorded_while_stripe_is_asked(
    store_url: str, redis_url: str
) -> None:
    # As above, but the refund made meanwhile repeats the cumulative amount (re_1 30
    # failed, re_2 30): its charge.refunded writes no entry (refund:<ch>:3000 exists), so
    # the entries are unchanged; the event still counts on the payment's claim, so
    # Stripe's older answer (0 refunded) is not credited back (it gave the payer 100
    # while Stripe kept 70, and nothing could correct it afterwards).
    async with paying(store_url, redis_url) as (admin, standin):
        token, ws = await admin.owner_workspace()
        pi = await bought(admin, standin, token, ws, "100.00")
        assert await outcome(admin, refunded(pi, 3000, amount=10000)) == "reversed"
        standin.set_refund(pi, "re_1", 3000, "failed")
        assert await outcome(admin, refund_updated(pi, "re_1", 3000, "failed")) == "refund_failed"
        standin.misbehave = "stall_head"
        asked = asyncio.ensure_future(credit(admin, ws))
        await standin.stalled.wait()  # Stripe computed its answer: 0 refunded
        again = refunded(pi, 3000, amount=10000)  # re_2 30 made now: cumulative 30 again
        assert await outcome(admin, again) == "already_reversed"
        standin.misbehave = None
        standin.release.set()
        st, got = await asked
        assert (st, got["code"]) == (409, "refunded_meanwhile"), got
        standin.set_refund(pi, "re_2", 3000)  # Stripe's truth: re_2 30 refunded, kept 70
        assert await outcome(admin, again) == "already_reversed"  # redelivered
        st, got = await credit(admin, ws)
        assert (st, got["code"]) == (409, "nothing_to_credit_back"), got
        assert await settle(admin, ws) == 70 * USD


async def test_a_refund_held_before_its_payment_is_not_debited_again_after_a_credit_back(
    store_url: str, redis_url: str
) -> None:
    # Stripe: paid 100; re_1 30 (cumulative 30) fails; re_2 30 (cumulative 30 again)
    # fails: kept 100. Both charge.refunded come before the checkout's paid event (held,
    # awaiting_payment: the second's reference is the first's, nothing more of it is
    # kept); the credit records the first. After the credit back, Stripe redelivers the
    # second: it was handled (held, settled by the credit), not a new refund (it debited
    # 30 again: the payer held 70 of the 100 Stripe kept).
    async with paying(store_url, redis_url) as (admin, standin):
        token, ws = await admin.owner_workspace()
        co = await admin.ok("POST", f"/v1/workspaces/{ws}/checkout", token, {"amount": "100.00"})
        session = standin.session_for(co["id"])
        pi = intent_of(session)
        first, second = refunded(pi, 3000, amount=10000), refunded(pi, 3000, amount=10000)
        assert await outcome(admin, first) == "awaiting_payment"
        assert await outcome(admin, second) == "awaiting_payment"
        assert await outcome(admin, paid(session)) == "credited"
        for re in ("re_1", "re_2"):
            standin.set_refund(pi, re, 3000, "failed")
            assert await outcome(admin, refund_updated(pi, re, 3000, "failed")) == "refund_failed"
        assert await settle(admin, ws) == 70 * USD
        st, got = await credit(admin, ws)
        assert (st, got["amount"]) == (201, "30.00"), got
        assert await outcome(admin, second) == "already_reversed"
        assert await outcome(admin, first) == "already_reversed"
        assert await settle(admin, ws) == 100 * USD


async def test_a_refund_asked_before_a_credit_back_committed_asks_stripe_again(
    store_url: str, redis_url: str
) -> None:
    # After a credit back, a charge.refunded counts for no more than Stripe lists. re_3's
    # event gets Stripe's answer (50: re_2 not failed yet), then re_2 fails and its
    # credit back commits before the event is recorded: that answer is stale (it would
    # take re_2's 40 again, the payer holding 50 of the 90 Stripe kept), so the event
    # asks Stripe again (10) and takes nothing more.
    async with paying(store_url, redis_url) as (admin, standin):
        token, ws = await admin.owner_workspace()
        pi = await bought(admin, standin, token, ws, "100.00")
        charge = "ch_" + pi.removeprefix("pi_")
        standin.set_refund(pi, "re_1", 3000)
        assert await outcome(admin, refunded(pi, 3000, amount=10000)) == "reversed"
        standin.set_refund(pi, "re_1", 3000, "failed")
        assert await outcome(admin, refund_updated(pi, "re_1", 3000, "failed")) == "refund_failed"
        assert (await credit(admin, ws, "re_1"))[0] == 201
        standin.set_refund(pi, "re_2", 4000)
        assert await outcome(admin, refunded(pi, 4000, amount=10000)) == "reversed"
        assert await settle(admin, ws) == 60 * USD
        standin.set_refund(pi, "re_3", 1000)  # Stripe: re_2 40 + re_3 10

        asked: list[str] = []

        async def stripe_refunded(ch: str) -> int:
            asked.append(ch)
            if len(asked) == 1:  # answered 50; meanwhile re_2 fails and is credited back
                standin.set_refund(pi, "re_2", 4000, "failed")
                failed = refund_updated(pi, "re_2", 4000, "failed")
                assert await outcome(admin, failed) == "refund_failed"
                st, got = await credit(admin, ws, "re_2")
                assert (st, got["amount"]) == (201, "30.00"), got
                return 5000
            listed = standin.refunds[ch]
            return sum(r["amount"] for r in listed if r["status"] not in ("failed", "canceled"))

        deps = Deps(admin.store, admin.redis, admin.settings, load_catalog())
        ev = ReversalEvent(event_id="evt_re_3", type="charge.refunded", object_id=charge,
                           payment_intent=pi, charge=charge, amount=5000, currency="usd",
                           livemode=admin.settings.stripe_livemode)  # fmt: skip
        got = await handle_event(deps, ev, None, stripe_refunded)
        assert (got, asked) == ("already_reversed", [charge, charge])
        assert await settle(admin, ws) == 90 * USD
