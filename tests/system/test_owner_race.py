"""A write authorized as an app's owner lands only while they still own it: every app
write of the admin API is conditional, in the store, on the owner its authorization
relied on (the store's ``expect_owner``), so a handover landing between the check and the
write makes it 409 ``owner_changed`` with nothing changed, never a former owner's change
to what the new owner now runs and pays for (upstream URL, channel secrets,
collaborators, the app itself).

Real sockets, a real redis-server, SQLite and PostgreSQL stores. The race is forced, not
timed: the store's write method is held after the route decided (the check done, the
write not begun); the handover goes through meanwhile; then the write is let go.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import pytest

from tests.support.adminkit import Admin, snapshot
from tests.support.held_call import held_call, started
from tests.support.settings import OPERATOR_TOKEN

SECRET = "s" * 40


@dataclass
class Scene:
    """A workspace owned by ``owner``; ``alice`` and ``bob`` members; ``app`` Alice's."""

    admin: Admin
    ws: str
    owner: str  # the workspace owner's token
    alice: tuple[str, str]
    bob: tuple[str, str]
    carol: tuple[str, str]  # not a member: a collaborator to invite or remove
    app: str


@pytest.fixture
async def scene(any_admin: Admin) -> Scene:
    admin = any_admin
    owner, ws = await admin.owner_workspace()
    alice, bob = await admin.new_members(ws, owner, "alice", "bob")
    app = await admin.new_app(alice[1], ws, "http://127.0.0.1:9/first")
    return Scene(admin, ws, owner, alice, bob, await admin.new_user("carol"), app)


async def handed_over_meanwhile(
    s: Scene, method: str, write: Awaitable[tuple[int, Any]], by: str | None = None
) -> tuple[int, Any, dict[str, Any]]:
    """Run ``write`` (Alice's, as the app's owner) with ``store.<method>`` held; while it
    is held, the app is handed to Bob (by ``by``'s token: Alice's own by default). Returns
    the write's answer and the store and Redis as they were before it was let go."""
    async with held_call(s.admin.store, method) as reached:
        task = asyncio.ensure_future(write)
        await started(task, reached)  # the write is held between check and write
        moved = await s.admin.ok(
            "POST", f"/v1/apps/{s.app}/transfer", by or s.alice[1], {"user_id": s.bob[0]}
        )
        assert moved["owner_id"] == s.bob[0]
        before = await snapshot(s.admin)
    status, body = await task
    return status, body, before


def owner_changed(status: int, body: Any) -> None:
    assert status == 409, body
    assert body["code"] == "owner_changed", body
    assert body["type"] == "urn:creditgate:problem:owner_changed", body
    assert body["title"] == "App owner changed", body


async def test_a_former_owner_cannot_patch_the_upstream(scene: Scene) -> None:
    s = scene
    patch = {"upstream_url": "http://127.0.0.1:9/former-owner"}
    write = s.admin.api("PATCH", f"/v1/apps/{s.app}", s.alice[1], patch)
    status, body, before = await handed_over_meanwhile(s, "update_app", write)
    owner_changed(status, body)
    assert await snapshot(s.admin) == before  # nothing written, audited or projected
    app = await s.admin.ok("GET", f"/v1/apps/{s.app}", s.bob[1])
    assert (app["owner_id"], app["upstream_url"]) == (s.bob[0], "http://127.0.0.1:9/first")


async def test_a_former_owner_cannot_set_a_channel_secret(scene: Scene) -> None:
    s = scene
    path = f"/v1/apps/{s.app}/channels/web"
    write = s.admin.api("PUT", path, s.alice[1], {"secret": SECRET})
    status, body, before = await handed_over_meanwhile(s, "put_app_channel", write)
    owner_changed(status, body)
    assert await snapshot(s.admin) == before
    assert await s.admin.store.list_app_channels(s.app) == []


async def test_a_former_owner_cannot_remove_a_channel_secret(scene: Scene) -> None:
    s = scene
    path = f"/v1/apps/{s.app}/channels/web"
    await s.admin.ok("PUT", path, s.alice[1], {"secret": SECRET})
    write = s.admin.api("DELETE", path, s.alice[1])
    status, body, before = await handed_over_meanwhile(s, "delete_app_channel", write)
    owner_changed(status, body)
    assert await snapshot(s.admin) == before
    assert [c.channel for c in await s.admin.store.list_app_channels(s.app)] == ["web"]


async def test_a_former_owner_cannot_invite_a_collaborator(scene: Scene) -> None:
    """The handover withdrew the app's invitations (the former owner's offers): one made
    by the former owner after it must not survive it either."""
    s = scene
    offer = {"user_id": s.carol[0], "role": "developer"}
    write = s.admin.api("POST", f"/v1/apps/{s.app}/collaborators", s.alice[1], offer)
    status, body, before = await handed_over_meanwhile(s, "invite", write)
    owner_changed(status, body)
    assert await snapshot(s.admin) == before
    assert (await s.admin.ok("GET", "/v1/invitations", s.carol[1]))["invitations"] == []


async def test_a_former_owner_cannot_remove_a_collaborator(scene: Scene) -> None:
    s = scene
    path = f"/v1/apps/{s.app}/collaborators"
    await s.admin.ok("POST", path, s.alice[1], {"user_id": s.carol[0], "role": "viewer"})
    await s.admin.accept_invitations(s.carol[1])
    write = s.admin.api("DELETE", f"{path}/{s.carol[0]}", s.alice[1])
    status, body, before = await handed_over_meanwhile(s, "withdraw", write)
    owner_changed(status, body)
    assert await snapshot(s.admin) == before
    assert await s.admin.store.get_collaborator_role(s.app, s.carol[0]) == "viewer"


async def test_a_former_owner_cannot_give_the_app_away(scene: Scene) -> None:
    """The workspace owner hands Alice's app to Bob while Alice's own transfer of it (to
    herself in all but name: to Carol, once a member) is held: Alice's lands on an app
    that is no longer hers, and is refused."""
    s = scene
    await s.admin.join(s.ws, s.owner, s.carol)
    write = s.admin.api("POST", f"/v1/apps/{s.app}/transfer", s.alice[1], {"user_id": s.carol[0]})
    status, body, before = await handed_over_meanwhile(s, "transfer_app", write, by=s.owner)
    owner_changed(status, body)
    assert await snapshot(s.admin) == before
    assert (await s.admin.ok("GET", f"/v1/apps/{s.app}", s.bob[1]))["owner_id"] == s.bob[0]


async def test_the_workspace_owner_keeps_their_rights_over_a_handover(scene: Scene) -> None:
    """The workspace owner's rights over the app do not rest on who owns it: their write
    held across a handover still lands (not conditional, not 409)."""
    s = scene
    patch = {"upstream_url": "http://127.0.0.1:9/workspace-owner", "suspended": True}
    write = s.admin.api("PATCH", f"/v1/apps/{s.app}", s.owner, patch)
    status, body, _ = await handed_over_meanwhile(s, "update_app", write)
    assert status == 200, body
    assert (body["owner_id"], body["upstream_url"], body["suspended"]) == (
        s.bob[0],
        patch["upstream_url"],
        True,
    )


async def test_the_new_owner_and_the_operator_write_after_a_handover(scene: Scene) -> None:
    """What the stale owner was refused, the new owner may do; the operator's shadow
    switch (no owner relied on) lands too."""
    s = scene
    await s.admin.ok("POST", f"/v1/apps/{s.app}/transfer", s.alice[1], {"user_id": s.bob[0]})
    status, body = await s.admin.api(
        "PATCH", f"/v1/apps/{s.app}", s.alice[1], {"upstream_url": "http://127.0.0.1:9/x"}
    )
    assert status == 403, body  # decided afresh: no longer hers
    done = await s.admin.ok(
        "PATCH", f"/v1/apps/{s.app}", s.bob[1], {"upstream_url": "http://127.0.0.1:9/bob"}
    )
    assert done["upstream_url"] == "http://127.0.0.1:9/bob"
    shadow = await s.admin.ok("PUT", f"/v1/apps/{s.app}/shadow", OPERATOR_TOKEN, {"shadow": True})
    assert shadow["shadow"] is True
