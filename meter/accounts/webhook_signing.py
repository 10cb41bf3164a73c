"""The signatures of owner notifications, and how a receiver checks them.

Every notification carries two signatures, both HMAC-SHA256 keyed by the workspace's
webhook secret::

    X-Creditgate-Signature: sha256=<hex HMAC of the raw body>
    X-Creditgate-Timed-Signature: t=<unix seconds>,v1=<hex HMAC of "<t>." + the raw body>

The first (kept as it was, for receivers written against it) never expires: a request
captured once verifies for ever. The second signs the time of the attempt with the body,
so a receiver that rejects a ``t`` more than :data:`TOLERANCE_S` from its own clock
refuses a replay made later (:func:`verify_timed`). Each attempt, retries included, is
signed at its own time. Delivery is at least once (a retry after an answer that was
lost, or a notification woken while it was being sent), so a receiver deduplicates by
the delivery id (``X-Creditgate-Delivery``, the body's ``id``) as well.
"""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "X-Creditgate-Signature"
TIMED_SIGNATURE_HEADER = "X-Creditgate-Timed-Signature"
EVENT_HEADER = "X-Creditgate-Event"
DELIVERY_HEADER = "X-Creditgate-Delivery"
TOLERANCE_S = 300
"""How far from the receiver's clock a timed signature's ``t`` may be (5 minutes)."""


def _hmac(secret: str, data: bytes) -> str:
    return hmac.new(secret.encode(), data, hashlib.sha256).hexdigest()


def signature(secret: str, body: bytes) -> str:
    """The value of :data:`SIGNATURE_HEADER` for ``body``."""
    return "sha256=" + _hmac(secret, body)


def verify(secret: str, body: bytes, header: str | None) -> bool:
    """What a receiver does: constant-time check of the signature header."""
    return header is not None and _same(signature(secret, body), header)


def _same(expected: str, given: str) -> bool:
    """Constant-time equality of a hex digest and what a header says; ``False`` (never an
    exception) for anything that is not ASCII."""
    return given.isascii() and hmac.compare_digest(expected.encode(), given.encode())


MAX_T_DIGITS = 12
"""The longest ``t`` :func:`verify_timed` reads (unix seconds fit in 11 digits until
the year 5138); a longer one is refused before it is turned into a number."""


def timed_signature(secret: str, body: bytes, t: int) -> str:
    """The value of :data:`TIMED_SIGNATURE_HEADER` for ``body`` sent at ``t`` (unix s)."""
    return f"t={t},v1={_hmac(secret, str(t).encode() + b'.' + body)}"


def verify_timed(
    secret: str, body: bytes, header: str | None, now: float, tolerance_s: float = TOLERANCE_S
) -> bool:
    """What a receiver does with :data:`TIMED_SIGNATURE_HEADER`: split it on ``,`` into
    ``key=value`` pairs, take ``t`` (digits only) and every ``v1``; refuse a ``t`` more
    than ``tolerance_s`` from ``now``; accept when any ``v1`` equals the HMAC of
    ``"<t>." + body`` (compared in constant time). Anything malformed is ``False``, never
    an exception: a ``t`` of more than :data:`MAX_T_DIGITS` digits, a non-ASCII ``v1``."""
    if header is None:
        return False
    pairs = [part.partition("=") for part in header.split(",")]
    stamps = [v for k, _, v in pairs if k.strip() == "t"]
    if len(stamps) != 1 or not 0 < len(stamps[0]) <= MAX_T_DIGITS:
        return False
    if not stamps[0].isascii() or not stamps[0].isdigit():
        return False
    t = int(stamps[0])
    if abs(now - t) > tolerance_s:
        return False
    expected = _hmac(secret, stamps[0].encode() + b"." + body)
    return any(_same(expected, v) for k, _, v in pairs if k.strip() == "v1")


def signed_headers(
    secret: str, body: bytes, event_type: str, delivery_id: str, t: int
) -> dict[str, str]:
    """Every header of one delivery attempt made at ``t``."""
    return {
        "Content-Type": "application/json",
        EVENT_HEADER: event_type,
        DELIVERY_HEADER: delivery_id,
        SIGNATURE_HEADER: signature(secret, body),
        TIMED_SIGNATURE_HEADER: timed_signature(secret, body, t),
    }
