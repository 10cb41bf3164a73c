"""Stripe, through its official library: Checkout Sessions and webhook signatures.

:class:`StripeProvider` creates checkout sessions with ``StripeClient`` over the
library's asyncio HTTP client (on its own ``aiohttp`` session, so the event loop is
never blocked) against ``stripe_api_base`` (tests point it at a local stand-in;
:class:`~gateway.stripe_http.StripeHTTP`: a body that stalls or breaks off is a provider
error like any network error, never a 500), and verifies the ``Stripe-Signature`` of
webhook deliveries with
``stripe.Webhook.construct_event`` (timestamp tolerance ``stripe_webhook_tolerance_s``).
The secret key and the webhook secret never reach a log line or an answer.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import stripe
from aiohttp import web

from config import Settings
from gateway.appkeys import SETTINGS
from gateway.stripe_http import StripeHTTP
from meter.accounts.payments import ProviderError, ProviderSession, SessionEvent, SessionRequest
from meter.accounts.reversals import ReversalEvent

log = logging.getLogger(__name__)
SIGNATURE_HEADER = "Stripe-Signature"
CHARGE_ID = re.compile(r"^(ch|py)_[A-Za-z0-9_]{1,200}$")


class BadSignature(Exception):
    """A webhook delivery whose signature is missing, forged or stale, or not an event."""


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _id(value: Any) -> str | None:
    """An id field that the provider may also send expanded (as the object itself)."""
    if isinstance(value, Mapping):
        return _str(value.get("id"))
    return _str(value)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _reversal(event_id: str, event_type: str, obj: Mapping[str, Any], livemode: bool | None
              ) -> ReversalEvent:  # fmt: skip
    """A ``charge`` (refunded: its cumulative ``amount_refunded``), a ``dispute`` (its
    ``amount``) or a ``refund`` (its ``amount``: one refund, not cumulative) event."""
    charge = obj.get("object") == "charge"
    return ReversalEvent(
        event_id=event_id,
        type=event_type,
        object_id=_str(obj.get("id")),
        payment_intent=_id(obj.get("payment_intent")),
        charge=_str(obj.get("id")) if charge else _id(obj.get("charge")),
        amount=_int(obj.get("amount_refunded" if charge else "amount")),
        currency=_str(obj.get("currency")),
        status=_str(obj.get("status")),
        livemode=livemode,
        refund=obj.get("object") == "refund",
    )


class StripeProvider:
    """The payment provider of one admin application (opened and closed with it)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._session: aiohttp.ClientSession | None = None
        self._client: stripe.StripeClient | None = None
        self._lookup: stripe.StripeClient | None = None

    @property
    def can_checkout(self) -> bool:
        return self._settings.stripe_secret_key is not None

    @property
    def can_verify(self) -> bool:
        return self._settings.stripe_webhook_secret is not None

    def _stripe(self, lookup: bool = False) -> stripe.StripeClient:
        """The client of checkouts (``stripe_timeout_s``, ``stripe_max_network_retries``)
        or, ``lookup``, of the lookups (a dispute's charge, a charge's refunds listed):
        one attempt of at most ``stripe_lookup_timeout_s``, or ``stripe_timeout_s`` if less
        (Stripe redelivers a webhook answered 502, so a stalled Stripe holds a delivery
        seconds, not the ~61 s of three general attempts)."""
        key = self._settings.stripe_secret_key
        if key is None:
            raise ProviderError("the payment provider is not configured")
        if self._session is None:
            self._session = aiohttp.ClientSession(auto_decompress=False)  # StripeHTTP caps
        client = self._lookup if lookup else self._client
        if client is None:
            timeout = self._settings.stripe_timeout_s
            if lookup:
                timeout = min(timeout, self._settings.stripe_lookup_timeout_s)
            client = stripe.StripeClient(
                key.get_secret_value(),
                base_addresses={"api": self._settings.stripe_api_base.rstrip("/")},
                http_client=StripeHTTP(self._session, timeout),
                max_network_retries=0 if lookup else self._settings.stripe_max_network_retries,
            )
            if lookup:
                self._lookup = client
            else:
                self._client = client
        return client

    async def create_session(self, req: SessionRequest) -> ProviderSession:
        """A Checkout Session (mode ``payment``) for one line item of the amount."""
        params: dict[str, Any] = {
            "mode": "payment",
            "line_items": [
                {
                    "quantity": 1,
                    "price_data": {
                        "currency": req.currency,
                        "unit_amount": req.amount_cents,
                        "product_data": {"name": "creditgate funds"},
                    },
                }
            ],
            "metadata": req.metadata,
            "payment_intent_data": {"metadata": req.metadata},
            "client_reference_id": req.checkout_id,
            "success_url": req.success_url,
            "cancel_url": req.cancel_url,
        }
        try:
            session = await self._stripe().v1.checkout.sessions.create_async(
                params,  # type: ignore[arg-type]
                {"idempotency_key": f"creditgate-checkout-{req.checkout_id}"},
            )
        except stripe.StripeError as exc:
            # Stripe's own messages never carry the key; ours name only the kind of error.
            log.warning(
                "stripe: checkout session for %s failed: %s (HTTP %s, request %s)",
                req.checkout_id,
                type(exc).__name__,
                exc.http_status,
                exc.request_id,
            )
            raise ProviderError("the payment provider did not create the session") from None
        url = _str(session.url)
        sid = _str(session.id)
        if sid is None or url is None:
            raise ProviderError("the payment provider answered without a session id or URL")
        total = session.amount_total
        return ProviderSession(
            id=sid,
            url=url,
            amount_total=total if isinstance(total, int) else None,
            currency=_str(session.currency),
        )

    async def charge_payment_intent(self, charge_id: str) -> str | None:
        """The payment intent of charge ``charge_id`` at the provider (a dispute that names
        only its charge), ``None`` when the charge has none or the provider knows no such
        charge (404 ``resource_missing``); :class:`ProviderError` when it could not be
        asked, any other 404 included (the webhook answers 502 and the provider retries
        the delivery)."""
        if not CHARGE_ID.fullmatch(charge_id):
            return None
        try:
            charge = await self._stripe(lookup=True).v1.charges.retrieve_async(charge_id)
        except stripe.InvalidRequestError as exc:
            # Only Stripe's "no such charge" is an answer; any other 404 ("Unrecognized
            # request URL": STRIPE_API_BASE is wrong) is a failure, retried by Stripe.
            if exc.http_status == 404 and exc.code == "resource_missing":
                return None
            log.warning("stripe: charge %s lookup refused: HTTP %s, request %s",
                        charge_id, exc.http_status, exc.request_id)  # fmt: skip
            raise ProviderError("the payment provider did not answer the charge") from None
        except stripe.StripeError as exc:
            log.warning("stripe: charge %s lookup failed: %s (HTTP %s, request %s)",
                        charge_id, type(exc).__name__, exc.http_status, exc.request_id)  # fmt: skip
            raise ProviderError("the payment provider did not answer the charge") from None
        found: Mapping[str, Any] = charge.to_dict()
        if _str(found.get("id")) != charge_id:
            raise ProviderError("the payment provider answered another charge")
        return _id(found.get("payment_intent"))

    async def charge_refunded(self, charge_id: str) -> int:
        """What Stripe says is refunded of charge ``charge_id`` now (cents): the sum of its
        refunds neither failed nor canceled, one page of up to 100 (one short attempt, as
        the charge lookup); :class:`ProviderError` when it could not tell (more than one
        page included: never a guess)."""
        if not CHARGE_ID.fullmatch(charge_id):
            raise ProviderError("not a charge id")
        try:
            page = await self._stripe(lookup=True).v1.refunds.list_async(
                {"charge": charge_id, "limit": 100}
            )
        except stripe.StripeError as exc:
            log.warning("stripe: refunds of charge %s not listed: %s (HTTP %s, request %s)",
                        charge_id, type(exc).__name__, exc.http_status, exc.request_id)  # fmt: skip
            raise ProviderError("the payment provider did not list the refunds") from None
        found: Mapping[str, Any] = page.to_dict()
        data = found.get("data")
        if found.get("has_more") is not False or not isinstance(data, list):
            raise ProviderError("the payment provider's refunds of the charge: not one page")
        total = 0
        for r in data:
            amount = _int(r.get("amount")) if isinstance(r, Mapping) else None
            if amount is None or amount < 0 or _id(r.get("charge")) != charge_id:
                raise ProviderError("the payment provider answered another refund")
            if (_str(r.get("currency")) or "").lower() != "usd":
                raise ProviderError("the payment provider answered a refund not in usd")
            if r.get("status") not in ("failed", "canceled"):
                total += amount
        return total

    def parse_event(self, payload: bytes, header: str | None) -> SessionEvent | ReversalEvent:
        """The verified event of a webhook delivery, or :class:`BadSignature`."""
        secret = self._settings.stripe_webhook_secret
        if secret is None:
            raise ProviderError("the payment provider is not configured")
        if not header:
            raise BadSignature(f"missing {SIGNATURE_HEADER} header")
        try:
            event = stripe.Webhook.construct_event(
                payload,
                header,
                secret.get_secret_value(),
                tolerance=self._settings.stripe_webhook_tolerance_s,
            )
        except stripe.SignatureVerificationError:
            raise BadSignature("signature does not match, or its timestamp is stale") from None
        except ValueError:  # signed, but not a JSON event (or not UTF-8)
            raise BadSignature("the payload is not a provider event") from None
        raw: Mapping[str, Any] = event.to_dict()  # plain dicts, recursively
        event_id, event_type = _str(raw.get("id")), _str(raw.get("type"))
        if event_id is None or event_type is None:
            raise BadSignature("the payload is not a provider event")
        data = raw.get("data")
        obj = data.get("object") if isinstance(data, Mapping) else None
        mode = raw.get("livemode")
        livemode = mode if isinstance(mode, bool) else None
        if isinstance(obj, Mapping) and obj.get("object") in ("charge", "dispute", "refund"):
            return _reversal(event_id, event_type, obj, livemode)
        if not isinstance(obj, Mapping) or obj.get("object") != "checkout.session":
            return SessionEvent(event_id=event_id, type=event_type)
        total = obj.get("amount_total")
        meta = obj.get("metadata")
        metadata = (
            {str(k): v for k, v in meta.items() if isinstance(v, str)}
            if isinstance(meta, Mapping)
            else {}
        )
        return SessionEvent(
            event_id=event_id,
            type=event_type,
            session_id=_str(obj.get("id")),
            payment_status=_str(obj.get("payment_status")),
            amount_total=_int(total),
            currency=_str(obj.get("currency")),
            payment_intent=_id(obj.get("payment_intent")),
            metadata=metadata,
            livemode=livemode,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        self._session = self._client = self._lookup = None


PAYMENTS = web.AppKey("payments", StripeProvider)


async def payments_ctx(app: web.Application) -> AsyncIterator[None]:
    """Open the provider with the admin application; close its HTTP session after."""
    provider = StripeProvider(app[SETTINGS])
    app[PAYMENTS] = provider
    yield
    await provider.close()
