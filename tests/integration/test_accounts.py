"""Accounts, apps, credits and plan-usage in the metering core (real Redis, real SQLite)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from config import load_catalog
from meter.accounts import (
    apps,
    authz,
    credits,
    invitations,
    projection,
    upgrade_requests,
    workspaces,
)
from meter.accounts.deps import Deps
from meter.accounts.plan_usage import plan_usage
from meter.errors import Conflict, Forbidden, InvalidInput, NotFound
from meter.redis_layer import keys
from meter.redis_layer.client import connect
from meter.store import Workspace, open_store
from tests.support.clock import Clock
from tests.support.metering import admitter as make_admitter
from tests.support.settings import make_settings

USD = 1_000_000


@pytest.fixture
async def deps(redis_url: str, tmp_path: Path) -> AsyncIterator[Deps]:
    store = open_store(f"sqlite:///{tmp_path}/store.db")
    await store.migrate()
    redis = connect(redis_url)
    # make_settings: its Redis timeout no busy machine reaches (tests below admit through
    # a real Admitter; the production 0.5 s could refuse them metering_unavailable).
    cfg = make_settings(operator_token="o" * 32)
    yield Deps(store, redis, cfg, load_catalog(), Clock())
    await redis.aclose()
    await store.close()


def with_settings(d: Deps, **overrides: Any) -> Deps:
    cfg = make_settings(operator_token="o" * 32, **overrides)
    return Deps(d.store, d.redis, cfg, d.catalog, d.clock)


async def owner_and_ws(d: Deps, name: str = "ada") -> tuple[str, Workspace]:
    user, _ = await workspaces.create_user(d, "operator", f"{name}@example.com", name.title())
    return user.id, await workspaces.create_workspace(d, user.id, "Acme")


async def test_user_token_is_stored_as_a_hash_only(deps: Deps) -> None:
    user, token = await workspaces.create_user(deps, "operator", "ada@example.com", "Ada")
    assert token.startswith("cgu_")
    assert token not in user.token_hash
    stored = await deps.store.get_user(user.id)
    assert stored is not None
    assert stored.token_hash == authz.token_hash(token)
    who = await authz.authenticate(deps.store, "o" * 32, f"Bearer {token}")
    assert who.user_id == user.id
    assert not who.operator
    assert (await authz.authenticate(deps.store, "o" * 32, "Bearer " + "o" * 32)).operator
    with pytest.raises(Conflict):
        await workspaces.create_user(deps, "operator", "ADA@example.com", "Ada again")


async def test_workspace_gets_free_credits_once_in_ledger_and_redis(deps: Deps) -> None:
    _, ws = await owner_and_ws(deps)
    assert keys.ID_RE.match(ws.id)
    entries = await deps.store.ledger_entries(ws.id)
    assert [(e.kind, e.amount, e.reference) for e in entries] == [
        ("grant_free", 500 * USD, f"free:{ws.id}")
    ]
    bal = await projection.read_balances(deps.redis, ws.id)
    assert (bal.plan, bal.free, bal.free_granted) == ("standard", 500 * USD, 500 * USD)
    assert bal.free_expires_ms == ws.free_expires_at == int((Clock().now + 90 * 86400) * 1000)
    await workspaces.project_workspace(deps, ws)  # a repeat (e.g. after a crash) adds nothing
    assert (await projection.read_balances(deps.redis, ws.id)).free == 500 * USD
    assert await deps.store.is_member(ws.id, ws.owner_id)


async def test_funds_are_idempotent_by_reference(deps: Deps) -> None:
    _, ws = await owner_and_ws(deps)
    first = await credits.add_funds(deps, "user:x", ws, "150.00", reference="inv-1")
    again = await credits.add_funds(deps, "user:x", ws, "150.00", reference="inv-1")
    assert first.created
    assert not again.created
    assert first.entry.reference == again.entry.reference == "funds:inv-1"
    assert (await projection.read_balances(deps.redis, ws.id)).pool == 150 * USD
    assert len(await deps.store.ledger_entries(ws.id, kind="topup")) == 1
    events = await deps.store.list_events(ws.id)
    assert [(e.event_type, e.payload["amount"]) for e in events] == [("funds.added", "150.00")]
    with pytest.raises(Conflict) as exc:
        await credits.add_funds(deps, "user:x", ws, "200.00", reference="inv-1")
    assert exc.value.field == "reference"
    audit = await deps.store.list_audit(target=f"workspace:{ws.id}")
    assert [a.action for a in audit].count("funds.add") == 1


async def test_funds_tied_to_an_app_and_their_limits(deps: Deps) -> None:
    owner, ws = await owner_and_ws(deps)
    app = await apps.create_app(deps, owner, ws, "Bot", "automation", None)
    await credits.add_funds(deps, "user:x", ws, "100", app_id=app.id, reference="a1")
    bal = await projection.read_balances(deps.redis, ws.id)
    assert bal.app == {app.id: 100 * USD}
    assert bal.pool == 0
    for bad in ("99.99", "20000.01", "-5", "1e3", "100.001", "NaN", "", "0100"):
        with pytest.raises(InvalidInput) as exc:
            await credits.add_funds(deps, "user:x", ws, bad, reference="bad")
        assert exc.value.field == "amount", bad
    with pytest.raises(InvalidInput, match="app_id"):
        await credits.add_funds(
            deps, "user:x", ws, "100.00", app_id=f"{ws.id}_nosuchapp", reference="a2"
        )
    small = with_settings(deps, topup_min="5.00", topup_max="10.00")
    assert (await credits.add_funds(small, "user:x", ws, "7.50", reference="a3")).entry.amount == (
        7_500_000
    )


async def test_upgrade_refuses_unlicensed_products_at_once(deps: Deps) -> None:
    owner, ws = await owner_and_ws(deps)
    bot = await apps.create_app(deps, owner, ws, "Bot", "automation", None)
    finder = await apps.create_app(deps, owner, ws, "Finder", "search", None)
    admitter = make_admitter(deps.redis, deps.settings, deps.clock)
    assert (await admitter.admit(bot.id, "slack", "U1")).admitted
    lic = {"search": projection.Licence(usage_limit=2, per_minute=10, per_hour=100)}
    upgraded = await workspaces.upgrade(deps, "operator", ws, lic)
    assert upgraded.type == "enterprise"
    refused = await admitter.admit(bot.id, "slack", "U2")
    assert refused.reason == "product_not_licensed"
    served = await admitter.admit(finder.id, "slack", "U3")
    assert served.admitted
    assert served.invoiced == 200_000
    assert served.charged == 0
    with pytest.raises(Forbidden) as exc:
        await apps.create_app(deps, owner, upgraded, "Agent", "agent", None)
    assert exc.value.code == "product_not_licensed"
    with pytest.raises(Conflict):
        await credits.add_funds(deps, "user:x", upgraded, "100.00", reference="e1")
    bad = {"search": projection.Licence(usage_limit=1, per_minute=10, per_hour=5)}
    with pytest.raises(InvalidInput, match="per_hour"):
        await workspaces.upgrade(deps, "operator", upgraded, bad)
    await admitter.close()


async def test_upgrade_grants_open_requests(deps: Deps) -> None:
    _, ws = await owner_and_ws(deps)
    req, _ = await upgrade_requests.request_upgrade(
        deps, "user:x", ws, ["search", "agent"], "please"
    )
    assert [r.id for r in await deps.store.list_upgrade_requests()] == [req.id]
    with pytest.raises(InvalidInput, match="products"):
        await upgrade_requests.request_upgrade(deps, "user:x", ws, ["search", "search"], None)
    await workspaces.upgrade(deps, "operator", ws, {"search": projection.Licence(5, 1, 2)})
    assert await deps.store.list_upgrade_requests() == []


async def test_app_changes_reach_redis_and_the_audit_log(deps: Deps) -> None:
    owner, ws = await owner_and_ws(deps)
    app = await apps.create_app(deps, owner, ws, "Bot", "automation", "http://127.0.0.1:1/b")
    assert keys.APP_RE.match(app.id)
    assert keys.workspace_of(app.id) == ws.id
    # The workspace's owner: the tenant whose share of connections its traffic takes.
    assert await deps.redis.hget(keys.ws_key(ws.id), "own") == owner.encode()
    ak = keys.app_key(ws.id, app.id)
    assert await deps.redis.hget(ak, "up") == b"http://127.0.0.1:1/b"
    changes = {"suspended": True, "upstream_url": None, "use_free_credits": False}
    await apps.update_app(deps, f"user:{owner}", app, changes, owner=None)
    fields = await deps.redis.hmget(ak, ["suspended", "up", "use_free"])
    assert fields == [b"1", b"", b"0"]
    admitter = make_admitter(deps.redis, deps.settings, deps.clock)
    assert (await admitter.admit(app.id, "slack", "U1")).reason == "app_suspended"
    await admitter.close()
    entry = (await deps.store.list_audit(target=f"app:{app.id}"))[0]
    assert entry.action == "app.update"
    assert entry.actor == f"user:{owner}"
    assert entry.before == {"suspended": False, "upstream_url": "http://127.0.0.1:1/b",
                            "use_free_credits": True}  # fmt: skip
    assert entry.after == changes
    with pytest.raises(InvalidInput, match="upstream_url"):
        await apps.update_app(deps, "x", app, {"upstream_url": "ftp://127.0.0.1/"}, owner=None)


async def accept_all(d: Deps, user_id: str) -> None:
    """The user accepts every invitation they hold."""
    for o in (await invitations.listing(d, user_id, None, 200)).items:
        await invitations.accept(d, user_id, o.invitation.id)


async def join(d: Deps, ws: Workspace, user_id: str) -> None:
    """``user_id`` becomes a member of ``ws``: invited by its owner, then accepted."""
    await invitations.invite_member(d, f"user:{ws.owner_id}", ws.owner_id, ws, user_id)
    await accept_all(d, user_id)


async def test_transfer_and_collaborators(deps: Deps) -> None:
    owner, ws = await owner_and_ws(deps)
    bob, _ = await workspaces.create_user(deps, "operator", "bob@example.com", "Bob")
    eve, _ = await workspaces.create_user(deps, "operator", "eve@example.com", "Eve")
    app = await apps.create_app(deps, owner, ws, "Bot", "automation", None)
    await invitations.invite_collaborator(deps, "x", owner, app, bob.id, "developer", owner=None)
    await accept_all(deps, bob.id)
    assert await deps.store.get_collaborator_role(app.id, bob.id) == "developer"
    with pytest.raises(InvalidInput, match="user_id"):
        await apps.transfer(deps, "x", app, bob.id, owner=None)  # not a member
    await join(deps, ws, bob.id)
    moved = await apps.transfer(deps, "x", app, bob.id, owner=None)
    assert moved.owner_id == bob.id
    assert await deps.store.get_collaborator_role(app.id, bob.id) is None
    principal = authz.Principal(user_id=bob.id)
    _, roles = await authz.authorize_app(deps.store, principal, app.id, "app.update")
    assert roles >= {"app_owner", "member"}
    with pytest.raises(InvalidInput, match="role"):
        await invitations.invite_collaborator(deps, "x", bob.id, moved, eve.id, "admin", owner=None)
    with pytest.raises(NotFound):
        await authz.authorize_app(deps.store, authz.Principal(eve.id), app.id, "app.read")


async def test_usage_scope_of_an_app_owner(deps: Deps) -> None:
    owner, ws = await owner_and_ws(deps)
    bob, _ = await workspaces.create_user(deps, "operator", "bob@example.com", "Bob")
    await join(deps, ws, bob.id)
    mine = await apps.create_app(deps, bob.id, ws, "Mine", "automation", None)
    theirs = await apps.create_app(deps, owner, ws, "Theirs", "automation", None)
    assert await authz.usage_scope(deps.store, authz.Principal(owner), ws.id, None) is None
    assert await authz.usage_scope(deps.store, authz.Principal(bob.id), ws.id, None) == [mine.id]
    with pytest.raises(Forbidden):
        await authz.usage_scope(deps.store, authz.Principal(bob.id), ws.id, theirs.id)


async def statuses(d: Deps, ws: Workspace) -> dict[str, str]:
    view = await plan_usage(d.store, d.redis, d.settings, d.catalog, ws, d.now_ms())
    return {a["name"]: a["status"] for a in view["apps"]}


async def test_plan_usage_statuses(deps: Deps) -> None:
    d = with_settings(deps, free_credits="60.00", topup_min="1.00")
    owner, ws = await owner_and_ws(d)
    free = await apps.create_app(d, owner, ws, "free", "automation", None)
    paid = await apps.create_app(d, owner, ws, "paid", "automation", None)
    await apps.update_app(d, "x", paid, {"use_free_credits": False}, owner=None)
    assert await statuses(d, ws) == {"free": "using_free_credits", "paid": "inactive"}
    await credits.add_funds(d, "x", ws, "100.00", app_id=paid.id, reference="p1")
    assert await statuses(d, ws) == {"free": "using_free_credits", "paid": "sufficient_funds"}
    admitter = make_admitter(d.redis, d.settings, d.clock)
    for i in range(60):  # $12 of sessions: free falls to $48, under the $50 threshold
        assert (await admitter.admit(free.id, "web", f"u{i}")).admitted
    await admitter.close()
    view = await plan_usage(d.store, d.redis, d.settings, d.catalog, ws, d.now_ms())
    assert view["free_credits"]["remaining"] == "48.00"
    assert view["usable_balance"] == "148.00"
    assert view["paid_balance"] == "100.00"
    assert view["allowed_sessions"] == 740
    by = {a["name"]: a for a in view["apps"]}
    # The paid app's funds are its own: the free app has $48 left, under the threshold.
    assert by["free"]["status"] == "low_balance"
    assert by["free"]["remaining"] == "48.00"
    assert by["paid"]["remaining"] == "100.00"
    assert by["paid"]["allowed_units"] == 500
    assert view["paid_apps"] == 1
    assert view["inactive_apps"] == 0
    d.clock.advance(91 * 86400)  # type: ignore[attr-defined]
    view = await plan_usage(d.store, d.redis, d.settings, d.catalog, ws, d.now_ms())
    assert view["free_credits"]["remaining"] == "0.00"
    assert view["free_credits"]["lapsed"] == "48.00"
    assert {a["name"]: a["status"] for a in view["apps"]} == {
        "free": "inactive",
        "paid": "sufficient_funds",
    }
    assert view["inactive_apps"] == 1
