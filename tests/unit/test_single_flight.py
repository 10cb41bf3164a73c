"""SingleFlight: one load per key at a time, shared by whoever asks meanwhile."""

from __future__ import annotations

import asyncio

import pytest

from gateway.single_flight import SingleFlight


class Loader:
    """Loads that finish when the test says so, counted."""

    def __init__(self) -> None:
        self.calls = 0
        self.release = asyncio.Event()
        self.fail: Exception | None = None

    async def load(self) -> str:
        self.calls += 1
        n = self.calls
        await self.release.wait()
        if self.fail is not None:
            raise self.fail
        return f"value {n}"


async def settled() -> None:
    """Let every runnable task run until it waits (a few passes of the loop)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_concurrent_callers_share_one_load() -> None:
    flights: SingleFlight[str, str] = SingleFlight()
    loader = Loader()
    callers = [asyncio.create_task(flights.run("k", loader.load)) for _ in range(50)]
    await settled()
    assert loader.calls == 1
    assert len(flights) == 1
    loader.release.set()
    assert await asyncio.gather(*callers) == ["value 1"] * 50
    assert len(flights) == 0
    # Done: the next caller loads again (the cache in front decides when to ask).
    assert await flights.run("k", loader.load) == "value 2"


async def test_keys_load_apart() -> None:
    flights: SingleFlight[str, str] = SingleFlight()
    loader = Loader()
    callers = [asyncio.create_task(flights.run(k, loader.load)) for k in ("a", "b", "a")]
    await settled()
    assert loader.calls == 2
    loader.release.set()
    assert sorted(await asyncio.gather(*callers)) == ["value 1", "value 1", "value 2"]


async def test_a_cancelled_caller_leaves_the_load_to_the_others() -> None:
    flights: SingleFlight[str, str] = SingleFlight()
    loader = Loader()
    first = asyncio.create_task(flights.run("k", loader.load))  # starts the load
    await settled()
    others = [asyncio.create_task(flights.run("k", loader.load)) for _ in range(3)]
    await settled()
    first.cancel()
    await settled()
    assert first.cancelled()
    loader.release.set()
    assert await asyncio.gather(*others) == ["value 1"] * 3
    assert loader.calls == 1


async def test_a_failed_load_reaches_every_caller_and_the_next_one_retries() -> None:
    flights: SingleFlight[str, str] = SingleFlight()
    loader = Loader()
    loader.fail = RuntimeError("redis down")
    callers = [asyncio.create_task(flights.run("k", loader.load)) for _ in range(4)]
    await settled()
    loader.release.set()
    results = await asyncio.gather(*callers, return_exceptions=True)
    assert [str(r) for r in results] == ["redis down"] * 4
    loader.fail = None
    assert await flights.run("k", loader.load) == "value 2"


async def test_a_failed_load_whose_callers_all_left_is_not_reported_unretrieved() -> None:
    flights: SingleFlight[str, str] = SingleFlight()
    loader = Loader()
    loader.fail = RuntimeError("nobody waits")
    caller = asyncio.create_task(flights.run("k", loader.load))
    await settled()
    caller.cancel()
    await settled()
    loader.release.set()
    await settled()
    assert len(flights) == 0
    with pytest.raises(asyncio.CancelledError):
        await caller


async def test_prefetch_starts_one_load_that_callers_then_share(
    caplog: pytest.LogCaptureFixture,
) -> None:
    flights: SingleFlight[str, str] = SingleFlight()
    loader = Loader()
    flights.prefetch("k", loader.load)
    flights.prefetch("k", loader.load)  # under way: not again
    waiter = asyncio.create_task(flights.run("k", loader.load))
    await settled()
    assert loader.calls == 1
    loader.release.set()
    assert await waiter == "value 1"
    # A failed prefetch nobody awaited is logged (and so never "never retrieved").
    loader.fail = RuntimeError("redis down")
    flights.prefetch("k", loader.load)
    await settled()
    assert len(flights) == 0
    assert "refreshing 'k' failed" in caplog.text
