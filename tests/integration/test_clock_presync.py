"""Nothing is stamped with the host clock before the metering clock's first sync
(meter/redis_layer/clock.py): a gateway whose host clock is 2 h ahead of Redis's, started
while Redis is down, must not lapse free credits that Redis's clock says are still valid
once Redis answers (admissions, fail-open settlement), the sweeper must not refund a
reservation not yet due, and /readyz reports the clock."""

from __future__ import annotations

import time
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from gateway.app import create_app
from gateway.appkeys import OWED
from gateway.debts import Debt, journal_lines
from gateway.metrics import Metrics
from gateway.owed import Owed
from meter.accounts.seeding import seed
from meter.admission.reservations import Sweeper
from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient, connect
from meter.redis_layer.clock import RedisClock, redis_time
from meter.redis_layer.timer import TIMER_SOURCE
from meter.store import open_store
from tests.support.bot import Bot, eventually, post_message, running_gateway, serve
from tests.support.metering import admitter, new_ws_id
from tests.support.servers import RedisServer
from tests.support.servers.redis_server import start_redis
from tests.support.settings import make_settings

USD = 1_000_000
AHEAD_S = 7200.0  # the host's clock is 2 h ahead of Redis's
MARGIN_S = 0.002  # float rounding of seconds near 1.8e9 and TIME's microseconds


class Recording(RedisClock):
    """A RedisClock on a host 2 h ahead (``ahead``) that keeps every reading it gives."""

    def __init__(self) -> None:
        self.ahead = AHEAD_S
        super().__init__(local=lambda: time.time() + self.ahead)
        self.readings: list[float] = []

    def __call__(self) -> float:
        now = super().__call__()
        self.readings.append(now)
        return now


async def _seed_then_stop(tmp_path: Path, bot_url: str) -> tuple[RedisServer, str, int]:
    """A Redis holding a workspace whose 5 USD of free credits are valid 1 more hour by
    Redis's clock, saved and stopped: (server, app id, free_exp)."""
    server = start_redis(tmp_path / "r")
    settings = make_settings(server.url, tmp_path)
    rc = connect(server.url)
    ws = new_ws_id()
    app = f"{ws}_app1"
    free_exp = int((await redis_time(rc) + 3600) * 1000)
    await seed(
        rc,
        settings,
        ws,
        {app: {"product": "automation", "upstream_url": bot_url}},
        free=5 * USD,
        free_expires_ms=free_exp,
        pool=100 * USD,
    )
    await rc.aclose()
    server.command("SAVE")
    server.stop()
    return server, app, free_exp


async def _free_credits(url: str, app: str) -> tuple[int, int, int]:
    """(free, free_exp, lapsed) of ``app``'s workspace."""
    c = connect(url)
    try:
        ws = keys.workspace_of(app)
        assert ws is not None
        raw = await c.hmget(keys.ws_key(ws), ["free", "free_exp", "lapsed"])
        return int(raw[0] or 0), int(raw[1] or 0), int(raw[2] or 0)
    finally:
        await c.aclose()


async def test_first_admission_after_redis_returns_is_stamped_by_redis(
    tmp_path: Path, bot: Bot, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """Fail closed. Before: the first messages once Redis answered were admitted before
    the clock's retry synced it, stamped 2 h ahead: the free credits lapsed for good."""
    server, app, free_exp = await _seed_then_stop(tmp_path, bot_url=bot.url)
    settings = make_settings(server.url, tmp_path)
    clock = Recording()
    async with running_gateway(settings, clock=clock) as gw:
        url = f"{gw.url}/hooks/web/{app}"
        assert await post_message(http, url, "u0") == 503
        assert "nothing is stamped (admitted, refunded, swept, flushed)" in caplog.text
        async with http.get(f"{gw.admin_url}/readyz") as r:
            assert r.status == 503
            assert (await r.json())["checks"]["clock"].startswith("error")
        restarted = RedisServer(port=server.port, workdir=tmp_path / "r").start()
        c = connect(restarted.url)
        try:
            clock.readings.clear()
            before = await redis_time(c)
            while (status := await post_message(http, url, "u0")) == 503:
                pass
            after = await redis_time(c)
            assert status == 200
            assert clock.readings, "the admission was stamped"
            assert clock.synced
            err = clock.error_s + MARGIN_S  # within the sync's error of Redis TIME
            assert all(before - err <= at <= after + err for at in clock.readings)
            free, exp, lapsed = await _free_credits(restarted.url, app)
            assert (exp, lapsed) == (free_exp, 0)
            assert 0 < free < 5 * USD  # the message was charged to them, not lapsed
            async with http.get(f"{gw.admin_url}/readyz") as r:
                assert r.status == 200
                assert (await r.json())["checks"]["clock"] == "ok"
        finally:
            await c.aclose()
            restarted.stop()


class Unanswered(Recording):
    """A :class:`Recording` clock whose syncs fail while ``blocked`` (Redis answering
    everything but them: the narrow case of a message served, failing open, before the
    first sync while its app's upstream is known)."""

    blocked = True

    async def sync(self, client: RedisClient, answer_s: float) -> bool:
        if self.blocked:
            self._failed(ConnectionError("blocked by the test"))
            return False
        return await super().sync(client, answer_s)


async def test_fail_open_debt_served_before_the_sync_settles_by_redis_clock(
    redis_url: str, rclient: RedisClient, tmp_path: Path, bot: Bot, http: aiohttp.ClientSession
) -> None:
    """Fail open: a message served before any sync is owed as of the host's clock;
    settled, it is moved to Redis's clock by the offset then measured (before: admitted
    stamped 2 h ahead, it lapsed the free credits)."""
    settings = make_settings(redis_url, tmp_path, fail_mode="open")
    ws = new_ws_id()
    app = f"{ws}_app1"
    free_exp = int((await redis_time(rclient) + 3600) * 1000)
    apps = {app: {"product": "automation", "upstream_url": bot.url}}
    await seed(rclient, settings, ws, apps, free=5 * USD, free_expires_ms=free_exp, pool=USD)
    clock = Unanswered()
    async with running_gateway(settings, clock=clock) as gw:
        owed = gw.gateway.traffic[OWED]
        assert await post_message(http, f"{gw.url}/hooks/web/{app}", "u0") == 200
        assert len(owed.debts) == 1
        assert owed.debts[0].host
        clock.blocked = False
        assert await eventually(lambda: not owed.debts)
        free, exp, lapsed = await _free_credits(redis_url, app)
        assert (exp, lapsed) == (free_exp, 0)
        assert 0 < free < 5 * USD  # the debt was charged to them, not lapsed


async def test_fail_open_debt_settles_by_redis_clock_after_a_host_clock_step(
    redis_url: str, rclient: RedisClient, tmp_path: Path, bot: Bot, http: aiohttp.ClientSession
) -> None:
    """Fail open, the host 2 h ahead when the message is served before any sync, then
    stepped right (NTP) before Redis's clock is measured: the debt is settled as of its
    timer reading plus the offset measured (before: moved by the wall clock's offset to
    Redis's measured after the step, nothing, it was settled 2 h ahead and lapsed the
    free credits)."""
    settings = make_settings(redis_url, tmp_path, fail_mode="open")
    ws = new_ws_id()
    app = f"{ws}_app1"
    free_exp = int((await redis_time(rclient) + 3600) * 1000)
    apps = {app: {"product": "automation", "upstream_url": bot.url}}
    await seed(rclient, settings, ws, apps, free=5 * USD, free_expires_ms=free_exp, pool=USD)
    clock = Unanswered()
    async with running_gateway(settings, clock=clock) as gw:
        owed = gw.gateway.traffic[OWED]
        assert await post_message(http, f"{gw.url}/hooks/web/{app}", "u0") == 200
        assert len(owed.debts) == 1
        assert owed.debts[0].host is not None
        clock.ahead = 0.0  # NTP steps the host clock right
        clock.blocked = False
        assert await eventually(lambda: not owed.debts)
        free, exp, lapsed = await _free_credits(redis_url, app)
        assert (exp, lapsed) == (free_exp, 0)
        assert 0 < free < 5 * USD  # the debt was charged to them, not lapsed


def _dead_journal(state: Path, lines: list[str]) -> None:
    """The owed journal a dead process left in ``state``."""
    state.mkdir(parents=True, exist_ok=True)
    (state / "owed-1-dead.log").write_text("".join(f"{line}\n" for line in lines))


async def test_debt_taken_over_settles_by_the_dead_process_timer(
    redis_url: str, rclient: RedisClient, tmp_path: Path
) -> None:
    """A host debt in the journal of a dead process of this boot (its wall clock 2 h
    ahead then, right now) is settled as of its CLOCK_BOOTTIME reading, written in an
    ``H`` line (before: the line's timer was not kept and the debt was moved by the wall
    clock's offset now, nothing: settled 2 h ahead, the free credits lapsed)."""
    settings = make_settings(redis_url, tmp_path, fail_mode="open")
    ws = new_ws_id()
    app = f"{ws}_app1"
    free_exp = int((await redis_time(rclient) + 3600) * 1000)
    await seed(rclient, settings, ws, {app: {"product": "automation"}}, free=5 * USD,
               free_expires_ms=free_exp, pool=USD)  # fmt: skip
    dead = RedisClock(local=lambda: time.time() + AHEAD_S)  # the dead process's, unsynced
    stamp = dead.host_stamp()
    assert stamp is not None
    assert stamp.source == TIMER_SOURCE
    debt = Debt(app, "web", "u0", "", "dead.1", "m", dead(), "", stamp)
    state = Path(settings.state_dir)
    _dead_journal(state, journal_lines(debt))
    clock = RedisClock()
    owed = Owed(admitter(rclient, settings, clock), Metrics(CollectorRegistry()),
                timeout=settings.redis_timeout_s, state_dir=state)  # fmt: skip
    try:
        assert owed.recover() == 1
        assert owed.debts == [debt]
        assert await owed.settle()
        assert not owed.debts
    finally:
        await owed.close(0)
    free, exp, lapsed = await _free_credits(redis_url, app)
    assert (exp, lapsed) == (free_exp, 0)
    assert 0 < free < 5 * USD  # charged to them, not lapsed


async def test_sweeper_does_not_refund_by_an_unsynced_host_clock(
    client: RedisClient, redis_url: str
) -> None:
    """A reservation due in a minute by Redis's clock is not swept by a process whose
    host clock is 2 h ahead and not synced yet: it syncs first (before: swept at once,
    refunding a message still in flight)."""
    ws = new_ws_id()
    due_ms = int((await redis_time(client) + 60) * 1000)
    await client.zadd(keys.reservations_key(ws), {f"{ws}_app1:r1": due_ms})
    refunded: list[str] = []

    async def refund(app_id: str, rid: str) -> bool:
        refunded.append(rid)
        return True

    async def workspaces() -> list[str]:
        return [ws]

    clock = RedisClock(local=lambda: time.time() + AHEAD_S)
    sweeper = Sweeper(client, workspaces, refund, clock=clock)
    assert await sweeper.sweep_once() == 0
    assert refunded == []
    assert clock.synced
    assert await client.zscore(keys.reservations_key(ws), f"{ws}_app1:r1") == due_ms


async def test_clock_synced_gauge_is_0_until_the_first_sync(tmp_path: Path) -> None:
    """``creditgate_clock_synced`` has a sample before the first sync (the offset gauge
    has none): 0 while Redis is down at start-up, 1 once the clock follows Redis's."""
    server = start_redis(tmp_path / "r")
    server.stop()
    settings = make_settings(server.url, tmp_path)
    store = open_store(settings.store_url)
    await store.migrate()
    registry = CollectorRegistry()
    try:
        gw = create_app(settings, store=store, registry=registry)
        async with serve(gw.traffic, settings=settings):
            assert registry.get_sample_value("creditgate_clock_synced") == 0
            restarted = RedisServer(port=server.port, workdir=tmp_path / "r").start()
            try:
                assert await eventually(
                    lambda: registry.get_sample_value("creditgate_clock_synced") == 1,
                    within_s=30,
                )
            finally:
                restarted.stop()
    finally:
        await store.close()
