"""Admission: one atomic Redis step decides whether a message is served and what it costs.

Callers await :meth:`Admitter.admit` per message. Admissions that arrive while the event
loop is busy are gathered per workspace and sent as one ``admit.lua`` call each, so
concurrent messages share round trips; a call carries at most ``batch_max`` admissions
and at most ``max_inflight`` calls are outstanding at once.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Callable
from enum import IntEnum
from typing import Any, Literal, NamedTuple

from redis.asyncio import RedisCluster
from redis.exceptions import NoScriptError, RedisError
from redis.typing import EncodableT

from config import Settings
from meter import keys
from meter.durability import ReplicatedCalls
from meter.errors import InvalidChannelUser, MeteringUnavailable
from meter.redis_client import RedisClient
from meter.scripts import register, run

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Kind = Literal["m", "n", "c"]  # message, notification, check (WebSocket upgrade)

MAX_USER_LEN = 256
MAX_KEY_LEN = 256
_CACHE_MAX = 100_000  # app ids / channels remembered as well-formed


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
    rid: str  # the charge record's id (meter.keys.record_id)
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


def billing_period(now_s: float) -> str:
    """The enterprise billing period (calendar month, UTC) as ``YYYYMM``."""
    t = time.gmtime(now_s)
    return f"{t.tm_year:04d}{t.tm_mon:02d}"


class _Pending(NamedTuple):
    arg: bytes
    key: str
    token: str
    rid: str
    future: asyncio.Future[Decision]


class Admitter:
    """Batches admissions into ``admit.lua`` calls; also refunds charged admissions."""

    def __init__(
        self,
        client: RedisClient,
        settings: Settings,
        *,
        clock: Clock = time.time,
        max_inflight: int = 4,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        """``on_batch`` is told the size of every ``admit.lua`` call (for metrics)."""
        self._client = client
        self._cluster = isinstance(client, RedisCluster)
        self._on_batch = on_batch
        self._settings = settings
        self._clock = clock
        self._admit = register(client, "admit")
        self._refund = register(client, "refund")
        # redis_durability=replicated: each call waits for replicas (meter/durability.py).
        self._replicated = (
            ReplicatedCalls(
                client,
                self._admit,
                replicas=settings.redis_replicas,
                wait_ms=int(settings.redis_timeout_s * 800),
            )
            if settings.redis_durability == "replicated"
            else None
        )
        self._max_inflight = max_inflight
        self._batch_max = settings.batch_max
        self._timeout = settings.redis_timeout_s
        self._pending: dict[str, list[_Pending]] = {}
        self._ws_of: dict[str, str] = {}  # app id -> workspace, for well-formed ids
        self._channels: set[str] = set()  # well-formed channel names
        self._scheduled = False
        self._queued = 0  # admissions waiting in _pending
        # A call goes out as soon as this many admissions wait (and a slot is free), else
        # at the end of the current loop pass.
        self._dispatch_at = settings.batch_dispatch_at
        self._inflight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._tokens = itertools.count(1)
        self._token_prefix = os.urandom(5).hex() + "."
        s = settings
        self._static = (
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
        # A charge record without a channel key lives as long as the bot may take, and
        # at least as long as its reservation (the sweeper refunds from the record).
        self._reserve_ms = int(s.refund_window_s * 1000)
        self._refund_ttl_ms = (
            max(
                int((s.upstream_connect_timeout_s + s.upstream_read_timeout_s) * 1000),
                self._reserve_ms,
            )
            + 60_000
        )
        self._tail: tuple[EncodableT, ...] = (
            self._refund_ttl_ms,
            s.idempotency_max_deliveries,
            self._reserve_ms,
        )

    def argv_head(self, now: float) -> list[EncodableT]:
        """``admit.lua``'s ARGV before the admissions (its ARGV[1..15]), as of ``now``;
        each admission then follows as one ``app\tchannel\tuser\tkey\ttoken\tkind``."""
        return [int(now * 1000), *self._static, billing_period(now), *self._tail]

    def new_token(self) -> str:
        """A token unique to this process and attempt."""
        return self._token_prefix + format(next(self._tokens), "x")

    async def admit(
        self,
        app_id: str,
        channel: str,
        user: str,
        key: str = "",
        *,
        kind: Kind = "m",
        token: str | None = None,
        digest: str = "",
    ) -> Decision:
        """Decide one message. Raises :class:`MeteringUnavailable` if Redis does not answer.

        ``key`` is the channel's idempotency key ("" when it has none); ``token`` names this
        attempt's charge record (generated when omitted; fail-open settlement passes the
        token of the original attempt so a charge that did happen is not taken twice).
        ``digest`` fingerprints a keyed message (method, path, body): a redelivery whose
        digest differs from the original's is another message under a reused key and is
        refused (``duplicate_delivery``); "" compares with nothing.
        """
        if digest and not digest.isalnum():
            raise ValueError("digest must be alphanumeric")
        token = token or self.new_token()
        ws = self._workspace(app_id, channel, user, key)
        if ws is None:
            return unknown_app(key, token)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Decision] = loop.create_future()
        # Encoded here, so a value Redis cannot take fails this message alone.
        arg = f"{app_id}\t{channel}\t{user}\t{key}\t{token}\t{kind}\t{digest}".encode()
        item = _Pending(arg, key, token, keys.record_id(channel, user, key, token), fut)
        batch = self._pending.get(ws)
        if batch is None:
            self._pending[ws] = [item]
        else:
            batch.append(item)
        self._queued += 1
        if self._queued >= self._dispatch_at and self._inflight < self._max_inflight:
            # Enough company already: waiting for the rest of this loop pass (possibly
            # hundreds of callbacks under load) would only add latency.
            self._dispatch()
        elif not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._dispatch)
        return await fut

    def _dispatch(self) -> None:
        self._scheduled = False
        pending = self._pending
        cap = self._batch_max
        while pending and self._inflight < self._max_inflight:
            # A call takes whole per-workspace batches of at most batch_max admissions
            # until it holds batch_max in all, so several calls overlap (Redis runs one
            # while this process prepares the next); the rest waits for a free slot. A
            # workspace with admissions left goes to the back, so none starves the others.
            send: list[tuple[str, list[_Pending]]] = []
            total = 0
            for ws in list(pending):
                items = pending.pop(ws)
                if len(items) > cap:
                    pending[ws] = items[cap:]
                    items = items[:cap]
                send.append((ws, items))
                total += len(items)
                if total >= cap:
                    break
            self._queued -= total
            self._inflight += 1
            task = asyncio.get_running_loop().create_task(self._send(send))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, send: list[tuple[str, list[_Pending]]]) -> None:
        try:
            now = self._clock()
            head = self.argv_head(now)
            if len(send) == 1 or self._cluster or self._replicated is not None:
                # On a cluster each workspace lives on its own master: separate calls keep
                # one failing master from failing (or stalling) the others' admissions.
                await asyncio.gather(*(self._call(head, ws, chunk) for ws, chunk in send))
            else:
                await self._pipelined(head, send)
        finally:
            self._inflight -= 1
            if self._pending and not self._scheduled:
                self._dispatch()

    async def _call(self, head: list[EncodableT], ws: str, chunk: list[_Pending]) -> None:
        if self._on_batch is not None:
            self._on_batch(len(chunk))
        args = [*head, *(p.arg for p in chunk)]
        try:
            if self._replicated is not None:
                call = self._replicated.call(keys.ws_prefix(ws), args)
            else:
                call = run(self._admit, self._client, [keys.ws_prefix(ws)], args)
            raw = await asyncio.wait_for(call, self._timeout)
        except Exception as exc:  # see _fail
            _fail(chunk, exc)
            return
        _resolve(chunk, raw)

    async def _pipelined(
        self, head: list[EncodableT], send: list[tuple[str, list[_Pending]]]
    ) -> None:
        """Several workspaces on one server: one pipelined round trip.

        redis-py's pipeline would run SCRIPT EXISTS on every execute, so NOSCRIPT is
        handled here instead.
        """
        sha = self._admit.sha
        if self._on_batch is not None:
            for _, chunk in send:
                self._on_batch(len(chunk))
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for ws, chunk in send:
                    pipe.execute_command(
                        "EVALSHA", sha, 1, keys.ws_prefix(ws), *head, *(p.arg for p in chunk)
                    )
                results = await asyncio.wait_for(pipe.execute(raise_on_error=False), self._timeout)
        except Exception as exc:  # see _fail
            for _, chunk in send:
                _fail(chunk, exc)
            return
        for (ws, chunk), res in zip(send, results, strict=True):
            if isinstance(res, NoScriptError):
                await self._call(head, ws, chunk)
            elif isinstance(res, Exception):
                _fail(chunk, res)
            else:
                _resolve(chunk, res)

    def _workspace(self, app_id: str, channel: str, user: str, key: str) -> str | None:
        """The app's workspace, or None for an app id or channel that cannot exist."""
        ws = self._ws_of.get(app_id)
        if ws is None:
            ws = keys.workspace_of(app_id)
            if ws is None:
                return None
            if len(self._ws_of) < _CACHE_MAX:
                self._ws_of[app_id] = ws
        if channel not in self._channels:
            if not keys.CHANNEL_RE.match(channel):
                return None
            if len(self._channels) < _CACHE_MAX:
                self._channels.add(channel)
        check_channel_text("user", user, MAX_USER_LEN)
        if key:
            check_channel_text("idempotency_key", key, MAX_KEY_LEN)
        return ws

    async def settle(
        self, app_id: str, channel: str, user: str, key: str, *, kind: Kind, token: str, at: float
    ) -> Decision:
        """Charge a message served while Redis was down (fail-open), as of ``at``.

        Decided at the time it was served (same billing session, same bucket) and outside
        the rate limits (it was served already). The original ``token`` makes a charge
        that did land before the outage a duplicate, so nothing is taken twice.
        """
        ws = self._workspace(app_id, channel, user, key)
        if ws is None:
            return unknown_app(key, token)
        head = self.argv_head(at)
        arg = f"{app_id}\t{channel}\t{user}\t{key}\t{token}\t{kind.upper()}".encode()
        loop = asyncio.get_running_loop()
        rid = keys.record_id(channel, user, key, token)
        pending = _Pending(arg, key, token, rid, loop.create_future())
        await self._call(head, ws, [pending])
        return await pending.future

    @property
    def clock(self) -> Clock:
        """The clock admissions are stamped with."""
        return self._clock

    async def refund(self, app_id: str, decision: Decision) -> bool:
        """Reverse a charged admission whose message was not served. Idempotent.

        Returns whether something was refunded (False for duplicates, uncharged messages,
        a second call, or a token whose record was already replaced by a retry).
        """
        if decision.duplicate or (decision.units == 0 and decision.code == 0):
            return False
        return await self.void(app_id, decision.rid, decision.token)

    async def void(self, app_id: str, rid: str, token: str) -> bool:
        """Refund the charge of attempt ``token`` if it exists (e.g. after an ambiguous
        timeout). ``rid`` is the charge record's id (:func:`meter.keys.record_id`); an
        empty ``token`` refunds it only while it is still reserved (the sweeper)."""
        ws = keys.workspace_of(app_id)
        if ws is None:
            return False
        now = self._clock()
        res = await run(
            self._refund,
            self._client,
            [keys.ws_prefix(ws)],
            [
                int(now * 1000),
                app_id,
                rid,
                token,
                self._settings.flush_bucket_s,
                billing_period(now),
                self._static[0],
                self._static[1],
            ],
        )
        return bool(res[0])

    async def close(self) -> None:
        """Wait for outstanding calls to finish."""
        while self._tasks or self._pending:
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            else:
                await asyncio.sleep(0)
        if self._replicated is not None:
            await self._replicated.close()


def _fail(chunk: list[_Pending], exc: BaseException) -> None:
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


def _resolve(chunk: list[_Pending], raw: list[Any]) -> None:
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
