"""Usage Redis holds that the store has not got yet, read consistently with the store.

A flush bucket goes live (``P:ag:<b>``) -> claimed (``P:c:ag:<b>:<gen>``) -> committed
(batch ``<ws>:ag:<b>:<gen>`` and its usage rows, in one store transaction) -> acked (gone
from Redis). "What the store holds" plus "what Redis has not flushed" counts each unit
once only if both reads describe the same moment; they are two reads of two systems, and
a flusher may move a bucket between them or during them. So :func:`read_with_unflushed`:

1. reads Redis first, in one script (``peek.lua``): live and claimed buckets and the id
   counter ``seq``. A claim made after this read gets a gen above ``seq``;
2. then reads the store in one snapshot (:meth:`Store.snapshot`): the caller's read
   (balances, ledger, series) and, in the same view, the batches resolved for each
   bucket step 1 saw;
3. counts a claim of step 1 as unflushed unless its batch is in that view (then the
   caller's read holds it; a quarantined batch is resolved too), and a live bucket unless
   the view holds a batch of that bucket with a gen above ``seq``: claimed after step 1
   and committed before step 2, it holds all step 1 saw live (a bucket's claims follow
   one another: the next is made only once the previous was acked).

A batch the view lacks was committed after it, so its usage is in step 1 (claimed, or
live and claimed later); one the view holds is skipped here. Whatever a flusher does
meanwhile, every unit step 1 saw is counted exactly once. Admissions after step 1 may
show in the store's part only (claimed and committed before step 2), never twice.
The events list (``P:ev``, claimed as bucket 0 of kind ``ev``) is taken the same way by
:func:`read_pending`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient
from meter.redis_layer.scripts import register
from meter.store import DeadLetter, Store
from meter.usage.batches import AggKey, fold_aggregates

T = TypeVar("T")
PAGE = 100
Rows = list[tuple[int, dict[AggKey, dict[str, Any]]]]  # (bucket_start_s, folded counters)


async def read_with_unflushed(
    store: Store,
    client: RedisClient,
    ws: str,
    lo_s: int,
    hi_s: int,
    read: Callable[[], Awaitable[T]],
) -> tuple[T, Rows]:
    """``read()`` of the store and the unflushed aggregates of buckets ``lo_s..hi_s``
    (inclusive), as of one moment (see the module doc). ``read`` runs inside the store
    snapshot: it must only read, and only through ``store``."""
    stored, pending = await read_pending(store, client, ws, lo_s, hi_s, read, events=False)
    return stored, pending.rows


@dataclass(slots=True)
class Pending:
    """What the store's view lacks: ``rows``, unflushed aggregates; ``events``, the
    entries of the events list (live, or a claim the view has not resolved); ``dead``,
    the workspace's dead letters (quarantined batches) in the view."""

    rows: Rows = field(default_factory=list)
    events: list[bytes] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)


async def _flushed(store: Store, ws: str, kind: str, bucket: int, gen: int, seq: int) -> bool:
    """Step 3: a claim is flushed if its own batch is in the view (written or
    quarantined); a live one if the view holds a batch of its bucket claimed after step 1."""
    resolved = await store.resolved_gens(ws, kind, bucket * 1000)
    return gen in resolved if gen else max(resolved, default=0) > seq


async def read_pending(
    store: Store,
    client: RedisClient,
    ws: str,
    lo_s: int,
    hi_s: int,
    read: Callable[[], Awaitable[T]],
    *,
    events: bool = True,
) -> tuple[T, Pending]:
    """:func:`read_with_unflushed`, and with ``events`` also the events list, taken by
    the same rules as one more bucket (``ev:0``: the live list ``P:ev`` and its claim),
    and the workspace's dead letters, in the same view. An event a Redis that lost data
    made again may be in the view already (under its ``once`` key): the caller drops
    those by the view's ledger (:mod:`meter.usage.pending`)."""
    peek = register(client, "peek")
    got = await peek(keys=keys.ws_keys(ws), args=[lo_s, hi_s, int(events)])
    seq = int(got[0])
    out = Pending()
    async with store.snapshot():
        stored = await read()
        for bucket, gen, items in got[1]:
            if not await _flushed(store, ws, "ag", int(bucket), int(gen), seq):
                out.rows.append((int(bucket), fold_aggregates(items)))
        for gen, items in got[2] if events else ():
            if not await _flushed(store, ws, "ev", 0, int(gen), seq):
                out.events.extend(items)
        if events:
            out.dead = await _dead_letters(store, ws)
    return stored, out


async def _dead_letters(store: Store, ws: str) -> list[DeadLetter]:
    out: list[DeadLetter] = []
    while True:
        after = (out[-1].bucket_start, out[-1].id) if out else None
        page = await store.dead_letters(ws, limit=PAGE, after=after)
        out.extend(page)
        if len(page) < PAGE:
            return out
