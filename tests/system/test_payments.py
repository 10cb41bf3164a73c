"""Money in: free credits once per user, operator-only manual funds, Stripe Checkout
top-ups credited exactly once per payment, and the transactions list.

Everything is real: the admin application of ``create_app`` on a loopback socket, a real
redis-server, real SQLite and PostgreSQL stores, the official ``stripe`` library talking
HTTP to a local stand-in for Stripe's REST API (tests/support/stripe_standin.py), and webhook
deliveries signed the way Stripe signs them and verified by the library.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from config import load_catalog
from meter.accounts import checkouts, payments, projection, workspaces
from meter.accounts.deps import Deps
from meter.store import LedgerEntry, open_store
from meter.usage.flusher import Flusher
from tests.support.adminkit import admin_server, snapshot
from tests.support.bot import running_bot
from tests.support.clock import Clock
from tests.support.payments import BACKENDS, HOOK, USD, Paying, deliver, paid_state, paying
from tests.support.settings import OPERATOR_TOKEN, make_settings
from tests.support.stripe_standin import (
    SECRET_KEY,
    WEBHOOK_SECRET,
    event,
    paid,
    signed,
    stripe_standin,
)


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/store.db"
    else:
        yield request.getfixturevalue("pg_dsn")


@pytest.fixture
async def sqlite_paying(redis_url: str, tmp_path: Path) -> AsyncIterator[Paying]:
    async with paying(f"sqlite:///{tmp_path}/store.db", redis_url) as both:
        yield both


# ------------------------------------------------------------------ free credits


async def test_free_credits_once_per_user_even_when_concurrent(
    store_url: str, redis_url: str
) -> None:
    async with paying(store_url, redis_url) as (admin, _):
        token, first = await admin.owner_workspace()
        second = await admin.ok("POST", "/v1/workspaces", token, {"name": "Second"})
        assert second["free_credits_expire_at"] is None
        views = [
            await admin.ok("GET", f"/v1/workspaces/{w}/plan-usage", token)
            for w in (first, second["id"])
        ]
        assert [v["free_credits"]["granted"] for v in views] == ["500.00", "0.00"]
        assert [v["usable_balance"] for v in views] == ["500.00", "0.00"]

        # Ten creations at once by a new user: the store's unique key grants exactly once.
        _, racer = await admin.new_user("racer")
        made = await asyncio.gather(
            *(admin.api("POST", "/v1/workspaces", racer, {"name": f"w{i}"}) for i in range(10))
        )
        assert [status for status, _ in made] == [201] * 10
        ids = [body["id"] for _, body in made]
        grants = [e for w in ids for e in await admin.store.ledger_entries(w, kind="grant_free")]
        assert [e.amount for e in grants] == [500 * USD]
        free = [(await projection.read_balances(admin.redis, w)).free for w in ids]
        assert sorted(free) == [0] * 9 + [500 * USD]
        with_expiry = [b for _, b in made if b["free_credits_expire_at"] is not None]
        assert [b["id"] for b in with_expiry] == [grants[0].workspace_id]


async def test_free_credits_per_workspace_when_configured(redis_url: str, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/store.db"
    async with paying(url, redis_url, free_credits_once_per_user=False) as (admin, _):
        token, first = await admin.owner_workspace()
        second = await admin.new_workspace(token, "B")
        for w in (first, second):
            assert (await projection.read_balances(admin.redis, w)).free == 500 * USD


# ------------------------------------------------------------------ manual funds


async def test_manual_funds_are_operator_only_with_a_reference(sqlite_paying: Paying) -> None:
    admin, _ = sqlite_paying
    token, ws = await admin.owner_workspace()
    path = f"/v1/workspaces/{ws}/funds"
    before = await snapshot(admin)
    status, body = await admin.api("POST", path, token, {"amount": "100.00", "reference": "x"})
    assert (status, body["code"]) == (403, "forbidden")
    status, body = await admin.api("POST", path, OPERATOR_TOKEN, {"amount": "100.00"})
    assert (status, body["field"]) == (422, "reference")
    assert await snapshot(admin) == before

    funds = {"amount": "100.00", "reference": "bank-transfer-7"}
    first = await admin.ok("POST", path, OPERATOR_TOKEN, funds)
    again = await admin.ok("POST", path, OPERATOR_TOKEN, funds)
    assert (first["created"], again["created"]) == (True, False)
    assert first["reference"] == "bank-transfer-7"
    assert first["amount"] == "100.00"
    assert (await projection.read_balances(admin.redis, ws)).pool == 100 * USD
    assert len(await admin.store.ledger_entries(ws, kind="topup")) == 1


# ---------------------------------------------------------------------- checkout


async def test_checkout_creates_a_session_at_the_provider(sqlite_paying: Paying) -> None:
    admin, standin = sqlite_paying
    token, ws = await admin.owner_workspace()
    app = await admin.ok(
        "POST", f"/v1/workspaces/{ws}/apps", token, {"name": "b", "product": "search"}
    )
    body = {"amount": "123.45", "app_id": app["id"]}
    co = await admin.ok("POST", f"/v1/workspaces/{ws}/checkout", token, body)
    assert co["amount"] == "123.45"
    assert co["status"] == "open"
    assert co["app_id"] == app["id"]
    assert co["id"].startswith("co")
    [seen] = standin.seen
    session = standin.session_for(co["id"])
    assert co["url"] == session["url"]
    assert seen.headers["Authorization"] == f"Bearer {SECRET_KEY}"
    assert seen.headers["Idempotency-Key"] == f"creditgate-checkout-{co['id']}"
    form = seen.form
    assert form["mode"] == "payment"
    assert form["line_items[0][price_data][unit_amount]"] == "12345"
    assert form["line_items[0][price_data][currency]"] == "usd"
    assert form["line_items[0][quantity]"] == "1"
    assert not any(k.startswith("line_items[1]") for k in form)
    assert form["metadata[workspace_id]"] == ws
    assert form["metadata[app_id]"] == app["id"]
    assert form["metadata[checkout_id]"] == co["id"]
    assert form["success_url"] == admin.settings.checkout_success_url
    assert form["cancel_url"] == admin.settings.checkout_cancel_url
    # Nothing is credited before the provider confirms the payment.
    assert await paid_state(admin, ws) == (0, 0, 0, 0)
    stored = await admin.store.get_checkout(co["id"])
    assert stored is not None
    assert stored.session_id == session["id"]
    assert stored.amount == 123_450_000


async def test_checkout_limits_roles_and_configuration(redis_url: str, tmp_path: Path) -> None:
    async with paying(f"sqlite:///{tmp_path}/store.db", redis_url) as (admin, standin):
        token, ws = await admin.owner_workspace()
        path = f"/v1/workspaces/{ws}/checkout"
        for amount in ("99.99", "20000.01", "0", "100.001", "1e3", "-100"):
            status, body = await admin.api("POST", path, token, {"amount": amount})
            assert (status, body["field"]) == (422, "amount"), amount
        for edge in ("100.00", "20000"):
            assert (await admin.api("POST", path, token, {"amount": edge}))[0] == 201
        member, member_token = await admin.new_user("member")
        await admin.ok("POST", f"/v1/workspaces/{ws}/members", token, {"user_id": member})
        await admin.accept_invitations(member_token)
        assert (await admin.api("POST", path, member_token, {"amount": "100"}))[0] == 403
        assert (await admin.api("POST", path, OPERATOR_TOKEN, {"amount": "100"}))[0] == 403
        assert len(standin.seen) == 2

    async with admin_server(
        make_settings(redis_url, store_url=f"sqlite:///{tmp_path}/b.db", operator=True)
    ) as plain:
        token, ws = await plain.owner_workspace()
        status, body = await plain.api(
            "POST", f"/v1/workspaces/{ws}/checkout", token, {"amount": "100.00"}
        )
        assert (status, body["code"]) == (503, "payments_not_configured")
        status, body = await deliver(plain, b"{}", "t=1,v1=00")
        assert (status, body["code"]) == (503, "payments_not_configured")


async def test_open_checkouts_per_workspace_are_capped(store_url: str, redis_url: str) -> None:
    """The provider's rate limit is shared by every tenant: a workspace holds at most
    ``checkout_open_max`` open checkouts, even when asking for many at once, and one more
    never reaches the provider; a finished or outlived one frees its place."""
    clock = Clock.wall()
    async with paying(store_url, redis_url, clock=clock, checkout_open_max=3) as (admin, standin):
        token, ws = await admin.owner_workspace()
        path = f"/v1/workspaces/{ws}/checkout"
        answers = await asyncio.gather(
            *(admin.api("POST", path, token, {"amount": "100.00"}) for _ in range(12))
        )
        assert sorted(status for status, _ in answers) == [201] * 3 + [409] * 9
        assert {b["code"] for s, b in answers if s == 409} == {"too_many_open_checkouts"}
        assert len(standin.seen) == 3
        assert [c.status for c in await admin.store.list_checkouts(ws)] == ["open"] * 3
        other_token, other = await admin.owner_workspace()  # its own allowance
        await admin.ok("POST", f"/v1/workspaces/{other}/checkout", other_token,
                       {"amount": "100.00"})  # fmt: skip

        # Paid and expired checkouts free their place; the outcome of each is kept.
        first, second, _ = [standin.session_for(b["id"]) for s, b in answers if s == 201]
        for payload in (paid(first), event(payments.EXPIRED, second, status="expired")):
            assert (await deliver(admin, payload, signed(payload)))[0] == 200
        for _ in range(2):
            assert (await admin.api("POST", path, token, {"amount": "100.00"}))[0] == 201
        status, body = await admin.api("POST", path, token, {"amount": "100.00"})
        assert (status, body["code"]) == (409, "too_many_open_checkouts")
        # An unpaid session outlives the provider's session lifetime: it no longer counts.
        clock.advance(admin.settings.checkout_open_window_s + 1)
        assert (await admin.api("POST", path, token, {"amount": "100.00"}))[0] == 201
        assert len(standin.seen) == 3 + 1 + 2 + 1


async def test_provider_failure_is_502_and_never_shows_the_key(
    redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite:///{tmp_path}/store.db"
    async with paying(url, redis_url, stripe_max_network_retries=0) as (admin, standin):
        token, ws = await admin.owner_workspace()
        path = f"/v1/workspaces/{ws}/checkout"
        caplog.set_level(logging.DEBUG)
        standin.fail_with = 500
        status, body = await admin.api("POST", path, token, {"amount": "100.00"})
        assert (status, body["code"]) == (502, "payment_provider_error")
        standin.fail_with = None
        standin.amount_offset = 1  # a session that would charge a cent more
        status, body = await admin.api("POST", path, token, {"amount": "100.00"})
        assert (status, body["code"]) == (502, "payment_provider_error")
        assert [c.status for c in await admin.store.list_checkouts(ws)] == ["failed", "failed"]
        secrets = (SECRET_KEY, WEBHOOK_SECRET)
        assert not any(s in str(body) for s in secrets)
        assert not any(s in r.getMessage() for r in caplog.records for s in secrets)
        assert SECRET_KEY not in repr(admin.settings)


# ----------------------------------------------------------------------- webhook


async def test_a_paid_checkout_is_credited_exactly_once(store_url: str, redis_url: str) -> None:
    async with paying(store_url, redis_url) as (admin, standin):
        token, ws = await admin.owner_workspace()
        co = await admin.ok("POST", f"/v1/workspaces/{ws}/checkout", token, {"amount": "150.00"})
        session = standin.session_for(co["id"])
        payload = paid(session)
        outcomes = []
        for _ in range(3):  # the provider redelivers
            status, body = await deliver(admin, payload, signed(payload))
            assert status == 200, body
            outcomes.append(body["outcome"])
        assert outcomes == ["credited", "already_credited", "already_credited"]
        # Concurrent redeliveries, and the same payment announced by another event.
        also = event("checkout.session.async_payment_succeeded", session,
                     payment_status="paid", payment_intent="pi_x")  # fmt: skip
        many = await asyncio.gather(
            *(deliver(admin, payload, signed(payload)) for _ in range(10)),
            *(deliver(admin, also, signed(also)) for _ in range(5)),
        )
        assert {(s, b["outcome"]) for s, b in many} == {(200, "already_credited")}
        assert await paid_state(admin, ws) == (1, 1, 150 * USD, 0)
        view = await admin.ok("GET", f"/v1/workspaces/{ws}/plan-usage", token)
        assert view["paid_balance"] == "150.00"
        assert view["usable_balance"] == "650.00"
        stored = await admin.store.get_checkout(co["id"])
        assert stored is not None
        assert stored.status == "paid"
        # Out of order: an expiry after the payment changes nothing.
        late = event("checkout.session.expired", session, status="expired")
        assert (await deliver(admin, late, signed(late)))[1]["outcome"] == "expired"
        stored = await admin.store.get_checkout(co["id"])
        assert stored is not None
        assert stored.status == "paid"
        assert await paid_state(admin, ws) == (1, 1, 150 * USD, 0)
        log = await admin.store.payment_events(session["id"])
        assert sum(e["deliveries"] for e in log) == 3 + 10 + 5 + 1


async def test_concurrent_first_deliveries_credit_once(store_url: str, redis_url: str) -> None:
    async with paying(store_url, redis_url) as (admin, standin):
        token, ws = await admin.owner_workspace()
        app = await admin.ok(
            "POST", f"/v1/workspaces/{ws}/apps", token, {"name": "b", "product": "search"}
        )
        body = {"amount": "250.01", "app_id": app["id"]}
        co = await admin.ok("POST", f"/v1/workspaces/{ws}/checkout", token, body)
        payload = paid(standin.session_for(co["id"]))
        many = await asyncio.gather(*(deliver(admin, payload, signed(payload)) for _ in range(12)))
        outcomes = sorted(b["outcome"] for _, b in many)
        assert outcomes == ["already_credited"] * 11 + ["credited"]
        assert await paid_state(admin, ws) == (1, 1, 0, 250_010_000)


async def test_forged_stale_and_unsigned_events_change_nothing(sqlite_paying: Paying) -> None:
    admin, standin = sqlite_paying
    token, ws = await admin.owner_workspace()
    co = await admin.ok("POST", f"/v1/workspaces/{ws}/checkout", token, {"amount": "100.00"})
    payload = paid(standin.session_for(co["id"]))
    tampered = payload.replace(b'"amount_total":10000', b'"amount_total":1000000')
    assert tampered != payload
    now = int(time.time())
    forged = [
        (payload, signed(payload, secret="whsec_" + "z" * 32)),  # wrong secret
        (tampered, signed(payload)),  # body changed after signing
        (payload, signed(payload, at=now - 3600)),  # stale
        (payload, None),  # unsigned
        (payload, "garbage"),
        (payload, f"t={now},v1="),
        (payload, signed(payload).replace("v1=", "v0=")),  # another scheme
        (b"not json", signed(b"not json")),  # signed, but no event
        (b"\xff\xfe", signed(b"\xff\xfe")),
    ]
    before = await snapshot(admin)
    for body, signature in forged:
        status, answer = await deliver(admin, body, signature)
        assert (status, answer.get("code")) == (400, "invalid_signature"), (signature, answer)
        assert WEBHOOK_SECRET not in str(answer)
    assert await snapshot(admin) == before
    assert await paid_state(admin, ws) == (0, 0, 0, 0)
    # An operator's or owner's bearer token is no signature either.
    status, _ = await admin.api(
        "POST", HOOK, OPERATOR_TOKEN, data=payload, headers={"Content-Type": "application/json"}
    )
    assert status == 400
    assert await paid_state(admin, ws) == (0, 0, 0, 0)


async def test_events_that_must_not_credit(sqlite_paying: Paying) -> None:
    admin, standin = sqlite_paying
    token, ws = await admin.owner_workspace()

    async def checkout() -> dict[str, Any]:
        co = await admin.ok("POST", f"/v1/workspaces/{ws}/checkout", token, {"amount": "100.00"})
        return standin.session_for(co["id"])

    async def outcome(payload: bytes) -> str:
        status, body = await deliver(admin, payload, signed(payload))
        assert status == 200, body  # acknowledged: a retry could not change it
        return str(body["outcome"])

    more = await checkout()
    assert await outcome(paid(more, amount_total=10001)) == "amount_mismatch"
    assert await outcome(paid(more)) == "amount_mismatch"  # stays rejected
    other = await checkout()
    assert await outcome(paid(other, currency="eur")) == "amount_mismatch"
    stranger = {**more, "id": "cs_test_unknown", "metadata": {}}
    assert await outcome(paid(stranger)) == "unknown_checkout"
    # Another workspace's checkout id in the metadata of an unknown session.
    hijack = {**other, "id": "cs_test_hijack"}
    assert await outcome(paid(hijack)) == "unknown_checkout"
    pending = await checkout()
    assert await outcome(paid(pending, payment_status="unpaid")) == "pending"
    assert await outcome(event("payment_intent.succeeded", pending)) == "ignored"
    assert await paid_state(admin, ws) == (0, 0, 0, 0)
    statuses = {c.session_id: c.status for c in await admin.store.list_checkouts(ws)}
    assert statuses == {more["id"]: "rejected", other["id"]: "rejected",
                        pending["id"]: "open"}  # fmt: skip
    # The async payment goes through later: credited then, once.
    assert await outcome(paid(pending)) == "credited"
    assert await paid_state(admin, ws) == (1, 1, 100 * USD, 0)
    expired = await checkout()
    gone = event("checkout.session.expired", expired, status="expired")
    assert await outcome(gone) == "expired"
    assert await paid_state(admin, ws) == (1, 1, 100 * USD, 0)


@pytest.mark.parametrize("live_key", [False, True], ids=["test-key", "live-key"])
async def test_events_of_the_other_mode_never_act(
    live_key: bool, redis_url: str, tmp_path: Path
) -> None:
    """A test-card payment (a test-mode event) never credits a live deployment, nor a
    live event a test one, even signed with the endpoint's secret."""
    key = ("sk_live_" if live_key else "sk_test_") + "k" * 24
    async with paying(f"sqlite:///{tmp_path}/store.db", redis_url, key=key) as (admin, standin):
        token, ws = await admin.owner_workspace()
        co = await admin.ok("POST", f"/v1/workspaces/{ws}/checkout", token, {"amount": "100.00"})
        session = standin.session_for(co["id"])

        async def outcome(payload: bytes) -> str:
            status, body = await deliver(admin, payload, signed(payload))
            assert status == 200, body
            return str(body["outcome"])

        other = not live_key
        gone = event("checkout.session.expired", session, status="expired", livemode=other)
        assert await outcome(gone) == "wrong_mode"
        assert await outcome(paid(session, livemode=other)) == "wrong_mode"
        assert await paid_state(admin, ws) == (0, 0, 0, 0)
        stored = await admin.store.get_checkout(co["id"])
        assert stored is not None
        assert stored.status == "open"
        assert await outcome(paid(session, livemode=live_key)) == "credited"
        assert await paid_state(admin, ws) == (1, 1, 100 * USD, 0)


async def test_limits_lowered_since_the_checkout_do_not_refuse_its_payment(
    redis_url: str, tmp_path: Path
) -> None:
    """A checkout started under other limits (the operator lowered the maximum since):
    its amount was checked when it was started, the payer paid it, it is credited."""
    store = open_store(f"sqlite:///{tmp_path}/store.db")
    await store.migrate()
    from meter.redis_layer.client import connect

    redis = connect(redis_url)
    try:
        # make_settings: the tests' settings (a Redis timeout no busy machine reaches).
        wide = Deps(store, redis, make_settings(topup_max="50000"), load_catalog())
        narrow = Deps(store, redis, make_settings(), load_catalog())
        user, _ = await workspaces.create_user(wide, "operator", "a@example.com", "A")
        ws = await workspaces.create_workspace(wide, user.id, "Acme")

        async def fake_provider(req: payments.SessionRequest) -> payments.ProviderSession:
            return payments.ProviderSession("cs_test_big", "https://pay.test/x", None, None)

        async def other_provider(req: payments.SessionRequest) -> payments.ProviderSession:
            return payments.ProviderSession("cs_test_big2", "https://pay.test/y", None, None)

        co = await checkouts.start_checkout(
            wide, "user:a", ws, "30000.00", app_id=None, create=fake_provider
        )
        ev = payments.SessionEvent(
            event_id="evt_1",
            type=payments.COMPLETED,
            session_id="cs_test_big",
            payment_status="paid",
            amount_total=3_000_000,
            currency="usd",
            metadata={"checkout_id": co.id, "workspace_id": ws.id},
        )
        assert await payments.handle_event(narrow, ev) == "credited"
        assert await payments.handle_event(wide, ev) == "already_credited"
        assert [e.amount for e in await store.ledger_entries(ws.id, kind="topup")] == [30_000 * USD]
        assert (await projection.read_balances(redis, ws.id)).pool == 30_000 * USD

        # One refused ``outside_limits`` by an earlier version: its redelivery credits it.
        co2 = await checkouts.start_checkout(
            wide, "user:a", ws, "30000.00", app_id=None, create=other_provider
        )
        why = {"rejected": "outside_limits"}
        assert await store.set_checkout_status(co2.id, "rejected", only_from=("open",), detail=why)
        ev2 = replace(ev, event_id="evt_2", session_id="cs_test_big2",
                      metadata={"checkout_id": co2.id, "workspace_id": ws.id})  # fmt: skip
        assert await payments.handle_event(narrow, ev2) == "credited"
        assert (await projection.read_balances(redis, ws.id)).pool == 60_000 * USD
    finally:
        await redis.aclose()
        await store.close()


async def test_crashes_between_the_steps_are_completed_by_the_redelivery(
    sqlite_paying: Paying,
) -> None:
    admin, standin = sqlite_paying
    token, ws = await admin.owner_workspace()
    co = await admin.ok("POST", f"/v1/workspaces/{ws}/checkout", token, {"amount": "100.00"})
    session = standin.session_for(co["id"])
    # A crash after the ledger commit, before Redis and the outbox: Stripe got no 2xx.
    entry = LedgerEntry(ws, "topup", 100 * USD, f"checkout:{session['id']}", 1)
    assert await admin.store.complete_checkout(co["id"], session["id"], None, entry, 1)
    assert await paid_state(admin, ws) == (1, 0, 0, 0)
    payload = paid(session)
    for want in ("already_credited", "already_credited"):
        assert (await deliver(admin, payload, signed(payload)))[1]["outcome"] == want
    assert await paid_state(admin, ws) == (1, 1, 100 * USD, 0)

    # A crash after the provider created the session, before it was recorded here.
    ws_row = await admin.store.get_workspace(ws)
    assert ws_row is not None
    d = Deps(admin.store, admin.redis, admin.settings, load_catalog())

    async def crashing(req: payments.SessionRequest) -> payments.ProviderSession:
        raise payments.ProviderError("connection reset after the session was created")

    with pytest.raises(payments.ProviderError):
        await checkouts.start_checkout(d, "user:x", ws_row, "200.00", app_id=None,
                                      create=crashing)  # fmt: skip
    [failed] = [c for c in await admin.store.list_checkouts(ws) if c.status == "failed"]
    meta = {"checkout_id": failed.id, "workspace_id": ws, "app_id": ""}
    orphan = {**session, "id": "cs_test_lost", "amount_total": 20000, "metadata": meta}
    payload = paid(orphan)
    assert (await deliver(admin, payload, signed(payload)))[1]["outcome"] == "credited"
    assert await paid_state(admin, ws) == (2, 2, 300 * USD, 0)
    stored = await admin.store.get_checkout(failed.id)
    assert stored is not None
    assert (stored.status, stored.session_id) == (
        "paid",
        "cs_test_lost",
    )


# ------------------------------------------------------------------ transactions


async def test_transactions_list_every_kind_newest_first_with_a_cursor(
    store_url: str, redis_url: str
) -> None:
    clock = Clock()
    async with (
        running_bot() as bot,
        paying(store_url, redis_url, clock=clock, traffic=True, free_credit_validity_s=3600) as (
            admin,
            stand,
        ),
        aiohttp.ClientSession() as http,
    ):
        token, ws = await admin.owner_workspace()
        app = await admin.ok(
            "POST", f"/v1/workspaces/{ws}/apps", token,
            {"name": "b", "product": "automation", "upstream_url": bot.url},
        )  # fmt: skip
        funds = {"amount": "100.00", "reference": "bank-7"}
        await admin.ok("POST", f"/v1/workspaces/{ws}/funds", OPERATOR_TOKEN, funds)
        co = await admin.ok("POST", f"/v1/workspaces/{ws}/checkout", token, {"amount": "123.45"})
        session = stand.session_for(co["id"])
        payload = paid(session)
        assert (await deliver(admin, payload, signed(payload)))[0] == 200

        # The free credits lapse: the next admission records it, the flusher writes it.
        clock.advance(3601)
        url = f"{admin.traffic_url}/hooks/web/{app['id']}/m"
        async with http.post(url, json={}, headers={"X-Channel-User-Id": "u"}) as resp:
            assert resp.status == 200, await resp.text()
        clock.advance(3600)
        flusher = Flusher(admin.redis, admin.store, admin.settings, clock=clock)
        await flusher.drain(force=True)

        path = f"/v1/workspaces/{ws}/transactions"
        page = await admin.ok("GET", f"{path}?limit=2", token)
        assert len(page["transactions"]) == 2
        assert page["next_cursor"]
        rest = await admin.ok("GET", f"{path}?limit=2&cursor={page['next_cursor']}", token)
        assert rest["next_cursor"] is None
        got = [
            (t["type"], t["amount"], t["reference"], t["pool"])
            for t in page["transactions"] + rest["transactions"]
        ]
        assert got[0][2].startswith(f"{ws}:e")  # the flushed Redis event's id
        assert got == [
            ("free_lapse", "-500.00", got[0][2], "free"),
            ("checkout", "123.45", session["id"], "paid"),
            ("manual_credit", "100.00", "bank-7", "paid"),
            ("free_grant", "500.00", f"free:{ws}", "free"),
        ], got
        whole = await admin.ok("GET", path, OPERATOR_TOKEN)
        assert [t["id"] for t in whole["transactions"]] == [
            t["id"] for t in page["transactions"] + rest["transactions"]
        ]
        assert whole["next_cursor"] is None
        for bad, field in (("limit=0", "limit"), ("limit=201", "limit"), ("cursor=abc", "cursor"),
                           ("cursor=-1", "cursor"), ("limit=1.5", "limit"),
                           (f"cursor={page['next_cursor']}x", "cursor")):  # fmt: skip
            status, body = await admin.api("GET", f"{path}?{bad}", token)
            assert (status, body["field"]) == (422, field), bad
        assert bot.count() == 1


async def test_migration_keeps_existing_grants_as_the_one_per_user(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user who got free credits before the payments step gets none again after it."""
    import meter.store.sqlite as sqlite_backend
    from meter.store import Workspace
    from meter.store.schema import MIGRATIONS

    store = open_store(f"sqlite:///{tmp_path}/store.db")
    try:
        with monkeypatch.context() as m:
            m.setattr(sqlite_backend, "MIGRATIONS", MIGRATIONS[:1])
            assert await store.migrate() == [1]
        old = "wold00000001"  # created by the code of before: no free_grants table yet
        async with store.connection() as c:
            await c.execute(
                "INSERT INTO users (id, email, name, token_hash, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                "u1", "a@example.com", "A", "h1", 1,
            )  # fmt: skip
            await c.execute(
                "INSERT INTO workspaces (id, name, owner_id, created_at) VALUES (?, ?, ?, ?)",
                old, "Old", "u1", 1,
            )  # fmt: skip
        await store.add_ledger_entry(LedgerEntry(old, "grant_free", 500 * USD, f"free:{old}", 1))
        assert await store.migrate() == [m.version for m in MIGRATIONS[1:]]
        assert await store.free_grant_of("u1") == old
        new = Workspace("wnew00000001", "New", "u1", 2, free_expires_at=10**13)
        grant = LedgerEntry(new.id, "grant_free", 500 * USD, f"free:{new.id}", 2)
        assert await store.create_workspace(new, grant=grant, once_per_user=True) is False
        stored = await store.get_workspace(new.id)
        assert stored is not None
        assert stored.free_expires_at is None
        assert await store.ledger_entries(new.id) == []
    finally:
        await store.close()


# -------------------------------------------------------------- creditgate serve


async def test_serve_takes_payments_from_its_environment_and_never_logs_secrets(
    redis_url: str, tmp_path: Path
) -> None:
    """The whole process: settings from CREDITGATE_* variables, DEBUG logs kept on disk."""
    from tests.support.serving import creditgate_serve

    async with (
        stripe_standin() as standin,
        creditgate_serve(
            redis_url,
            tmp_path,
            operator_token=OPERATOR_TOKEN,
            stripe_api_base=standin.url,
            stripe_secret_key=SECRET_KEY,
            stripe_webhook_secret=WEBHOOK_SECRET,
            log_level="DEBUG",
        ) as served,
        aiohttp.ClientSession(base_url=served.admin) as http,
    ):

        async def call(method: str, path: str, token: str | None, **kw: Any) -> Any:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            headers.update(kw.pop("headers", {}))
            async with http.request(method, path, headers=headers, **kw) as resp:
                return resp.status, await resp.json(content_type=None)

        status, user = await call("POST", "/v1/users", OPERATOR_TOKEN,
                                  json={"email": "o@example.com", "name": "O"})  # fmt: skip
        assert status == 201
        token = user["token"]
        status, ws = await call("POST", "/v1/workspaces", token, json={"name": "Acme"})
        status, co = await call("POST", f"/v1/workspaces/{ws['id']}/checkout", token,
                                json={"amount": "100.00"})  # fmt: skip
        assert status == 201, co
        payload = paid(standin.session_for(co["id"]))
        for _ in range(3):
            status, body = await call("POST", HOOK, None, data=payload,
                                      headers={"Stripe-Signature": signed(payload)})  # fmt: skip
            assert status == 200, body
        status, body = await call("POST", HOOK, None, data=payload,
                                  headers={"Stripe-Signature": signed(payload, at=1)})  # fmt: skip
        assert (status, body["code"]) == (400, "invalid_signature")
        status, view = await call("GET", f"/v1/workspaces/{ws['id']}/plan-usage", token)
        assert (status, view["paid_balance"]) == (200, "100.00")
        status, page = await call("GET", f"/v1/workspaces/{ws['id']}/transactions", token)
        assert [t["type"] for t in page["transactions"]] == ["checkout", "free_grant"]
    log = (tmp_path / "serve.log").read_text()
    assert "DEBUG" in log  # debug logging was on, the secrets still never appear
    for secret in (SECRET_KEY, WEBHOOK_SECRET, SECRET_KEY.removeprefix("sk_test_")):
        assert secret not in log
