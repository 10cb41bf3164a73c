"""The gateway's side of admission: fail modes, refunds and metrics around the Admitter.

:meth:`Meter.admit` either returns an :class:`Admission` (serve the message) or raises
:class:`~gateway.problems.Refused` / a 503 :class:`~gateway.problems.Problem`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Literal, NamedTuple

from redis.exceptions import RedisError

from gateway.debts import Debt
from gateway.metrics import Metrics
from gateway.owed import Owed
from gateway.problems import Refused, metering_unavailable
from meter.admission.admitter import Admitter
from meter.admission.decision import Decision, MessageKind
from meter.admission.reservations import Confirmations
from meter.admission.wire import MAX_KEY_LEN, MAX_USER_LEN, check_channel_text
from meter.errors import MeteringUnavailable
from meter.redis_layer.keys import record_id

log = logging.getLogger(__name__)
Failure = Literal["connect", "timeout", "5xx"]


class Admission(NamedTuple):
    """A message cleared to be served: decided by Redis, or owed (fail-open)."""

    app_id: str
    decision: Decision | None
    debt: Debt | None


class Admissions(NamedTuple):
    """The messages of one delivery (a batch), each admitted on its own, served together:
    what is done to the delivery (forwarded, failed, withdrawn) is done to each."""

    app_id: str
    parts: tuple[Admission, ...]


Charge = Admission | Admissions  # what one request was admitted as


class Meter:
    """Admits messages and reverses the charge of those the bot failed to serve."""

    def __init__(
        self,
        admitter: Admitter,
        owed: Owed,
        metrics: Metrics,
        *,
        fail_open: bool,
        refund_on: frozenset[str],
        timeout: float,
        confirmations: Confirmations | None = None,
    ) -> None:
        self._admitter = admitter
        self._confirmations = confirmations
        self._owed = owed
        self._metrics = metrics
        self._fail_open = fail_open
        self._refund_on = refund_on
        self._timeout = timeout
        self._observe = metrics.admission_seconds.observe

    async def admit(
        self,
        app_id: str,
        channel: str,
        user: str,
        key: str,
        kind: MessageKind = "m",
        *,
        digest: str = "",
    ) -> Admission:
        """``digest`` fingerprints a keyed message (see ``meter.admission``)."""
        token = self._admitter.new_token()
        t0 = time.perf_counter()
        try:
            dec = await self._admitter.submit(app_id, channel, user, key, kind, token, digest)
        except MeteringUnavailable as exc:
            self._metrics.redis_errors.inc()
            if self._fail_open:
                # Before the clock's first sync "at" is the host's: settled by Redis's.
                host = self._admitter.host_stamp()
                at = self._admitter.clock()
                debt = Debt(app_id, channel, user, key, token, kind, at, digest, host)
                if self._owed.owe(debt):
                    return Admission(app_id, None, debt)
            elif exc.ambiguous:
                self._owed.void_later(app_id, record_id(channel, user, key, token), token)
            self._metrics.refused("metering_unavailable")
            raise metering_unavailable() from None
        self._observe(time.perf_counter() - t0)
        if dec.code:
            self._metrics.refused(dec.reason or "unknown")
            raise Refused.of(dec)
        if dec.shadowed:
            self._metrics.shadow_refusals.labels(dec.shadow_reason or "unknown").inc()
        if dec.units:
            self._metrics.charge(dec.free, dec.app, dec.pool)
            if dec.new_session:
                self._metrics.sessions_started.inc()
        return tuple.__new__(Admission, (app_id, dec, None))  # Admission(...) minus a frame

    async def admit_all(
        self,
        app_id: str,
        channel: str,
        messages: Sequence[tuple[str, str]],
        digests: Sequence[str],
    ) -> Admissions:
        """Each of ``messages`` (user, key) admitted as :meth:`admit` would, with its
        ``digests`` entry, all or none:
        if any is refused (or Redis fails it), those admitted are refunded and its refusal
        (the first, in the delivery's order) is raised. Submitted together, they share the
        workspace's ``admit.lua`` calls, decided in order (a user's second message inside
        the session its first opened). Every user and key is checked first: a malformed
        one (:class:`~meter.errors.InvalidChannelUser`, 400) admits nothing, where each
        message admitted then given back would still count in the app's rate windows
        (which a refund does not reverse) and, failing open, in the owed debts."""
        for user, key in messages:
            check_channel_text("user", user, MAX_USER_LEN)
            if key:
                check_channel_text("idempotency_key", key, MAX_KEY_LEN)
        got = await asyncio.gather(
            *(
                self.admit(app_id, channel, u, k, digest=d)
                for (u, k), d in zip(messages, digests, strict=True)
            ),
            return_exceptions=True,
        )
        parts = tuple(a for a in got if isinstance(a, Admission))
        for outcome in got:
            if isinstance(outcome, BaseException):
                await self.withdrawn(Admissions(app_id, parts))  # never forwarded
                raise outcome
        return Admissions(app_id, parts)

    async def check(self, app_id: str, channel: str, user: str) -> None:
        """Could the app be served now (suspension, licence, the rate limits, credit)?
        Charges and counts nothing; raises :class:`Refused` or 503 like :meth:`admit`
        (a WebSocket upgrade)."""
        try:
            dec = await self._admitter.admit(app_id, channel, user, "", kind="c")
        except MeteringUnavailable:
            self._metrics.redis_errors.inc()
            if self._fail_open:
                return
            raise metering_unavailable() from None
        if dec.code:
            raise Refused.of(dec)

    def forwarded(self, admission: Charge | None) -> None:
        """The message's request is with the bot: its charge stands (see
        :mod:`meter.admission.reservations`). Call right after handing it to the socket."""
        if admission is None or self._confirmations is None:
            return
        if isinstance(admission, Admissions):  # one journal write for the batch
            rids = [
                p.decision.rid
                for p in admission.parts
                if p.decision is not None and p.decision.units and not p.decision.duplicate
            ]
            self._confirmations.forwarded_all(admission.app_id, rids)
            return
        dec = admission.decision
        if dec is not None and dec.units and not dec.duplicate:
            self._confirmations.forwarded(admission.app_id, dec.rid)

    async def failed(self, admission: Charge, failure: Failure) -> None:
        """The bot failed to serve an admitted message: refund it per ``refund_on``.

        A redelivery's failure is reported too: the charge of its key is refunded only
        when every delivery of it failed (``refund.lua``)."""
        if failure not in self._refund_on:
            self.forwarded(admission)  # kept charged by choice: not for the sweeper
            return
        await self.withdrawn(admission)

    async def withdrawn(self, admission: Charge) -> None:
        """The admitted message never reached the bot (a WebSocket's bot connection was
        dropped with it still buffered): refunded, whatever ``refund_on`` says."""
        if isinstance(admission, Admissions):  # any order: refund.lua sorts sessions out
            await asyncio.gather(*(self.withdrawn(part) for part in admission.parts))
            return
        if admission.debt is not None:
            self._owed.forgive(admission.debt)
            return
        dec = admission.decision
        # bsid: admitted inside a paid session, it no longer counts there (refund.lua).
        if dec is None or not (dec.units or dec.duplicate or dec.bsid):
            return
        try:
            if await asyncio.wait_for(self._admitter.refund(admission.app_id, dec), self._timeout):
                self._metrics.refunds.inc()
        except (RedisError, OSError, TimeoutError, MeteringUnavailable) as exc:
            log.warning("refund of %s deferred: %r", dec.token, exc)
            self._metrics.redis_errors.inc()
            self._owed.void_later(admission.app_id, dec.rid, dec.token)
