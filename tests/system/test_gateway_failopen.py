"""Fail mode ``open``: with Redis down the gateway serves anyway, remembers what it owes,
and settles exactly the served messages once Redis answers again.

Redis is killed, not paused: every call fails at once (connection refused), so these
tests keep make_settings' patient Redis timeout. With 0.3 s, a call made while Redis was
still up (the warm-up admission, the first /readyz, the 409 after the outage) could time
out on a busy machine and be served owed, counting one debt too many.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp

from gateway.appkeys import OWED
from meter.accounts.projection import read_balances
from meter.accounts.seeding import seed
from meter.redis_layer.client import RedisClient, connect
from tests.support.bot import Bot, eventually, running_gateway
from tests.support.servers import RedisServer
from tests.support.settings import make_settings

WS = "failopen"
APP = f"{WS}_app1"
CENT = 10_000  # contact_center: $0.01 per request
FUNDS = 100 * CENT


async def test_served_while_redis_down_then_settled_exactly(
    redis_url: str,
    redis_server: RedisServer,
    tmp_path: Path,
    rclient: RedisClient,
    bot: Bot,
    http: aiohttp.ClientSession,
) -> None:
    settings = make_settings(redis_url, tmp_path, fail_mode="open")
    apps = {APP: {"product": "contact_center", "upstream_url": bot.url, "funds": FUNDS}}
    await seed(rclient, settings, WS, apps)
    async with running_gateway(settings) as gw:
        owed = gw.gateway.traffic[OWED]

        async def send(key: str) -> int:
            headers = {"X-Channel-User-Id": "u1", "Idempotency-Key": key}
            async with http.post(f"{gw.url}/hooks/web/{APP}", headers=headers) as resp:
                await resp.read()
                return resp.status

        assert await send("warm") == 200  # charged normally, caches the upstream
        redis_server.kill()
        try:
            statuses = [await send(f"k{i}") for i in range(6)]
            statuses.append(await send("k0"))  # a retried delivery: owed, charged once
            assert statuses == [200] * 7
            assert bot.count() == 8
            assert len(owed.debts) == 7
        finally:
            redis_server.start()
        # Redis restarted empty (no persistence): the projection is rebuilt with the
        # balances it had. Until then, settlement keeps the debts (unknown app).
        for _ in range(3):  # the first attempt may meet a connection the restart killed
            if await owed.settle():
                break
        assert len(owed.debts) == 7
        fresh = connect(redis_url)  # the old client's connections died with the server
        try:
            await seed(fresh, settings, WS, {**apps, APP: {**apps[APP], "funds": FUNDS - CENT}})
            assert await eventually(lambda: len(owed) == 0)
            balance = (await read_balances(fresh, WS)).app[APP]
        finally:
            await fresh.aclose()
        assert balance == FUNDS - CENT - 6 * CENT
        async with http.get(f"{gw.admin_url}/metrics") as resp:
            text = await resp.text()
        assert "creditgate_unsettled_admissions 0.0" in text
        assert 'creditgate_requests_total{channel="web",outcome="admitted"} 8.0' in text


async def test_a_key_reused_for_other_messages_during_an_outage_buys_nothing(
    redis_url: str,
    redis_server: RedisServer,
    tmp_path: Path,
    rclient: RedisClient,
    bot: Bot,
    http: aiohttp.ClientSession,
) -> None:
    """Served under one key while Redis is down, other messages are each charged (a
    redelivery of the first, once), and the key stays bound to its first message after."""
    settings = make_settings(redis_url, tmp_path, fail_mode="open", idempotency_max_deliveries=2)
    apps = {APP: {"product": "contact_center", "upstream_url": bot.url, "funds": FUNDS}}
    await seed(rclient, settings, WS, apps)
    async with running_gateway(settings) as gw:
        owed = gw.gateway.traffic[OWED]

        async def send(key: str, body: str) -> int:
            headers = {"X-Channel-User-Id": "u1", "Idempotency-Key": key}
            url = f"{gw.url}/hooks/web/{APP}"
            async with http.post(url, headers=headers, data=body) as resp:
                await resp.read()
                return resp.status

        assert await send("warm", "hello") == 200  # charged normally, caches the upstream
        redis_server.kill()
        try:
            # A, a redelivery of A, B and C under one key; then A twice more: its third
            # and fourth deliveries, over the limit (2), served all the same.
            bodies = ["question A", "question A", "question B", "question C"]
            bodies += ["question A", "question A"]
            statuses = [await send("K", body) for body in bodies]
            assert statuses == [200] * 6
            assert len(owed.debts) == 6
        finally:
            redis_server.start()
        fresh = connect(redis_url)
        try:
            await seed(fresh, settings, WS, {**apps, APP: {**apps[APP], "funds": FUNDS - CENT}})
            assert await eventually(lambda: len(owed) == 0)
            balance = (await read_balances(fresh, WS)).app[APP]
            # A once, B and C each, the two deliveries over the limit each.
            assert balance == FUNDS - CENT - 5 * CENT
            # The key's record names its first message: another one is refused now.
            assert await send("K", "question D") == 409
            assert (await read_balances(fresh, WS)).app[APP] == balance
        finally:
            await fresh.aclose()


async def test_an_app_suspended_and_broke_after_an_outage_pays_what_it_was_served(
    redis_url: str,
    redis_server: RedisServer,
    tmp_path: Path,
    rclient: RedisClient,
    bot: Bot,
    http: aiohttp.ClientSession,
) -> None:
    """Suspending the app as Redis comes back cancels nothing: every message served
    during the outage is charged, what the balances cannot pay is owed below zero."""
    settings = make_settings(redis_url, tmp_path, fail_mode="open")
    apps = {APP: {"product": "contact_center", "upstream_url": bot.url, "funds": FUNDS}}
    await seed(rclient, settings, WS, apps)
    async with running_gateway(settings) as gw:
        owed = gw.gateway.traffic[OWED]

        async def send(user: str) -> int:
            headers = {"X-Channel-User-Id": user}
            async with http.post(f"{gw.url}/hooks/web/{APP}", headers=headers) as resp:
                await resp.read()
                return resp.status

        assert await send("warm") == 200  # charged normally, caches the upstream
        redis_server.kill()
        try:
            assert [await send(f"u{i}") for i in range(6)] == [200] * 6
            assert len(owed.debts) == 6
        finally:
            redis_server.start()
        fresh = connect(redis_url)
        try:
            # Back with the app suspended and 4 of the 6 messages' price left.
            app = {**apps[APP], "funds": 4 * CENT, "suspended": True}
            await seed(fresh, settings, WS, {APP: app})
            assert await eventually(lambda: len(owed) == 0)
            balances = await read_balances(fresh, WS)
        finally:
            await fresh.aclose()
        assert (balances.app[APP], balances.pool) == (0, -2 * CENT)
        async with http.get(f"{gw.admin_url}/metrics") as resp:
            text = await resp.text()
        assert f"creditgate_settled_on_credit_microdollars_total {2 * CENT}.0" in text
        assert 'creditgate_charged_microdollars_total{pool="pool"} 20000.0' in text


async def test_readyz_stays_ready_in_fail_open_but_not_in_fail_closed(
    redis_url: str, redis_server: RedisServer, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    for mode, degraded_status in (("open", 200), ("closed", 503)):
        settings = make_settings(redis_url, tmp_path, fail_mode=mode)
        async with running_gateway(settings) as gw:
            async with http.get(f"{gw.admin_url}/readyz") as resp:
                assert resp.status == 200
            redis_server.kill()
            try:
                async with http.get(f"{gw.admin_url}/readyz") as resp:
                    body = await resp.json(content_type=None)
                    assert resp.status == degraded_status
                    assert body["checks"]["redis"].startswith("error")
            finally:
                redis_server.start()
