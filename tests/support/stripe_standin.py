"""A local stand-in for Stripe's REST API, and signed webhook events, for tests.

``stripe_standin()`` serves ``POST /v1/checkout/sessions`` on a free 127.0.0.1 port the
way Stripe does (form-encoded request, bearer secret key, a ``checkout.session`` JSON
answer), so the real ``stripe`` library talks real HTTP to it, and ``GET
/v1/charges/{id}`` (the charge of a session it created, named as :func:`refunded` names
it, or one of ``charges``; else Stripe's 404 ``resource_missing``) and ``GET
/v1/refunds?charge=`` (the refunds :meth:`StripeStandIn.set_refund` made, newest first,
with their statuses: what Stripe's ``amount_refunded`` counts). Every request is kept
(its decoded form and headers) for the test to check. ``signed`` builds a webhook
delivery exactly as Stripe signs one (``t=<unix time>,v1=<HMAC-SHA256 of
"<t>.<payload>">``), so the gateway verifies it with the library like a real one.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import hmac
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from config import Settings
from tests.support.bot import serve
from tests.support.settings import make_settings

SECRET_KEY = "sk_test_" + "k" * 24
WEBHOOK_SECRET = "whsec_" + "w" * 32


@dataclass
class Seen:
    form: dict[str, str]
    headers: dict[str, str]


@dataclass
class StripeStandIn:
    url: str = ""
    seen: list[Seen] = field(default_factory=list)
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    fail_with: int | None = None  # answer the next requests with this error status
    amount_offset: int = 0  # a provider that charges something else than asked
    key: str = SECRET_KEY  # the API key it accepts (``sk_live_`` for a live account)
    charges: dict[str, str | None] = field(default_factory=dict)  # more: charge -> intent
    charge_lookups: list[str] = field(default_factory=list)  # every charge asked for
    # GET /v1/refunds?charge=: each charge's refunds (set_refund), as Stripe lists them
    refunds: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    refund_lists: list[str] = field(default_factory=list)  # every charge whose refunds were
    refunds_has_more: bool = False  # answer a first page of more
    # How the next requests misbehave (both routes): "stall_head" (no answer until
    # ``release``), "stall_body" (a head and part of the body, then nothing until
    # ``release``), "break_body" (part of the body, then the connection closed),
    # "unrecognized" (Stripe's 404 for a URL it has no route for), "redirect" (302 to
    # ``redirect_to`` + the path), "huge_body" (a charge's answer padded to 2 MiB, chunked),
    # "huge_length" (the same with its Content-Length), "gzip_bomb" (the same gzipped).
    misbehave: str | None = None
    redirect_to: str = ""
    stalled: asyncio.Event = field(default_factory=asyncio.Event)  # a request is held
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def hostile(self, request: web.Request) -> web.StreamResponse | None:
        """The answer ``misbehave`` gives (``None``: answer normally)."""
        if self.misbehave == "stall_head":
            self.stalled.set()
            await self.release.wait()
        if self.misbehave == "redirect":
            raise web.HTTPFound(self.redirect_to + request.path_qs)
        if self.misbehave == "unrecognized":
            error = {"error": {"type": "invalid_request_error",
                               "message": f"Unrecognized request URL ({request.method}: "
                                          f"{request.path})."}}  # fmt: skip
            return web.json_response(error, status=404)
        if self.misbehave not in ("stall_body", "break_body"):
            return None
        resp = web.StreamResponse(headers={"Content-Type": "application/json",
                                           "Content-Length": "500"})  # fmt: skip
        await resp.prepare(request)
        await resp.write(b'{"id": "')
        if self.misbehave == "break_body":
            assert request.transport is not None
            request.transport.close()
            return resp
        self.stalled.set()
        await self.release.wait()
        return resp

    async def padded(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        """``body`` as JSON padded with spaces to 2 MiB, as ``misbehave`` says."""
        raw = orjson.dumps(body) + b" " * (2 << 20)
        headers = {"Content-Type": "application/json"}
        if self.misbehave == "gzip_bomb":
            raw = gzip.compress(raw)
            headers["Content-Encoding"] = "gzip"
        if self.misbehave != "huge_body":
            return web.Response(body=raw, headers=headers)
        resp = web.StreamResponse(headers=headers)  # chunked: no Content-Length
        await resp.prepare(request)
        for at in range(0, len(raw), 1 << 16):
            await resp.write(raw[at : at + (1 << 16)])
        await resp.write_eof()
        return resp

    async def refused(self, request: web.Request) -> web.StreamResponse | None:
        """The misbehaving, unauthorized or failing answer to a GET, if any."""
        if (bad := await self.hostile(request)) is not None:
            return bad
        if request.headers.get("Authorization") != f"Bearer {self.key}":
            error = {"error": {"type": "invalid_request_error", "message": "Invalid API Key"}}
            return web.json_response(error, status=401)
        if self.fail_with is not None:
            error = {"error": {"type": "api_error", "message": "stand-in failure"}}
            return web.json_response(error, status=self.fail_with)
        return None

    def set_refund(self, intent: str, refund: str, amount: int, status: str = "succeeded") -> None:
        """Refund ``refund`` (cents) of the charge of ``intent`` is now ``status``."""
        charge = "ch_" + intent.removeprefix("pi_")
        listed = self.refunds.setdefault(charge, [])
        listed[:] = [r for r in listed if r["id"] != refund]
        listed.insert(0, {"id": refund, "object": "refund", "amount": amount,
                          "charge": charge, "currency": "usd", "payment_intent": intent,
                          "status": status})  # fmt: skip

    def session_for(self, checkout_id: str) -> dict[str, Any]:
        return next(
            s for s in self.sessions.values() if s["metadata"]["checkout_id"] == checkout_id
        )


def _session(form: dict[str, str], offset: int) -> dict[str, Any]:
    sid = "cs_test_" + secrets.token_hex(12)
    metadata = {
        k.removeprefix("metadata[").removesuffix("]"): v
        for k, v in form.items()
        if k.startswith("metadata[")
    }
    amount = int(form["line_items[0][price_data][unit_amount]"]) * int(
        form.get("line_items[0][quantity]", "1")
    )
    return {
        "id": sid,
        "object": "checkout.session",
        "mode": form["mode"],
        "status": "open",
        "payment_status": "unpaid",
        "amount_total": amount + offset,
        "currency": form["line_items[0][price_data][currency]"],
        "metadata": metadata,
        "client_reference_id": form.get("client_reference_id"),
        "success_url": form["success_url"],
        "cancel_url": form["cancel_url"],
        "payment_intent": None,
        "url": f"https://checkout.stripe.test/c/pay/{sid}",
    }


# The bound of the gateway's calls to the stand-in (the production defaults: 20 s, and 5 s
# for a lookup): the stand-in shares its event loop with the test and the admin server,
# and a busy machine could pass a lookup's 5 s (a 502 where the test waits for Stripe's
# answer, or for a stall it holds to be released). A hang bound; tests of the bounds
# themselves set their own, on a stall that never ends.
STRIPE_HANG_S = 60.0


def settings_with_stripe(
    store_url: str, redis_url: str, standin: StripeStandIn, **overrides: Any
) -> Settings:
    """Admin settings (operator token, ``store_url``) with payments configured against
    the stand-in, so a checkout can succeed, its calls bounded by :data:`STRIPE_HANG_S`;
    then ``overrides``."""
    return make_settings(
        redis_url,
        store_url=store_url,
        operator=True,
        **{
            "stripe_api_base": standin.url,
            "stripe_secret_key": standin.key,
            "stripe_webhook_secret": WEBHOOK_SECRET,
            "stripe_timeout_s": STRIPE_HANG_S,
            "stripe_lookup_timeout_s": STRIPE_HANG_S,
            **overrides,
        },
    )


@asynccontextmanager
async def stripe_standin(key: str = SECRET_KEY) -> AsyncIterator[StripeStandIn]:
    standin = StripeStandIn(key=key)

    async def create(request: web.Request) -> web.StreamResponse:
        form = {k: str(v) for k, v in (await request.post()).items()}
        standin.seen.append(Seen(form, dict(request.headers)))
        if (bad := await standin.hostile(request)) is not None:
            return bad
        if request.headers.get("Authorization") != f"Bearer {standin.key}":
            error = {"error": {"type": "invalid_request_error", "message": "Invalid API Key"}}
            return web.json_response(error, status=401)
        if standin.fail_with is not None:
            error = {"error": {"type": "api_error", "message": "stand-in failure"}}
            return web.json_response(error, status=standin.fail_with)
        session = _session(form, standin.amount_offset)
        standin.sessions[session["id"]] = session
        return web.json_response(session)

    async def charge(request: web.Request) -> web.StreamResponse:
        cid = request.match_info["charge"]
        standin.charge_lookups.append(cid)
        if (bad := await standin.refused(request)) is not None:
            return bad
        suffix = cid.removeprefix("ch_")
        if cid in standin.charges:
            intent = standin.charges[cid]
        elif cid.startswith("ch_") and f"cs_test_{suffix}" in standin.sessions:
            intent = f"pi_{suffix}"
        else:
            error = {"error": {"type": "invalid_request_error", "code": "resource_missing",
                               "message": f"No such charge: '{cid}'", "param": "id"}}  # fmt: skip
            return web.json_response(error, status=404)
        body = {"id": cid, "object": "charge", "amount": 0, "currency": "usd",
                "payment_intent": intent, "status": "succeeded"}  # fmt: skip
        if standin.misbehave in ("huge_body", "huge_length", "gzip_bomb"):
            return await standin.padded(request, body)
        return web.json_response(body)

    async def refunds(request: web.Request) -> web.StreamResponse:
        cid = request.query.get("charge", "")
        standin.refund_lists.append(cid)
        if (bad := await standin.refused(request)) is not None:
            return bad
        data = standin.refunds.get(cid, [])[: int(request.query.get("limit", "10"))]
        return web.json_response({"object": "list", "url": "/v1/refunds", "data": data,
                                  "has_more": standin.refunds_has_more})  # fmt: skip

    app = web.Application()
    app.router.add_get("/v1/refunds", refunds)
    app.router.add_post("/v1/checkout/sessions", create)
    app.router.add_get("/v1/charges/{charge}", charge)
    async with serve(app) as url:
        standin.url = url
        try:
            yield standin
        finally:
            standin.release.set()  # a held request ends before the server does


def event(
    event_type: str,
    session: dict[str, Any],
    *,
    event_id: str | None = None,
    livemode: bool = False,
    **changes: Any,
) -> bytes:
    """A provider event about ``session`` (with ``changes`` to the session object)."""
    obj = {**session, **changes}
    body = {
        "id": event_id or "evt_" + secrets.token_hex(12),
        "object": "event",
        "api_version": "2024-06-20",
        "created": int(time.time()),
        "livemode": livemode,
        "type": event_type,
        "data": {"object": obj},
    }
    return orjson.dumps(body)


def paid(session: dict[str, Any], **changes: Any) -> bytes:
    """``checkout.session.completed`` of a paid session."""
    pi = "pi_" + session["id"].removeprefix("cs_test_")
    fields = {"status": "complete", "payment_status": "paid", "payment_intent": pi, **changes}
    return event("checkout.session.completed", session, **fields)


def signed(payload: bytes, *, secret: str = WEBHOOK_SECRET, at: int | None = None) -> str:
    """The ``Stripe-Signature`` header Stripe would send with ``payload``."""
    t = int(time.time()) if at is None else at
    mac = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def intent_of(session: dict[str, Any]) -> str:
    """The payment intent :func:`paid` reports for ``session``."""
    return "pi_" + session["id"].removeprefix("cs_test_")


def refunded(
    intent: str, amount_refunded: int, *, amount: int, event_id: str | None = None, **changes: Any
) -> bytes:
    """``charge.refunded`` of the charge of ``intent`` (``amount_refunded``: cumulative,
    in cents, as Stripe sends it after each refund)."""
    charge = {
        "id": "ch_" + intent.removeprefix("pi_"),
        "object": "charge",
        "amount": amount,
        "amount_refunded": amount_refunded,
        "refunded": amount_refunded >= amount,
        "currency": "usd",
        "payment_intent": intent,
        "status": "succeeded",
    }
    return event("charge.refunded", charge, event_id=event_id, **changes)


def disputed(
    event_type: str,
    intent: str,
    dispute_id: str,
    amount: int,
    status: str,
    *,
    event_id: str | None = None,
    **changes: Any,
) -> bytes:
    """A ``charge.dispute.*`` event about the charge of ``intent``."""
    dispute = {
        "id": dispute_id,
        "object": "dispute",
        "amount": amount,
        "currency": "usd",
        "charge": "ch_" + intent.removeprefix("pi_"),
        "payment_intent": intent,
        "status": status,
        "reason": "fraudulent",
    }
    return event(event_type, dispute, event_id=event_id, **changes)


def refund_updated(
    intent: str,
    refund_id: str,
    amount: int,
    status: str,
    *,
    event_type: str = "charge.refund.updated",
    event_id: str | None = None,
    **changes: Any,
) -> bytes:
    """A ``charge.refund.updated`` (or ``refund.*``) event about one refund (``amount``:
    that refund's cents) of the charge of ``intent``."""
    refund = {
        "id": refund_id,
        "object": "refund",
        "amount": amount,
        "currency": "usd",
        "charge": "ch_" + intent.removeprefix("pi_"),
        "payment_intent": intent,
        "status": status,
        **({"failure_reason": "expired_or_canceled_card"} if status == "failed" else {}),
    }
    return event(event_type, refund, event_id=event_id, **changes)
