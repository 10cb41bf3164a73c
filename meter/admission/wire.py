"""The encoding between :class:`~meter.admission.admitter.Admitter` and ``admit.lua``.

ARGV is a head (:func:`static_argv`, then the billing period, then :func:`tail_argv`)
followed by one tab-separated argument per admission; the reply is nine values per
admission, read back into :class:`~meter.admission.decision.Decision` by :func:`resolve`
(:func:`fail` when there is none).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, NamedTuple

from redis.exceptions import RedisError
from redis.typing import EncodableT

from config import Settings
from meter.admission.decision import Decision, Kind
from meter.errors import InvalidChannelUser, MeteringUnavailable

log = logging.getLogger(__name__)

MAX_USER_LEN = 256
MAX_KEY_LEN = 256


def check_channel_text(field: str, value: str, limit: int = MAX_USER_LEN) -> None:
    """A channel user id or idempotency key: 1-``limit`` printable characters.

    Printable excludes control characters (tab, newline, NUL: separators in Redis
    records, rejected by PostgreSQL text) and lone surrogates (what invalid UTF-8 in a
    header decodes to): such a value would fail the shared Redis call or the store.
    Raises :class:`InvalidChannelUser`.
    """
    if not value:
        raise InvalidChannelUser(field, "is required")
    if len(value) > limit:
        raise InvalidChannelUser(field, f"longer than {limit} characters")
    if not value.isprintable():
        raise InvalidChannelUser(field, "must be printable UTF-8 text")


def static_argv(s: Settings) -> tuple[EncodableT, ...]:
    """``admit.lua``'s ARGV[2..11]: what the settings fix for the process's lifetime."""
    return (
        int(s.session_block_s * 1000),
        int(s.session_idle_s * 1000),
        int(s.idempotency_ttl_s * 1000),
        s.flush_bucket_s,
        s.low_balance_threshold,
        "p" if s.deduction_order == "paid_first" else "f",
        s.rate_per_minute,
        s.rate_per_hour,
        int(s.rate_minute_window_s * 1000),
        int(s.rate_hour_window_s * 1000),
    )


def tail_argv(s: Settings) -> tuple[EncodableT, ...]:
    """``admit.lua``'s ARGV[13..15]: charge-record TTL, deliveries per key, reservation."""
    # A charge record without a channel key lives as long as the bot may take, and
    # at least as long as its reservation (the sweeper refunds from the record).
    reserve_ms = int(s.refund_window_s * 1000)
    refund_ttl_ms = (
        max(int((s.upstream_connect_timeout_s + s.upstream_read_timeout_s) * 1000), reserve_ms)
        + 60_000
    )
    return (refund_ttl_ms, s.idempotency_max_deliveries, reserve_ms)


def admission_arg(
    app_id: str, channel: str, user: str, key: str, token: str, kind: Kind, digest: str
) -> bytes:
    """One admission as ``admit.lua`` reads it (encoded here, so a value Redis cannot
    take fails this message alone)."""
    return f"{app_id}\t{channel}\t{user}\t{key}\t{token}\t{kind}\t{digest}".encode()


def settlement_arg(app_id: str, channel: str, user: str, key: str, token: str, kind: Kind) -> bytes:
    """A fail-open settlement: the kind in upper case tells ``admit.lua`` it was served."""
    return f"{app_id}\t{channel}\t{user}\t{key}\t{token}\t{kind.upper()}".encode()


class Pending(NamedTuple):
    """One encoded admission waiting for its decision."""

    arg: bytes
    key: str
    token: str
    rid: str
    future: asyncio.Future[Decision]


def resolve(chunk: list[Pending], raw: list[Any]) -> None:
    """Hand each waiter of ``chunk`` its decision from ``admit.lua``'s reply ``raw``."""
    new = tuple.__new__  # what Decision(...) does, minus a Python-level call per item
    for i, p in enumerate(chunk):
        fut = p.future
        if fut.done():  # the caller gave up (cancelled)
            continue
        j = i * 9
        flags = raw[j + 8]
        bsid = raw[j + 7]
        fut.set_result(
            new(
                Decision,
                (
                    *raw[j : j + 7],
                    bsid.decode() if isinstance(bsid, bytes) else str(bsid),
                    bool(flags & 1),
                    bool(flags & 2),
                    p.key,
                    p.token,
                    p.rid,
                    flags >> 3,
                ),
            )
        )


def fail(chunk: list[Pending], exc: BaseException) -> None:
    """No decision: every waiter learns Redis did not answer.

    Anything, not only RedisError: redis-py's cluster client also raises
    RedisClusterException and, racing its own reconnects, other errors; a future left
    unresolved would hang its caller for good.
    """
    if not isinstance(exc, (RedisError, OSError, TimeoutError, MeteringUnavailable)):
        log.error("admission call failed unexpectedly", exc_info=exc)
    err = MeteringUnavailable(f"redis: {exc!r}", ambiguous=True)
    for p in chunk:
        if not p.future.done():
            p.future.set_exception(err)
