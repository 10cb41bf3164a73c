"""One load per key at a time: callers that ask for a key while it loads share the load."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Coroutine, Hashable
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

log = logging.getLogger(__name__)

# A cache reads an entry again in the background when a message finds it in the last
# eighth of its life: a key asked for at least that often never makes a caller wait, and
# is read at most 8/7 as often as by expiry alone (read at half its age, twice as often).
AHEAD = 0.125


class SingleFlight(Generic[K, V]):
    """Runs at most one load per key at a time; whoever asks meanwhile awaits the same.

    Without it, every message that finds a cached value expired reads it again: at
    hundreds of connections, hundreds of reads of one value at once. The load runs as
    a task of its own, so a caller that is cancelled (its client left) neither cancels
    it for the others nor hands them a cancellation that is not theirs.
    """

    def __init__(self) -> None:
        self._loading: dict[K, asyncio.Task[V]] = {}

    async def run(self, key: K, load: Callable[[], Coroutine[Any, Any, V]]) -> V:
        """``load()``'s result (or exception), shared with every caller of ``key`` until
        it is done; ``load`` is called only when no load of ``key`` is under way."""
        task = self._loading.get(key) or self._start(key, load)
        # shield: a cancelled caller leaves the task running (and its exception retrieved).
        return await asyncio.shield(task)

    def prefetch(self, key: K, load: Callable[[], Coroutine[Any, Any, V]]) -> None:
        """Start ``load()`` unless a load of ``key`` is under way, and wait for nothing:
        a cache refreshes a value this way before it expires, so that no caller waits."""
        if key not in self._loading:
            self._start(key, load).add_done_callback(functools.partial(_report, key))

    def _start(self, key: K, load: Callable[[], Coroutine[Any, Any, V]]) -> asyncio.Task[V]:
        task = asyncio.get_running_loop().create_task(load())
        self._loading[key] = task
        task.add_done_callback(functools.partial(self._done, key))
        return task

    def _done(self, key: K, task: asyncio.Task[V]) -> None:
        if self._loading.get(key) is task:
            del self._loading[key]

    def __len__(self) -> int:
        """Loads under way."""
        return len(self._loading)


def _report(key: object, task: asyncio.Task[Any]) -> None:
    """A prefetch nobody may await: its failure is logged (and so retrieved)."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.warning("refreshing %r failed: %r", key, exc)
