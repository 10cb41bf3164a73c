"""gateway.fastpath.flow.Flow: a coroutine stepped in place keeps a Task's contract."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import weakref
from collections.abc import Coroutine
from typing import Any

import pytest

from gateway.fastpath.flow import Flow

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("flow_test", default="outside")


class Ended(list[Flow]):
    """The flows that ended (their ``on_done``), and an event set by the first."""

    def __init__(self) -> None:
        super().__init__()
        self.event = asyncio.Event()

    def __call__(self, flow: Flow) -> None:
        self.append(flow)
        self.event.set()

    async def wait(self) -> None:
        await self.event.wait()


async def run(coro: Coroutine[Any, Any, None], done: Ended) -> Flow:
    """``coro`` as a Flow started from a plain callback, as a protocol starts one (a
    test is a task: a Flow started from it waits for the next pass)."""
    flow = Flow(asyncio.get_running_loop(), coro, done)
    asyncio.get_running_loop().call_soon(flow.start)
    await asyncio.sleep(0)  # the callback above runs before this task resumes
    return flow


async def test_a_coroutine_that_never_waits_ends_inside_start() -> None:
    seen: list[str] = []

    async def body() -> None:
        seen.append("ran")

    done = Ended()
    results: list[bool] = []
    loop = asyncio.get_running_loop()
    flow = Flow(loop, body(), done)
    loop.call_soon(lambda: results.append(flow.start()))
    await asyncio.sleep(0)
    assert results == [True]
    assert seen == ["ran"]
    assert done == [flow]
    assert flow.done()


async def test_it_resumes_with_the_future_result_or_its_exception() -> None:
    loop = asyncio.get_running_loop()
    first, second = loop.create_future(), loop.create_future()
    seen: list[object] = []

    got_first = asyncio.Event()

    async def body() -> None:
        seen.append(await first)
        got_first.set()
        try:
            await second
        except ValueError as exc:
            seen.append(exc.args[0])

    done = Ended()
    flow = await run(body(), done)
    assert not flow.done()
    assert seen == []
    first.set_result(41)
    await got_first.wait()
    second.set_exception(ValueError("refused"))
    await done.wait()
    assert seen == [41, "refused"]


async def test_current_task_is_the_flow_so_timeouts_work() -> None:
    loop = asyncio.get_running_loop()
    never = loop.create_future()
    seen: list[object] = []

    async def body() -> None:
        seen.append(asyncio.current_task())
        try:
            async with asyncio.timeout(0):
                await never
        except TimeoutError:
            seen.append("timed out")
        seen.append(asyncio.current_task().cancelling())  # type: ignore[union-attr]

    done = Ended()
    flow = await run(body(), done)
    await done.wait()
    assert seen == [flow, "timed out", 0]
    assert never.cancelled()
    assert asyncio.current_task() is not flow  # left when its step ended


async def test_cancel_cancels_the_wait_under_way() -> None:
    loop = asyncio.get_running_loop()
    waited = loop.create_future()
    seen: list[str] = []

    async def body() -> None:
        try:
            await waited
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    done = Ended()
    flow = await run(body(), done)
    assert flow.cancel() is True
    assert flow.cancelling() == 1
    await done.wait()
    assert seen == ["cancelled"]
    assert waited.cancelled()
    assert flow.cancel() is False  # done: nothing to cancel


async def test_a_cancel_while_it_runs_cancels_its_next_wait() -> None:
    loop = asyncio.get_running_loop()
    waited = loop.create_future()
    seen: list[str] = []

    async def body() -> None:
        asyncio.current_task().cancel()  # type: ignore[union-attr]
        try:
            await waited
        except asyncio.CancelledError:
            seen.append("cancelled")

    done = Ended()
    await run(body(), done)
    await done.wait()
    assert seen == ["cancelled"]
    assert waited.cancelled()


async def test_a_bare_yield_resumes_on_the_next_pass() -> None:
    seen: list[int] = []

    async def body() -> None:
        for i in range(3):
            seen.append(i)
            await asyncio.sleep(0)

    done = Ended()
    await run(body(), done)
    assert seen == [0]
    await done.wait()
    assert seen == [0, 1, 2]


async def test_inside_a_running_task_the_first_step_waits_for_the_next_pass() -> None:
    seen: list[object] = []

    async def body() -> None:
        seen.append(asyncio.current_task())

    done = Ended()
    flow = Flow(asyncio.get_running_loop(), body(), done)
    assert flow.start() is False  # this test is a task: never nested
    assert seen == []
    await done.wait()
    assert seen == [flow]


async def test_context_variables_set_inside_stay_inside() -> None:
    loop = asyncio.get_running_loop()
    waited = loop.create_future()
    seen: list[str] = []

    async def body() -> None:
        VAR.set("inside")
        await waited
        seen.append(VAR.get())

    done = Ended()
    await run(body(), done)
    waited.set_result(None)
    await done.wait()
    assert seen == ["inside"]
    assert VAR.get() == "outside"


async def test_an_escaping_error_is_logged_and_the_flow_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def body() -> None:
        raise RuntimeError("boom")

    done = Ended()
    with caplog.at_level(logging.ERROR, "gateway.fastpath.flow"):
        await run(body(), done)
        await done.wait()
    assert "boom" in caplog.text


async def test_a_non_future_yield_raises_inside_the_coroutine() -> None:
    class Odd:
        def __await__(self) -> Any:
            yield "not a future"

    seen: list[str] = []

    async def body() -> None:
        try:
            await Odd()
        except RuntimeError as exc:  # as a Task throws it: serve_message answers 500
            seen.append(str(exc))

    done = Ended()
    await run(body(), done)
    await done.wait()
    assert len(seen) == 1
    assert "not a future" in seen[0]


def test_a_flow_can_be_referenced_weakly() -> None:
    async def body() -> None:
        pass

    async def main() -> None:
        coro = body()
        flow = Flow(asyncio.get_running_loop(), coro, Ended())
        assert weakref.ref(flow)() is flow
        coro.close()  # never started

    asyncio.run(main())


def test_keyboard_interrupt_propagates() -> None:
    async def body() -> None:
        raise KeyboardInterrupt

    async def main() -> None:
        loop = asyncio.get_running_loop()
        done = Ended()
        # Started from a plain callback (no task running), as a protocol starts one.
        loop.call_soon(lambda: Flow(loop, body(), done).start())
        await asyncio.sleep(1)  # never reached: the interrupt ends the loop

    with pytest.raises(KeyboardInterrupt):
        asyncio.run(main())
