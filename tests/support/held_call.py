"""Forcing a race, not timing it: hold one call of an object's async method (before it
runs, or once it has returned) until released, and wait until a task is held there."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any


@asynccontextmanager
async def held_call(
    module: Any, name: str, when: Callable[..., bool] = lambda *a, **k: True, *, after: bool = False
) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """Hold the first call of ``module.<name>`` that ``when`` accepts until released
    (``after``: once it has returned, its answer held back; else before it runs); yields
    a waiter that returns once that call is held. Other calls run unheld."""
    real = getattr(module, name)
    reached, go = asyncio.Event(), asyncio.Event()

    async def hold(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if not reached.is_set() and when(*args, **kwargs):
            reached.set()
            await go.wait()

    async def paused(*args: Any, **kwargs: Any) -> Any:
        if after:
            out = await real(*args, **kwargs)
            await hold(args, kwargs)
            return out
        await hold(args, kwargs)
        return await real(*args, **kwargs)

    setattr(module, name, paused)
    try:
        yield reached.wait
    finally:
        go.set()
        setattr(module, name, real)


async def started(task: asyncio.Future[Any], reached: Callable[[], Awaitable[None]]) -> None:
    """Return once ``task`` is held (fails at once if it ended instead)."""
    first = asyncio.ensure_future(reached())
    await asyncio.wait([task, first], return_when=asyncio.FIRST_COMPLETED)
    assert first.done(), await task
