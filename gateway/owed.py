"""Admissions Redis could not decide, settled once it answers again.

Two lists, worked off by one background task with a back-off:

* **debts** (fail mode ``open``): messages served without a decision. Each is settled with
  ``admitter.settle(..., token=<the original attempt's token>)``, so a charge that did reach
  Redis before the error is found by its idempotency record and not taken twice. A keyed
  debt carries its message's digest: a redelivery of it is charged once, another message
  under the same key (or one delivery too many) is charged as a message of its own. A debt
  whose app is unknown to Redis (e.g. Redis restarted empty and the projection is not
  rebuilt yet) stays owed until it is. A debt is charged whatever the app's settings
  (suspension, licence, free credits denied: a later change does not undo the service)
  and credit now: what the balances cannot pay is taken from the pool below zero (the
  next payment to the pool covers it; meanwhile it counts against every app's credit,
  blocking as much of an app's own funds), logged and counted (not when replayed: the
  charge record does not keep the owed part, the replay reports none). A shadow-mode
  app's debt it cannot pay is served uncharged, as shadow mode does.
* **voids** (both modes): charges that may exist although the message was not served
  (an ambiguous Redis error answered 503, or a refund that could not reach Redis).

Nothing is forgiven silently. Both lists are journaled (:mod:`meter.admission.journal`,
``owed-*.log`` in ``state_dir``): every debt and void is written before it is relied on,
and its settlement after; the journal is fsync'd in the background, emptied whenever
both lists are, rewritten with what they hold once grown. A process that dies leaves its
journal; the next one to start takes it over (:meth:`Owed.recover`) and settles what it
lists. Settling a debt twice (a crash right after settling, before the journal says so)
is harmless while the attempt's charge record lives: settlement reuses the original
attempt's token, so Redis finds its charge record and charges nothing more. A
settlement's record lives the idempotency window (``IDEMPOTENCY_TTL_S``, 24 h by
default), not the refund window of other unkeyed records: only a host crash (the settled
line written but not yet on disk; a killed process's writes survive) followed by a
takeover more than that later charges the debt twice. Both lists are bounded by
``limit`` (the voids of forgiven debts by twice that); when full, :meth:`owe` returns
False and the message is refused as in fail mode ``closed``, a void is dropped (logged:
the charge may stay).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from redis.exceptions import RedisError

from gateway.debt_settlement import settle_debt
from gateway.debts import Debt, Void, journal_lines, read_journal, rewritten, void_line
from gateway.metrics import Metrics
from meter.admission.admitter import Admitter
from meter.admission.journal import Journal, take_over_dead
from meter.errors import MeteringUnavailable
from meter.redis_layer.keys import record_id

log = logging.getLogger(__name__)
_UNAVAILABLE = (MeteringUnavailable, RedisError, OSError, TimeoutError)


JOURNAL_KIND = "owed"
COMPACT_BYTES = 16 << 20  # a journal past this, and twice its last rewrite, is rewritten


class Owed:
    """The process's unsettled admissions and the task that settles them."""

    def __init__(
        self,
        admitter: Admitter,
        metrics: Metrics,
        *,
        timeout: float,
        chunk: int = 256,
        limit: int = 100_000,
        retry_s: float = 0.5,
        max_retry_s: float = 5.0,
        state_dir: str | Path | None = None,
    ) -> None:
        """``state_dir``: where the journal lives (none: memory only, for tests)."""
        self._journal = Journal(state_dir, JOURNAL_KIND) if state_dir is not None else None
        self._compacted = 0  # the journal's size when last rewritten
        self._syncing = False
        self._admitter = admitter
        self._metrics = metrics
        self._timeout = timeout
        self._chunk = chunk
        self._limit = limit
        self._retry_s = retry_s
        self._max_retry_s = max_retry_s
        self.debts: list[Debt] = []
        self.voids: list[Void] = []
        self._wake = asyncio.Event()
        self._settling = asyncio.Lock()
        self._forgiven: set[str] = set()  # tokens forgiven during the pass's chunk
        self._rekeyed: dict[str, None] = {}  # the latest debts settled without their key

    def __len__(self) -> int:
        return len(self.debts) + len(self.voids)

    def owe(self, debt: Debt) -> bool:
        """Remember a served message; False when the list is full (refuse it instead)."""
        if len(self.debts) >= self._limit:
            return False
        self._log_all(journal_lines(debt))
        self.debts.append(debt)
        self._changed()
        return True

    def void_later(self, app_id: str, rid: str, token: str, *, settled: str = "") -> None:
        """Void the charge of attempt ``token`` (if any) when Redis answers again;
        ``rid`` is its charge record's id (:func:`meter.redis_layer.keys.record_id`).
        ``settled``: the token of a debt dropped with it, journaled in the same write
        (a kill between the two left neither the debt nor its void owed); its void takes
        the debt's place, kept up to twice the limit (dropped, a charge that landed
        stood for a message the bot failed)."""
        lines = [f"s {settled}"] if settled else []
        if len(self.voids) >= self._limit * (2 if settled else 1):
            log.error("void list full: charge %s of app %s may stay", token, app_id)
            if lines:
                self._log_all(lines, or_log=True)
            return
        void = Void(app_id, rid, token)
        self._log_all([*lines, void_line(void)], or_log=True)
        self.voids.append(void)
        self._changed()

    def forgive(self, debt: Debt) -> None:
        """The served message failed after all: drop it, and void any charge it left
        (settled without its key, see :func:`gateway.debt_settlement.settle_debt`: that
        charge's record; it stood when the void named the key's)."""
        try:
            self.debts.remove(debt)
        except ValueError:
            settled = ""  # settled already: its "s" line is written
        else:
            settled = debt.token
            if self._settling.locked():  # not to be charged by the pass if not sent yet
                self._forgiven.add(debt.token)
        key = "" if debt.token in self._rekeyed else debt.key
        rid = record_id(debt.channel, debt.user, key, debt.token)
        self.void_later(debt.app_id, rid, debt.token, settled=settled)

    def _log_all(self, lines: list[str], *, or_log: bool = False) -> None:
        """``lines`` in one write: a killed process wrote all of them or none. ``or_log``:
        a failed write (full disk) is logged, not raised (it failed every settling pass)."""
        if self._journal is not None:
            write = self._journal.append_or_log if or_log else self._journal.append_all
            write(lines)
            if not self._syncing:
                self._syncing = True
                asyncio.get_running_loop().call_soon(self._sync)

    def _sync(self) -> None:
        """fsync in a thread, at most one at a time (a group commit of what came since)."""
        journal = self._journal
        if journal is None:
            return

        def done(_: object) -> None:
            self._syncing = False

        fut = asyncio.get_running_loop().run_in_executor(None, journal.sync)
        fut.add_done_callback(done)

    def recover(self) -> int:
        """Take over the journals of dead processes: owe what they owed; the count."""
        if self._journal is None:
            return 0
        n = 0
        for dead in take_over_dead(self._journal.path.parent, JOURNAL_KIND):
            debts, voids = read_journal(dead.lines)
            for d in debts:
                self._log_all(journal_lines(d))
                self.debts.append(d)
            for v in voids:
                self._log_all([void_line(v)])
                self.voids.append(v)
            n += len(debts) + len(voids)
            dead.done()
        if n:
            log.warning("took over %d unsettled admissions of stopped processes", n)
            self._changed()
        return n

    def _changed(self) -> None:
        self._metrics.unsettled.set(len(self))
        self._wake.set()

    async def run(self) -> None:
        """Settle forever (cancel to stop)."""
        delay = self._retry_s
        while True:
            await self._wake.wait()
            self._wake.clear()
            if await self.settle():
                delay = self._retry_s
                if self:  # work left that cannot be settled yet (unknown apps)
                    await asyncio.sleep(delay)
                    self._wake.set()
            else:
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._max_retry_s)
                self._wake.set()

    async def settle(self) -> bool:
        """One pass over both lists; False when Redis did not answer."""
        async with self._settling:
            return await self._settle_pass()

    async def _settle_pass(self) -> bool:
        try:
            while self.debts:
                self._forgiven.clear()  # what forgive() took out before is not in the chunk
                chunk = self.debts[: self._chunk]
                # One at a time, in the order served: a conversation's messages must meet
                # its billing session in order.
                results = [await self._settle_one(d) for d in chunk]
                for d, keep in zip(chunk, results, strict=True):
                    if not keep:
                        self._log_all([f"s {d.token}"], or_log=True)
                # What is left of the chunk: forgive() may have taken some of it out
                # meanwhile (owe() only appends), so the rest is the list's head, shorter
                # than the chunk (deleting the chunk's length dropped a later debt).
                taken = {d.token for d in chunk}
                n = 0
                while n < len(self.debts) and self.debts[n].token in taken:
                    n += 1
                left = {d.token for d in self.debts[:n]}
                del self.debts[:n]
                self.debts.extend(
                    d for d, keep in zip(chunk, results, strict=True) if keep and d.token in left
                )
                if all(results):
                    break
            while self.voids:
                v = self.voids[0]
                if await asyncio.wait_for(
                    self._admitter.void(v.app_id, v.rid, v.token), self._timeout
                ):
                    self._metrics.refunds.inc()
                self.voids.pop(0)
                self._log_all([f"v {v.token}"], or_log=True)
        except _UNAVAILABLE as exc:
            log.warning("settlement waits for redis (%d owed): %r", len(self), exc)
            return False
        finally:
            self._forgiven.clear()
            self._metrics.unsettled.set(len(self))
        if not self and self._journal is not None and self._journal.size:
            with contextlib.suppress(OSError):  # all settled (replayed as such if kept)
                self._journal.truncate()
        await self._compact()
        return True

    async def _compact(self) -> None:
        """Rewrite a grown journal with only what is owed (emptied only when nothing is)."""
        old = self._journal
        if old is None or old.size <= max(COMPACT_BYTES, 2 * self._compacted):
            return
        new = rewritten(old, JOURNAL_KIND, self.debts, self.voids)
        self._compacted = (new or old).size  # not written: tried again at twice the size
        if new is None:
            return
        self._journal = new  # what comes from now on is written there
        with contextlib.suppress(OSError):  # written: the kernel has it (fsync: host crash)
            try:
                await asyncio.get_running_loop().run_in_executor(None, new.sync)
            finally:  # on disk before the old one goes (a kill before: both taken over)
                old.close(remove=True)

    async def _settle_one(self, d: Debt) -> bool:
        """Settle a debt of the chunk; True when it stays owed. One forgiven before its
        turn is not sent (charged, then voided: a settlement left on a timeout could land
        after its void and stand)."""
        if d.token in self._forgiven:
            return False
        keep = await settle_debt(self._admitter, self._metrics, d, self._timeout, self._rekeyed)
        if d.token in self._forgiven and d.token in self._rekeyed:
            # Forgiven while on its way: the void named the key's record, another message's
            # (nothing to void; its "v" line, applied first, dropped this one's): replaced.
            self.voids = [v for v in self.voids if v.token != d.token]
            self.void_later(d.app_id, record_id(d.channel, d.user, "", d.token), d.token)
        while len(self._rekeyed) > self._limit:
            del self._rekeyed[next(iter(self._rekeyed))]
        return keep

    async def close(self, grace_s: float) -> None:
        """A last settlement attempt; logs what is lost if Redis still does not answer."""
        if self:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.settle(), grace_s)
        if self:
            where = "kept in " + str(self._journal.path) if self._journal else "lost"
            log.error(
                "shutting down with %d unsettled debts and %d pending voids (%s)",
                len(self.debts),
                len(self.voids),
                where,
            )
        if self._journal is not None:
            self._journal.close(remove=not self)
