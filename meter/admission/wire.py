"""The encoding between :class:`~meter.admission.admitter.Admitter` and ``admit.lua``.

ARGV is a head (:class:`AdmitHead`, ARGV[1..18]) followed by one argument per admission
(:class:`AdmitArgs`, fields joined by tabs); the reply is three values per admission, read
back by :meth:`~meter.admission.decision.Decision.from_reply` (:func:`resolve` hands each
waiter its own, :func:`fail` tells them all there is none). Refusal codes and reasons:
:mod:`meter.refusals`.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

from redis.exceptions import RedisError

from config import Settings
from meter.admission.decision import Decision
from meter.admission.ticket import Ticket, Waiter, wake
from meter.errors import InvalidChannelUser, MeteringUnavailable
from meter.redis_layer.billing_period import billing_period

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


class AdmitHead(NamedTuple):
    """``admit.lua``'s ARGV[1..18] by name, in the script's order (its header says what
    each means; tests/unit/test_protocol.py pins the count)."""

    now_ms: int
    block_ms: int
    idle_ms: int
    idempotency_ttl_ms: int
    flush_bucket_s: int
    low_threshold: int
    order: str  # "f" free first | "p" paid first
    per_minute: int
    per_hour: int
    minute_window_ms: int
    hour_window_ms: int
    period: str  # enterprise billing period, "YYYYMM"
    refund_ttl_ms: int
    max_deliveries: int
    reserve_ms: int
    free_keys: int  # keyed records that took no money, kept a whole idempotency window
    free_keys_ws: int  # the same, for all of a workspace's apps together
    usage_fields: int  # a usage bucket's fields past which refusals of new channels pool

    @classmethod
    def of(cls, s: Settings, now: float) -> AdmitHead:
        # A charge record without a channel key lives as long as the bot may take, and
        # at least as long as its reservation (the sweeper refunds from the record).
        reserve_ms = int(s.refund_window_s * 1000)
        bot_ms = int((s.upstream_connect_timeout_s + s.upstream_read_timeout_s) * 1000)
        return cls(
            now_ms=int(now * 1000),
            block_ms=int(s.session_block_s * 1000),
            idle_ms=int(s.session_idle_s * 1000),
            idempotency_ttl_ms=int(s.idempotency_ttl_s * 1000),
            flush_bucket_s=s.flush_bucket_s,
            low_threshold=s.low_balance_threshold,
            order="p" if s.deduction_order == "paid_first" else "f",
            per_minute=s.rate_per_minute,
            per_hour=s.rate_per_hour,
            minute_window_ms=int(s.rate_minute_window_s * 1000),
            hour_window_ms=int(s.rate_hour_window_s * 1000),
            period=billing_period(now),
            refund_ttl_ms=max(bot_ms, reserve_ms) + 60_000,
            max_deliveries=s.idempotency_max_deliveries,
            reserve_ms=reserve_ms,
            free_keys=s.idempotency_max_free_keys_per_app,
            free_keys_ws=s.idempotency_max_free_keys_per_workspace,
            usage_fields=s.max_usage_fields,
        )


class AdmitArgs(NamedTuple):
    """One admission, ``admit.lua``'s ARGV[19..]: one argument each, these fields joined
    by tabs in this order. No field holds a tab (ids and channels are ``[a-z0-9_-]``,
    users and keys pass :func:`check_channel_text`, tokens are hex, digests alphanumeric).

    ``kind``: ``m`` message, ``n`` notification, ``c`` check; ``M``/``N`` the same settled
    after a fail-open outage (:meth:`settled`).
    """

    app_id: str
    channel: str
    user: str
    key: str  # the channel's idempotency key, or ""
    token: str
    kind: str
    digest: str = ""

    def encode(self) -> bytes:
        """Encoded here, so a value Redis cannot take fails this message alone."""
        return encode_args(*self)

    def settled(self) -> AdmitArgs:
        """The same message, charged as of when it was served (fail-open settlement)."""
        return self._replace(kind=self.kind.upper())


def encode_args(
    app_id: str, channel: str, user: str, key: str, token: str, kind: str, digest: str = ""
) -> bytes:
    """:meth:`AdmitArgs.encode` without building the tuple (once per message)."""
    return f"{app_id}\t{channel}\t{user}\t{key}\t{token}\t{kind}\t{digest}".encode()


class Pending(NamedTuple):
    """One encoded admission waiting for its decision."""

    arg: bytes
    key: str
    token: str
    rid: str
    future: Ticket[Decision]
    channel: str = ""  # the admission's channel and channel user (a refund may need them)
    user: str = ""


def resolve(chunk: list[Pending], raw: list[Any], at: int = 0) -> None:
    """Hand each waiter of ``chunk`` its decision from ``admit.lua``'s reply ``raw`` to
    the call made as of ``at`` (ms: its ``now_ms``), then resume the Flows awaiting them
    (all decisions first: one that does not decode fails only those after it)."""
    from_reply = Decision.from_reply
    woken: list[Waiter] = []
    try:
        # Unpacked: a field read by name is an attribute look-up (six a message).
        for i, (_, key, token, rid, fut, channel, user) in enumerate(chunk):
            if fut.done():  # the caller gave up (cancelled)
                continue
            j = i * 3
            status, bsid, amounts = raw[j], raw[j + 1], raw[j + 2]
            if status < 16 and amounts == 0 and bsid.__class__ is bytes:
                # Most messages (no flags, no amounts): Decision.from_reply's first case,
                # inline (a frame a message).
                dec = tuple.__new__(Decision, (status, 0, 0, 0, 0, 0, 0, bsid.decode(), False,
                    False, key, token, rid, 0, channel, user, at))  # fmt: skip
            else:
                dec = from_reply(raw, i, key, token, rid, channel, user, at)
            fut.set_result(dec)
            if (w := fut.waiter) is not None:
                woken.append(w)
    finally:
        if woken:
            wake(chunk[0].future.get_loop(), woken)


def fail(chunk: list[Pending], exc: BaseException, *, ambiguous: bool = True) -> None:
    """No decision: every waiter learns Redis did not answer (``ambiguous``: the call
    may have run, see :class:`MeteringUnavailable`).

    Anything, not only RedisError: redis-py's cluster client also raises
    RedisClusterException and, racing its own reconnects, other errors; a future left
    unresolved would hang its caller for good.
    """
    if not isinstance(exc, (RedisError, OSError, TimeoutError, MeteringUnavailable)):
        log.error("admission call failed unexpectedly", exc_info=exc)
    err = MeteringUnavailable(f"redis: {type(exc).__name__}: {exc}", ambiguous=ambiguous)
    woken: list[Waiter] = []
    for p in chunk:
        fut = p.future
        if not fut.done():
            fut.set_exception(err)
            if fut.waiter is not None:
                woken.append(fut.waiter)
    if woken:
        wake(chunk[0].future.get_loop(), woken)
