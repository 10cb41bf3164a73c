"""A decision's future that resumes the coroutine awaiting it without a loop handle.

A plain future told its result schedules each done-callback with ``loop.call_soon``: a
handle per message, run once the current callbacks are done, for the coroutine awaiting
its decision. A
:class:`Ticket` is such a future (a Task awaits it as any other), plus one slot: a
:class:`Waiter` that stepped its coroutine to the ticket and asked, instead of a
done-callback, to be resumed by whoever decides it (``gateway.fastpath.flow.Flow``).
Whoever completes a ticket (:mod:`.wire`'s ``resolve`` and ``fail``) hands its waiter
to :func:`wake`, once per reply for every ticket it answered: each resumes there and
then when no step of a Task or another waiter is running (steps never nest), else on
the next loop pass. A waiter that cancels its ticket resumes itself (nobody else will).
"""

from __future__ import annotations

import asyncio
from asyncio import current_task
from typing import Protocol, TypeVar

_T = TypeVar("_T")


class Waiter(Protocol):
    """What a ticket's awaiting coroutine is run by."""

    def wake(self) -> None:
        """Resume the coroutine (its ticket is done); called with no step running."""


class Ticket(asyncio.Future[_T]):
    """An ``asyncio.Future`` with a :class:`Waiter` slot (see the module)."""

    __slots__ = ("waiter",)

    waiter: Waiter | None  # set to None where a ticket is made (:func:`ticket`)


def ticket(loop: asyncio.AbstractEventLoop) -> Ticket[_T]:
    """A new ticket of ``loop``, awaited by nobody yet."""
    t: Ticket[_T] = Ticket(loop=loop)
    t.waiter = None
    return t


def wake(loop: asyncio.AbstractEventLoop, waiters: list[Waiter]) -> None:
    """Resume ``waiters`` (their tickets were just completed), in order: now when no step
    runs (a reply's callback), else each on the next loop pass (completed inside a Task's
    or a Flow's step: resuming one there would nest its step in that one)."""
    if current_task(loop) is None:
        for w in waiters:
            w.wake()
    else:
        for w in waiters:
            loop.call_soon(w.wake)
