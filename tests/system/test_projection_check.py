"""The periodic projection check: where an admin change reached the store but not Redis,
Redis is repaired from the store, each repair once, and counted in /metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from gateway.appkeys import CATALOG
from meter.accounts import projection_check
from meter.accounts.deps import Deps
from meter.redis_layer import keys
from meter.store import LedgerEntry, Licence
from tests.support.adminkit import Admin, admin_server, admin_settings
from tests.support.bot import Bot


def deps(admin: Admin) -> Deps:
    return Deps(admin.store, admin.redis, admin.settings, admin.gateway.admin[CATALOG])


async def setup(admin: Admin, bot: Bot) -> tuple[str, str]:
    token, ws = await admin.owner_workspace("owner", "shop")
    app = await admin.new_app(token, ws, bot.url)
    return ws, app


@pytest.fixture
async def admin(redis_url: str, tmp_path: Path) -> AsyncIterator[Admin]:
    async with admin_server(admin_settings(redis_url, tmp_path)) as a:
        yield a


async def test_store_changes_that_missed_redis_are_repaired_once(admin: Admin, bot: Bot) -> None:
    ws, app = await setup(admin, bot)
    d = deps(admin)
    assert await projection_check.check_workspace(d, ws) == {}
    # Store writes whose Redis projection failed: an app suspended, a top-up recorded
    # in the ledger, a licence granted.
    await admin.store.update_app(app, suspended=True, shadow=True)
    topup = LedgerEntry(ws, "topup", 25_000_000, "bank-transfer-7", int(time.time() * 1000))
    assert await admin.store.add_ledger_entry(topup)
    await admin.store.set_licences(ws, [Licence(ws, "search", 1000, 10, 100)])
    wk = keys.ws_key(ws)
    paid0 = int(await admin.redis.hget(wk, keys.F_POOL) or 0)
    repaired = await projection_check.check_workspace(d, ws)
    assert repaired == {"app": 1, "grant": 1, "workspace": 1}
    ak = keys.app_key(ws, app)
    assert await admin.redis.hmget(ak, ["suspended", "shadow"]) == [b"1", b"1"]
    assert int(await admin.redis.hget(wk, keys.F_POOL) or 0) == paid0 + 25_000_000
    assert await admin.redis.hget(wk, "l:search") == b"1000,10,100"
    # Nothing left to repair: a second pass changes nothing, the top-up is not doubled.
    assert await projection_check.check_workspace(d, ws) == {}
    assert int(await admin.redis.hget(wk, keys.F_POOL) or 0) == paid0 + 25_000_000


async def test_a_workspace_redis_lost_is_rebuilt_from_the_store(admin: Admin, bot: Bot) -> None:
    """Not from its grants alone: tests/integration/test_projection_rebuild.py spends first."""
    ws, _ = await setup(admin, bot)
    wk = keys.ws_key(ws)
    before = await admin.redis.hmget(wk, ["free", "free_granted", keys.F_POOL, keys.F_APPS])
    await admin.redis.delete(wk)
    assert await projection_check.check_workspace(deps(admin), ws) == {"workspace_rebuilt": 1}
    after = await admin.redis.hmget(wk, ["free", "free_granted", keys.F_POOL, keys.F_APPS])
    assert after == before == [b"500000000", b"500000000", b"0", b"0"]
    assert await projection_check.check_workspace(deps(admin), ws) == {}


async def test_the_check_runs_beside_the_flusher_and_counts_in_metrics(
    redis_url: str, tmp_path: Path, bot: Bot, http: aiohttp.ClientSession
) -> None:
    settings = admin_settings(
        redis_url,
        tmp_path,
        projection_check_interval_s=0.2,
        state_dir=str(tmp_path / "state"),
    )
    async with admin_server(settings, run_flusher=True) as admin:
        ws, app = await setup(admin, bot)
        await admin.store.update_app(app, suspended=True)
        ak = keys.app_key(ws, app)
        for _ in range(1200):
            if await admin.redis.hget(ak, "suspended") == b"1":
                break
            await asyncio.sleep(0.05)
        assert await admin.redis.hget(ak, "suspended") == b"1"
        async with http.get(f"{admin.url}/metrics") as resp:
            text = await resp.text()
        assert 'creditgate_projection_repairs_total{kind="app"} 1.0' in text
