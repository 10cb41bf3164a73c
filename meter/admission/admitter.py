"""Admission: one atomic Redis step decides whether a message is served and what it costs.

Callers await :meth:`Admitter.admit` per message. Admissions that arrive while the event
loop is busy are gathered per workspace and sent as one ``admit.lua`` call each, so
concurrent messages share round trips; a call carries at most ``batch_max`` admissions
and at most ``max_inflight`` calls are outstanding at once.
How a call travels (a pipe answered by callback, or redis-py): :mod:`.calls`.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Callable

from redis.typing import EncodableT

from config import Settings
from meter.admission.calls import AdmitCalls, Batch
from meter.admission.decision import Decision, MessageKind, unknown_app
from meter.admission.refunds import Refunds
from meter.admission.targets import Targets
from meter.admission.ticket import Ticket, ticket
from meter.admission.wire import AdmitArgs, Pending, encode_args, fail
from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient
from meter.redis_layer.clock import HostStamp, RedisClock
from meter.timestamps import Clock


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
        self._clock = clock
        self._client = client
        # Awaited before a call while it is not synced (never stamp with the local clock).
        self._redis_clock = clock if isinstance(clock, RedisClock) else None
        self._syncs: set[asyncio.Task[None]] = set()
        self._calls = AdmitCalls(client, settings, on_batch)
        self._refunds = Refunds(client, settings, clock)
        self._drained: asyncio.Future[None] | None = None  # close() waits on it
        self._max_inflight = max_inflight
        self._batch_max = settings.batch_max
        self._timeout = settings.redis_timeout_s
        self._pending: dict[str, list[Pending]] = {}
        # The loop of the first admission, every later one's: asyncio.get_running_loop()
        # is a getpid() system call per message on Python 3.11 (an admitter serves one
        # process's loop).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._targets = Targets()
        self._scheduled = False
        self._queued = 0  # admissions waiting in _pending
        # A call goes out as soon as this many admissions wait (and a slot is free), else
        # at the end of the current loop pass.
        self._dispatch_at = settings.batch_dispatch_at
        self._inflight = 0  # calls sent and not yet answered
        self._tokens = itertools.count(1)
        self._token_format = os.urandom(5).hex() + ".%x"

    def argv_head(self, now: float) -> list[EncodableT]:
        """``admit.lua``'s ARGV before the admissions (:class:`AdmitHead`), as of ``now``;
        each admission then follows as one :class:`AdmitArgs`."""
        return list(self._calls.head(now))

    def new_token(self) -> str:
        """A token unique to this process and attempt."""
        return self._token_format % next(self._tokens)

    async def admit(
        self,
        app_id: str,
        channel: str,
        user: str,
        key: str = "",
        *,
        kind: MessageKind = "m",
        token: str | None = None,
        digest: str = "",
    ) -> Decision:
        """Decide one message. Raises :class:`MeteringUnavailable` if Redis does not answer.

        ``key`` is the channel's idempotency key ("" when it has none); ``token`` names this
        attempt's charge record (generated when omitted; fail-open settlement passes the
        token of the original attempt so a charge that did happen is not taken twice).
        ``digest`` fingerprints a keyed message (``gateway.fingerprint.keyed_digest``;
        ``<digest>L<legacy>`` records the first and takes either): a redelivery whose
        digest differs from the original's is another message under a reused key and is
        refused (``duplicate_delivery``); "" compares with nothing.
        """
        return await self.submit(
            app_id, channel, user, key, kind, token or self.new_token(), digest
        )

    def submit(
        self,
        app_id: str,
        channel: str,
        user: str,
        key: str,
        kind: MessageKind,
        token: str,
        digest: str,
    ) -> Ticket[Decision]:
        """:meth:`admit` as a future to await (its arguments all given): a caller that
        awaits it directly resumes with one frame fewer per message than through
        :meth:`admit`, and a Flow without a loop handle (:mod:`.ticket`). Raises what
        :meth:`admit` raises for a value that cannot be sent."""
        if digest and not digest.isalnum():
            raise ValueError("digest must be alphanumeric")
        loop = self._loop or self._bind()
        fut: Ticket[Decision] = Ticket(loop=loop)  # ticket(loop), minus a frame
        fut.waiter = None
        ws = self._targets.workspace(app_id, channel, user, key)
        if ws is None:
            fut.set_result(unknown_app(key, token))
            return fut
        arg = encode_args(app_id, channel, user, key, token, kind, digest)
        # tuple.__new__ is what Pending(...) does, minus a Python frame (once per message).
        rid = keys.record_id(channel, user, key, token)
        item = tuple.__new__(Pending, (arg, key, token, rid, fut, channel, user))
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
        return fut

    def _bind(self) -> asyncio.AbstractEventLoop:
        self._loop = asyncio.get_running_loop()
        return self._loop

    def _dispatch(self) -> None:
        self._scheduled = False
        pending = self._pending
        cap = self._batch_max
        while pending and self._inflight < self._max_inflight:
            # A call takes whole per-workspace batches of at most batch_max admissions
            # until it holds batch_max in all, so several calls overlap (Redis runs one
            # while this process prepares the next); the rest waits for a free slot. A
            # workspace with admissions left goes to the back, so none starves the others.
            send: list[tuple[str, list[Pending]]] = []
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
            rc = self._redis_clock
            if rc is None or rc.synced:
                self._send(send)
            else:
                task = asyncio.get_running_loop().create_task(self._send_synced(rc, send))
                self._syncs.add(task)
                task.add_done_callback(self._syncs.discard)

    async def _send_synced(self, clock: RedisClock, send: Batch) -> None:
        """``send`` once ``clock`` reads as Redis's (its admissions would otherwise be
        stamped with the local clock); not synced: :class:`MeteringUnavailable`."""
        try:
            await clock.ensure_synced(self._client, self._timeout)
        except BaseException as exc:
            for _, chunk in send:
                fail(chunk, exc, ambiguous=False)
            self._call_done()
            if not isinstance(exc, Exception):
                raise
            return
        self._send(send)

    def _send(self, send: Batch) -> None:
        try:
            self._calls.send(self._clock(), send, self._call_done)
        except Exception as exc:  # a waiter left unanswered would hang its request
            for _, items in send:
                fail(items, exc)  # ambiguous: part of it may have gone out
            asyncio.get_running_loop().call_soon(self._call_done)

    def _call_done(self) -> None:
        self._inflight -= 1
        if self._pending and not self._scheduled:
            self._dispatch()
        drained = self._drained
        if not (self._inflight or self._pending) and drained is not None and not drained.done():
            drained.set_result(None)

    async def settle(
        self,
        app_id: str,
        channel: str,
        user: str,
        key: str,
        *,
        kind: MessageKind,
        token: str,
        at: float,
        digest: str = "",
        host: HostStamp | None = None,
    ) -> Decision:
        """Charge a message served while Redis was down (fail-open), as of ``at``.

        Decided at the time it was served (same billing session, same bucket) and outside
        the rate limits (it was served already). The original ``token`` makes a charge
        that did land before the outage a duplicate, so nothing is taken twice. ``host``:
        ``at`` is the local wall clock's (served before the clock's first sync), taken
        with that stamp: moved to Redis's clock (:meth:`RedisClock.as_redis`).
        """
        ws = self._targets.workspace(app_id, channel, user, key)
        if ws is None:
            return unknown_app(key, token)
        if host is not None and (rc := self._redis_clock) is not None:
            await rc.ensure_synced(self._client, self._timeout)
            at = rc.as_redis(at, host)
        head = self.argv_head(at)
        arg = AdmitArgs(app_id, channel, user, key, token, kind, digest).settled().encode()
        loop = asyncio.get_running_loop()
        rid = keys.record_id(channel, user, key, token)
        pending = Pending(arg, key, token, rid, ticket(loop), channel, user)
        await self._calls.call(head, ws, [pending])
        return await pending.future

    @property
    def clock(self) -> Clock:
        """The clock admissions are stamped with."""
        return self._clock

    def host_stamp(self) -> HostStamp | None:
        """None unless the clock is a :class:`RedisClock` not synced yet (reading the
        local wall clock): then what a reading now is taken with (for :meth:`settle`)."""
        return None if self._redis_clock is None else self._redis_clock.host_stamp()

    async def refund(self, app_id: str, decision: Decision) -> bool:
        """One delivery of a message was not served: reverse its charge once none was or
        may still be (see :meth:`meter.admission.refunds.Refunds.refund`)."""
        return await self._refunds.refund(app_id, decision)

    async def void(self, app_id: str, rid: str, token: str) -> bool:
        """Count the failure of attempt ``token`` of record ``rid``, refunding the charge
        once every delivery failed (see :meth:`meter.admission.refunds.Refunds.void`)."""
        return await self._refunds.void(app_id, rid, token)

    async def close(self) -> None:
        """Wait for outstanding calls to finish (any number of callers may wait)."""
        while self._pending or self._inflight:
            # One future shared by every closer (a second one must not replace the first's,
            # which would then never be resolved); shielded so a cancelled closer leaves it.
            if self._drained is None or self._drained.done():
                self._drained = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._drained)
        await self._calls.close()
