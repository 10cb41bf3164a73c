"""Every reason a message is refused, in one table: its admit.lua code, HTTP status and
title, and whether it has its own metric label and usage column.

The rest derive from :class:`Refusal`: :class:`Code` and ``REASONS`` (admit.lua's result
codes, whose reason table a test pins to this one), the gateway's problem statuses and
pre-declared metric labels, and the store's ``refused_<reason>`` columns.
"""

from __future__ import annotations

from enum import Enum, IntEnum


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


class Refusal(Enum):
    """A refusal; its value is the reason (problem ``code``, metric label, aggregate field).

    ``code``: admit.lua's result code, or ``None`` when decided outside admit.lua;
    ``status``: the HTTP status of its problem document; ``counted``: a metric label
    declared up front and a usage column of its own (the store counts the others as
    ``other``). The counted ones, in this order, are the store's ``refused_<reason>``
    columns (migrations are append-only): a new counted refusal goes after them.
    """

    code: Code | None
    status: int
    counted: bool

    def __new__(cls, reason: str, code: Code | None, status: int, counted: bool) -> Refusal:
        obj = object.__new__(cls)
        obj._value_ = reason
        obj.code, obj.status, obj.counted = code, status, counted
        return obj

    UNKNOWN_APP = ("unknown_app", Code.UNKNOWN_APP, 404, True)
    CREDITS_EXHAUSTED = ("credits_exhausted", Code.CREDITS_EXHAUSTED, 402, True)
    FREE_CREDITS_EXPIRED = ("free_credits_expired", Code.FREE_CREDITS_EXPIRED, 402, True)
    PRODUCT_NOT_LICENSED = ("product_not_licensed", Code.PRODUCT_NOT_LICENSED, 403, True)
    APP_SUSPENDED = ("app_suspended", Code.APP_SUSPENDED, 403, True)
    RATE_LIMITED = ("rate_limited", Code.RATE_LIMITED, 429, True)
    USAGE_LIMIT_REACHED = ("usage_limit_reached", Code.USAGE_LIMIT_REACHED, 429, True)
    # Redis did not answer and the fail mode is closed (decided by the gateway).
    METERING_UNAVAILABLE = ("metering_unavailable", None, 503, True)
    DUPLICATE_DELIVERY = ("duplicate_delivery", Code.DUPLICATE_DELIVERY, 409, False)
    INVALID_CHANNEL_USER = ("invalid_channel_user", Code.INVALID_CHANNEL_USER, 400, False)
    # Channel authentication (gateway/channel_auth.py), decided before admission.
    INVALID_CHANNEL_SIGNATURE = ("invalid_channel_signature", None, 401, False)
    CHANNEL_NOT_AUTHENTICATED = ("channel_not_authenticated", None, 403, False)

    @property
    def reason(self) -> str:
        return str(self._value_)

    @property
    def title(self) -> str:
        """The problem document's title: the reason in words ("Rate limited")."""
        return self.reason.replace("_", " ").capitalize()


# admit.lua's refusal codes -> reasons (its REASON table).
REASONS: dict[int, str] = {r.code: r.reason for r in Refusal if r.code is not None}
# Reasons with a metric label declared up front and a usage column of their own.
COUNTED: tuple[str, ...] = tuple(r.reason for r in Refusal if r.counted)
