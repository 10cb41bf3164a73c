"""Charged but never forwarded: reservations, forward confirmations and the sweeper.

``admit.lua`` reserves every charged message in ``P:rsv`` (``<app>:<rid>`` -> deadline).
The gateway confirms a message once its request has been handed to the bot's socket:

1. the confirmation is appended to this process's journal file (one ``write(2)``,
   ``O_APPEND``: the kernel keeps it across a ``kill -9``), then
2. confirmations are batched into ``ZREM`` calls per workspace.

A process that dies leaves its journal behind; each sweeper pass first replays the dead
journals of its host (``ZREM`` of everything they list), then refunds reservations past
their deadline (``refund_window_s``) through ``refund.lua`` in its sweeper mode, whose
``ZREM`` decides atomically: any number of sweepers refund a message at most once. A
message waits for a bot connection at most ``upstream_connect_timeout_s``, kept well
below the refund window (at most 2/3 of it): a wait past it would be swept, sent free.

The journal line follows the send (the other order would charge, on a crash, a message
never sent): a message between them when its process dies (a few instructions; streamed
bodies on the aiohttp path: their first chunk) is refunded although the bot got it.

A journal is local to its host: one restarted elsewhere, or only after the refund
window, finds its confirmations swept already.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from redis.exceptions import RedisError

from meter.admission.journal import Journal, take_over_dead
from meter.errors import MeteringUnavailable
from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient
from meter.redis_layer.clock import ANSWER_MAX_S, clock_ready
from meter.redis_layer.pipe import OnReply, RedisPipe

log = logging.getLogger(__name__)
JOURNAL_KIND = "forwarded"
TRUNCATE_AT = 1 << 20  # bytes of journal kept before it is emptied (all confirmed)
SWEEP_BATCH = 200
RETRY_S = 0.5  # a failed batch of confirmations is sent again after this


class Confirmations:
    """Confirms forwarded messages: journal first, then Redis, batched per workspace.

    On a plain single server the ``ZREM`` calls go down a
    :class:`~meter.redis_layer.pipe.RedisPipe` answered by callback (no task per batch);
    Cluster and TLS keep redis-py.
    """

    def __init__(self, client: RedisClient, state_dir: str | Path, timeout: float = 5.0) -> None:
        self._client = client
        self._pipe = RedisPipe.for_client(client, timeout)
        self._journal = Journal(state_dir, JOURNAL_KIND)
        self.path = self._journal.path
        self._pending: dict[str, list[str]] = {}
        self._scheduled = False
        self._inflight = 0  # batches sent and not yet answered
        self._tasks: set[asyncio.Task[None]] = set()
        self._drained: asyncio.Future[None] | None = None  # close() waits on it
        self._closed = False  # what is left stays in the journal, for the next start

    @property
    def idle(self) -> bool:
        """Every confirmation so far reached Redis (or failed and waits for a retry)."""
        return not self._pending and not self._inflight

    def forwarded(self, app_id: str, rid: str) -> None:
        """The request of charged message ``rid`` of ``app_id`` is with the bot.

        Synchronous on purpose: the journal write happens right after the caller handed
        the request to the socket, with no await in between. An unwritable journal (full
        disk) is logged: the confirmation still goes to Redis (else swept)."""
        ws = keys.workspace_of(app_id)
        if ws is None:
            return
        member = f"{app_id}:{rid}"
        self._journal.append_or_log([f"{ws} {member}"])
        self._pending.setdefault(ws, []).append(member)
        self._schedule()

    def forwarded_all(self, app_id: str, rids: Sequence[str]) -> None:
        """:meth:`forwarded` for each of ``rids`` (one request, a batch of messages), in
        one journal write: a process killed between two lines of a batch would leave the
        rest, served, for the sweeper to refund."""
        ws = keys.workspace_of(app_id)
        if ws is None or not rids:
            return
        members = [f"{app_id}:{rid}" for rid in rids]
        self._journal.append_or_log([f"{ws} {member}" for member in members])
        self._pending.setdefault(ws, []).extend(members)
        self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled and not self._closed:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._dispatch)

    def _dispatch(self) -> None:
        self._scheduled = False
        if not self._pending:
            return
        batch, self._pending = self._pending, {}
        self._inflight += 1
        if self._pipe is not None:
            self._send_piped(self._pipe, batch)
            return
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _send_piped(self, pipe: RedisPipe, batch: dict[str, list[str]]) -> None:
        left = len(batch)
        failed: dict[str, list[str]] = {}

        def answer(ws: str, members: list[str]) -> OnReply:
            def on_reply(reply: object, sent: bool) -> None:
                nonlocal left
                if isinstance(reply, Exception):  # ZREM is idempotent: sent again later
                    failed[ws] = members
                    log.warning("forward confirmations deferred: %r", reply)
                left -= 1
                if left == 0:
                    self._answered(failed)

            return on_reply

        for ws, members in batch.items():
            pipe.call(["ZREM", keys.reservations_key(ws), *members], answer(ws, members))

    def _answered(self, failed: dict[str, list[str]]) -> None:
        self._inflight -= 1
        if failed:
            # The journal still has them; put them back for a later batch.
            for ws, members in failed.items():
                self._pending.setdefault(ws, []).extend(members)
            asyncio.get_running_loop().call_later(RETRY_S, self._schedule)
        self._settled()

    def _settled(self) -> None:
        if not self.idle:
            return
        if self._journal.size > TRUNCATE_AT:
            self._journal.truncate()  # everything in it is in Redis now
        drained = self._drained
        if drained is not None and not drained.done():
            drained.set_result(None)

    async def _send(self, batch: dict[str, list[str]]) -> None:
        try:
            await _zrem(self._client, batch)
        except (RedisError, OSError, TimeoutError) as exc:
            # The journal still has them; put them back for the next batch.
            log.warning("forward confirmations deferred: %r", exc)
            for ws, members in batch.items():
                self._pending.setdefault(ws, []).extend(members)
            await asyncio.sleep(RETRY_S)
            self._schedule()
        finally:
            self._inflight -= 1
        self._settled()

    async def close(self, grace_s: float = 5.0) -> None:
        """Send what is pending; remove the journal when all of it reached Redis."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        if self._pending and not self._scheduled and not self._inflight:
            self._dispatch()
        while not self.idle and loop.time() < deadline:
            if self._drained is None or self._drained.done():
                self._drained = loop.create_future()
            # Woken once nothing is pending or in flight (a failed batch is retried by
            # its timer meanwhile), or at the end of the grace.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._drained), deadline - loop.time())
        self._closed = True
        if self._pipe is not None:
            self._pipe.close()
        self._journal.close(remove=self.idle)


async def _zrem(client: RedisClient, batch: dict[str, list[str]]) -> None:
    async with client.pipeline(transaction=False) as pipe:
        for ws, members in batch.items():
            pipe.zrem(keys.reservations_key(ws), *members)
        await pipe.execute()


async def replay(client: RedisClient, state_dir: str | Path) -> int:
    """Confirm what journals of dead processes list, then remove them; the count."""
    total = 0
    for dead in take_over_dead(state_dir, JOURNAL_KIND):
        try:
            batch: dict[str, list[str]] = {}
            for line in dead.lines:
                ws, sep, member = line.partition(" ")
                if sep and member:
                    batch.setdefault(ws, []).append(member)
            for ws, members in batch.items():
                for i in range(0, len(members), 1000):
                    chunk = members[i : i + 1000]
                    await _zrem(client, {ws: chunk})
                    total += len(chunk)
            dead.done()
        finally:
            dead.release()
    if total:
        log.info("replayed %d forward confirmations of stopped processes", total)
    return total


Refund = Callable[[str, str], Awaitable[bool]]


class Sweeper:
    """Refunds charged messages never confirmed as forwarded within the refund window."""

    def __init__(
        self,
        client: RedisClient,
        workspaces: Callable[[], Awaitable[list[str]]],
        refund: Refund,
        *,
        clock: Callable[[], float] = time.time,
        state_dir: str | Path | None = None,
        grace_s: float = 0.0,
    ) -> None:
        """``refund(app_id, rid)`` refunds a reservation still present (refund.lua);
        ``state_dir``: where the journals of this host's processes are, replayed first;
        ``grace_s``: nothing is refunded for so long once Redis answers after a failed
        pass (processes retry the confirmations that failed meanwhile: theirs first)."""
        self._client = client
        self._workspaces = workspaces
        self._refund = refund
        self._clock = clock
        self._state_dir = state_dir
        self._grace_s = grace_s
        self._down, self._resume_at = False, 0.0
        self.refunded = 0

    async def sweep_once(self) -> int:
        """One pass over every workspace; the number of messages refunded (none before
        the clock's first sync: a local clock ahead would refund messages in flight)."""
        try:
            return await self._sweep()
        except (RedisError, OSError, MeteringUnavailable):
            self._down = True
            raise

    async def _sweep(self) -> int:
        n = 0
        if not await clock_ready(self._clock, self._client, ANSWER_MAX_S):
            log.warning("sweeper: skipped until the metering clock follows redis")
            self._down = True
            return 0
        if self._state_dir is not None:
            # Every pass: a worker that died (restarted beside it) or a start while Redis
            # was down left confirmations only its journal holds. Failed: no pass.
            await replay(self._client, self._state_dir)
        if self._down:  # Redis answers again: its confirmations first
            self._down, self._resume_at = False, self._clock() + self._grace_s
        if self._clock() < self._resume_at:
            return 0
        now_ms = int(self._clock() * 1000)
        for ws in await self._workspaces():
            while True:
                due = await self._client.zrangebyscore(
                    keys.reservations_key(ws), "-inf", now_ms, start=0, num=SWEEP_BATCH
                )
                for raw in due:
                    member = raw.decode() if isinstance(raw, bytes) else str(raw)
                    app_id, _, rid = member.partition(":")
                    if await self._refund(app_id, rid):
                        n += 1
                    else:  # nothing to refund any more (e.g. the record expired)
                        await self._client.zrem(keys.reservations_key(ws), member)
                if len(due) < SWEEP_BATCH:
                    break
        if n:
            log.warning("refunded %d charged messages never confirmed as forwarded", n)
        self.refunded += n
        return n

    async def run(self, stop: asyncio.Event, interval_s: float) -> None:
        while not stop.is_set():
            try:
                await self.sweep_once()
            except (RedisError, OSError) as exc:
                log.warning("sweeper: redis unavailable: %r", exc)
            except Exception:
                log.exception("sweeper: pass failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)
