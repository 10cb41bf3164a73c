"""A coroutine driven like an ``asyncio.Task``, minus the Task's scheduling: :class:`Flow`.

Every message on the fast path is one coroutine (:func:`~.dispatch.serve_message`). As
an ``asyncio.Task`` it cost a loop pass before its first line (the Task schedules its
first step), another after each wait (a finished future schedules the Task's wake-up,
which schedules nothing more but runs a pass later), and a scheduled done-callback at
its end: about 5% of a message's instructions (``bench.worker_cost``). A Flow runs its
first step at once, in the caller's frame, and its next step straight from the
callback of the future it waited on, or, for an admission's
:class:`~meter.admission.ticket.Ticket`, from the reply that decides it (no loop handle
either: :meth:`Flow.wake`); a message that never waits (unmetered, a bot
connection idle in the pool) finishes before :meth:`Flow.start` returns.

It keeps what code inside it may count on from a Task: ``asyncio.current_task()`` is the
Flow while a step runs (so ``asyncio.timeout``, aiohttp's and redis-py's timeouts work),
``cancel()``, ``cancelling()`` and ``uncancel()`` behave as a Task's (a cancelled wait
raises ``CancelledError`` inside the coroutine; a cancel while it runs cancels its next
wait), each Flow runs in a copy of the context it started in, a bare ``yield`` (``await
asyncio.sleep(0)``) resumes on the next loop pass, and ``KeyboardInterrupt`` and
``SystemExit`` propagate. It is not registered with ``asyncio.all_tasks()``, has no
result and no done-callbacks: the owner is told through ``on_done`` and the coroutine
handles its own errors (what escapes is logged).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from asyncio import tasks
from collections.abc import Callable, Coroutine
from typing import Any

from meter.admission.ticket import Ticket

log = logging.getLogger(__name__)


class Flow:
    """One coroutine stepped in place; see the module."""

    __slots__ = (
        "__weakref__",
        "_cancels",
        "_coro",
        "_ctx",
        "_done",
        "_loop",
        "_must_cancel",
        "_on_done",
        "_throw_next",
        "_waiting",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        coro: Coroutine[Any, Any, None],
        on_done: Callable[[Flow], None],
    ) -> None:
        self._loop = loop
        self._coro = coro
        self._on_done = on_done
        self._ctx = contextvars.copy_context()
        self._waiting: asyncio.Future[Any] | None = None
        self._must_cancel = False
        self._throw_next: BaseException | None = None
        self._cancels = 0
        self._done = False

    def start(self) -> bool:
        """Run the first step now (on the next loop pass when a task or another Flow is
        running: steps never nest). True once the coroutine has finished."""
        if asyncio.current_task(self._loop) is None:
            self._ctx.run(self._step)
        else:
            self._loop.call_soon(self._step, context=self._ctx)
        return self._done

    # ------------------------------------------------------------ Task's interface

    def done(self) -> bool:
        return self._done

    def cancel(self, msg: Any = None) -> bool:
        """As ``asyncio.Task.cancel``: the wait under way is cancelled, else the next."""
        if self._done:
            return False
        self._cancels += 1
        waiting = self._waiting
        if waiting is not None and waiting.cancel(msg):
            if waiting.__class__ is Ticket and waiting.waiter is self:
                # A ticket waited on calls nothing back once cancelled: resume here.
                waiting.waiter = None
                self._loop.call_soon(self._step, context=self._ctx)
            return True
        self._must_cancel = True
        return True

    def cancelling(self) -> int:
        return self._cancels

    def uncancel(self) -> int:
        if self._cancels > 0:
            self._cancels -= 1
        return self._cancels

    def get_name(self) -> str:
        return f"Flow-{id(self):x}"

    # ------------------------------------------------------------ stepping

    def wake(self) -> None:
        """Resume after the ticket waited on was completed (:mod:`meter.admission.ticket`:
        called with no step running)."""
        self._ctx.run(self._step)

    def _step(self, _: object = None) -> None:
        """One step: resume the coroutine until it waits or ends (run in ``_ctx``)."""
        self._waiting = None
        loop = self._loop
        tasks._enter_task(loop, self)  # type: ignore[arg-type]  # current_task() is self
        try:
            if self._must_cancel:
                self._must_cancel = False
                yielded = self._coro.throw(asyncio.CancelledError())
            elif self._throw_next is not None:
                err, self._throw_next = self._throw_next, None
                yielded = self._coro.throw(err)
            else:
                yielded = self._coro.send(None)
        except StopIteration:
            self._finish()
        except asyncio.CancelledError:
            self._finish()
        except (KeyboardInterrupt, SystemExit):
            self._finish()
            raise
        except BaseException as exc:
            self._finish()
            log.error("a message's coroutine failed", exc_info=exc)
        else:
            if yielded is None:  # a bare yield: resume on the next loop pass
                loop.call_soon(self._step, context=self._ctx)
            elif yielded.__class__ is Ticket and not self._must_cancel:
                # Woken by whoever completes it (no done-callback, no loop handle).
                yielded._asyncio_future_blocking = False
                self._waiting = yielded
                yielded.waiter = self
            elif getattr(yielded, "_asyncio_future_blocking", None):
                yielded._asyncio_future_blocking = False
                self._waiting = yielded
                yielded.add_done_callback(self._step, context=self._ctx)
                if self._must_cancel and yielded.cancel():
                    self._must_cancel = False
            else:  # as a Task does: the coroutine hears of it (and answers 500)
                err = RuntimeError(f"a message's coroutine yielded {yielded!r}, not a future")
                loop.call_soon(self._throw, err, context=self._ctx)
        finally:
            tasks._leave_task(loop, self)  # type: ignore[arg-type]

    def _throw(self, exc: BaseException) -> None:
        """Raise ``exc`` inside the coroutine, then go on as a step does."""
        self._throw_next = exc
        self._step()

    def _finish(self) -> None:
        self._done = True
        self._on_done(self)
