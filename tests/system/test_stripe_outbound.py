"""What the gateway does when Stripe's API misbehaves: it answers 502, records nothing.

The stand-in Stripe (a real HTTP server on loopback, the official ``stripe`` library
talking to it) stalls or breaks its answers on purpose. A dispute naming only its charge
asks Stripe for that charge (``GET /v1/charges/{id}``); a checkout creates a session
(``POST /v1/checkout/sessions``). Whatever Stripe does, the webhook answers 502
``payment_provider_error`` and records nothing (Stripe redelivers), the checkout 502,
never 500. Real admin application, redis-server and SQLite.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.support.adminkit import Admin
from tests.support.bot import serve
from tests.support.payments import USD, deliver, outcome, paid_funds, paying
from tests.support.settings import OPERATOR_TOKEN
from tests.support.stripe_standin import StripeStandIn, disputed, signed

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


# The Stripe timeout of a test whose answer breaks off: a stalled body is ended by it (2 s,
# waited out); a broken one ends by itself, and its redelivery's lookup has the lookup's
# own bound (gateway.payments.LOOKUP_TIMEOUT_S, 5 s), not 2 s.
TIMEOUT_S = {"stall_body": 2.0, "break_body": 20.0}


@pytest.mark.parametrize("mode", ["stall_body", "break_body"])
async def test_an_answer_that_breaks_off_is_a_502_for_the_charge_lookup(
    tmp_path: Path, redis_url: str, mode: str
) -> None:
    overrides = {"stripe_timeout_s": TIMEOUT_S[mode], "stripe_max_network_retries": 0}
    async with funded(tmp_path, redis_url, **overrides) as (admin, standin, ws):
        standin.misbehave = mode
        dispute = by_charge("dp_" + mode)
        status, body = await deliver(admin, dispute, signed(dispute))
        assert (status, body["code"]) == (502, "payment_provider_error"), body
        assert await paid_funds(admin, ws) == (100 * USD, {})  # nothing recorded
        standin.misbehave = None
        standin.release.set()
        assert await outcome(admin, dispute) == "reversed"  # Stripe's redelivery
        assert await paid_funds(admin, ws) == (0, {})


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
    # Stripe stalls; checkouts may wait 30 s three times, the lookup tries once and
    # gives up after its own short timeout (Stripe redelivers a delivery answered 502).
    overrides = {"stripe_timeout_s": 30.0, "stripe_max_network_retries": 2}
    async with funded(tmp_path, redis_url, **overrides) as (admin, standin, ws):
        standin.misbehave = "stall_head"
        dispute = by_charge("dp_s")
        status, body = await deliver(admin, dispute, signed(dispute))
        assert (status, body["code"]) == (502, "payment_provider_error"), body
        assert standin.stalled.is_set()
        assert not standin.release.is_set()  # given up while Stripe still held it
        assert standin.charge_lookups == [CHARGE]  # one attempt, no retry
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
