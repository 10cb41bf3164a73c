"""The metering clock follows Redis's clock (meter/redis_layer/clock.py): measured against
Redis ``TIME`` on a real server (single and cluster), the local clock while Redis is down,
and two gateways whose own clocks are 50 s apart sharing one rate-limit window."""

from __future__ import annotations

import re
import time
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from gateway.app import create_app
from gateway.appkeys import CLOCK
from meter.accounts.seeding import seed
from meter.redis_layer.client import RedisClient, connect
from meter.redis_layer.clock import RedisClock, following, redis_time
from meter.store import open_store
from tests.support.bot import Bot, eventually, post_message, running_gateway, serve
from tests.support.clock import Clock
from tests.support.metering import new_ws_id
from tests.support.servers import RedisServer
from tests.support.servers.redis_server import start_redis
from tests.support.settings import make_settings

USD = 1_000_000
MARGIN_S = 0.002  # float rounding of seconds near 1.8e9 and TIME's microseconds


async def test_the_clock_reads_as_redis_time_not_the_skewed_local_clock(
    client: RedisClient, caplog: pytest.LogCaptureFixture
) -> None:
    """A host clock 50 s ahead and a timer of another origin: before the first sync the
    clock is the local one, after it Redis's, to within half the round trip it kept; the
    skew is logged."""
    skewed = lambda: time.time() + 50  # noqa: E731
    told: list[float] = []
    clock = RedisClock(local=skewed, timer=lambda: time.monotonic() + 12345, on_offset=told.append)
    assert clock() > await redis_time(client) + 49  # not synced: the local clock
    assert await clock.sync(client, 5.0)
    before = await redis_time(client)
    reading = clock()
    after = await redis_time(client)
    assert clock.synced
    assert before - clock.error_s - MARGIN_S <= reading <= after + clock.error_s + MARGIN_S
    assert len(told) == 1
    assert abs(told[0] + 50) <= 1  # Redis's clock is ~50 s behind this host's
    assert re.search(r"local clock is (49|50)\.\d{3} s ahead of redis's", caplog.text)


async def test_redis_down_at_start_then_followed_once_it_answers(tmp_path: Path) -> None:
    server = start_redis(tmp_path / "r")
    url = server.url
    server.stop()
    c = connect(url, timeout=1.0)
    clock = RedisClock(local=lambda: time.time() + 50)
    try:
        async with following(clock, c, interval=3600, answer_s=1.0):
            assert not clock.synced
            assert clock() > time.time() + 49  # the local clock meanwhile
            restarted = RedisServer(port=server.port, workdir=tmp_path / "r").start()
            try:
                # Retried every RETRY_S while unsynced, though the interval is an hour.
                assert await eventually(lambda: clock.synced)
                assert clock() < await redis_time(c) + 1
            finally:
                restarted.stop()
    finally:
        await c.aclose()


def gateway_clock(local: Clock) -> RedisClock:
    """A gateway whose host clock is ``local``: it stamps with Redis's clock. (``local``
    also drives readings, so the test moves time for both gateways by hand.)"""
    return RedisClock(local=local, timer=local)


async def test_two_gateways_50_s_apart_share_the_per_minute_limit(
    redis_url: str, tmp_path: Path, rclient: RedisClient, bot: Bot, http: aiohttp.ClientSession
) -> None:
    """Gateway B's host clock is 50 s ahead of A's. A client sends its 5 messages a minute
    through A, then, 15 s later, through B: B must refuse them. Stamped with each
    gateway's own clock, B counted in a window 65 s past A's and let 5 more through."""
    settings = make_settings(redis_url, tmp_path, rate_per_minute=5, clock_sync_s=3600)
    ws = new_ws_id()
    app = f"{ws}_app1"
    apps = {app: {"product": "automation", "upstream_url": bot.url}}
    await seed(rclient, settings, ws, apps, pool=100 * USD)
    a = Clock.wall()
    b = Clock(a.now + 50)
    async with (
        running_gateway(settings, clock=gateway_clock(a)) as ga,
        running_gateway(settings, clock=gateway_clock(b)) as gb,
    ):
        via_a = [await post_message(http, f"{ga.url}/hooks/web/{app}", f"u{i}") for i in range(5)]
        assert via_a == [200] * 5
        a.advance(15)
        b.advance(15)
        via_b = [await post_message(http, f"{gb.url}/hooks/web/{app}", f"v{i}") for i in range(5)]
        assert via_b == [429] * 5
    assert bot.count() == 5


async def test_create_app_stamps_with_redis_clock_by_default(
    redis_url: str, tmp_path: Path
) -> None:
    """No clock given: a RedisClock, synced before traffic is served, its offset exported."""
    settings = make_settings(redis_url, tmp_path)
    store = open_store(settings.store_url)
    await store.migrate()
    registry = CollectorRegistry()
    try:
        gw = create_app(settings, store=store, registry=registry)
        clock = gw.traffic[CLOCK]
        assert isinstance(clock, RedisClock)
        assert gw.admin[CLOCK] is clock
        async with serve(gw.traffic, settings=settings):
            assert clock.synced
            offset = registry.get_sample_value("creditgate_clock_offset_seconds")
            assert offset is not None
            assert abs(offset) <= 1  # this host's Redis: the same clock
    finally:
        await store.close()
