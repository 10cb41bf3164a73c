"""Consent to membership (the outside review): adding a member or collaborator only invites
them. Until they accept they have no access and lists show them by user id alone; an
unknown user id is answered exactly like a known one; pending invitations are capped.

Real sockets, a real redis-server, and SQLite and PostgreSQL stores.
"""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Any

import orjson
import pytest

from meter.accounts import authz
from meter.accounts.invitations import MAX_PENDING
from meter.store import App, Store, User, Workspace, open_store
from meter.store.schema import MIGRATIONS
from tests.support.adminkit import Admin, snapshot
from tests.support.settings import OPERATOR_TOKEN


async def stranger(admin: Admin, name: str = "stranger") -> tuple[str, str, str]:
    """A user of another workspace: ``(id, token, email)``."""
    email = f"{name}.{secrets.token_hex(4)}@example.com"
    made = await admin.ok("POST", "/v1/users", OPERATOR_TOKEN, {"email": email, "name": name})
    await admin.new_workspace(made["token"], "Theirs")
    return made["id"], made["token"], email


async def sees_nothing(admin: Admin, token: str, ws: str, app: str | None = None) -> None:
    """``token``'s user may not even see the workspace (nor the app): 404, and it is in
    none of their lists."""
    calls = [
        ("GET", f"/v1/workspaces/{ws}", None),
        ("GET", f"/v1/workspaces/{ws}/apps", None),
        ("GET", f"/v1/workspaces/{ws}/members", None),
        ("POST", f"/v1/workspaces/{ws}/apps", {"name": "b", "product": "search"}),
    ]
    if app is not None:
        calls += [("GET", f"/v1/apps/{app}", None), ("GET", f"/v1/apps/{app}/collaborators", None)]
    for method, path, body in calls:
        status, _ = await admin.api(method, path, token, body)
        assert status == 404, (method, path, status)
    listed = await admin.ok("GET", "/v1/workspaces", token)
    assert ws not in [w["id"] for w in listed["workspaces"]]


async def test_a_stranger_added_as_member_stays_private_until_they_accept(
    any_admin: Admin,
) -> None:
    admin = any_admin
    owner, tok = await admin.new_user("owner")
    ws = await admin.new_workspace(tok, "Acme")
    victim, victim_tok, email = await stranger(admin)

    status, added = await admin.api(
        "POST", f"/v1/workspaces/{ws}/members", tok, {"user_id": victim}
    )
    assert status == 201
    # The attack: list the members and read the victim's email and name.
    status, raw = await admin.api("GET", f"/v1/workspaces/{ws}/members", tok)
    assert status == 200
    assert email not in orjson.dumps(raw).decode()
    assert (added["status"], added["added"]) == ("invited", True)
    entry = next(m for m in raw["members"] if m["user_id"] == victim)
    assert entry == {"user_id": victim, "role": "member", "status": "invited"}
    assert [m["status"] for m in raw["members"] if m["user_id"] == owner] == ["active"]
    await sees_nothing(admin, victim_tok, ws)

    # The invitee sees the invitation, accepts it, and is a member from then on.
    [inv] = (await admin.ok("GET", "/v1/invitations", victim_tok))["invitations"]
    assert (inv["kind"], inv["workspace_id"], inv["workspace_name"]) == ("workspace", ws, "Acme")
    assert (inv["invited_by"], inv["app_id"], inv["role"]) == (owner, None, None)
    answer = await admin.ok("POST", f"/v1/invitations/{inv['id']}/accept", victim_tok)
    assert (answer["status"], answer["workspace_id"]) == ("active", ws)
    assert (await admin.ok("GET", f"/v1/workspaces/{ws}", victim_tok))["id"] == ws
    mine = await admin.ok("GET", "/v1/workspaces", victim_tok)
    assert (ws, "member") in [(w["id"], w["role"]) for w in mine["workspaces"]]
    members = (await admin.ok("GET", f"/v1/workspaces/{ws}/members", tok))["members"]
    entry = next(m for m in members if m["user_id"] == victim)
    assert (entry["email"], entry["status"]) == (email, "active")
    assert (await admin.ok("GET", "/v1/invitations", victim_tok))["invitations"] == []
    # Adding them again: already a member.
    again = await admin.api("POST", f"/v1/workspaces/{ws}/members", tok, {"user_id": victim})
    assert again == (200, {"workspace_id": ws, "user_id": victim, "added": False,
                           "status": "active"})  # fmt: skip


async def test_a_stranger_added_as_collaborator_stays_private_until_they_accept(
    any_admin: Admin,
) -> None:
    admin = any_admin
    tok, ws = await admin.owner_workspace()
    app = await admin.new_app(tok, ws)
    victim, victim_tok, email = await stranger(admin)

    body = {"user_id": victim, "role": "viewer"}
    status, added = await admin.api("POST", f"/v1/apps/{app}/collaborators", tok, body)
    assert status == 201
    # The attack: list the collaborators and read the victim's email and name.
    status, raw = await admin.api("GET", f"/v1/apps/{app}/collaborators", tok)
    assert status == 200
    assert email not in orjson.dumps(raw).decode()
    assert (added["status"], added["role"]) == ("invited", "viewer")
    assert raw["collaborators"] == [{"user_id": victim, "role": "viewer", "status": "invited"}]
    view = await admin.ok("GET", f"/v1/apps/{app}", tok)
    assert view["collaborators"] == []  # the app's collaborators: who accepted
    await sees_nothing(admin, victim_tok, ws, app)

    # The role offered may change before they answer; they then hold that one.
    body["role"] = "tester"
    assert (await admin.ok("POST", f"/v1/apps/{app}/collaborators", tok, body))["status"] == (
        "invited"
    )
    [inv] = (await admin.ok("GET", "/v1/invitations", victim_tok))["invitations"]
    assert (inv["kind"], inv["app_id"], inv["app_name"], inv["role"]) == (
        "app", app, "bot", "tester"
    )  # fmt: skip
    await admin.ok("POST", f"/v1/invitations/{inv['id']}/accept", victim_tok)
    assert (await admin.ok("GET", f"/v1/apps/{app}", victim_tok))["id"] == app
    listed = (await admin.ok("GET", f"/v1/apps/{app}/collaborators", tok))["collaborators"]
    assert [(c["email"], c["role"], c["status"]) for c in listed] == [(email, "tester", "active")]
    theirs = await admin.ok("GET", f"/v1/workspaces/{ws}/apps", victim_tok)
    assert [(a["id"], a["role"]) for a in theirs["apps"]] == [(app, "collaborator")]


async def test_only_the_invitee_answers_and_removal_withdraws(any_admin: Admin) -> None:
    admin = any_admin
    owner, tok = await admin.new_user("owner")
    ws = await admin.new_workspace(tok, "Acme")
    member = await admin.new_user("member")
    await admin.join(ws, tok, member)
    invitee, invitee_tok, _ = await stranger(admin, "invitee")
    outsider, outsider_tok, _ = await stranger(admin, "outsider")
    await admin.ok("POST", f"/v1/workspaces/{ws}/members", tok, {"user_id": invitee})
    [inv] = (await admin.ok("GET", "/v1/invitations", invitee_tok))["invitations"]
    for who in (tok, member[1], outsider_tok):
        assert (await admin.ok("GET", "/v1/invitations", who))["invitations"] == []

    # Nobody else can accept or decline it: 404, as for an id that never existed.
    before = await snapshot(admin)
    for who in (tok, member[1], outsider_tok):
        for verb in ("accept", "decline"):
            status, problem = await admin.api("POST", f"/v1/invitations/{inv['id']}/{verb}", who)
            _, unknown = await admin.api("POST", f"/v1/invitations/i00000000000/{verb}", who)
            assert (status, problem["code"]) == (404, unknown["code"]), problem
            assert problem["detail"].replace(inv["id"], "X") == unknown["detail"].replace(
                "i00000000000", "X"
            )
    assert await snapshot(admin) == before
    await sees_nothing(admin, outsider_tok, ws)

    # Declined: gone, no access; the owner may invite again.
    answer = await admin.ok("POST", f"/v1/invitations/{inv['id']}/decline", invitee_tok)
    assert answer["status"] == "declined"
    status, _ = await admin.api("POST", f"/v1/invitations/{inv['id']}/accept", invitee_tok)
    assert status == 404
    await sees_nothing(admin, invitee_tok, ws)
    members = (await admin.ok("GET", f"/v1/workspaces/{ws}/members", tok))["members"]
    assert invitee not in [m["user_id"] for m in members]

    # Removing a pending member withdraws the invitation: it cannot be accepted any more.
    await admin.ok("POST", f"/v1/workspaces/{ws}/members", tok, {"user_id": invitee})
    [inv] = (await admin.ok("GET", "/v1/invitations", invitee_tok))["invitations"]
    status, _ = await admin.api("DELETE", f"/v1/workspaces/{ws}/members/{invitee}", tok)
    assert status == 204
    assert (await admin.ok("GET", "/v1/invitations", invitee_tok))["invitations"] == []
    status, _ = await admin.api("POST", f"/v1/invitations/{inv['id']}/accept", invitee_tok)
    assert status == 404
    await sees_nothing(admin, invitee_tok, ws)
    status, _ = await admin.api("DELETE", f"/v1/workspaces/{ws}/members/{invitee}", tok)
    assert status == 404

    # Likewise on an app.
    app = await admin.new_app(tok, ws)
    body = {"user_id": invitee, "role": "developer"}
    await admin.ok("POST", f"/v1/apps/{app}/collaborators", tok, body)
    status, _ = await admin.api("DELETE", f"/v1/apps/{app}/collaborators/{invitee}", tok)
    assert status == 204
    assert (await admin.ok("GET", "/v1/invitations", invitee_tok))["invitations"] == []
    await sees_nothing(admin, invitee_tok, ws, app)

    # Accepted once is done: a second accept finds nothing to accept.
    await admin.ok("POST", f"/v1/workspaces/{ws}/members", tok, {"user_id": outsider})
    [inv] = (await admin.ok("GET", "/v1/invitations", outsider_tok))["invitations"]
    await admin.ok("POST", f"/v1/invitations/{inv['id']}/accept", outsider_tok)
    status, _ = await admin.api("POST", f"/v1/invitations/{inv['id']}/accept", outsider_tok)
    assert status == 404
    assert (await admin.ok("GET", f"/v1/workspaces/{ws}", outsider_tok))["id"] == ws
    assert owner


def alike(answer: Any, user_id: str) -> Any:
    """An answer with the user id it names blanked out."""
    return orjson.loads(orjson.dumps(answer).decode().replace(user_id, "<user>"))


async def test_unknown_and_known_user_ids_answer_alike(any_admin: Admin) -> None:
    admin = any_admin
    owner, tok = await admin.new_user("owner")
    ws = await admin.new_workspace(tok, "Acme")
    app = await admin.new_app(tok, ws)
    known, _, _ = await stranger(admin, "known")
    unknown = "u" + secrets.token_hex(6)
    assert await admin.store.get_user(unknown) is None

    for path, body in (
        (f"/v1/workspaces/{ws}/members", {}),
        (f"/v1/apps/{app}/collaborators", {"role": "viewer"}),
    ):
        for _ in ("first", "again"):
            answers = [
                await admin.api("POST", path, tok, {"user_id": uid, **body})
                for uid in (known, unknown)
            ]
            assert answers[0][0] in (200, 201)
            assert (answers[0][0], alike(answers[0][1], known)) == (
                answers[1][0], alike(answers[1][1], unknown)
            )  # fmt: skip
        listed = (await admin.ok("GET", path, tok))[path.rsplit("/", 1)[1]]
        entries = {e["user_id"]: e for e in listed}
        assert alike(entries[known], known) == alike(entries[unknown], unknown)
    # Handing an app over tells an unknown id from a known non-member no better.
    answers = [
        await admin.api("POST", f"/v1/apps/{app}/transfer", tok, {"user_id": uid})
        for uid in (known, unknown)
    ]
    assert answers[0][0] == 422
    assert (answers[0][0], alike(answers[0][1], known)) == (
        answers[1][0], alike(answers[1][1], unknown)
    )  # fmt: skip
    # The owner adding themselves: already a member, never invited.
    status, own = await admin.api("POST", f"/v1/workspaces/{ws}/members", tok, {"user_id": owner})
    assert (status, own["status"]) == (200, "active")


async def test_pending_invitations_are_capped(any_admin: Admin) -> None:
    admin = any_admin
    tok, ws = await admin.owner_workspace()
    app = await admin.new_app(tok, ws)
    for path, body in (
        (f"/v1/workspaces/{ws}/members", {}),
        (f"/v1/apps/{app}/collaborators", {"role": "viewer"}),
    ):
        ids = [f"u{i:012d}" for i in range(MAX_PENDING + 20)]
        for uid in ids[: MAX_PENDING - 5]:
            await admin.ok("POST", path, tok, {"user_id": uid, **body})
        # Concurrent invitations never pass the cap together.
        answers = await asyncio.gather(
            *(
                admin.api("POST", path, tok, {"user_id": uid, **body})
                for uid in ids[MAX_PENDING - 5 : MAX_PENDING + 10]
            )
        )
        assert sorted(s for s, _ in answers) == [201] * 5 + [409] * 10
        assert {a["code"] for s, a in answers if s == 409} == {"too_many_invitations"}
        # An open invitation asked for again is not a new one; a withdrawn one makes room.
        status, again = await admin.api("POST", path, tok, {"user_id": ids[1], **body})
        assert (status, again["status"]) in ((200, "invited"), (201, "invited")), again
        status, _ = await admin.api("DELETE", f"{path}/{ids[0]}", tok)
        assert status == 204
        assert (await admin.api("POST", path, tok, {"user_id": ids[-1], **body}))[0] == 201
        assert (await admin.api("POST", path, tok, {"user_id": ids[-2], **body}))[0] == 409


@pytest.fixture
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/m.db"
    dsn: str = request.getfixturevalue("pg_dsn")
    return dsn


@pytest.mark.parametrize("store_url", ["sqlite", "postgresql"], indirect=True)
async def test_migration_keeps_members_and_collaborators_active(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import meter.store.postgres as pg
    import meter.store.sqlite as lite

    before = tuple(m for m in MIGRATIONS if m.version < 11)
    for module in (lite, pg):
        monkeypatch.setattr(module, "MIGRATIONS", before)
    store: Store = open_store(store_url)
    try:
        await store.migrate()
        for uid in ("uown1", "umem1", "ucol1"):
            await store.create_user(User(uid, f"{uid}@example.com", uid, f"h-{uid}", 5))
        await store.create_workspace(Workspace("wold1", "Old", "uown1", 5))
        await store.add_member("wold1", "umem1")
        await store.create_app(App("wold1_app1", "wold1", "Bot", "automation", "umem1", 6))
        await store.add_collaborator("wold1_app1", "ucol1", "tester")
        for module in (lite, pg):
            monkeypatch.setattr(module, "MIGRATIONS", MIGRATIONS)
        assert 11 in await store.migrate()

        members = await store.members_page("wold1", "uown1", after=None, limit=10)
        assert [(m.user_id, m.email, m.status) for m in members] == [
            ("umem1", "umem1@example.com", "active"),
            ("uown1", "uown1@example.com", "active"),
        ]
        collabs = await store.collaborators_page("wold1_app1", after=None, limit=10)
        assert [(c.user_id, c.role, c.status) for c in collabs] == [("ucol1", "tester", "active")]
        _, roles = await authz.workspace_roles(store, authz.Principal("umem1"), "wold1")
        assert "member" in roles
        _, roles = await authz.app_roles(store, authz.Principal("ucol1"), "wold1_app1")
        assert roles == {"collaborator"}
    finally:
        await store.close()
