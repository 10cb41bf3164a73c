"""Second pass over the owner races (tests/system/test_owner_race.py): what the store's
``expect_owner`` does not reach.

* A former owner's write that landed before the handover (rightly: they owned the app
  then) is projected to Redis after it; its projection, held, must not overwrite the new
  owner's later write there: Redis ends as the store ends, whatever the order in which
  the two projections reach it.
* The workspace owner's handover to the user a stale read names as the owner must not
  be answered "done" while the app stays with someone else.

Real sockets, a real redis-server, SQLite and PostgreSQL stores. The race is forced, not
timed: the projection (or the handler's own read) is held while the other writes go
through, then let go.
"""

from __future__ import annotations

import asyncio

import pytest

from meter.accounts import channel_secrets, projection
from meter.redis_layer import keys
from tests.support.adminkit import Admin
from tests.support.held_call import held_call, started
from tests.system.test_owner_race import SECRET, Scene
from tests.system.test_owner_race import scene as scene

FORMER, NEW = "http://127.0.0.1:9/former-owner", "http://127.0.0.1:9/new-owner"


async def live(admin: Admin, app: str, field: str) -> bytes | None:
    ws = keys.workspace_of(app)
    assert ws is not None
    value: bytes | None = await admin.redis.hget(keys.app_key(ws, app), field)
    return value


async def test_a_former_owners_late_projection_never_outlives_the_new_owners_write(
    scene: Scene,
) -> None:
    """Alice's PATCH lands in the store while she owns the app; its projection is held;
    the app is handed to Bob, who sets his own upstream. Let go, Alice's projection
    must not leave her upstream live in Redis while the store holds Bob's (on the old
    code it did: traffic of Bob's app went to Alice's URL until a repair pass)."""
    s = scene
    async with held_call(projection, "put_app") as reached:
        alice = asyncio.ensure_future(
            s.admin.api("PATCH", f"/v1/apps/{s.app}", s.alice[1], {"upstream_url": FORMER})
        )
        await started(alice, reached)  # her write is in the store, not yet in Redis
        await s.admin.ok("POST", f"/v1/apps/{s.app}/transfer", s.owner, {"user_id": s.bob[0]})
        await s.admin.ok("PATCH", f"/v1/apps/{s.app}", s.bob[1], {"upstream_url": NEW})
    status, body = await alice
    assert status == 200, body  # she owned the app when it was written
    stored = await s.admin.store.get_app(s.app)
    assert stored is not None
    assert (stored.owner_id, stored.upstream_url) == (s.bob[0], NEW)
    assert await live(s.admin, s.app, "up") == NEW.encode()


async def test_a_former_owners_late_channel_removal_never_outlives_the_new_secret(
    scene: Scene,
) -> None:
    """Alice removes the web channel's secret (in the store while she owns the app); its
    projection is held; Bob, the owner now, sets a new secret. Let go, Alice's removal
    must not leave the channel unauthenticated in Redis while the store holds Bob's
    secret (on the old code it did)."""
    s = scene
    path = f"/v1/apps/{s.app}/channels/web"
    await s.admin.ok("PUT", path, s.alice[1], {"secret": SECRET})
    async with held_call(channel_secrets, "project", lambda *a, **k: a[3] is None) as reached:
        alice = asyncio.ensure_future(s.admin.api("DELETE", path, s.alice[1]))
        await started(alice, reached)
        await s.admin.ok("POST", f"/v1/apps/{s.app}/transfer", s.owner, {"user_id": s.bob[0]})
        await s.admin.ok("PUT", path, s.bob[1], {"secret": "b" * 40})
    status, body = await alice
    assert status == 200, body
    stored = await s.admin.store.get_app_channel(s.app, "web")
    assert stored is not None
    field = channel_secrets.field_of("web")
    assert await live(s.admin, s.app, field) == channel_secrets.projected(stored)


@pytest.mark.parametrize("by", ["owner", "alice"])
async def test_a_handover_to_the_stale_owner_is_made_or_refused_never_only_answered(
    scene: Scene, by: str
) -> None:
    """The workspace owner hands the app to Alice, its owner when the route read it;
    meanwhile Alice herself hands it to Bob. The workspace owner's handover must land
    (the app is Alice's again) rather than be answered 200 with Alice as the owner while
    Bob keeps the app (the old code's shortcut on the stale read). Alice's own handover
    to herself, held the same way while the workspace owner gives the app to Bob, is
    409 owner_changed, not a 200 that says she still owns it."""
    s = scene
    caller, mover = (s.owner, s.alice[1]) if by == "owner" else (s.alice[1], s.owner)

    # Held in the handler: its membership check of the new owner (Alice), after the
    # route's grant was decided on the app as it was. Alice's own grant checks her
    # membership twice first (before and after the body): hers is the third such call.
    nth = [1 if by == "owner" else 3]

    def handler_check(ws: str, user: str) -> bool:
        if (ws, user) == (s.ws, s.alice[0]):
            nth[0] -= 1
        return nth[0] == 0

    async with held_call(s.admin.store, "is_member", handler_check) as reached:
        write = s.admin.api("POST", f"/v1/apps/{s.app}/transfer", caller, {"user_id": s.alice[0]})
        task = asyncio.ensure_future(write)
        await started(task, reached)
        await s.admin.ok("POST", f"/v1/apps/{s.app}/transfer", mover, {"user_id": s.bob[0]})
    status, body = await task
    stored = await s.admin.store.get_app(s.app)
    assert stored is not None
    if by == "owner":
        assert status == 200, body
        assert (body["owner_id"], stored.owner_id) == (s.alice[0], s.alice[0])
    else:
        assert status == 409, body
        assert body["code"] == "owner_changed", body
        assert stored.owner_id == s.bob[0]


async def test_the_new_owner_is_not_invited_to_collaborate_on_their_own_app(
    scene: Scene,
) -> None:
    """The workspace owner invites Bob to collaborate on Alice's app (as the route read
    it); meanwhile Alice hands the app to Bob. The owner is no collaborator: the
    invitation is refused (422, as when the route sees Bob owning it), never left
    pending in Bob's list for his own app (as the old code did)."""
    s = scene
    offer = {"user_id": s.bob[0], "role": "developer"}
    async with held_call(s.admin.store, "invite") as reached:
        write = s.admin.api("POST", f"/v1/apps/{s.app}/collaborators", s.owner, offer)
        task = asyncio.ensure_future(write)
        await started(task, reached)
        await s.admin.ok("POST", f"/v1/apps/{s.app}/transfer", s.alice[1], {"user_id": s.bob[0]})
    status, body = await task
    assert status == 422, body
    assert body["field"] == "user_id", body
    assert (await s.admin.ok("GET", "/v1/invitations", s.bob[1]))["invitations"] == []


@pytest.mark.parametrize("change", ["rotate", "remove"])
async def test_an_app_projection_never_undoes_a_secret_changed_meanwhile(
    scene: Scene, change: str
) -> None:
    """Alice's PATCH projects the app with its channel secrets as the store held them;
    held there, she rotates the web channel's secret (a leaked one, say) or removes it.
    Let go, the PATCH's projection must not put the old secret back in Redis while the
    store holds the new one, or none (on the old code it did: the leaked secret verified
    and the new one was refused until a projection-check pass; a removed secret stayed
    live, which no pass repairs)."""
    s = scene
    path = f"/v1/apps/{s.app}/channels/web"
    await s.admin.ok("PUT", path, s.alice[1], {"secret": SECRET})
    async with held_call(channel_secrets, "project") as reached:
        patch = {"upstream_url": NEW}
        task = asyncio.ensure_future(s.admin.api("PATCH", f"/v1/apps/{s.app}", s.alice[1], patch))
        await started(task, reached)  # projecting the channels it read: the old secret
        if change == "rotate":
            await s.admin.ok("PUT", path, s.alice[1], {"secret": "r" * 40})
        else:
            await s.admin.ok("DELETE", path, s.alice[1])
    status, body = await task
    assert status == 200, body
    stored = await s.admin.store.get_app_channel(s.app, "web")
    want = channel_secrets.projected(stored) if stored else None
    assert await live(s.admin, s.app, channel_secrets.field_of("web")) == want


async def test_a_handover_audits_whom_the_app_was_taken_from(scene: Scene) -> None:
    """The workspace owner hands Alice's app (as the route read it) to Carol; meanwhile
    Alice hands it to Bob. The workspace owner's handover lands, taking it from Bob: the
    audit must say so (the old code recorded Alice, from the route's stale read)."""
    s = scene
    await s.admin.join(s.ws, s.owner, s.carol)
    async with held_call(s.admin.store, "transfer_app") as reached:
        write = s.admin.api("POST", f"/v1/apps/{s.app}/transfer", s.owner, {"user_id": s.carol[0]})
        task = asyncio.ensure_future(write)
        await started(task, reached)
        await s.admin.ok("POST", f"/v1/apps/{s.app}/transfer", s.alice[1], {"user_id": s.bob[0]})
    status, body = await task
    assert status == 200, body
    entries = await s.admin.store.list_audit(target=f"app:{s.app}")
    moves = [(e.before, e.after) for e in entries if e.action == "app.transfer"]
    assert sorted(moves, key=repr) == sorted(
        [
            ({"owner_id": s.alice[0]}, {"owner_id": s.bob[0]}),
            ({"owner_id": s.bob[0]}, {"owner_id": s.carol[0]}),
        ],
        key=repr,
    )
