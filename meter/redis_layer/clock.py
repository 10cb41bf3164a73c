"""The metering clock: Redis's, so every process stamps one moment alike.

Admissions, refunds, the sweeper, the flusher and the admin API pass ``now`` to the Lua
scripts, which put it in rate windows, billing sessions and their blocks, flush buckets,
billing periods, reservation deadlines, free-credit expiry and id floors. Stamped with
each process's own wall clock, gateways a minute apart put one real minute into two
rate windows (a client spreading its messages over them got about twice its per-minute
limit), and a clock hours off misbilled sessions and expiry. :class:`RedisClock` reads
as Redis's clock, at no cost per call: ``timer() + offset``, the offset measured against
Redis ``TIME`` at start-up and every ``CLOCK_SYNC_S``.

* **Measuring**: :data:`SAMPLES` round trips, the shortest kept; Redis's time is taken
  as of its midpoint, so the error is at most half that round trip (well under a
  millisecond on a LAN, against clocks minutes apart).
* **Which Redis**: a single server, it; a Redis Cluster, the primary holding the slot of
  :data:`meter.redis_layer.keys.WORKSPACES`. Every process asks that same node (the slot
  map is the cluster's), so they agree on every workspace wherever its shard is; the
  scripts never compare a stamp with Redis's own clock (their expiries are relative), so
  per-shard clocks would add nothing but a clock per call's workspace. After a failover
  every process follows the new primary's clock at its next sync.
* **Timer**: :data:`TIMER` (:mod:`meter.redis_layer.timer`): a step of the local wall
  clock changes no stamp, and it advances while the host is suspended. Once synced,
  Redis being down keeps the last offset.
* **Nothing stamped before the first sync**: until a sync succeeds (Redis down at
  start-up: logged, retried every :data:`RETRY_S`) readings are the local wall clock,
  which may be hours off Redis's: a stamp taken then and written once Redis answers
  would lapse free credits early (or spend them late), misplace reservation deadlines,
  rate windows and flush buckets. So whatever stamps a write first awaits
  :meth:`RedisClock.ensure_synced` (a plain attribute test once synced): the admitter
  per call while unsynced (failure: the call's admissions are ``MeteringUnavailable``,
  as for Redis down), refunds, fail-open settlement, the admin API (best effort); the
  sweeper, the flusher and
  the projection check skip their passes (:func:`clock_ready`); ``/readyz`` reports the
  clock. A debt served unsynced (fail-open) keeps its timer reading (:class:`HostStamp`,
  :meth:`RedisClock.host_stamp`) and is settled as of that timer reading plus the offset
  then measured (:meth:`RedisClock.as_redis`), so a step of the wall clock in between
  (NTP correcting a host that booted hours off) changes nothing; a debt taken over from
  another process is converted so too when its timer is this one's (``CLOCK_BOOTTIME``
  of the same boot and time namespace, :data:`TIMER_SOURCE`), else by the wall clock's
  offset to Redis's measured at settlement (a step of the wall clock in between is missed).
* **Never back by a jitter**: a sync that would move readings back by up to
  :data:`MAX_BACK_S` holds them at the last reading until the timer catches up, so one
  process's stamps never go back. A larger step back is Redis's own clock stepping (a
  failover to a node behind, its clock set): followed and logged, as every process
  follows it, and the scripts take a stamp before ones already written (a rate window
  counts it into its newest bucket, a session keeps its latest time, usage in a bucket
  already claimed goes to a new claim of it) where freezing for the step would stop every
  window and session of this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable

from redis.asyncio import RedisCluster

from meter.errors import MeteringUnavailable
from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient
from meter.redis_layer.timer import TIMER, TIMER_SOURCE
from meter.redis_layer.timer import HostStamp as HostStamp  # meter.admission imports it here
from meter.timestamps import Clock

log = logging.getLogger(__name__)

SAMPLES = 3
RETRY_S = 1.0  # between attempts while Redis does not answer
MAX_BACK_S = 1.0  # a step back up to this is jitter: readings hold instead
WARN_S = 1.0  # a local clock further than this from Redis's is logged
ANSWER_MAX_S = 1.0  # a TIME slower than this is a sync missed (a start-up waits no longer)


async def redis_time(client: RedisClient) -> float:
    """Redis's clock (``TIME``), seconds since the epoch; on a cluster, the node's that
    holds :data:`keys.WORKSPACES` (see the module's doc)."""
    if isinstance(client, RedisCluster):
        await client.initialize()
        node = client.get_node_from_key(keys.WORKSPACES)
        sec, usec = await client.execute_command("TIME", target_nodes=node)
    else:
        sec, usec = await client.time()
    return int(sec) + int(usec) / 1e6


class RedisClock:
    """A :data:`~meter.timestamps.Clock` that reads as Redis's clock once synced."""

    def __init__(
        self,
        *,
        local: Clock = time.time,
        timer: Clock = TIMER,
        on_offset: Callable[[float], None] | None = None,
        source: str | None = None,
    ) -> None:
        """``local``: the wall clock (the fallback, and what offsets are reported
        against); ``timer``: what readings advance with; ``on_offset``: told the local
        clock's offset to Redis's after each sync (a metric); ``source``: whose readings
        ``timer``'s compare with (default: :data:`TIMER_SOURCE` for :data:`TIMER`, else
        this clock's only)."""
        self._local, self._timer, self._on_offset = local, timer, on_offset
        if source is None:
            source = TIMER_SOURCE if timer is TIMER else "clock:" + secrets.token_hex(8)
        self.source = source
        self._offset = local() - timer()  # reading = timer() + offset
        self._floor = float("-inf")  # no reading below it (a jitter step back held)
        self.synced = False
        self.error_s = float("inf")  # at most this far from Redis's clock (half a round trip)
        self._failing = False
        self._warned: float | None = None
        self._syncing: asyncio.Future[bool] | None = None  # ensure_synced's attempt

    def __call__(self) -> float:
        now = self._timer() + self._offset
        return now if now >= self._floor else self._floor

    @property
    def local_offset(self) -> float:
        """Seconds Redis's clock is ahead of the local wall clock (as last measured)."""
        return self._timer() + self._offset - self._local()

    def host_stamp(self) -> HostStamp | None:
        """None once synced; before, what the reading taken now is taken with."""
        return None if self.synced else HostStamp(self._timer(), self.source)

    def as_redis(self, at: float, stamp: HostStamp) -> float:
        """Redis's clock at the moment of ``at``, a reading taken unsynced with
        ``stamp`` (call once synced): its timer reading plus the offset measured since
        when the timer is this clock's (a step of the wall clock in between changes
        nothing), else ``at`` moved by the wall clock's offset measured now."""
        if stamp.source and stamp.source == self.source:
            return stamp.timer + self._offset
        return at + self.local_offset

    async def ensure_synced(self, client: RedisClient, answer_s: float) -> None:
        """Return once readings are Redis's clock: nothing once synced, else one sync
        attempt (shared by every caller meanwhile); raises :class:`MeteringUnavailable`
        when it fails, so nothing is stamped with the local clock (see the module's doc)."""
        if self.synced:
            return
        attempt = self._syncing
        if attempt is None:
            attempt = self._syncing = asyncio.ensure_future(self.sync(client, answer_s))
            attempt.add_done_callback(self._attempted)
        if not await asyncio.shield(attempt) and not self.synced:
            raise MeteringUnavailable("metering clock not synced to redis TIME", ambiguous=False)

    def _attempted(self, _: object) -> None:
        self._syncing = None

    async def sync(self, client: RedisClient, answer_s: float) -> bool:
        """Measure the offset to Redis's clock and follow it; False if Redis did not answer
        (within ``answer_s``, at most :data:`ANSWER_MAX_S`): readings keep the last offset,
        or the local clock before any sync."""
        answer_s = min(answer_s, ANSWER_MAX_S)
        best: tuple[float, float] | None = None
        try:
            for _ in range(SAMPLES):
                t0 = self._timer()
                at = await asyncio.wait_for(redis_time(client), answer_s)
                t1 = self._timer()
                if best is None or t1 - t0 < best[0]:
                    best = (t1 - t0, at - (t0 + t1) / 2)
        except Exception as exc:  # any failure is a sync missed, retried
            if best is None:
                self._failed(exc)
                return False
        assert best is not None
        self.error_s = best[0] / 2
        self.follow(best[1])
        return True

    def _failed(self, exc: BaseException) -> None:
        if not self.synced:  # still the local clock: follow its steps too
            self._offset = self._local() - self._timer()
        if not self._failing:
            self._failing = True
            log.warning(
                "metering clock: redis TIME unavailable (%r): %s, retrying",
                exc,
                "stamping with the offset last measured"
                if self.synced
                else "nothing is stamped (admitted, refunded, swept, flushed) until it answers",
            )

    def follow(self, offset: float) -> None:
        """Read as ``timer() + offset`` from now on (a jitter step back held, see above)."""
        held = max(self._timer() + self._offset, self._floor)  # the latest reading so far
        self._offset = offset
        back = held - (self._timer() + offset)
        if back > MAX_BACK_S:
            self._floor = float("-inf")
            if self.synced:
                log.warning("metering clock: redis's clock stepped back %.3f s: following", back)
        elif back > 0:
            self._floor = held
        if self._failing or not self.synced:
            log.info("metering clock follows redis (local clock %+.3f s)", -self.local_offset)
        self.synced, self._failing = True, False
        off = self.local_offset
        if abs(off) > WARN_S and (self._warned is None or abs(off - self._warned) > WARN_S):
            self._warned = off
            log.warning(
                "metering clock: the local clock is %.3f s %s redis's: stamps follow redis; "
                "check NTP on this host",
                abs(off),
                "behind" if off > 0 else "ahead of",
            )
        if self._on_offset is not None:
            self._on_offset(off)

    async def run(self, client: RedisClient, interval: float, answer_s: float) -> None:
        """Sync every ``interval`` seconds (every :data:`RETRY_S` while Redis does not
        answer) until cancelled."""
        ok = self.synced
        while True:
            await asyncio.sleep(interval if ok else min(interval, RETRY_S))
            ok = await self.sync(client, answer_s)


async def clock_ready(clock: object, client: RedisClient, answer_s: float) -> bool:
    """Whether ``clock`` may stamp now: any clock but an unsynced :class:`RedisClock`,
    which is synced first if Redis answers (for periodic passes, skipped until then)."""
    if not isinstance(clock, RedisClock) or clock.synced:
        return True
    try:
        await clock.ensure_synced(client, answer_s)
    except MeteringUnavailable:
        return False
    return True


@contextlib.asynccontextmanager
async def following(
    clock: RedisClock, client: RedisClient, interval: float, answer_s: float
) -> AsyncIterator[None]:
    """``clock`` follows Redis's clock while inside: synced once before (what starts inside
    is stamped with Redis's clock unless Redis is down), then every ``interval``."""
    await clock.sync(client, answer_s)
    task = asyncio.create_task(clock.run(client, interval, answer_s), name="creditgate-clock")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
