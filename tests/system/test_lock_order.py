"""Admin writes that lock several rows take them in one order (meter/store/apps.py), so
two of them never wait for each other in a cycle: on PostgreSQL a cycle is a deadlock,
one of the two aborted (SQLSTATE 40P01) and its request answered 503 though nothing
was wrong with it.

Real sockets, a real redis-server and a real PostgreSQL (SQLite's writers take the one
write lock up front: no cycle is possible there). The interleaving is forced, not timed:
one transaction is held before a statement with its locks taken; the other is let run
until PostgreSQL reports it waiting for a lock; then the first is let go.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.webhooks import WebhookOptions
from tests.support.adminkit import Admin, admin_server
from tests.support.held_call import started
from tests.support.held_sql import held_statement, until_waiting
from tests.support.settings import make_settings


@pytest.fixture
async def pg_admin(redis_url: str, pg_dsn: str, tmp_path: Path) -> AsyncIterator[Admin]:
    settings = make_settings(redis_url, store_url=pg_dsn, operator=True)
    async with admin_server(settings, webhooks=WebhookOptions(poll_s=3600)) as a:
        yield a


async def test_a_new_offer_and_the_invitees_removal_from_the_workspace(pg_admin: Admin) -> None:
    """Alice offers Carol another role on her app (the open offer is replaced: deleted,
    then a new one inserted) while the workspace owner removes Carol from the workspace.
    The new offer's insert checks its workspace key (a share lock on the workspace row);
    the removal holds that row and waits for the old offer's row, which the offer's
    transaction deleted: on the old code a cycle, one request aborted as a deadlock (503
    store_unavailable). Both must land: the removal after the offer, taking it with it."""
    a = pg_admin
    owner, ws = await a.owner_workspace()
    alice, carol = await a.new_members(ws, owner, "alice", "carol")
    app = await a.new_app(alice[1], ws, "http://127.0.0.1:9/bot")
    path = f"/v1/apps/{app}/collaborators"
    await a.ok("POST", path, alice[1], {"user_id": carol[0], "role": "viewer"})
    async with held_statement(a.store, "INSERT INTO invitations") as (reached, release):
        offer = asyncio.ensure_future(
            a.api("POST", path, alice[1], {"user_id": carol[0], "role": "developer"})
        )
        await started(offer, reached)  # held with the old offer deleted, locks taken
        removal = asyncio.ensure_future(
            a.api("DELETE", f"/v1/workspaces/{ws}/members/{carol[0]}", owner)
        )
        await until_waiting(a.store, removal)  # queued behind the offer's locks
        release()
        (offered, body), (removed, gone) = await offer, await removal
    assert 200 <= offered < 300, body
    assert removed == 204, gone
    assert not await a.store.is_member(ws, carol[0])
    listed = await a.ok("GET", "/v1/invitations", carol[1])
    assert listed["invitations"] == []  # the removal took the new offer with it


async def test_a_removal_that_loses_a_deadlock_is_retried(pg_admin: Admin) -> None:
    """During a rolling deploy a gateway of before the lock order still offers a role the
    old way: the app's row, the replaced offer's, then the workspace's (its insert's key
    check). Played here by a transaction of the test's own, which never gives up first
    (a long ``deadlock_timeout``): the removal of that member, waiting first, is the one
    PostgreSQL aborts (40P01). It is run again, not answered 503: 204, once the other
    transaction is through."""
    a = pg_admin
    owner, ws = await a.owner_workspace()
    alice, carol = await a.new_members(ws, owner, "alice", "carol")
    app = await a.new_app(alice[1], ws, "http://127.0.0.1:9/bot")
    offer = {"user_id": carol[0], "role": "viewer"}
    await a.ok("POST", f"/v1/apps/{app}/collaborators", alice[1], offer)
    locked, go = asyncio.Event(), asyncio.Event()

    async def older_gateway() -> None:
        async with a.store.transaction() as c:
            await c.execute("SET LOCAL deadlock_timeout = '1h'")
            await c.fetch("SELECT id FROM apps WHERE id = ? FOR UPDATE", app)
            sql = "SELECT id FROM invitations WHERE target = ? AND user_id = ? FOR UPDATE"
            assert await c.fetch(sql, app, carol[0])
            locked.set()
            await go.wait()
            await c.fetch("SELECT id FROM workspaces WHERE id = ? FOR KEY SHARE", ws)

    other = asyncio.ensure_future(older_gateway())
    await locked.wait()
    removal = asyncio.ensure_future(
        a.api("DELETE", f"/v1/workspaces/{ws}/members/{carol[0]}", owner)
    )
    await until_waiting(a.store, removal)  # holds the workspace, waits for the offer
    go.set()
    await other  # the removal was aborted (the cycle broken), else this never returns
    status, body = await removal
    assert status == 204, body
    assert not await a.store.is_member(ws, carol[0])
    assert (await a.ok("GET", "/v1/invitations", carol[1]))["invitations"] == []


async def test_an_offer_declined_while_another_role_replaces_it(pg_admin: Admin) -> None:
    """Alice offers Carol viewer, then developer: that second offer read the viewer offer
    under the app's lock and is held before it replaces it; Carol declines the viewer
    offer meanwhile (a decline locks no app). The old code read the offer unlocked: the
    decline went through (200), and the second offer was audited as an update of the
    declined one (before: viewer). Read locked, the decline waits; the offer replaces
    the viewer one, and the decline of a replaced offer is 404."""
    a = pg_admin
    owner, ws = await a.owner_workspace()
    alice, carol = await a.new_user("alice"), await a.new_user("carol")
    await a.join(ws, owner, alice)
    await a.join(ws, owner, carol)
    app = await a.new_app(alice[1], ws, "http://127.0.0.1:9/bot")
    path = f"/v1/apps/{app}/collaborators"
    await a.ok("POST", path, alice[1], {"user_id": carol[0], "role": "viewer"})
    (viewer,) = (await a.ok("GET", "/v1/invitations", carol[1]))["invitations"]
    async with held_statement(a.store, "DELETE FROM invitations WHERE target") as (reached, go):
        offer = asyncio.ensure_future(
            a.api("POST", path, alice[1], {"user_id": carol[0], "role": "developer"})
        )
        await started(offer, reached)  # read the viewer offer; replaces it next
        decline = asyncio.ensure_future(
            a.api("POST", f"/v1/invitations/{viewer['id']}/decline", carol[1])
        )
        await until_waiting(a.store, decline)  # on the offer's row (the old code: 200)
        go()
    status, body = await offer
    assert status in (200, 201), body
    assert (await decline)[0] == 404  # it named the replaced offer
    (held,) = (await a.ok("GET", "/v1/invitations", carol[1]))["invitations"]
    assert held["role"] == "developer"
    trail = await a.store.list_audit(target=f"app:{app}")
    offers = [(e.action, e.before) for e in reversed(trail) if "invitation" in e.action]
    assert offers == [
        ("invitation.create", None),
        ("invitation.update", {"user_id": carol[0], "role": "viewer"}),
    ]
