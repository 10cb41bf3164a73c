"""Removing a member races with that member creating an app, or being handed one
(DESIGN.md section 3: a member who owns apps cannot be removed). Two gateways (two
stores on one database, real SQLite and PostgreSQL, real Redis) run both requests at
once, round after round: exactly one wins, and no app is ever owned by a non-member."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from config import load_catalog
from meter.accounts import apps, workspaces
from meter.accounts.deps import Deps
from meter.errors import Conflict, InvalidInput, NotFound
from meter.redis_layer.client import connect
from meter.store import Workspace, open_store
from tests.support.clock import Clock
from tests.support.settings import make_settings

ROUNDS = 24


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def gateways(
    request: pytest.FixtureRequest, redis_url: str, tmp_path: Path
) -> AsyncIterator[tuple[Deps, Deps]]:
    """Two gateways' dependencies: a store each on one database, one Redis."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/store.db"
    else:
        url = request.getfixturevalue("pg_dsn")
    first, second = open_store(url), open_store(url)
    await first.migrate()
    redis = connect(redis_url)
    cfg = make_settings(operator_token="o" * 32)  # the tests' Redis timeout, not 0.5 s
    catalog, clock = load_catalog(), Clock()
    yield Deps(first, redis, cfg, catalog, clock), Deps(second, redis, cfg, catalog, clock)
    await redis.aclose()
    await first.close()
    await second.close()


async def new_member(d: Deps, ws: Workspace, name: str) -> str:
    user, _ = await workspaces.create_user(d, "operator", f"{name}@example.com", name)
    assert await d.store.add_member(ws.id, user.id)
    return user.id


async def together(i: int, a: Awaitable[Any], b: Awaitable[Any]) -> tuple[Any, Any]:
    """Both at once, started in turn order by round (each may come first)."""
    if i % 2:
        second, first = await asyncio.gather(b, a, return_exceptions=True)
    else:
        first, second = await asyncio.gather(a, b, return_exceptions=True)
    return first, second


async def assert_owners_are_members(d: Deps, ws: Workspace) -> None:
    members = set(await d.store.list_members(ws.id))
    strays = [(a.id, a.owner_id) for a in await d.store.list_apps(ws.id)]
    assert [s for s in strays if s[1] not in members] == []


def refused_as_owner(outcome: object) -> bool:
    return isinstance(outcome, Conflict) and outcome.code == "member_owns_apps"


async def run_rounds(
    a: Deps,
    b: Deps,
    ws: Workspace,
    step: Callable[[int, str], Awaitable[object]],
    after: Callable[[], Awaitable[object]] | None = None,
) -> None:
    for i in range(ROUNDS):
        uid = await new_member(a, ws, f"m{i}")
        won, removal = await together(i, step(i, uid), workspaces.remove_member(b, "t", ws, uid))
        member = await a.store.is_member(ws.id, uid)
        if removal is None:  # removed: the other request must have been refused
            assert isinstance(won, NotFound | InvalidInput), (i, won)
            assert not member
        else:  # refused as an owner of apps: the other request came first
            assert refused_as_owner(removal), (i, removal)
            assert not isinstance(won, BaseException), (i, won)
            assert member
        await assert_owners_are_members(a, ws)
        if after is not None:
            await after()


async def test_removal_and_app_creation_never_leave_a_non_member_owner(
    gateways: tuple[Deps, Deps],
) -> None:
    a, b = gateways
    owner, _ = await workspaces.create_user(a, "operator", "own@example.com", "Own")
    ws = await workspaces.create_workspace(a, owner.id, "Acme")

    def create(i: int, uid: str) -> Awaitable[object]:
        return apps.create_app(a, uid, ws, f"bot{i}", "automation", None)

    await run_rounds(a, b, ws, create)


async def test_removal_and_transfer_never_leave_a_non_member_owner(
    gateways: tuple[Deps, Deps],
) -> None:
    a, b = gateways
    owner, _ = await workspaces.create_user(a, "operator", "own@example.com", "Own")
    ws = await workspaces.create_workspace(a, owner.id, "Acme")
    app_id = (await apps.create_app(a, owner.id, ws, "bot", "automation", None)).id

    async def transfer(i: int, uid: str) -> object:
        app = await a.store.get_app(app_id)
        assert app is not None
        assert app.owner_id == owner.id
        return await apps.transfer(a, "t", app, uid, owner=None)

    async def hand_back() -> None:
        app = await a.store.get_app(app_id)
        assert app is not None
        await apps.transfer(a, "t", app, owner.id, owner=None)

    await run_rounds(a, b, ws, transfer, hand_back)
