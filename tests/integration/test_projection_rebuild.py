"""Redis losing part of its projection never hands out money: a workspace Redis lost is
rebuilt from the store (ledger minus the usage the store holds) by whichever path finds it
first, a grant whose marker is missing is applied only when it surely never was, and an
app re-projected keeps its channel secrets. Real Redis, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from config import Settings, load_catalog
from meter.accounts import apps, channel_secrets, credits, projection, projection_check, workspaces
from meter.accounts.deps import Deps
from meter.redis_layer import keys
from meter.redis_layer.billing_period import billing_period
from meter.redis_layer.client import RedisClient
from meter.store import App, LedgerEntry, Store, Workspace
from meter.usage.flusher import Flusher
from meter.usage.reconcile import reconcile
from tests.support.clock import Clock
from tests.support.flushkit import USD, opened_store, store_url
from tests.support.metering import admitter
from tests.support.settings import make_settings

SLACK = "s" * 40


@dataclass
class World:
    d: Deps
    store: Store
    redis: RedisClient
    cfg: Settings
    clock: Clock
    user: str
    ws: Workspace
    app: App


@pytest.fixture
async def w(
    request: pytest.FixtureRequest, tmp_path: Path, rclient: RedisClient, redis_url: str
) -> AsyncIterator[World]:
    """A workspace with $10 free credits, $100 in its pool, $100 tied to its app, and the
    app's Slack secret; 700 messages ($140) charged and flushed: free $0, app and pool
    what the deduction order left (the store says which)."""
    backend = getattr(request, "param", "sqlite")
    url = store_url(backend, request, tmp_path)
    cfg = make_settings(
        fast_flush=True, store_url=url, redis_url=redis_url, free_credits="10.00",
        secret_key="k" * 32,
    )  # fmt: skip
    clock = Clock.past()
    async for store in opened_store(url):
        d = Deps(store, rclient, cfg, load_catalog(), clock)
        user, _ = await workspaces.create_user(d, "operator", "ada@example.com", "Ada")
        ws = await workspaces.create_workspace(d, user.id, "Acme")
        app = await apps.create_app(d, user.id, ws, "bot", "automation", None)
        await credits.add_funds(d, "operator", ws, "100.00", reference="bank-1")
        await credits.add_funds(d, "operator", ws, "100.00", app_id=app.id, reference="bank-2")
        await channel_secrets.set_channel(d, "operator", app, "slack", SLACK, owner=None)
        adm = admitter(rclient, cfg, clock)
        for i in range(700):
            assert (await adm.admit(app.id, "web", f"u{i}")).admitted
            clock.advance(0.1)
        clock.advance(120)
        await Flusher(rclient, store, cfg, clock=clock).flush_once()
        assert await rclient.zcard(keys.agg_index_key(ws.id)) == 0
        yield World(d, store, rclient, cfg, clock, user.id, ws, app)


def snapshot(b: projection.Balances) -> dict[str, int]:
    return {
        "free": b.free, "free_granted": b.free_granted, "lapsed": b.lapsed, "pool": b.pool,
        **{f"app:{a}": v for a, v in b.app.items()},
    }  # fmt: skip


async def balances(w: World) -> dict[str, int]:
    return snapshot(await projection.read_balances(w.redis, w.ws.id))


async def lose_workspace(w: World) -> None:
    """Redis loses every key of the workspace (restart without persistence, failover)."""
    async for k in w.redis.scan_iter(match=f"cg:{{{w.ws.id}}}*"):
        await w.redis.delete(k)


async def expected(w: World) -> dict[str, int]:
    """Ledger minus the usage the store holds, per pool, checked against the exact sums:
    $210 credited, 700 x $0.20 spent, free first."""
    ledger, spent = await w.store.ledger_balance(w.ws.id), await w.store.usage_spent(w.ws.id)
    want = {
        "free": ledger.free - spent.free, "free_granted": 10 * USD, "lapsed": 0,
        "pool": ledger.shared - spent.shared,
        f"app:{w.app.id}": ledger.apps[w.app.id] - spent.apps.get(w.app.id, 0),
    }  # fmt: skip
    assert want["free"] == 0
    assert want["pool"] + want[f"app:{w.app.id}"] == 210 * USD - 700 * 200_000
    return want


@pytest.mark.parametrize("w", ["sqlite", "postgres"], indirect=True)
async def test_owner_patch_after_a_loss_rebuilds_balances_from_the_store(w: World) -> None:
    before = await balances(w)
    assert before == await expected(w)
    await lose_workspace(w)
    # The owner's PATCH of the threshold, the periodic check and another replica's check
    # all find the workspace missing at once: one rebuild, nothing added twice.
    updated, *_ = await asyncio.gather(
        workspaces.set_low_balance_threshold(w.d, f"user:{w.user}", w.ws, 10 * USD),
        projection_check.check_workspace(w.d, w.ws.id),
        projection_check.check_workspace(w.d, w.ws.id),
    )
    assert await balances(w) == before
    assert await w.redis.hget(keys.ws_key(w.ws.id), "lowt") == str(10 * USD).encode()
    assert await projection_check.check_workspace(w.d, w.ws.id) == {}
    # The grants are marked applied: a retried top-up and the check credit nothing.
    await credits.add_funds(w.d, "operator", updated, "100.00", reference="bank-1")
    assert await balances(w) == before
    # The Slack secret came back with the app; admission charges again, from the rebuilt
    # balances.
    field = channel_secrets.field_of("slack")
    assert await w.redis.hget(keys.app_key(w.ws.id, w.app.id), field) is not None
    adm = admitter(w.redis, w.cfg, w.clock)
    assert (await adm.admit(w.app.id, "web", "after")).admitted
    after = await balances(w)
    assert sum(after.values()) == sum(before.values()) - 200_000


@pytest.mark.parametrize("w", ["sqlite", "postgres"], indirect=True)
async def test_the_periodic_check_rebuilds_a_lost_workspace_exactly(w: World) -> None:
    before = await balances(w)
    await lose_workspace(w)
    assert await projection_check.check_workspace(w.d, w.ws.id) == {"workspace_rebuilt": 1}
    assert await balances(w) == before == await expected(w)
    assert await w.redis.hget(keys.ws_key(w.ws.id), "own") == w.ws.owner_id.encode()
    (rep,) = await reconcile(w.store, w.redis, w.cfg, workspace=w.ws.id)
    assert rep.differences == []
    # Ids restart above any used before (10^15 and up): claims of new usage are still
    # acked and leave nothing behind, and the store agrees with Redis again.
    adm = admitter(w.redis, w.cfg, w.clock)
    for i in range(3):
        assert (await adm.admit(w.app.id, "web", f"after{i}")).admitted
    w.clock.advance(120)
    await Flusher(w.redis, w.store, w.cfg, clock=w.clock).flush_once()
    assert [k async for k in w.redis.scan_iter(match=f"{keys.ws_prefix(w.ws.id)}:c:*")] == []
    (rep,) = await reconcile(w.store, w.redis, w.cfg, workspace=w.ws.id)
    assert rep.differences == []
    assert sum((await balances(w)).values()) == sum(before.values()) - 3 * 200_000


async def test_no_rebuild_while_redis_holds_usage_the_store_has_not(w: World) -> None:
    adm = admitter(w.redis, w.cfg, w.clock)
    for i in range(5):
        assert (await adm.admit(w.app.id, "web", f"late{i}")).admitted
    live = await balances(w)
    await w.redis.delete(keys.ws_key(w.ws.id))  # the hash alone: its usage is still there
    assert await projection_check.check_workspace(w.d, w.ws.id) == {"workspace_missing": 1}
    assert not await w.redis.exists(keys.ws_key(w.ws.id))
    # A PATCH meanwhile changes the store only: no half-built workspace in Redis.
    await workspaces.set_low_balance_threshold(w.d, f"user:{w.user}", w.ws, 10 * USD)
    assert not await w.redis.exists(keys.ws_key(w.ws.id))
    # Once the flusher moved that usage to the store, the next pass rebuilds it exactly.
    w.clock.advance(120)
    await Flusher(w.redis, w.store, w.cfg, clock=w.clock).flush_once()
    assert await projection_check.check_workspace(w.d, w.ws.id) == {"workspace_rebuilt": 1}
    assert await balances(w) == live


async def test_a_lost_marker_key_credits_nothing(w: World) -> None:
    """Eviction takes whole keys: the marker key of an earlier version gone alone."""
    before = await balances(w)
    for ref in (workspaces.free_reference(w.ws.id), "funds:bank-1", "funds:bank-2"):
        await w.redis.delete(keys.grant_marker_key(w.ws.id, ref))
    assert await projection_check.check_workspace(w.d, w.ws.id) == {}
    assert await balances(w) == before


async def test_an_earlier_versions_workspace_without_markers_is_not_credited(w: World) -> None:
    """A workspace projected by an earlier version (markers as keys only) whose marker
    keys are gone: taken as applied, markers restored, nothing credited, an error logged."""
    before = await balances(w)
    wk = keys.ws_key(w.ws.id)
    refs = [workspaces.free_reference(w.ws.id), "funds:bank-1", "funds:bank-2"]
    await w.redis.hdel(wk, keys.F_MARKED, *(keys.grant_field(r) for r in refs))
    await w.redis.delete(*(keys.grant_marker_key(w.ws.id, r) for r in refs[:2]))
    # Grants this recent may be being applied right now: left for a later pass.
    assert await projection_check.check_workspace(w.d, w.ws.id) == {}
    assert not await w.redis.hexists(wk, keys.F_MARKED)
    w.clock.advance(projection_check.LEGACY_GRACE_MS / 1000)
    assert await projection_check.check_workspace(w.d, w.ws.id) == {"grant_marker": 2}
    assert await balances(w) == before
    assert (
        await w.redis.hmget(wk, [keys.F_MARKED, *(keys.grant_field(r) for r in refs)]) == [b"1"] * 4
    )
    assert await projection_check.check_workspace(w.d, w.ws.id) == {}
    assert await balances(w) == before


async def test_a_grant_never_applied_is_applied_once(w: World) -> None:
    """The marker lives in the hash it credits: missing there, the grant never arrived."""
    before = await balances(w)
    await w.store.add_ledger_entry(
        LedgerEntry(w.ws.id, "topup", 25 * USD, "funds:bank-3", w.d.now_ms())
    )
    assert await projection_check.check_workspace(w.d, w.ws.id) == {"grant": 1}
    assert await projection_check.check_workspace(w.d, w.ws.id) == {}
    assert await balances(w) == {**before, "pool": before["pool"] + 25 * USD}


async def test_an_app_written_again_keeps_its_channel_secret(w: World) -> None:
    ak, field = keys.app_key(w.ws.id, w.app.id), channel_secrets.field_of("slack")
    secret = await w.redis.hget(ak, field)
    assert secret is not None
    # The secret alone lost: the check sees the difference and restores it.
    await w.redis.hdel(ak, field)
    assert await projection_check.check_workspace(w.d, w.ws.id) == {"app": 1}
    assert await w.redis.hget(ak, field) == secret
    # The same with the secrets read once for a whole pass (as the periodic loop does).
    await w.redis.hdel(ak, field)
    by_app = {w.app.id: await w.store.list_app_channels(w.app.id)}
    assert await projection_check.check_workspace(w.d, w.ws.id, by_app) == {"app": 1}
    assert await w.redis.hget(ak, field) == secret
    # An owner's change re-projects the app with its secret.
    await w.redis.hdel(ak, field)
    await apps.update_app(w.d, f"user:{w.user}", w.app, {"suspended": False}, owner=None)
    assert await w.redis.hget(ak, field) == secret
    # reconcile --apply restores it on an app Redis still holds.
    await w.redis.hdel(ak, field)
    await reconcile(w.store, w.redis, w.cfg, workspace=w.ws.id, apply=True)
    assert await w.redis.hget(ak, field) == secret


async def test_an_app_with_funds_lost_alone_waits_for_reconcile(w: World) -> None:
    """Its balance is unknown under live traffic: not written again with $0, left to
    ``reconcile --apply``, which restores it exactly (and its secret)."""
    before = await balances(w)
    ak = keys.app_key(w.ws.id, w.app.id)
    await w.redis.delete(ak)
    await apps.update_app(w.d, f"user:{w.user}", w.app, {"suspended": False}, owner=None)
    assert not await w.redis.exists(ak)
    (rep,) = await reconcile(w.store, w.redis, w.cfg, workspace=w.ws.id, apply=True)
    assert rep.applied
    assert await balances(w) == before
    assert await w.redis.hget(ak, channel_secrets.field_of("slack")) is not None


async def test_an_enterprise_workspace_keeps_its_licences_and_usage_counted(w: World) -> None:
    """The month's licensed usage is rebuilt from the store too: a lost counter starting
    at 0 would let the workspace run past its licence."""
    lic = {"automation": projection.Licence(100_000, 600, 18_000)}
    ws = await workspaces.upgrade(w.d, "operator", w.ws, lic)
    adm = admitter(w.redis, w.cfg, w.clock)
    for i in range(7):
        assert (await adm.admit(w.app.id, "web", f"ent{i}")).admitted
    w.clock.advance(120)
    await Flusher(w.redis, w.store, w.cfg, clock=w.clock).flush_once()
    lu = keys.usage_limit_key(ws.id, "automation", billing_period(w.clock.now))
    counted = await w.redis.get(lu)
    assert counted == b"7"  # the 700 prepaid messages of the month are not licensed usage
    await lose_workspace(w)
    assert await projection_check.check_workspace(w.d, ws.id) == {"workspace_rebuilt": 1}
    assert await w.redis.get(lu) == counted
    assert await w.redis.hget(keys.ws_key(ws.id), "type") == b"enterprise"
    assert await w.redis.hget(keys.ws_key(ws.id), "l:automation") == b"100000,600,18000"


async def test_an_earlier_versions_workspace_is_given_its_owner(w: World) -> None:
    """A workspace projected before ``own`` was kept has none (its traffic a tenant of its
    own, not its owner's): the periodic check writes it, and only that changes."""
    wk = keys.ws_key(w.ws.id)
    assert await w.redis.hget(wk, "own") == w.user.encode()
    before = await balances(w)
    await w.redis.hdel(wk, "own")
    assert await projection_check.check_workspace(w.d, w.ws.id) == {"workspace": 1}
    assert await w.redis.hget(wk, "own") == w.user.encode()
    assert await balances(w) == before
    assert await projection_check.check_workspace(w.d, w.ws.id) == {}
