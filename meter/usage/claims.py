"""Claim and ack of flush buckets in Redis (``claim.lua`` / ``ack.lua``).

A bucket moves through three states, each change one atomic script:

1. *live*: ``P:ag:<b>`` / ``P:sr:<b>`` (listed in ``P:agi`` / ``P:sri``) or the ``P:ev`` list;
2. *claimed*: renamed to ``P:c:<kind>:<b>:<gen>`` with a fresh gen (``HINCRBY P:ws seq``),
   recorded in ``P:cl`` and leased to one flusher (``P:lease:<kind>:<b>``, PX). Writes
   arriving after the claim land in a new live hash and get their own gen later;
3. *acked*: after the store committed batch ``<ws>:<kind>:<b>:<gen>``, the claimed copy,
   its ``P:cl`` entry and the lease are deleted.

A flusher that dies between 2 and 3 leaves the claim in ``P:cl``; once its lease
expires any flusher re-takes it with the SAME gen, so the batch id is the same and
the store's exactly-once check turns a repeated write into a no-op.

**Redis losing recent writes** (a failover to a replica that had not received them, a
restart from an older RDB/AOF) must not flush a bucket twice nor reuse an id:

* *Ids never come again.* Every id taken from the workspace counter ``seq`` (claim gens,
  billing sessions ``s<n>``, events ``e<n>``: ``claim.lua``, ``admit.lua``, ``grant.lua``) is
  at least ``now_ms x 1000``. A Redis that comes back without its latest writes restarts the
  counter where it was, but the clock has moved on, so its next ids are above every id given
  before the loss. Gateways and flushers stamp with Redis's clock
  (:mod:`meter.redis_layer.clock`); assumed: the clock of the Redis that comes back is not
  behind the one that lost the writes by more than the time it takes to come back (a
  failover or restart takes seconds; NTP keeps clocks within milliseconds), and one
  workspace takes fewer than 1000 ids per millisecond on average.
* *A bucket claimed in a lost history is recognised.* Each claim records its gen in the
  sorted set ``P:fl`` (member ``<kind>:<bucket>``), in the same script that moves the bucket,
  so Redis keeps or loses the record together with the claim. A new claim is given
  ``known``: the gen of the bucket's previous claim in this Redis's history (or the floor
  ``~`` when it has none). The store holding a batch of the same bucket with a gen above
  ``known`` means Redis lost that claim, and the live contents just claimed are, in part or
  whole, what that batch already counted: the store then keeps only what exceeds its own
  totals (:mod:`meter.store.flush_rollback`). ``~`` is 0 from a workspace's creation
  (``put_workspace``, ``rebuild.lua``); a workspace an earlier version flushed starts at its
  ``seq`` on its first claim (its earlier batches count as known). Records older than
  :data:`RECORDS_HORIZON_MS` are dropped and ``~`` raised to their gens, so a claim lost
  that long before its bucket is claimed again is not recognised.
* *Events are not claimed twice, but can happen twice.* An ``ev`` batch is exactly-once by
  its ids, yet an event Redis lost is done again under a new ``e<n>``. The free credits'
  expiry and exhaustion carry ``once`` (``expiry:<free_exp>:<free_granted>``; a later
  lapse or running out of the same credits, a key of its own), the key of what they are
  about, and the flusher names their ledger entry and outbox event by it
  (:func:`meter.usage.batches.event_rows`), so the store takes each once.
* With ``redis_durability = replicated`` a claim is released to the writer only once
  ``WAIT`` saw it on the replicas, as admissions are (:mod:`meter.redis_layer.durability`);
  otherwise the workspace's pass stops there, the claim stays, and a later pass re-takes it
  under the same gen. An ack needs no wait: a lost ack brings back the claim with its gen,
  whose batch the store already holds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Literal

from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient
from meter.redis_layer.durability import ReplicatedCalls
from meter.redis_layer.scripts import register

BucketKind = Literal["ag", "sr", "ev"]
KINDS: tuple[BucketKind, ...] = ("ag", "sr", "ev")
EVENTS_BUCKET = 0
# Claim records kept this long (ms): a claim Redis lost is recognised when its bucket is
# claimed again within this time (the next pass, unless every flusher is down that long).
RECORDS_HORIZON_MS = 6 * 3600 * 1000


class ClaimCode(IntEnum):
    """Result codes of ``claim.lua``."""

    CLAIMED = 0
    RETAKEN = 1
    BUSY = 2
    EMPTY = 3


@dataclass(frozen=True, slots=True)
class Claim:
    """A claimed bucket: immutable contents under ``(ws, kind, bucket, gen)``."""

    ws: str
    kind: BucketKind
    bucket: int
    gen: int
    retaken: bool
    items: list[bytes]
    known: int | None = None  # batches of this bucket above this gen: a lost history

    @property
    def batch_id(self) -> str:
        """The store's exactly-once key of this claim."""
        return f"{self.ws}:{self.kind}:{self.bucket}:{self.gen}"


@dataclass(frozen=True, slots=True)
class Pending:
    """An outstanding (claimed, unacked) bucket as listed in ``P:cl``."""

    kind: BucketKind
    bucket: int
    gen: int


def _kind(text: str) -> BucketKind:
    for k in KINDS:
        if k == text:
            return k
    raise ValueError(f"unknown claim kind {text!r}")


class Claims:
    """The claim/ack scripts bound to one Redis client and one flusher identity.

    ``replicas``/``wait_ms``: with ``redis_durability = replicated``, each claim waits for
    that many replicas (a :class:`~meter.redis_layer.durability.NotReplicated` otherwise).
    """

    def __init__(
        self,
        client: RedisClient,
        owner: str,
        lease_ms: int,
        *,
        clock: Callable[[], float] = time.time,
        replicas: int = 0,
        wait_ms: int = 0,
    ) -> None:
        self._client = client
        self._owner = owner
        self._lease_ms = lease_ms
        self._clock = clock
        self._claim = register(client, "claim")
        self._ack = register(client, "ack")
        self._replicated = (
            ReplicatedCalls(client, self._claim, replicas=replicas, wait_ms=wait_ms)
            if replicas > 0
            else None
        )

    async def claim(
        self, ws: str, kind: BucketKind, bucket: int, *, keep_index: bool = False
    ) -> tuple[ClaimCode, Claim | None]:
        """Claim (or re-take) a bucket; the claim is ``None`` unless the code says taken."""
        script_keys = keys.ws_keys(ws)
        args = [kind, bucket, self._lease_ms, self._owner, "1" if keep_index else "0"]
        args += [int(self._clock() * 1000), RECORDS_HORIZON_MS]
        res: list[Any]
        if self._replicated is not None:
            res = await self._replicated.call(script_keys, args)
        else:
            res = await self._claim(keys=script_keys, args=args)
        code = ClaimCode(int(res[0]))
        if code in (ClaimCode.BUSY, ClaimCode.EMPTY):
            return code, None
        known = int(res[3])
        claim = Claim(
            ws,
            kind,
            bucket,
            int(res[1]),
            code is ClaimCode.RETAKEN,
            list(res[2]),
            known if known >= 0 else None,
        )
        return code, claim

    async def ack(self, claim: Claim) -> bool:
        """Retire a committed claim; ``False`` if someone else already did."""
        res = await self._ack(
            keys=keys.ws_keys(claim.ws), args=[claim.kind, claim.bucket, claim.gen]
        )
        return bool(res == 1)

    async def scan(
        self, ws: str, ag_cutoff_s: float, sr_cutoff_s: float
    ) -> tuple[list[Pending], list[int], list[int], bool]:
        """Outstanding claims, closed aggregate and session buckets, and whether events wait.

        A bucket is listed when its start is at or before the cutoff (``inf`` = all).
        """
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.claims_key(ws))
            pipe.zrangebyscore(keys.agg_index_key(ws), "-inf", _score(ag_cutoff_s))
            pipe.zrangebyscore(keys.sessions_index_key(ws), "-inf", _score(sr_cutoff_s))
            pipe.exists(keys.events_key(ws))
            reg, ag, sr, ev = await pipe.execute()
        pending = []
        for field, gen in reg.items():
            kind, _, bucket = field.decode().partition(":")
            pending.append(Pending(_kind(kind), int(bucket), int(gen)))
        return pending, [int(b) for b in ag], [int(b) for b in sr], bool(ev)

    async def close(self) -> None:
        """Close the connections of replicated claims (a cluster's masters)."""
        if self._replicated is not None:
            await self._replicated.close()


def _score(cutoff: float) -> str:
    return "+inf" if cutoff == float("inf") else str(int(cutoff))
