"""What the gateway does when Stripe's API misbehaves: it answers 502, records nothing.

The stand-in Stripe (a real HTTP server on loopback, the official ``stripe`` library
talking to it) stalls or breaks its answers on purpose. A dispute naming only its charge
asks Stripe for that charge (``GET /v1/charges/{id}``); a checkout creates a session
(``POST /v1/checkout/sessions``). Whatever Stripe does, the webhook answers 502
``payment_provider_error`` and records nothing (Stripe redelivers), the checkout 502,
never 500. Real admin application, redis-server and SQLite.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gateway.webhooks import WebhookOptions
from tests.support.adminkit import Admin, admin_server
from tests.support.bot import serve
from tests.support.payments import USD, deliver, outcome, paid_funds, paying
from tests.support.settings import OPERATOR_TOKEN
from tests.support.stripe_standin import (
    STRIPE_HANG_S,
    StripeStandIn,
    disputed,
    settings_with_stripe,
    signed,
)

INTENT = "pi_outbound1"
CHARGE = "ch_outbound1"


@asynccontextmanager
async def funded(
    tmp_path: Path, redis_url: str, **overrides: Any
) -> AsyncIterator[tuple[Admin, StripeStandIn, str]]:
    """A payment of 100.00 credited by hand under its payment intent (no Stripe call)."""
    async with paying(f"sqlite:///{tmp_path}/s.db", redis_url, **overrides) as (admin, standin):
        standin.charges[CHARGE] = INTENT
        _, ws = await admin.owner_workspace()
        await admin.ok("POST", f"/v1/workspaces/{ws}/funds", OPERATOR_TOKEN,
                       {"amount": "100.00", "reference": INTENT})  # fmt: skip
        yield admin, standin, ws


def by_charge(dispute: str) -> bytes:
    return disputed("charge.dispute.created", INTENT, dispute, 10000, "needs_response",
                    payment_intent=None, charge=CHARGE)  # fmt: skip


HANG_S = 60.0  # a bound for a hang only
# A stall never ends by itself (the stand-in holds it until released): what ends it is a
# bound, the lookup's (1 s) while a checkout would wait an hour (never within a test).
SHORT_LOOKUP = {"stripe_timeout_s": 3600.0, "stripe_lookup_timeout_s": 1.0}


async def given_up_while_held(admin: Admin, standin: StripeStandIn, dispute: bytes) -> int:
    """Deliver ``dispute`` while the stand-in holds every answer: 502 each time, until it
    was seen holding the lookup the gateway gave up on. A delivery whose 1 s ended before
    its lookup reached the stand-in (a busy machine) proves nothing and is delivered
    again, as Stripe would; a gateway waiting on a held answer past its bound hangs, and
    the hang bound fails it. The deliveries made."""
    deliveries = 0
    async with asyncio.timeout(HANG_S):
        while not standin.stalled.is_set():
            deliveries += 1
            status, body = await deliver(admin, dispute, signed(dispute))
            assert (status, body["code"]) == (502, "payment_provider_error"), body
    assert not standin.release.is_set()  # given up while Stripe still held it
    return deliveries


@asynccontextmanager
async def patient(admin: Admin, standin: StripeStandIn) -> AsyncIterator[Admin]:
    """``admin`` if its lookups wait the tests' hang bound, else a second admin server
    on its store, Redis and stand-in whose lookups do: what must succeed never depends
    on an answer coming within a short bound."""
    s = admin.settings
    if min(s.stripe_timeout_s, s.stripe_lookup_timeout_s) >= STRIPE_HANG_S:
        yield admin
        return
    settings = settings_with_stripe(s.store_url, s.redis_url, standin)
    async with admin_server(settings, webhooks=WebhookOptions(poll_s=3600)) as again:
        yield again


@pytest.mark.parametrize("mode", ["stall_body", "break_body"])
async def test_an_answer_that_breaks_off_is_a_502_for_the_charge_lookup(
    tmp_path: Path, redis_url: str, mode: str
) -> None:
    # A body that stalls is ended by the lookup's bound; one that breaks off ends by itself
    # (the tests' bounds: a hang bound).
    bounds = SHORT_LOOKUP if mode == "stall_body" else {}
    async with funded(tmp_path, redis_url, stripe_max_network_retries=0, **bounds) as (
        admin,
        standin,
        ws,
    ):
        standin.misbehave = mode
        dispute = by_charge("dp_" + mode)
        if mode == "stall_body":
            await given_up_while_held(admin, standin, dispute)
        else:
            status, body = await deliver(admin, dispute, signed(dispute))
            assert (status, body["code"]) == (502, "payment_provider_error"), body
        assert await paid_funds(admin, ws) == (100 * USD, {})  # nothing recorded
        standin.misbehave = None
        standin.release.set()
        # Stripe's redelivery (after a stall: to an admin server whose lookup waits a
        # hang bound, on the same store and Redis).
        async with patient(admin, standin) as again:
            assert await outcome(again, dispute) == "reversed"
            assert await paid_funds(again, ws) == (0, {})


@pytest.mark.parametrize("mode", ["stall_body", "break_body"])
async def test_an_answer_that_breaks_off_is_a_502_for_a_checkout(
    tmp_path: Path, redis_url: str, mode: str
) -> None:
    async with funded(tmp_path, redis_url, stripe_timeout_s=2.0, stripe_max_network_retries=0) as (
        admin,
        standin,
        ws,
    ):
        token, ws = await admin.owner_workspace("payer")
        standin.misbehave = mode
        url = f"/v1/workspaces/{ws}/checkout"
        status, body = await admin.api("POST", url, token, {"amount": "100.00"})
        assert (status, body["code"]) == (502, "payment_provider_error"), body


async def test_only_no_such_charge_is_an_unknown_payment(tmp_path: Path, redis_url: str) -> None:
    async with funded(tmp_path, redis_url) as (admin, standin, ws):
        # Stripe's 404 for a URL it has no route for (STRIPE_API_BASE set wrong) is no
        # answer about the charge: 502, the dispute is not dropped.
        standin.misbehave = "unrecognized"
        dispute = by_charge("dp_u")
        status, body = await deliver(admin, dispute, signed(dispute))
        assert (status, body["code"]) == (502, "payment_provider_error"), body
        assert await paid_funds(admin, ws) == (100 * USD, {})
        # Its redelivery once Stripe answers takes the payment back.
        standin.misbehave = None
        assert await outcome(admin, dispute) == "reversed"
        # No such charge (404 resource_missing) is an answer: unknown_payment.
        unknown = disputed("charge.dispute.created", INTENT, "dp_n", 10000, "needs_response",
                           payment_intent=None, charge="ch_nosuch")  # fmt: skip
        assert await outcome(admin, unknown) == "unknown_payment"


async def test_the_charge_lookup_is_one_short_attempt(tmp_path: Path, redis_url: str) -> None:
    # Stripe stalls; checkouts may wait an hour three times, the lookup tries once and
    # gives up after its own short bound (Stripe redelivers a delivery answered 502).
    overrides = {**SHORT_LOOKUP, "stripe_max_network_retries": 2}
    async with funded(tmp_path, redis_url, **overrides) as (admin, standin, ws):
        standin.misbehave = "stall_head"
        deliveries = await given_up_while_held(admin, standin, by_charge("dp_s"))
        assert set(standin.charge_lookups) == {CHARGE}
        assert len(standin.charge_lookups) <= deliveries  # one attempt each, no retry
        assert await paid_funds(admin, ws) == (100 * USD, {})


async def test_a_redirect_is_not_followed(tmp_path: Path, redis_url: str) -> None:
    elsewhere: list[str] = []

    async def sink(request: web.Request) -> web.Response:
        elsewhere.append(request.path)
        return web.json_response({"id": CHARGE, "object": "charge", "payment_intent": INTENT})

    other = web.Application()
    other.router.add_route("*", "/{tail:.*}", sink)
    async with serve(other) as url, funded(tmp_path, redis_url) as (admin, standin, ws):
        token, mine = await admin.owner_workspace("payer")
        standin.misbehave, standin.redirect_to = "redirect", url
        dispute = by_charge("dp_r")
        status, body = await deliver(admin, dispute, signed(dispute))
        assert (status, body["code"]) == (502, "payment_provider_error"), body
        status, body = await admin.api("POST", f"/v1/workspaces/{mine}/checkout", token,
                                       {"amount": "100.00"})  # fmt: skip
        assert (status, body["code"]) == (502, "payment_provider_error"), body
        assert elsewhere == []  # nothing asked of (or trusted from) another address
        assert await paid_funds(admin, ws) == (100 * USD, {})


@pytest.mark.parametrize("mode", ["huge_body", "huge_length", "gzip_bomb"])
async def test_an_answer_past_one_mebibyte_is_refused(
    tmp_path: Path, redis_url: str, mode: str
) -> None:
    # A charge answer padded to 2 MiB (streamed, announced, or gzipped to a few KiB that
    # would inflate): the gateway reads at most 1 MiB + 1 of it, as sent, and trusts none
    # of it (502, nothing recorded); the same answer unpadded is taken on redelivery.
    async with funded(tmp_path, redis_url) as (admin, standin, ws):
        standin.misbehave = mode
        dispute = by_charge("dp_" + mode)
        status, body = await deliver(admin, dispute, signed(dispute))
        assert (status, body["code"]) == (502, "payment_provider_error"), body
        assert standin.charge_lookups == [CHARGE]
        assert await paid_funds(admin, ws) == (100 * USD, {})
        standin.misbehave = None
        assert await outcome(admin, dispute) == "reversed"
        assert await paid_funds(admin, ws) == (0, {})
