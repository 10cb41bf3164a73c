"""Writing one claimed batch to the store: retry, quarantine, ack.

A database that fails is retried with exponential backoff (capped) while the claim is
kept; at shutdown retries stop ``shutdown_grace_s`` after the stop request. A batch the
store *rejects* (:class:`~meter.store.Rejected`), or whose content cannot even be read, is
moved to the dead-letter table after ``flush_quarantine_attempts`` tries and acked.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from meter.store import DeadLetter, Rejected, Store
from meter.usage.batches import Batch, build, raw_content
from meter.usage.claims import Claim, Claims
from meter.usage.flush_stats import KIND_NAMES, FlushStats, PassResult

log = logging.getLogger(__name__)
BatchHook = Callable[[Claim, Batch, bool], None]
QuarantineHook = Callable[[Claim, str], None]
_BAD_DATA = (ValueError, TypeError, KeyError)


@dataclass(frozen=True, slots=True)
class Rejection:
    """The store rejected a batch ``attempts`` times, the first at ``first_at``."""

    error: str
    attempts: int
    first_at: float


def describe(exc: BaseException, limit: int = 2000) -> str:
    """An error as one storable, loggable line (no NUL, bounded)."""
    text = f"{type(exc).__name__}: {exc}".replace("\x00", "\\x00")
    return text if len(text) <= limit else text[:limit] + "..."


class BatchWriter:
    """Writes and acks the claims of one :class:`~meter.usage.flusher.Flusher`."""

    def __init__(
        self,
        claims: Claims,
        store: Store,
        stats: FlushStats,
        *,
        clock: Callable[[], float],
        block_ms: int,
        attempts: int,
        backoff: tuple[float, float],
        shutdown_grace_s: float,
        on_batch: BatchHook | None = None,
        on_quarantine: QuarantineHook | None = None,
    ) -> None:
        self._claims = claims
        self._store = store
        self._stats = stats
        self._clock = clock
        self._block_ms = block_ms
        self._attempts = attempts
        self._backoff = backoff
        self._shutdown_grace = shutdown_grace_s
        self._on_batch = on_batch
        self._on_quarantine = on_quarantine
        self.stop: asyncio.Event | None = None  # set by Flusher.run: shutdown starts the grace
        self._give_up_at = float("inf")

    async def process(self, claim: Claim, res: PassResult) -> bool:
        """Write and ack one claim; ``False`` if it stays claimed (write failed)."""
        if claim.retaken:
            self._stats.retaken += 1
            log.warning("flusher: re-took unacked claim %s", claim.batch_id)
        try:
            batch = build(claim, self._block_ms)
        except _BAD_DATA as exc:
            # The content itself is unreadable: no retry can help.
            return await self._quarantine(claim, res, Rejection(describe(exc), 1, self._clock()))
        written = await self._write(claim, batch)
        if isinstance(written, Rejection):
            return await self._quarantine(claim, res, written)
        if written is None:
            res.failed += 1
            return False
        await self._claims.ack(claim)
        name = KIND_NAMES[claim.kind]
        if written:
            res.batches += 1
            res.rows += batch.rows
            self._stats.batches += 1
            self._stats.rows[name] += batch.rows
        else:
            res.duplicates += 1
            self._stats.duplicates += 1
        if self._on_batch is not None:
            self._on_batch(claim, batch, written)
        return True

    async def _quarantine(self, claim: Claim, res: PassResult, why: Rejection) -> bool:
        """Move a rejected claim to the dead-letter table and ack it; ``False`` if the
        store is not reachable for that either (the claim stays for a later pass)."""
        dead = DeadLetter(
            id=claim.batch_id,
            workspace_id=claim.ws,
            kind=claim.kind,
            bucket_start=claim.bucket * 1000,
            content=raw_content(claim),
            error=why.error,
            attempts=why.attempts,
            first_failed_at=int(why.first_at * 1000),
            last_failed_at=int(self._clock() * 1000),
        )
        try:
            fresh = await self._store.quarantine_flush_batch(dead)
        except Exception as exc:
            self._stats.write_errors += 1
            log.warning("flusher: cannot quarantine %s (%s); left claimed", dead.id, describe(exc))
            res.failed += 1
            return False
        await self._claims.ack(claim)
        if not fresh:  # resolved before (another flusher, or ours before a crash)
            res.duplicates += 1
            self._stats.duplicates += 1
            return True
        res.quarantined += 1
        self._stats.quarantined += 1
        log.error(
            "flusher: quarantined batch %s after %d attempt(s) to flush_dead_letters: %s",
            dead.id,
            dead.attempts,
            dead.error,
        )
        if self._on_quarantine is not None:
            self._on_quarantine(claim, dead.error)
        return True

    def giving_up(self, delay: float) -> bool:
        """At shutdown, retries end ``shutdown_grace_s`` after the stop request."""
        stopping = self.stop is not None and self.stop.is_set()
        if stopping and self._give_up_at == float("inf"):
            self._give_up_at = time.monotonic() + self._shutdown_grace
        return time.monotonic() + delay > self._give_up_at

    async def _write(self, claim: Claim, batch: Batch) -> bool | Rejection | None:
        """Commit the batch, retrying a failing database; ``None`` when giving up at
        shutdown, a :class:`Rejection` once the store refused the data itself
        ``flush_quarantine_attempts`` times."""
        delay, cap = self._backoff
        rejected, first_at = 0, 0.0
        while True:
            try:
                return await self._store.write_flush_batch(
                    claim.batch_id,
                    claim.ws,
                    claim.kind,
                    claim.bucket * 1000,
                    usage_rows=batch.usage,
                    session_rows=batch.sessions,
                    ledger_entries=batch.ledger,
                    outbox_events=batch.events,
                    # Events need no check: their ids make them exactly-once.
                    known_gen=claim.known if claim.kind != "ev" else None,
                )
            except (Rejected, *_BAD_DATA) as exc:
                rejected += 1
                first_at = first_at or self._clock()
                if rejected >= self._attempts:
                    return Rejection(describe(exc), rejected, first_at)
                self._stats.write_errors += 1
                log.warning(
                    "flusher: store rejected %s (attempt %d of %d): %s",
                    claim.batch_id,
                    rejected,
                    self._attempts,
                    describe(exc),
                )
                if self.giving_up(delay):
                    return None
                await asyncio.sleep(delay)
                delay = min(delay * 2, cap)
            except Exception as exc:
                self._stats.write_errors += 1
                if self.giving_up(delay):
                    log.warning("flusher: giving up on %s at shutdown: %r", claim.batch_id, exc)
                    return None
                log.warning(
                    "flusher: writing %s failed (%r); retry in %.2fs", claim.batch_id, exc, delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, cap)
