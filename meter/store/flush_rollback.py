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
* a session row replaces the stored snapshot of its session only if it has more messages
  (the session went on since); otherwise it is written with ``seq`` 0, so the snapshot the
  store holds keeps its amount (``end_ms`` and ``messages`` still take the maximum). A
  session started since has an id of its own and is written whole. A session that went on
  keeps the amount Redis counted for it: the charges only the lost history saw are in the
  usage rows, not in that session's record.

Each of two batches of the bucket, one from each history, sees the other if that one
committed first (both were claimed above the same ``known_gen``), so whichever commits
second keeps only what exceeds the first. On PostgreSQL the check takes a transaction
advisory lock on the bucket, after this batch's id is inserted: two such commits in flight
at the same moment are serialised, and the second's check (a new statement under READ
COMMITTED) sees the first. SQLite runs one write transaction at a time.
"""

from __future__ import annotations

import logging
from typing import Any

from meter.store.db import Conn
from meter.store.flush_merge import SESSION_COLUMNS, USAGE_COLUMNS, USAGE_COUNTERS, USAGE_KEY

log = logging.getLogger(__name__)
Rows = tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]
_KEY = len(USAGE_KEY)
_SID, _MSGS = SESSION_COLUMNS.index("id"), SESSION_COLUMNS.index("messages")
_CHUNK = 500


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
    *,
    advisory_lock: bool = False,
) -> Rows:
    """``rows`` (usage, sessions as merged column tuples) less what the store already
    holds of this bucket, if a claim of it was lost (see the module doc).
    ``advisory_lock``: PostgreSQL's, on the bucket, for the rest of the transaction."""
    if advisory_lock:
        await c.fetch(
            "SELECT pg_advisory_xact_lock(hashtext(?))", f"{workspace_id}:{kind}:{bucket_start}"
        )
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
        "%d of %d usage row(s), %d session snapshot(s) checked against the store's; "
        "not counted again: %s",
        batch_id,
        lost,
        len(kept),
        len(usage),
        len(sessions),
        {n: d for n, d in zip(USAGE_COUNTERS, dropped, strict=True) if d},
    )
    return kept, await _sessions_gone_on(c, workspace_id, sessions) if sessions else []


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


async def _sessions_gone_on(
    c: Conn, workspace_id: str, sessions: list[tuple[Any, ...]]
) -> list[tuple[Any, ...]]:
    """Session rows (:data:`SESSION_COLUMNS`), ``seq`` 0 unless the row has more messages
    than the store's snapshot of its session (then above that snapshot's)."""
    held: dict[str, tuple[int, int]] = {}
    for i in range(0, len(sessions), _CHUNK):
        ids = [row[_SID] for row in sessions[i : i + _CHUNK]]
        for r in await c.fetch(
            "SELECT id, messages, seq FROM billing_sessions WHERE workspace_id = ? "
            f"AND id IN ({', '.join('?' for _ in ids)})",
            workspace_id,
            *ids,
        ):
            held[str(r["id"])] = int(r["messages"]), int(r["seq"])
    out = []
    for row in sessions:
        messages, seq = held.get(row[_SID], (-1, 0))
        # Newer: above the stored seq (the store's batch may have a higher gen).
        newer = max(int(row[-1]), seq + 1) if int(row[_MSGS]) > messages else 0
        out.append((*row[:-1], newer))
    return out
