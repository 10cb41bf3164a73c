"""Rounds of a background loop, counted by a store call it makes once a round.

A test that must show something did *not* happen again (an event sent twice) waits for
the loop that would do it to run a few more rounds, counted, never for a timer. The
loops' once-a-round calls: the flusher reads a page of dead letters at the start of each
pass (:class:`meter.usage.replay.AutoReplay`, ``store.dead_letters``), the webhook
delivery loop claims due events at the start of each round
(:meth:`meter.accounts.notifier.Notifier.deliver_due`, ``store.due_events``). The real
method is called as before: the count only watches.
"""

from __future__ import annotations

import asyncio
from typing import Any

from meter.store import Store


class Rounds:
    """Counts calls of ``store.<method>``, the round a loop starts with."""

    def __init__(self, store: Store, method: str) -> None:
        self.count = 0
        self._moved = asyncio.Event()
        real = getattr(store, method)

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            self._moved.set()
            return await real(*args, **kwargs)

        setattr(store, method, counted)

    async def more(self, n: int, within_s: float = 60.0) -> None:
        """Until ``n`` more rounds started than had now; ``within_s`` bounds a hang only.
        Rounds run one after another, so the ``n - 1`` first of them have ended."""
        target = self.count + n
        try:
            async with asyncio.timeout(within_s):
                while self.count < target:
                    self._moved.clear()
                    await self._moved.wait()
        except TimeoutError:
            raise AssertionError(f"{self.count} of {target} rounds") from None


async def nothing_left_to_send(store: Store, flushes: Rounds, deliveries: Rounds) -> None:
    """Until every owner notification there is to send was sent, and more rounds ran:
    a whole flusher pass since now (what it moves from Redis is in the outbox), every
    outbox event delivered (the receiver had each before it answered), then two more
    delivery rounds (one would claim what was left, or sent and due again)."""
    await flushes.more(2)
    while await store.pending_events():
        await deliveries.more(1)
    await deliveries.more(2)
