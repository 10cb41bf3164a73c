"""The flusher: moves closed usage buckets from Redis into the durable store, exactly once.

Each pass visits every workspace (the store's list plus the Redis set ``cg:workspaces``)
and, per workspace: re-takes outstanding claims whose lease expired (a crashed
flusher's), claims closed aggregate and billing-session buckets and the events list,
writes each claim as ONE store transaction keyed ``<ws>:<kind>:<bucket>:<gen>`` and acks
it in Redis only after the commit (see :mod:`meter.usage.claims`; the writing, retries and
quarantine are :mod:`meter.usage.batch_writer`'s). Any number of flushers may run at once,
on one Redis or a Redis Cluster; a killed one loses nothing.

A database that fails is retried with exponential backoff (capped) while the claim is
kept; at shutdown retries stop after ``shutdown_grace_s`` and the claim stays in Redis
for the next flusher. A batch the store *rejects* (:class:`~meter.store.Rejected`: bad
data such as a NUL in a channel user on PostgreSQL, not an outage), or whose content
cannot even be read, is quarantined after ``flush_quarantine_attempts`` tries: its raw
content goes to the store's dead-letter table, the claim is acked, and every other
bucket goes on flushing. Each pass first replays a page of dead letters this version can
read (:mod:`meter.usage.replay`): what a flusher of the previous version could not. Run
alone with ``creditgate flush`` (or ``python -m gateway.flusher_cli``).

:meth:`Flusher.measure_lag` reads the age of the oldest closed-but-unflushed bucket from
the Redis indexes, independently of the passes, so it keeps growing while flushing is
stuck.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time

from redis.exceptions import RedisError

from config import Settings
from config.urls import mask_url
from meter.errors import MeteringUnavailable
from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient
from meter.redis_layer.clock import clock_ready
from meter.store import Store
from meter.timestamps import Clock
from meter.usage.batch_writer import BatchHook, BatchWriter, QuarantineHook
from meter.usage.claims import EVENTS_BUCKET, BucketKind, ClaimCode, Claims
from meter.usage.flush_stats import FlushStats, PassResult
from meter.usage.replay import AutoReplay

log = logging.getLogger(__name__)


def new_owner() -> str:
    """A token naming this flusher in leases (host, pid and a random part)."""
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"


class Flusher:
    """Flushes closed buckets of every workspace; see the module doc."""

    def __init__(
        self,
        client: RedisClient,
        store: Store,
        settings: Settings,
        *,
        clock: Clock = time.time,
        owner: str | None = None,
        lease_s: float | None = None,
        concurrency: int = 4,
        backoff_start_s: float = 0.05,
        backoff_cap_s: float = 5.0,
        on_batch: BatchHook | None = None,
        on_quarantine: QuarantineHook | None = None,
    ) -> None:
        self._client = client
        self._store = store
        self._clock = clock
        self.owner = owner or new_owner()
        self.lease_s = lease_s if lease_s is not None else max(10.0, 4 * settings.flush_interval_s)
        replicated = settings.redis_durability == "replicated"
        self._claims = Claims(
            client,
            self.owner,
            int(self.lease_s * 1000),
            clock=clock,
            replicas=settings.redis_replicas if replicated else 0,
            wait_ms=int(settings.redis_timeout_s * 800),
        )
        self._interval = settings.flush_interval_s
        self._redis_shown = mask_url(settings.redis_url)  # named in its warnings
        self._answer_s = settings.redis_timeout_s
        self._fb = settings.flush_bucket_s
        self._grace = settings.flush_grace_s
        self._block = settings.session_block_s
        # A session bucket (width = the block length) is read by admissions until its
        # last block has ended and that conversation has been idle long enough to end.
        self._sr_open = (
            max(1, int(settings.session_block_s)) + self._block + settings.session_idle_s
        )
        self._sem = asyncio.Semaphore(concurrency)
        self._known: set[str] = set()
        # During a drain: the open billing-session buckets it copied (ws, bucket). A copy
        # leaves the bucket live, so without this every pass would copy it again.
        self._copied: set[tuple[str, int]] | None = None
        self.stats = FlushStats()
        self._replay = AutoReplay(store, int(self._block * 1000))
        self._writer = BatchWriter(
            self._claims,
            store,
            self.stats,
            clock=clock,
            block_ms=int(self._block * 1000),
            attempts=settings.flush_quarantine_attempts,
            backoff=(backoff_start_s, backoff_cap_s),
            shutdown_grace_s=settings.shutdown_grace_s,
            on_batch=on_batch,
            on_quarantine=on_quarantine,
        )

    # ------------------------------------------------------------------ passes

    async def workspaces(self) -> list[str]:
        """Workspaces to visit: the store's and those Redis knows, union."""
        found: set[str] = set()
        try:
            found.update(await self._store.list_workspaces())
        except Exception as exc:  # the store may be down: Redis still knows them
            log.warning("flusher: cannot list workspaces from the store: %r", exc)
        for m in await self._client.smembers(keys.WORKSPACES):
            found.add(m.decode() if isinstance(m, bytes) else m)
        self._known = found
        return sorted(found)

    async def measure_lag(self, chunk: int = 500) -> float:
        """Age in seconds of the oldest closed bucket not yet flushed (0 when none).

        Reads, per workspace, the oldest entry of the aggregate and session indexes and
        the outstanding claims, pipelined ``chunk`` workspaces per round trip, so it is
        right even while a pass is stuck. Also stored in ``stats.lag_seconds``.
        """
        if not await clock_ready(self._clock, self._client, self._answer_s):
            raise MeteringUnavailable("metering clock not synced yet", ambiguous=False)
        now = self._clock()
        members = await self._client.smembers(keys.WORKSPACES)
        spaces = sorted(self._known | {m.decode() if isinstance(m, bytes) else m for m in members})
        oldest = float("inf")
        for i in range(0, len(spaces), chunk):
            part = spaces[i : i + chunk]
            async with self._client.pipeline(transaction=False) as pipe:
                for ws in part:
                    pipe.zrange(keys.agg_index_key(ws), 0, 0, withscores=True)
                    pipe.zrange(keys.sessions_index_key(ws), 0, 0, withscores=True)
                    pipe.hkeys(keys.claims_key(ws))
                replies = await pipe.execute()
            for j in range(0, len(replies), 3):
                ag, sr, claimed = replies[j : j + 3]
                if ag:
                    oldest = min(oldest, self._closed_at("ag", int(ag[0][1])))
                if sr:
                    oldest = min(oldest, self._closed_at("sr", int(sr[0][1])))
                for f in claimed:
                    kind, _, bucket = (f.decode() if isinstance(f, bytes) else f).partition(":")
                    if kind in ("ag", "sr"):
                        oldest = min(oldest, self._closed_at(kind, int(bucket)))  # type: ignore[arg-type]
        lag = max(0.0, now - oldest) if oldest != float("inf") else 0.0
        self.stats.lag_seconds = lag
        return lag

    async def flush_once(self, force: bool = False) -> PassResult:
        """One pass over every workspace. ``force`` also flushes buckets still open."""
        total = PassResult()
        try:
            spaces = await self.workspaces()
        except (RedisError, OSError) as exc:
            self.stats.redis_errors += 1
            log.warning("flusher: redis at %s unavailable: %r", self._redis_shown, exc)
            total.failed += 1
            return total
        # Dead letters an earlier version quarantined and this one reads: written now.
        total.replayed = len((await self._replay.step()).replayed)
        self.stats.replayed += total.replayed
        if not await clock_ready(self._clock, self._client, self._answer_s):
            # Buckets close, and claims take ids, by Redis's clock: not the host's.
            log.warning("flusher: pass skipped until the metering clock follows redis")
            total.failed += 1
            return total
        now = self._clock()
        results = await asyncio.gather(*(self._guarded(ws, now, force) for ws in spaces))
        for r in results:
            total.add(r)
        self.stats.passes += 1
        self.stats.last_pass_at = now
        return total

    async def drain(self, *, force: bool = True, within_s: float = 60.0) -> PassResult:
        """Passes until nothing is left that another flusher holds (or ``within_s``).

        With ``force``, a billing-session bucket still open is copied once per drain (it
        stays live for the admissions still reading it; a later drain copies it again).
        """
        total = PassResult()
        deadline = time.monotonic() + within_s
        self._copied = set()
        try:
            while True:
                r = await self.flush_once(force=force)
                total.add(r)
                done = r.busy == 0 and r.failed == 0 and r.batches == 0
                if done or time.monotonic() > deadline:
                    total.busy, total.failed = r.busy, r.failed
                    return total
                if r.batches == 0:
                    await asyncio.sleep(min(0.25, self.lease_s / 4))
        finally:
            self._copied = None

    async def run(self, stop: asyncio.Event, *, force_on_stop: bool = False) -> None:
        """Flush every ``flush_interval_s`` until ``stop`` is set, then a final pass."""
        self._writer.stop = stop
        while not stop.is_set():
            try:
                await self.flush_once()
            except Exception:
                log.exception("flusher: pass failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._interval)
        self._writer.giving_up(0.0)  # starts the shutdown grace of write retries
        try:
            await self.flush_once(force=force_on_stop)
        except Exception:
            log.exception("flusher: final pass failed")

    async def close(self) -> None:
        """Close what the flusher opened itself (a cluster's replicated-claim links)."""
        await self._claims.close()

    # -------------------------------------------------------------- workspace

    def _closed_at(self, kind: BucketKind, bucket: int) -> float:
        if kind == "ag":
            return bucket + self._fb + self._grace
        if kind == "sr":
            return bucket + self._sr_open + self._grace
        return 0.0

    async def _guarded(self, ws: str, now: float, force: bool) -> PassResult:
        async with self._sem:
            try:
                return await self._flush_ws(ws, now, force)
            except (RedisError, OSError, MeteringUnavailable) as exc:
                # MeteringUnavailable: a claim not on the replicas yet (replicated
                # durability); it stays claimed and a later pass re-takes it, same gen.
                self.stats.redis_errors += 1
                log.warning("flusher: redis error in workspace %s: %r", ws, exc)
                return PassResult(failed=1)

    async def _flush_ws(self, ws: str, now: float, force: bool) -> PassResult:
        inf = float("inf")
        ag_cut = inf if force else now - self._fb - self._grace
        sr_cut = inf if force else now - self._sr_open - self._grace
        pending, ag, sr, has_events = await self._claims.scan(ws, ag_cut, sr_cut)
        targets: dict[tuple[BucketKind, int], None] = {}
        for p in pending:
            targets[(p.kind, p.bucket)] = None
        for b in ag:
            targets[("ag", b)] = None
        for b in sr:
            targets[("sr", b)] = None
        if has_events:
            targets[("ev", EVENTS_BUCKET)] = None
        res = PassResult()
        closes = [self._closed_at(k, b) for k, b in targets if k != "ev"]
        closed = [c for c in closes if c <= now]
        if closed:
            res.lag_seconds = now - min(closed)
        outstanding = {(p.kind, p.bucket) for p in pending}
        for kind, bucket in targets:
            keep = kind != "ev" and self._closed_at(kind, bucket) > now
            copy = keep and kind == "sr"  # claim.lua copies an open session bucket
            if copy and self._copied is not None:
                if (ws, bucket) in self._copied and (kind, bucket) not in outstanding:
                    continue  # this drain copied it already
                self._copied.add((ws, bucket))
            # A re-taken claim may hide newer live writes of the same bucket: go again.
            for _ in range(2):
                code, claim = await self._claims.claim(ws, kind, bucket, keep_index=keep)
                if claim is None:
                    res.busy += code is ClaimCode.BUSY
                    break
                if not await self._writer.process(claim, res) or not claim.retaken:
                    break
        return res
