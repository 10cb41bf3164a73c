"""Charged but never forwarded: reservations, forward confirmations and the sweeper.

``admit.lua`` reserves every charged message in ``P:rsv`` (``<app>:<rid>`` -> deadline).
The gateway confirms a message once its request has been handed to the bot's socket:

1. the confirmation is appended to this process's journal file (one ``write(2)`` on an
   ``O_APPEND`` descriptor, which survives a ``kill -9`` of the process: the kernel
   owns the page cache), then
2. confirmations are batched into ``ZREM`` calls per workspace.

A process that dies leaves its journal behind; the next start replays it (``ZREM`` of
everything it lists) before the sweeper may act. The sweeper refunds reservations past
their deadline (``refund_window_s``) through ``refund.lua`` in its sweeper mode, whose
``ZREM`` decides atomically, so any number of sweepers refund a message at most once.

The window between handing the request to the socket and the journal write is a few
instructions; a message in it when the process dies is refunded although the bot got
it. A journal is local to its host: a gateway that restarts later than the refund
window after a crash (or elsewhere) finds its confirmations swept already.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from redis.exceptions import RedisError

from meter import keys
from meter.redis_client import RedisClient

log = logging.getLogger(__name__)
JOURNAL_GLOB = "forwarded-*.log"
TRUNCATE_AT = 1 << 20  # bytes of journal kept before it is emptied (all confirmed)
SWEEP_BATCH = 200


def _open_journal(state_dir: Path) -> tuple[int, Path]:
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / f"forwarded-{os.getpid()}-{secrets.token_hex(4)}.log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    # Held while this process lives: replay() skips journals whose owner is alive.
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd, path


class Confirmations:
    """Confirms forwarded messages: journal first, then Redis, batched per workspace."""

    def __init__(self, client: RedisClient, state_dir: str | Path) -> None:
        self._client = client
        self._fd, self.path = _open_journal(Path(state_dir))
        self._pending: dict[str, list[str]] = {}
        self._scheduled = False
        self._inflight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._size = 0

    def forwarded(self, app_id: str, rid: str) -> None:
        """The request of charged message ``rid`` of ``app_id`` is with the bot.

        Synchronous on purpose: the journal write happens right after the caller handed
        the request to the socket, with no await in between.
        """
        ws = keys.workspace_of(app_id)
        if ws is None:
            return
        member = f"{app_id}:{rid}"
        line = f"{ws} {member}\n".encode()
        os.write(self._fd, line)
        self._size += len(line)
        self._pending.setdefault(ws, []).append(member)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._dispatch)

    def _dispatch(self) -> None:
        self._scheduled = False
        if not self._pending:
            return
        batch, self._pending = self._pending, {}
        self._inflight += 1
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: dict[str, list[str]]) -> None:
        try:
            await _zrem(self._client, batch)
        except (RedisError, OSError, TimeoutError) as exc:
            # The journal still has them; put them back for the next batch.
            log.warning("forward confirmations deferred: %r", exc)
            for ws, members in batch.items():
                self._pending.setdefault(ws, []).extend(members)
            await asyncio.sleep(0.5)
            if not self._scheduled:
                self._scheduled = True
                asyncio.get_running_loop().call_soon(self._dispatch)
        finally:
            self._inflight -= 1
        if not self._pending and not self._inflight and self._size > TRUNCATE_AT:
            os.ftruncate(self._fd, 0)  # everything in it is in Redis now
            self._size = 0

    async def close(self, grace_s: float = 5.0) -> None:
        """Send what is pending; remove the journal when all of it reached Redis."""
        deadline = time.monotonic() + grace_s
        while (self._pending or self._tasks) and time.monotonic() < deadline:
            if self._pending and not self._scheduled:
                self._dispatch()
            if self._tasks:
                await asyncio.wait(set(self._tasks), timeout=max(0.0, deadline - time.monotonic()))
            else:
                await asyncio.sleep(0)
        done = not self._pending and not self._tasks
        os.close(self._fd)
        if done:
            with contextlib.suppress(OSError):
                self.path.unlink()


async def _zrem(client: RedisClient, batch: dict[str, list[str]]) -> None:
    async with client.pipeline(transaction=False) as pipe:
        for ws, members in batch.items():
            pipe.zrem(keys.reservations_key(ws), *members)
        await pipe.execute()


def _dead_journals(folder: Path) -> list[tuple[Path, int, dict[str, list[str]]]]:
    """Journals whose process is gone (their lock is free), locked now, with contents."""
    found: list[tuple[Path, int, dict[str, list[str]]]] = []
    if not folder.is_dir():
        return found
    for path in sorted(folder.glob(JOURNAL_GLOB)):
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)  # its process is alive
            continue
        batch: dict[str, list[str]] = {}
        with os.fdopen(os.dup(fd), "rb") as f:
            for raw in f:
                ws, sep, member = raw.decode(errors="replace").rstrip("\n").partition(" ")
                if sep and member:
                    batch.setdefault(ws, []).append(member)
        found.append((path, fd, batch))
    return found


async def replay(client: RedisClient, state_dir: str | Path) -> int:
    """Confirm what journals of dead processes list, then remove them; the count."""
    total = 0
    for path, fd, batch in _dead_journals(Path(state_dir)):
        try:
            for ws, members in batch.items():
                for i in range(0, len(members), 1000):
                    chunk = members[i : i + 1000]
                    await _zrem(client, {ws: chunk})
                    total += len(chunk)
            os.unlink(path)
        finally:
            os.close(fd)
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
    ) -> None:
        """``refund(app_id, rid)`` refunds a reservation still present (refund.lua)."""
        self._client = client
        self._workspaces = workspaces
        self._refund = refund
        self._clock = clock
        self.refunded = 0

    async def sweep_once(self) -> int:
        """One pass over every workspace; the number of messages refunded."""
        n = 0
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
