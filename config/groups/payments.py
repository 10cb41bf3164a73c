"""Payments: the Stripe Checkout top-ups, their limits and return pages.

A group of fields of :class:`config.settings.Settings`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, SecretStr

from config.fields import DAY, Seconds


class PaymentsSettings(BaseModel):
    # Payments: free credits once per user, paid top-ups through Stripe Checkout. Checkout
    # answers 503 payments_not_configured until the secret key is set; the provider
    # webhook likewise until the webhook secret is set. Secrets never appear in reprs.
    free_credits_once_per_user: bool = True
    stripe_api_base: str = "https://api.stripe.com"
    stripe_secret_key: SecretStr | None = None
    stripe_webhook_secret: SecretStr | None = None
    stripe_webhook_tolerance_s: int = Field(300, ge=1, le=86_400)
    stripe_timeout_s: Seconds = 20.0
    stripe_max_network_retries: int = Field(2, ge=0, le=5)
    # A webhook's Stripe lookups (a dispute's charge, a charge's refunds) are one attempt
    # of at most this long (or stripe_timeout_s if less), never retried in the gateway: it
    # answers 502 and Stripe redelivers, so a stalled Stripe holds a delivery seconds.
    stripe_lookup_timeout_s: Seconds = 5.0
    checkout_currency: Literal["usd"] = "usd"
    # Checkouts one workspace may hold open with the provider at once (its API rate limit
    # is one account's, shared by every tenant): those 'creating' or 'open' and started
    # within checkout_open_window_s, the provider's session lifetime (Stripe: 24 h, its
    # maximum), after which an unpaid session is expired there even if its event was
    # lost. One more is 409 too_many_open_checkouts and never reaches the provider.
    checkout_open_max: int = Field(5, ge=1, le=100)
    checkout_open_window_s: float = Field(DAY, ge=60.0, le=DAY)
    checkout_success_url: str = "http://localhost:8081/ui?checkout=success"
    checkout_cancel_url: str = "http://localhost:8081/ui?checkout=cancelled"

    @property
    def stripe_livemode(self) -> bool | None:
        """The mode of ``stripe_secret_key`` (``sk_live_``/``rk_live_``: live, ``_test_``:
        test), None when unknown: provider events of the other mode are never acted on."""
        key = self.stripe_secret_key.get_secret_value() if self.stripe_secret_key else ""
        kind, _, rest = key.partition("_")
        mode = rest.partition("_")[0]
        return mode == "live" if kind in ("sk", "rk") and mode in ("live", "test") else None
