"""Typed rows of the durable store.

Conventions, the same in both backends:

* money is ``int`` micro-dollars (signed where a row can take money away);
* every time is ``int`` epoch **milliseconds** (UTC), stored as ``BIGINT``;
* JSON values (``detail``, ``payload``, audit ``before``/``after``) are plain dicts.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from meter.refusals import COUNTED

WorkspaceType = Literal["standard", "enterprise"]
Role = Literal["developer", "tester", "viewer"]
LedgerKind = Literal["grant_free", "lapse", "topup", "refund_adjust", "reconcile",
                     "payment_reversed", "dispute_reinstated"]  # fmt: skip
Pool = Literal["free", "paid"]
Granularity = Literal["hour", "day", "week", "month"]

WORKSPACE_TYPES: tuple[str, ...] = ("standard", "enterprise")
ROLES: tuple[str, ...] = ("developer", "tester", "viewer")
LEDGER_KINDS: tuple[str, ...] = ("grant_free", "lapse", "topup", "refund_adjust", "reconcile",
                                 "payment_reversed", "dispute_reinstated")  # fmt: skip
# Kinds of a payment given back at the provider (meter/store/reversals.py).
REVERSAL_KINDS: tuple[str, ...] = ("payment_reversed", "dispute_reinstated")
POOLS: tuple[str, ...] = ("free", "paid")
GRANULARITIES: tuple[str, ...] = ("hour", "day", "week", "month")
APP_FIELDS: frozenset[str] = frozenset(
    {"name", "owner_id", "upstream_url", "use_free_credits", "suspended", "shadow"}
)
# Refusal reasons kept as one counter column each (``refused_<reason>``); a reason not in
# this list is counted under ``other`` rather than dropped.
# The counted refusals of meter.refusals, in their (column) order.
REFUSAL_REASONS: tuple[str, ...] = (*COUNTED, "other")


def now_ms() -> int:
    """The current time as epoch milliseconds."""
    return time.time_ns() // 1_000_000


def normalise_refused(refused: Mapping[str, int]) -> dict[str, int]:
    """Fold ``refused`` onto :data:`REFUSAL_REASONS` (unknown reasons go to ``other``)."""
    out: dict[str, int] = {}
    for reason, count in refused.items():
        key = reason if reason in REFUSAL_REASONS else "other"
        out[key] = out.get(key, 0) + int(count)
    return out


@dataclass(frozen=True, slots=True)
class User:
    id: str
    email: str
    name: str
    token_hash: str
    created_at: int


@dataclass(frozen=True, slots=True)
class Workspace:
    id: str
    name: str
    owner_id: str
    created_at: int
    type: WorkspaceType = "standard"
    free_expires_at: int | None = None
    webhook_url: str | None = None
    webhook_secret: str | None = None
    # The owner's low-balance alert threshold (micro-dollars); None: the settings' default.
    low_balance_threshold: int | None = None


@dataclass(frozen=True, slots=True)
class App:
    id: str
    workspace_id: str
    name: str
    product: str
    owner_id: str
    created_at: int
    upstream_url: str | None = None
    use_free_credits: bool = True
    suspended: bool = False
    # Shadow mode: metered and recorded, never refused (refusals counted, not applied).
    shadow: bool = False


@dataclass(frozen=True, slots=True)
class AppChannel:
    """An app's verification secret for one channel; secrets are Fernet tokens."""

    app_id: str
    channel: str
    scheme: str
    secret_enc: str
    updated_at: int
    notify_secret_enc: str | None = None


@dataclass(frozen=True, slots=True)
class Collaborator:
    app_id: str
    user_id: str
    role: Role


@dataclass(frozen=True, slots=True)
class Licence:
    workspace_id: str
    product: str
    usage_limit: int
    per_minute: int
    per_hour: int


@dataclass(frozen=True, slots=True)
class UpgradeRequest:
    id: str
    workspace_id: str
    products: tuple[str, ...]
    created_at: int
    message: str | None = None
    status: Literal["open", "granted", "declined"] = "open"
    granted_at: int | None = None
    decided_at: int | None = None  # when it was granted or declined
    reason: str | None = None  # why an operator declined it


@dataclass(frozen=True, slots=True)
class ApiToken:
    """One of a user's API tokens: only its hash is stored, and ``hint`` (its last
    characters, empty for the token a user was created with before tokens were listed)."""

    id: str
    user_id: str
    name: str
    token_hash: str
    hint: str
    created_at: int
    revoked_at: int | None = None


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One credit movement. ``reference`` is unique per workspace (idempotency key).

    ``pool`` defaults from ``kind``: ``grant_free``/``lapse`` move free credits, every
    other kind paid funds (``app_id`` set = funds tied to that app, else the shared pool).
    """

    workspace_id: str
    kind: LedgerKind
    amount: int
    reference: str
    created_at: int
    app_id: str | None = None
    pool: Pool | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    id: int | None = None

    @property
    def resolved_pool(self) -> Pool:
        if self.pool is not None:
            return self.pool
        return "free" if self.kind in ("grant_free", "lapse") else "paid"


@dataclass(frozen=True, slots=True)
class PoolTotals:
    """Money per pool: free credits, the shared paid pool, and paid funds tied to apps."""

    free: int = 0
    shared: int = 0
    apps: dict[str, int] = field(default_factory=dict)

    @property
    def paid(self) -> int:
        return self.shared + sum(self.apps.values())


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    at: int
    actor: str
    action: str
    target: str
    before: Any = None
    after: Any = None


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    """An owner notification waiting for delivery; ``event_id`` makes enqueueing idempotent."""

    workspace_id: str
    event_id: str
    event_type: str
    payload: dict[str, Any]
    created_at: int
    id: int | None = None
    attempts: int = 0
    next_attempt_at: int | None = None
    delivered_at: int | None = None
    last_error: str | None = None


CheckoutStatus = Literal[
    "creating", "open", "paid", "expired", "failed", "rejected", "credited_by_hand"
]


@dataclass(frozen=True, slots=True)
class Checkout:
    """A top-up paid through the payment provider.

    ``creating`` until the provider answered with its session, then ``open``; ``paid``
    once credited (exactly once: the ledger reference is ``checkout:<session_id>``);
    ``expired``/``failed`` when the provider says so; ``rejected`` when a paid event did
    not match what was recorded here (not credited: an operator looks at it);
    ``credited_by_hand`` when an operator credited its payment first (``detail``:
    ``credited_as``, that ledger reference, and ``credited_to``, its workspace), after
    which its paid event credits nothing.
    """

    id: str
    workspace_id: str
    amount: int
    currency: str
    provider: str
    status: CheckoutStatus
    created_by: str
    created_at: int
    app_id: str | None = None
    session_id: str | None = None
    payment_intent: str | None = None
    url: str | None = None
    completed_at: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)
