"""What ``admit.lua`` decided for one message: the result codes and the Decision record."""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

from meter.refusals import REASONS, Code

__all__ = ["REASONS", "Code", "Decision", "MessageKind", "unknown_app"]

MessageKind = Literal["m", "n", "c"]  # message, notification, check (WebSocket upgrade)


_ZEROS = (0, 0, 0, 0, 0, 0)  # units, free, app, pool, invoiced, retry_after_ms
_COMMA: dict[type, Any] = {bytes: b",", str: ","}


class Decision(NamedTuple):
    """What Redis decided for one message. Amounts are micro-dollars."""

    code: int
    units: int
    free: int
    app: int
    pool: int
    invoiced: int
    retry_after_ms: int
    bsid: str
    duplicate: bool
    new_session: bool
    key: str
    token: str
    rid: str  # the charge record's id (meter.redis_layer.keys.record_id)
    shadowed: int = 0  # shadow mode: the code of the refusal counted instead of applied
    # The message's channel and channel user: a message admitted inside a paid billing
    # session names it by them when it fails (refund.lua un-counts it from the session).
    channel: str = ""
    user: str = ""
    at: int = 0  # ms: the admission call's "now" (a refund un-counts a message there)

    @classmethod
    def from_reply(
        cls,
        raw: list[Any],
        i: int,
        key: str,
        token: str,
        rid: str,
        channel: str = "",
        user: str = "",
        at: int = 0,
    ) -> Decision:
        """The ``i``-th decision of an ``admit.lua`` reply: three values per admission,
        ``status`` (code + 16 x flags; flags: 1 duplicate, 2 opened a billing session,
        plus 8 x the code shadow mode counted), ``bsid``, and ``amounts``: 0, or
        ``"units,free,app,pool,invoiced,retry_after_ms"``."""
        j = i * 3
        status, bsid, amounts = raw[j], raw[j + 1], raw[j + 2]
        if status < 16 and amounts == 0:  # no flags, no amounts: most messages
            text = bsid.decode() if bsid.__class__ is bytes else str(bsid)
            plain = (
                status,
                0,
                0,
                0,
                0,
                0,
                0,
                text,
                False,
                False,
                key,
                token,
                rid,
                0,
                channel,
                user,
                at,
            )
            return tuple.__new__(cls, plain)
        flags = status >> 4
        nums = _ZEROS if amounts == 0 else tuple(map(int, amounts.split(_COMMA[type(amounts)])))
        # tuple.__new__ is what Decision(...) does, minus a Python-level call per item.
        return tuple.__new__(
            cls,
            (
                status & 15,
                *nums,
                bsid.decode() if isinstance(bsid, bytes) else str(bsid),
                bool(flags & 1),
                bool(flags & 2),
                key,
                token,
                rid,
                flags >> 3,
                channel,
                user,
                at,
            ),
        )

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
    def owed(self) -> int:
        """A fail-open settlement the balances could not pay: the part of ``pool`` taken
        on credit, below the balance (``admit.lua`` replies it in the retry slot)."""
        return self.retry_after_ms if self.code == 0 else 0

    @property
    def charged(self) -> int:
        """Money debited from the workspace's balances by this admission."""
        return self.free + self.app + self.pool


def unknown_app(key: str = "", token: str = "") -> Decision:
    return Decision(Code.UNKNOWN_APP, 0, 0, 0, 0, 0, 0, "", False, False, key, token, "")
