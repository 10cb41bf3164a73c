"""A workspace rebuild racing an app write never leaves Redis with the app as it was
before the write: the write's projection finds the workspace missing and rebuilds it;
if another rebuild, made from a read of the store older than the write, lands first,
the write's own rebuild finds the workspace present and writes nothing, so the app is
written again from the store (the old code stopped there: traffic ran on the old
upstream or suspension until the projection check's next pass).

Real Redis, SQLite and PostgreSQL. The race is forced, not timed: the first rebuild is
held after reading the app, the write's rebuild before it looks at Redis; the first is
let go and lands, then the write's.

A channel secret set or removed is written into the app's hash alone, whether Redis
holds the workspace or not; a rebuild that read the channels before and lands after
rewrites the hash whole, undoing it (a secret set: the channel unauthenticated in
Redis; removed: still accepted), so a channel write rebuilds a lost workspace first.

A flush committed and acknowledged between a rebuild's read of the store and its script
left no claim for the script to see: the rebuilt balances lacked that batch's usage,
spendable again. The rebuild reads the workspace's count of acknowledged claims before
the store and is refused (read again) when it moved.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import pytest

from config import load_catalog
from meter.accounts import apps, channel_secrets, credits, projection, rebuild, workspaces
from meter.accounts.deps import Deps
from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient
from meter.store import App, Workspace
from meter.usage.flusher import Flusher
from tests.support.clock import Clock
from tests.support.flushkit import opened_store, store_url
from tests.support.held_call import held_call, started
from tests.support.metering import admitter
from tests.support.settings import make_settings

SECRET = "c" * 40


async def new_app(d: Deps) -> tuple[Workspace, App]:
    """Ada's workspace Acme and its app, made through the admin's operations."""
    user, _ = await workspaces.create_user(d, "operator", "ada@example.com", "Ada")
    ws = await workspaces.create_workspace(d, user.id, "Acme")
    return ws, await apps.create_app(d, user.id, ws, "bot", "automation", None)


async def paid_app(d: Deps) -> tuple[Workspace, App]:
    """:func:`new_app` on $100 of paid funds alone (no free credit)."""
    ws, app = await new_app(d)
    await apps.update_app(d, "operator", app, {"use_free_credits": False}, owner=None)
    await credits.add_funds(d, "operator", ws, "100.00", reference="bank-1")
    return ws, app


@pytest.fixture(params=["sqlite", "postgres"])
async def made(
    request: pytest.FixtureRequest, tmp_path: Path, rclient: RedisClient, redis_url: str
) -> AsyncIterator[tuple[Deps, App]]:
    """An app in a workspace Redis has lost (every key of it)."""
    url = store_url(request.param, request, tmp_path)
    cfg = make_settings(store_url=url, redis_url=redis_url, secret_key="k" * 32)
    async for store in opened_store(url):
        d = Deps(store, rclient, cfg, load_catalog(), Clock.past())
        ws, app = await new_app(d)
        async for k in rclient.scan_iter(match=f"cg:{{{ws.id}}}*"):
            await rclient.delete(k)
        yield d, app


async def test_a_rebuild_read_before_an_app_write_never_outlives_it(
    made: tuple[Deps, App],
) -> None:
    d, app = made
    ws, ak = app.workspace_id, keys.app_key(app.workspace_id, app.id)
    first = rebuild.rebuild_workspace  # the periodic check's, say (not held at its call)
    async with held_call(rebuild, "rebuild_workspace") as write_rebuilds:
        async with held_call(d.store, "list_app_channels") as read_app:
            check = asyncio.ensure_future(
                first(d.store, d.redis, d.settings, d.catalog, ws, now_s=d.clock())
            )
            await started(check, read_app)  # the app read: not suspended
            change = {"suspended": True}
            write = asyncio.ensure_future(apps.update_app(d, "operator", app, change, owner=None))
            await started(write, write_rebuilds)  # stored; found the workspace missing
        assert await check == "rebuilt"  # landed first, with the app as it read it
        assert await d.redis.hget(ak, "suspended") == b"0"
    updated = await write
    assert updated.suspended
    assert await d.redis.hget(ak, "suspended") == b"1"  # as the store holds it


async def rebuilt_around(d: Deps, app: App, change: Awaitable[Any]) -> None:
    """A rebuild reads the app's channels and is held; ``change`` runs to its end; then
    the rebuild is let go (it lands, or finds the workspace there by then)."""
    held = rebuild.rebuild_workspace(d.store, d.redis, d.settings, d.catalog, app.workspace_id)
    async with held_call(d.store, "list_app_channels", after=True) as read:
        check = asyncio.ensure_future(held)
        await started(check, read)
        await change
    await check


async def test_a_channel_set_during_a_rebuild_read_before_it_stays_set(
    made: tuple[Deps, App],
) -> None:
    d, app = made
    set_ = channel_secrets.set_channel(d, "operator", app, "web", SECRET, owner=None)
    await rebuilt_around(d, app, set_)
    stored = await d.store.get_app_channel(app.id, "web")
    assert stored is not None
    field = channel_secrets.field_of("web")
    ak = keys.app_key(app.workspace_id, app.id)
    assert await d.redis.hget(ak, field) == channel_secrets.projected(stored)


async def test_a_channel_removed_during_a_rebuild_read_before_it_stays_removed(
    made: tuple[Deps, App],
) -> None:
    d, app = made
    await channel_secrets.set_channel(d, "operator", app, "web", SECRET, owner=None)
    async for k in d.redis.scan_iter(match=f"cg:{{{app.workspace_id}}}*"):
        await d.redis.delete(k)  # lost again, with the secret
    removal = channel_secrets.remove_channel(d, "operator", app, "web", owner=None)
    await rebuilt_around(d, app, removal)
    ak = keys.app_key(app.workspace_id, app.id)
    assert await d.redis.hget(ak, channel_secrets.field_of("web")) is None


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_a_flush_landing_during_a_rebuild_read_is_not_lost(
    backend: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    rclient: RedisClient,
    redis_url: str,
) -> None:
    """$100 in the pool, 5 messages ($0.20 each) charged and flushed, then Redis loses the
    workspace's hash alone. A rebuild finds nothing pending, reads the store and is held;
    one message is refunded (refund.lua counts it in a new aggregate, as without the
    loss), the flusher commits that refund and acknowledges its claim; the rebuild goes
    on: the pool is $99.20, not the $99.00 of its read (the payer's $0.20 lost)."""
    url = store_url(backend, request, tmp_path)
    cfg = make_settings(fast_flush=True, store_url=url, redis_url=redis_url)
    clock = Clock.past()
    async for store in opened_store(url):
        d = Deps(store, rclient, cfg, load_catalog(), clock)
        ws, app = await paid_app(d)
        adm = admitter(rclient, cfg, clock)
        charged = [await adm.admit(app.id, "web", f"u{i}") for i in range(5)]
        assert all(c.admitted for c in charged)
        clock.advance(120)
        flusher = Flusher(rclient, store, cfg, clock=clock)
        await flusher.flush_once()
        assert (await store.usage_spent(ws.id)).shared == 5 * 200_000
        await rclient.delete(keys.ws_key(ws.id))  # the hash alone
        check = asyncio.ensure_future(
            rebuild.rebuild_workspace(store, rclient, cfg, d.catalog, ws.id, now_s=clock())
        )
        async with held_call(store, "usage_spent", after=True) as read:
            await started(check, read)  # the store read: 5 charges
            assert await adm.refund(app.id, charged[0])
            clock.advance(120)
            await flusher.flush_once()
            assert (await store.usage_spent(ws.id)).shared == 4 * 200_000  # committed, acked
        assert await check == "rebuilt"
        pool = (await projection.read_balances(rclient, ws.id)).pool
        assert pool == 100_000_000 - 4 * 200_000


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_a_flush_landing_during_a_rebuild_read_is_not_spent_again(
    backend: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    rclient: RedisClient,
    redis_url: str,
) -> None:
    """$100 in the pool, 5 messages ($0.20 each) charged and not flushed yet, then Redis
    loses the workspace's hash alone (its usage stays). A rebuild starts; should it read
    the store (the old code did, then looked for claims), it is held there while the
    flusher commits those 5 charges and acknowledges the claim. Either way it never
    makes the pool $100.00 again; the next rebuild makes it $99.00."""
    url = store_url(backend, request, tmp_path)
    cfg = make_settings(fast_flush=True, store_url=url, redis_url=redis_url)
    clock = Clock.past()
    async for store in opened_store(url):
        d = Deps(store, rclient, cfg, load_catalog(), clock)
        ws, app = await paid_app(d)
        adm = admitter(rclient, cfg, clock)
        for i in range(5):
            assert (await adm.admit(app.id, "web", f"u{i}")).admitted
        clock.advance(120)
        want = 100_000_000 - 5 * 200_000
        assert (await projection.read_balances(rclient, ws.id)).pool == want
        await rclient.delete(keys.ws_key(ws.id))  # the hash alone: its usage is still there
        args = (store, rclient, cfg, d.catalog, ws.id)
        flusher = Flusher(rclient, store, cfg, clock=clock)
        async with held_call(store, "usage_spent", after=True) as read:
            check = asyncio.ensure_future(rebuild.rebuild_workspace(*args, now_s=clock()))
            held = asyncio.ensure_future(read())
            await asyncio.wait([check, held], return_when=asyncio.FIRST_COMPLETED)
            if held.done():  # it read the store: the flush lands while it is held there
                await flusher.flush_once()
            held.cancel()
        await flusher.flush_once()  # (nothing left, if it ran above)
        assert (await store.usage_spent(ws.id)).shared == 5 * 200_000  # committed, acked
        if await check == "rebuilt":
            assert (await projection.read_balances(rclient, ws.id)).pool == want
        else:
            assert await check == "refused"
            assert await rebuild.rebuild_workspace(*args, now_s=clock()) == "rebuilt"
        assert (await projection.read_balances(rclient, ws.id)).pool == want
