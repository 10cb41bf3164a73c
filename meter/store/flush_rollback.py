"""A flush batch of a bucket the store already holds under a claim Redis lost.

Redis that loses its latest writes (a failover to a replica that had not received them, a
restart from an older RDB/AOF) may lose the claim of a bucket whose batch the store had
already committed: the bucket is live again, and the next claim takes it under a new gen,
so the batch id differs and the exactly-once check of ``flush_batches`` cannot see it.

The flusher tells the store ``known_gen`` (:mod:`meter.usage.claims`): every batch of this
bucket that Redis's own history claimed has a gen at or below it. A batch of the bucket
above it (not this one) was claimed in a history Redis lost. What Redis holds for the bucket
then is what it held at the moment it lost its writes, which that lost claim took whole
into its batch, plus whatever was written since. So, in the same transaction:

* usage rows keep, per row key and counter, only what exceeds the store's total of the
  bucket (never below 0; a negative counter, refunds netted out, is dropped). Nothing is
  counted twice. Exact when nothing was written to the bucket after Redis lost its
  writes (a bucket is claimed once closed); otherwise what was written since is
  undercounted by at most what the store holds beyond the part Redis kept, and logged;
* session rows are written with ``seq`` 0: a snapshot Redis kept is never newer than the
  one the store holds, so it must not replace its amount (``end_ms`` and ``messages`` still
  take the maximum; a session started since has an id of its own and is written whole).

Two commits of the same bucket from both histories that are in flight at the same moment
(on PostgreSQL, neither seeing the other) are not caught.
"""

from __future__ import annotations

import logging
from typing import Any

from meter.store.db import Conn
from meter.store.flush_merge import USAGE_COLUMNS, USAGE_COUNTERS, USAGE_KEY

log = logging.getLogger(__name__)
Rows = tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]
_KEY = len(USAGE_KEY)


def gen_of(batch_id: str) -> int | None:
    """The gen of a batch id ``<ws>:<kind>:<bucket>:<gen>`` (``None``: another form)."""
    tail = batch_id.rpartition(":")[2]
    return int(tail) if tail.isdigit() else None


async def lost_gens(
    c: Conn, batch_id: str, workspace_id: str, kind: str, bucket_start: int, known_gen: int
) -> list[int]:
    """Gens of the bucket's other batches above ``known_gen``: claims Redis lost."""
    rows = await c.fetch(
        "SELECT id FROM flush_batches WHERE workspace_id = ? AND bucket_start = ? "
        "AND kind = ? AND id <> ?",
        workspace_id,
        bucket_start,
        kind,
        batch_id,
    )
    gens = (gen_of(str(r["id"])) for r in rows)
    return sorted(g for g in gens if g is not None and g > known_gen)


async def after_lost_claims(
    c: Conn,
    batch_id: str,
    workspace_id: str,
    kind: str,
    bucket_start: int,
    known_gen: int,
    rows: Rows,
) -> Rows:
    """``rows`` (usage, sessions as merged column tuples) less what the store already
    holds of this bucket, if a claim of it was lost (see the module doc)."""
    lost = await lost_gens(c, batch_id, workspace_id, kind, bucket_start, known_gen)
    if not lost:
        return rows
    usage, sessions = rows
    kept = await _beyond_store(c, workspace_id, bucket_start, usage) if usage else []
    dropped = [0] * len(USAGE_COUNTERS)
    for row in usage:
        for i, v in enumerate(row[_KEY:]):
            dropped[i] += v
    for row in kept:
        for i, v in enumerate(row[_KEY:]):
            dropped[i] -= v
    log.error(
        "flush batch %s: redis lost the claim(s) %s of this bucket after the store committed "
        "them (failover or restart from older data); kept only what exceeds the store: "
        "%d of %d usage row(s), %d session snapshot(s) that never replace a stored amount; "
        "not counted again: %s",
        batch_id,
        lost,
        len(kept),
        len(usage),
        len(sessions),
        {n: d for n, d in zip(USAGE_COUNTERS, dropped, strict=True) if d},
    )
    return kept, [(*s[:-1], 0) for s in sessions]


async def _beyond_store(
    c: Conn, workspace_id: str, bucket_start: int, usage: list[tuple[Any, ...]]
) -> list[tuple[Any, ...]]:
    held = await c.fetch(
        f"SELECT {', '.join(USAGE_COLUMNS)} FROM usage_buckets "
        "WHERE workspace_id = ? AND bucket_start = ?",
        workspace_id,
        bucket_start,
    )
    totals = {tuple(r[k] for k in USAGE_KEY): [int(r[n]) for n in USAGE_COUNTERS] for r in held}
    out = []
    for row in usage:
        have = totals.get(tuple(row[:_KEY]), [0] * len(USAGE_COUNTERS))
        counters = [max(0, int(v) - max(h, 0)) for v, h in zip(row[_KEY:], have, strict=True)]
        if any(counters):
            out.append((*row[:_KEY], *counters))
    return out
