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
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Literal

from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient
from meter.redis_layer.scripts import register

BucketKind = Literal["ag", "sr", "ev"]
KINDS: tuple[BucketKind, ...] = ("ag", "sr", "ev")
EVENTS_BUCKET = 0


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
    """The claim/ack scripts bound to one Redis client and one flusher identity."""

    def __init__(self, client: RedisClient, owner: str, lease_ms: int) -> None:
        self._client = client
        self._owner = owner
        self._lease_ms = lease_ms
        self._claim = register(client, "claim")
        self._ack = register(client, "ack")

    async def claim(
        self, ws: str, kind: BucketKind, bucket: int, *, keep_index: bool = False
    ) -> tuple[ClaimCode, Claim | None]:
        """Claim (or re-take) a bucket; the claim is ``None`` unless the code says taken."""
        res: list[Any] = await self._claim(
            keys=[keys.ws_prefix(ws)],
            args=[kind, bucket, self._lease_ms, self._owner, "1" if keep_index else "0"],
        )
        code = ClaimCode(int(res[0]))
        if code in (ClaimCode.BUSY, ClaimCode.EMPTY):
            return code, None
        claim = Claim(ws, kind, bucket, int(res[1]), code is ClaimCode.RETAKEN, list(res[2]))
        return code, claim

    async def ack(self, claim: Claim) -> bool:
        """Retire a committed claim; ``False`` if someone else already did."""
        res = await self._ack(
            keys=[keys.ws_prefix(claim.ws)], args=[claim.kind, claim.bucket, claim.gen]
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


def _score(cutoff: float) -> str:
    return "+inf" if cutoff == float("inf") else str(int(cutoff))
