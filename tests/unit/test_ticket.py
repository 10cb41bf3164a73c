"""meter.admission.ticket: a Flow awaiting a decision's Ticket is resumed by whoever
decides it (wire.resolve / wire.fail), without a loop handle, and never inside a step."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from gateway.fastpath.flow import Flow
from meter.admission.decision import Decision
from meter.admission.ticket import Ticket, ticket
from meter.admission.wire import Pending, fail, resolve
from meter.errors import MeteringUnavailable

HANG = 30  # s: a bound on waits that would otherwise hang a broken build, never a speed check


def pending(t: Ticket[Decision]) -> Pending:
    return Pending(b"arg", "", "tok", "rid", t, "web", "u")


def admitted(bsid: bytes = b"bs1") -> list[Any]:
    """An ``admit.lua`` reply for one admission: admitted, no flags, no amounts."""
    return [0, bsid, 0]


class Ended:
    """The flows that ended (their ``on_done``), and an event set by each."""

    def __init__(self) -> None:
        self.flows: list[Flow] = []
        self.event = asyncio.Event()

    def __call__(self, flow: Flow) -> None:
        self.flows.append(flow)
        self.event.set()

    async def wait(self) -> None:
        async with asyncio.timeout(HANG):
            await self.event.wait()


async def from_callback(fn: Callable[[], None]) -> None:
    """Run ``fn`` from a plain loop callback (no step running), as a reply's callback
    runs, and return once it has."""
    ran = asyncio.Event()

    def call() -> None:
        fn()
        ran.set()

    asyncio.get_running_loop().call_soon(call)
    async with asyncio.timeout(HANG):
        await ran.wait()


async def started(coro: Coroutine[Any, Any, None], done: Ended) -> Flow:
    """``coro`` as a Flow started from a plain callback, run until its first wait."""
    flow = Flow(asyncio.get_running_loop(), coro, done)
    await from_callback(lambda: flow.start() and None)
    return flow


async def test_the_reply_resumes_the_flow_inside_its_callback() -> None:
    t: Ticket[Decision] = ticket(asyncio.get_running_loop())
    seen: list[object] = []

    async def body() -> None:
        seen.append((await t).bsid)

    done = Ended()
    flow = await started(body(), done)
    assert t.waiter is flow  # waited on without a done-callback
    order: list[object] = []

    def reply() -> None:
        resolve([pending(t)], admitted(), 5)
        order.append(list(seen))  # resumed before the callback went on: no loop handle

    await from_callback(reply)
    assert order == [["bs1"]]
    assert done.flows == [flow]


async def test_a_failed_call_raises_inside_the_flow() -> None:
    t: Ticket[Decision] = ticket(asyncio.get_running_loop())
    seen: list[object] = []

    async def body() -> None:
        try:
            await t
        except MeteringUnavailable as exc:
            seen.append(exc.ambiguous)

    done = Ended()
    await started(body(), done)
    await from_callback(lambda: fail([pending(t)], ConnectionError("gone"), ambiguous=False))
    await done.wait()
    assert seen == [False]


async def test_decided_before_an_undecodable_one_still_resumes() -> None:
    """Decisions are handed out before any Flow resumes: the one before a reply item that
    does not decode must still be woken (its ticket is done: nobody else will)."""
    loop = asyncio.get_running_loop()
    first: Ticket[Decision] = ticket(loop)
    second: Ticket[Decision] = ticket(loop)
    seen: list[object] = []

    async def body(t: Ticket[Decision]) -> None:
        try:
            seen.append((await t).bsid)
        except MeteringUnavailable:
            seen.append("unavailable")

    done = Ended()
    await started(body(first), done)
    await started(body(second), done)
    chunk = [pending(first), pending(second)]

    def reply() -> None:
        try:
            resolve(chunk, [*admitted(), 0, b"bs2", b"not,numbers"], 5)
        except ValueError as exc:  # as AdmitCalls does with a reply that does not decode
            fail(chunk, exc)

    await from_callback(reply)
    async with asyncio.timeout(HANG):
        while len(done.flows) < 2:
            done.event.clear()
            await done.wait()
    assert seen == ["bs1", "unavailable"]


async def test_cancel_during_the_wait_resumes_the_flow_cancelled() -> None:
    t: Ticket[Decision] = ticket(asyncio.get_running_loop())
    seen: list[str] = []

    async def body() -> None:
        try:
            await t
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    done = Ended()
    flow = await started(body(), done)
    assert flow.cancel() is True  # the client left: nobody will decide it for the Flow
    await done.wait()
    assert seen == ["cancelled"]
    assert t.cancelled()
    resolve([pending(t)], admitted(), 5)  # the reply that comes later goes nowhere
    assert seen == ["cancelled"]


async def test_a_timeout_over_the_wait_still_fires() -> None:
    t: Ticket[Decision] = ticket(asyncio.get_running_loop())
    seen: list[object] = []

    async def body() -> None:
        try:
            async with asyncio.timeout(0):
                await t
        except TimeoutError:
            seen.append("timed out")

    done = Ended()
    await started(body(), done)
    await done.wait()
    assert seen == ["timed out"]
    assert t.cancelled()


async def test_decided_inside_another_step_the_flow_resumes_after_it() -> None:
    """A reply answered inside a step (a Task's, or another Flow's) must not run the
    waiting Flow's step nested in it: it resumes once that step is over."""
    loop = asyncio.get_running_loop()
    t: Ticket[Decision] = ticket(loop)
    order: list[str] = []

    async def waiting() -> None:
        await t
        order.append("waiter resumed")
        order.append(f"nested: {asyncio.current_task() is not waiter}")

    async def deciding() -> None:
        resolve([pending(t)], admitted(), 5)
        order.append("decider's step goes on")

    done = Ended()
    waiter = await started(waiting(), done)
    await started(deciding(), done)
    async with asyncio.timeout(HANG):
        while len(done.flows) < 2:
            done.event.clear()
            await done.wait()
    assert order == ["decider's step goes on", "waiter resumed", "nested: False"]


async def test_a_task_awaits_a_ticket_as_a_future() -> None:
    """The aiohttp path awaits the same admitter from real Tasks."""
    loop = asyncio.get_running_loop()
    t: Ticket[Decision] = ticket(loop)

    async def waits() -> str:
        return (await t).bsid

    task = loop.create_task(waits())
    await asyncio.sleep(0)
    assert t.waiter is None  # a Task waits by a done-callback
    await from_callback(lambda: resolve([pending(t)], admitted(), 5))
    async with asyncio.timeout(HANG):
        assert await task == "bs1"


async def test_a_task_cancelled_while_awaiting_a_ticket() -> None:
    loop = asyncio.get_running_loop()
    t: Ticket[Decision] = ticket(loop)

    async def waits() -> None:
        await t

    task = loop.create_task(waits())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(HANG):
            await task
    assert t.cancelled()
