"""Replaying quarantined flush batches (``flush_dead_letters``) with the current code.

A dead letter keeps a claim's raw Redis content as :func:`meter.usage.batches.raw_content`
wrote it. A version that can read what an earlier one could not (a flusher of the
previous release meeting a billing-session entry of the next one during a rolling
upgrade) turns it back into the claim (:func:`claim_of`), builds the batch's rows as the
flusher does (:func:`meter.usage.batches.build`) and hands them to
``Store.replay_dead_letter``: rows merged by the flusher's own write path and the dead
letter deleted, in one transaction, so a dead letter is written once however many
replayers race for it. One the current code still cannot read, or whose rows the store
still rejects, stays where it is and is reported.

``creditgate flush --replay-dead-letters`` replays every dead letter once
(:func:`replay_all`); each flusher pass also replays one page of them (:class:`AutoReplay`),
so a rolling upgrade heals itself once the new flushers run.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass, field
from typing import Any

import orjson

from meter.store import DeadLetter, DuplicateKey, MissingReference, Rejected, Store, StoreError
from meter.usage.batch_writer import describe
from meter.usage.batches import build
from meter.usage.claims import KINDS, Claim

log = logging.getLogger(__name__)
# What the store says of the rows themselves: trying them again cannot help.
_DATA_ERRORS = (Rejected, DuplicateKey, MissingReference)
PAGE = 100


def _item(v: Any) -> bytes:
    if isinstance(v, str):
        return v.encode()
    if isinstance(v, dict) and set(v) == {"base64"}:
        return base64.b64decode(v["base64"], validate=True)
    raise ValueError(f"unreadable item {v!r:.80}")


def claim_of(dead: DeadLetter) -> Claim:
    """The claim whose raw content ``dead`` holds (ValueError when it is not one)."""
    ws, kind, bucket, gen = dead.id.rsplit(":", 3)
    body = orjson.loads(dead.content)
    if (ws, kind) != (dead.workspace_id, dead.kind) or body.get("kind") != kind:
        raise ValueError(f"dead letter {dead.id} does not match its content")
    if kind not in KINDS or int(bucket) * 1000 != dead.bucket_start:
        raise ValueError(f"dead letter {dead.id}: unknown kind or bucket")
    if kind == "ev":
        items = [_item(v) for v in body["entries"]]
    else:
        items = [_item(v) for pair in body["fields"] for v in pair]
    return Claim(ws, kind, int(bucket), int(gen), False, items)


@dataclass(slots=True)
class ReplayReport:
    """``replayed``: written now; ``taken``: another replayer wrote them first;
    ``stuck``: id -> why it stays (unreadable, or the store still rejects it)."""

    replayed: list[str] = field(default_factory=list)
    taken: list[str] = field(default_factory=list)
    stuck: dict[str, str] = field(default_factory=dict)


async def replay_one(store: Store, dead: DeadLetter, block_ms: int, report: ReplayReport) -> None:
    """Replay one dead letter into ``report``: written, taken by another replayer, or
    stuck (unreadable, or rows the store refuses). A store that fails otherwise raises."""
    try:
        batch = build(claim_of(dead), block_ms)
        done = await store.replay_dead_letter(
            dead,
            usage_rows=batch.usage,
            session_rows=batch.sessions,
            ledger_entries=batch.ledger,
            outbox_events=batch.events,
        )
    except StoreError as exc:
        if not isinstance(exc, _DATA_ERRORS):
            raise  # the store failed: the dead letter waits for a later try
        report.stuck[dead.id] = describe(exc)
        log.warning("flusher: dead letter %s stays: %s", dead.id, report.stuck[dead.id])
        return
    except Exception as exc:  # its content: unreadable by this version
        report.stuck[dead.id] = describe(exc)
        log.warning("flusher: dead letter %s stays: %s", dead.id, report.stuck[dead.id])
        return
    if done:
        report.replayed.append(dead.id)
        log.warning("flusher: replayed dead letter %s (%d rows)", dead.id, batch.rows)
    else:
        report.taken.append(dead.id)


async def replay_all(store: Store, block_ms: int, *, page: int = PAGE) -> ReplayReport:
    """Replay every dead letter once, oldest bucket first."""
    report = ReplayReport()
    after: tuple[int, str] | None = None
    while True:
        batch = await store.dead_letters(limit=page, after=after)
        for dead in batch:
            await replay_one(store, dead, block_ms, report)
        if len(batch) < page:
            return report
        after = (batch[-1].bucket_start, batch[-1].id)


class AutoReplay:
    """One page of dead letters per flusher pass, a cursor going round the table; one
    that stays is not tried again by this process (its code will not read it better).
    An empty table costs one indexed read per pass."""

    def __init__(self, store: Store, block_ms: int, *, page: int = PAGE) -> None:
        self._store = store
        self._block_ms = block_ms
        self._page = page
        self._after: tuple[int, str] | None = None
        self.stuck: dict[str, str] = {}

    async def step(self) -> ReplayReport:
        """Replay the next page; a store that fails is logged and tried next pass."""
        report = ReplayReport()
        try:
            batch = await self._store.dead_letters(limit=self._page, after=self._after)
            for dead in batch:
                if dead.id not in self.stuck:
                    await replay_one(self._store, dead, self._block_ms, report)
        except Exception as exc:
            log.warning("flusher: cannot replay dead letters now: %s", describe(exc))
            return report
        finally:
            self.stuck.update(report.stuck)
        full = len(batch) == self._page
        self._after = (batch[-1].bucket_start, batch[-1].id) if full else None
        return report
