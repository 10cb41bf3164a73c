"""What ``admit.lua`` decided for one message: the result codes and the Decision record."""

from __future__ import annotations

from enum import IntEnum
from typing import Literal, NamedTuple

Kind = Literal["m", "n", "c"]  # message, notification, check (WebSocket upgrade)


class Code(IntEnum):
    """Result codes of ``admit.lua`` (0 admitted, the rest refusals)."""

    ADMITTED = 0
    UNKNOWN_APP = 1
    APP_SUSPENDED = 2
    PRODUCT_NOT_LICENSED = 3
    RATE_LIMITED = 4
    USAGE_LIMIT_REACHED = 5
    CREDITS_EXHAUSTED = 6
    FREE_CREDITS_EXPIRED = 7
    DUPLICATE_DELIVERY = 8
    INVALID_CHANNEL_USER = 9  # a malformed member of a batch (the edge should stop these)


REASONS: dict[int, str] = {c.value: c.name.lower() for c in Code if c is not Code.ADMITTED}


class Decision(NamedTuple):
    """What Redis decided for one message. Amounts are micro-dollars."""

    code: int
    units: int
    free: int
    app_paid: int
    pool_paid: int
    invoiced: int
    retry_after_ms: int
    bsid: str
    duplicate: bool
    new_session: bool
    key: str
    token: str
    rid: str  # the charge record's id (meter.redis_layer.keys.record_id)
    shadowed: int = 0  # shadow mode: the code of the refusal counted instead of applied

    @property
    def admitted(self) -> bool:
        return self.code == 0

    @property
    def shadow_reason(self) -> str | None:
        """Shadow mode: the refusal that was counted instead of applied."""
        return REASONS.get(self.shadowed) if self.shadowed else None

    @property
    def reason(self) -> str | None:
        """The refusal code of docs/design.md §3, or ``None`` when admitted."""
        return REASONS.get(self.code)

    @property
    def charged(self) -> int:
        """Money debited from the workspace's balances by this admission."""
        return self.free + self.app_paid + self.pool_paid


def unknown_app(key: str = "", token: str = "") -> Decision:
    return Decision(Code.UNKNOWN_APP, 0, 0, 0, 0, 0, 0, "", False, False, key, token, "")
