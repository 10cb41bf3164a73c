"""The look-ups a message makes before its admission (a channel's secret, an app's
upstream) answer by their deadline even when the Redis call they give up on takes its
time to clean up: ``asyncio.wait_for`` (Python 3.11) waits for that cleanup, so a
request could hang, neither answered nor owed, until its client gave up."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from gateway.channel_keys import ChannelKeys
from meter.errors import MeteringUnavailable
from meter.redis_layer.client import RedisClient, connect, hard_deadline
from tests.support.channel_keys import SECRET_KEY
from tests.support.servers import start_redis
from tests.support.settings import make_settings

APP = "wsdead_app1"
HANG_GUARD = 60.0  # not a speed check: without a hard deadline the call never returns


class SlowToGiveUp:
    """A real client whose ``hget``, once cancelled, holds on until ``released`` (as a
    cleanup on a connection Redis no longer answers may)."""

    def __init__(self, client: RedisClient) -> None:
        self._client = client
        self.released = asyncio.Event()
        self.cleaned_up = asyncio.Event()

    async def hget(self, *args: Any) -> Any:
        try:
            return await self._client.hget(*args)
        except asyncio.CancelledError:
            await self.released.wait()
            self.cleaned_up.set()
            raise


async def test_a_channel_secret_read_answers_by_its_deadline(tmp_path: Path) -> None:
    server = start_redis(tmp_path / "redis")
    client = connect(server.url)
    slow = SlowToGiveUp(client)
    try:
        settings = make_settings(server.url, tmp_path, secret_key=SECRET_KEY, redis_timeout_s=0.2)
        cache = ChannelKeys(client, settings)
        cache._client = slow  # type: ignore[assignment]
        await client.ping()  # connected before Redis stops answering
        os.kill(server.proc.pid, signal.SIGSTOP)
        try:
            with pytest.raises(MeteringUnavailable):
                await asyncio.wait_for(cache.get(APP, "slack"), HANG_GUARD)
            assert not slow.cleaned_up.is_set()  # answered before the cleanup ended
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        slow.released.set()
        await asyncio.wait_for(slow.cleaned_up.wait(), HANG_GUARD)  # it ends in the background
    finally:
        slow.released.set()
        await client.aclose()
        server.stop()


async def test_hard_deadline_returns_results_and_passes_errors_and_cancellation() -> None:
    async def value() -> int:
        return 7

    async def broken() -> int:
        raise ValueError("no")

    assert await hard_deadline(value(), 10) == 7
    with pytest.raises(ValueError, match="no"):
        await hard_deadline(broken(), 10)
    inner_cancelled = asyncio.Event()

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            inner_cancelled.set()
            raise

    outer = asyncio.ensure_future(hard_deadline(forever(), 3600))
    await asyncio.sleep(0)
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outer
    await asyncio.wait_for(inner_cancelled.wait(), HANG_GUARD)
