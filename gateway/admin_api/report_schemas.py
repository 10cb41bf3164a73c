"""Bodies of the money and usage routes: the top-up requests (funds by hand, checkouts)
and the responses: funds, checkouts, transactions, plan-usage, usage series, sessions."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic.json_schema import SkipJsonSchema

from gateway.admin_api.schemas import (
    Amount,
    AppId,
    Body,
    Money,
    Out,
    Product,
    Reference,
    Timestamp,
    optional,
)
from meter.accounts.plan_usage import FundsStatus


class FundsAdd(Body):
    amount: Amount = Field(
        description="decimal dollars, whole cents, within the top-up limits; when the "
        "reference names a known checkout, its amount (else 409 amount_mismatch)"
    )
    app_id: AppId | SkipJsonSchema[None] = optional(description="tie the funds to this app")
    reference: Reference = Field(
        description="required (e.g. the bank transfer's id): the same reference credits once. "
        "One naming a payment (a checkout's id, cs_… or pi_…) credits it once, by hand or "
        "by its webhook: 409 reference_is_checkout once credited; a checkout not paid yet "
        "is credited under its pi_… (its id or cs_…: 409 payment_intent_required)"
    )


class CheckoutCreate(Body):
    amount: Amount = Field(description="decimal dollars, whole cents, within the top-up limits")
    app_id: AppId | SkipJsonSchema[None] = optional(description="tie the funds to this app")


class FreeCreditsOut(Out):
    granted: Money
    remaining: Money
    expires_at: Timestamp | None
    lapsed: Money = Field(description="free credits that expired unused")


class AppStatusOut(Out):
    id: str
    name: str
    owner_id: str
    product: Product
    unit: Literal["session", "request", "notification"]
    unit_price: Money
    use_free_credits: bool
    suspended: bool
    paid_balance: Money = Field(description="paid funds tied to this app")
    remaining: Money | None = Field(description="what this app can still spend (standard)")
    allowed_units: int
    status: FundsStatus
    status_reason: (
        Literal[
            "suspended",
            "out_of_funds",
            "free_credits_expired",
            "not_licensed",
            "usage_limit_reached",
            "below_threshold",
        ]
        | None
    ) = Field(default=None, description="why the app is inactive or low")


class LicenceUsageOut(Out):
    product: Product
    usage_limit: int
    used: int
    remaining: int
    per_minute: int
    per_hour: int
    period: str


class SubscriptionOut(Out):
    support_plan: str
    type: str
    fee: Money
    renewal_due: Timestamp | None


class ForecastOut(Out):
    window_days: int
    spent: Money = Field(description="debited from credits in the window (stored usage)")
    daily_rate: Money
    days_left: int | None = Field(description="null: nothing spent in the window")
    runs_out_at: Timestamp | None = Field(description="when the usable balance runs out")


class PlanUsageOut(Out):
    workspace_id: str
    plan: Literal["standard", "enterprise"]
    forecast: ForecastOut | None = Field(
        default=None, description="burn rate of the last 7 days (standard workspaces)"
    )
    free_credits: FreeCreditsOut
    paid_balance: Money = Field(description="shared pool plus funds tied to apps")
    shared_pool: Money
    usable_balance: Money = Field(description="valid free credits plus paid balance")
    low_balance_threshold: Money
    low_balance_threshold_is_default: bool = True
    session_price: Money
    request_price: Money
    allowed_sessions: int = Field(description="usable balance / session price, rounded down")
    allowed_requests: int = Field(description="usable balance / request price, rounded down")
    apps: list[AppStatusOut]
    paid_apps: int = Field(description="apps whose next unit is paid from funds")
    inactive_apps: int
    licences: list[LicenceUsageOut]
    subscription: SubscriptionOut


class UsagePointOut(Out):
    start: Timestamp
    sessions: int
    requests: int
    notifications: int
    messages: int
    amount: Money = Field(description="everything charged: credits debited plus invoiced")
    amount_free: Money
    amount_paid: Money
    amount_invoiced: Money
    refused: dict[str, int]


class UsageOut(Out):
    workspace_id: str
    from_: Timestamp = Field(alias="from")
    to: Timestamp
    granularity: Literal["hour", "day", "week", "month"]
    app_id: str | None
    channel: str | None
    series: list[UsagePointOut]
    totals: UsagePointOut
    live: bool = Field(
        default=True, description="false when Redis did not answer: flushed usage only"
    )


class SessionOut(Out):
    app_id: str
    channel: str
    channel_user: str
    billing_session_id: str
    start: Timestamp = Field(
        description="when the message that opened (paid) this billing session was admitted:"
        " the session is in the same hour, day or month as its charge in /usage"
    )
    end: Timestamp
    messages: int
    amount: Money
    open: bool = Field(description="live from Redis: the block runs and the talk goes on")


class SessionsOut(Out):
    workspace_id: str
    sessions: list[SessionOut]
    truncated: bool = Field(description="true when more rows exist than returned")
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page")
    live: bool = Field(description="false when Redis did not answer: stored sessions only")


class FundsOut(Out):
    workspace_id: str
    reference: str
    amount: Money
    app_id: str | None
    created: bool = Field(description="false when this reference was applied before")
    created_at: Timestamp


class RefundCreditAdd(Body):
    refund: str = Field(
        pattern=r"^(re|pyr)_[A-Za-z0-9_]{1,200}$",
        description="a refund whose failure Stripe announced (refund_failed): its "
        "payment's refunded part is lowered to what Stripe lists refunded of its charge, "
        "into the pool the payment credited",
    )


class RefundCreditOut(FundsOut):
    refund: str
    refund_amount: Money = Field(description="the failed refund's amount (not what is credited)")
    payment_intent: str | None


class CheckoutOut(Out):
    id: str
    url: str = Field(description="the provider's hosted payment page: send the payer there")
    amount: Money
    app_id: str | None
    status: Literal["creating", "open", "paid", "expired", "failed", "rejected", "credited_by_hand"]
    created_at: Timestamp


TransactionType = Literal[
    "free_grant",
    "free_lapse",
    "checkout",
    "manual_credit",
    "refund_adjustment",
    "reconcile",
    "payment_reversed",
    "dispute_reinstated",
    "refund_failed",
]


class TransactionOut(Out):
    id: str
    type: TransactionType
    amount: Money = Field(
        description="signed: credits in are positive, lapses and payments given back "
        "(payment_reversed: refunded or disputed at the provider) negative; refund_failed: "
        "a failed refund credited back by an operator"
    )
    pool: Literal["free", "paid"]
    app_id: str | None
    reference: str
    created_at: Timestamp


class TransactionsOut(Out):
    workspace_id: str
    transactions: list[TransactionOut]
    next_cursor: str | None = Field(description="pass as ?cursor= for older entries; null: last")


class PaymentWebhookOut(Out):
    received: bool
    outcome: str = Field(
        description="what the event did: credited, already_credited, ...; for a refund or "
        "a dispute reversed, reinstated, already_reversed, awaiting_payment, "
        "unknown_payment, ..."
    )
