"""Membership by invitation, second review (decision 0009): an offer never changes under
the invitee, accepting takes the role the invitation holds once the target is locked,
withdrawing is one step that also removes an invitation beside an active row, a handover
withdraws the app's invitations, and invitations expire and are capped per inviter and
per invitee.

Real sockets, a real redis-server, SQLite and PostgreSQL stores; races are forced by
pausing the real store at the point between two of its statements (never by timers).
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

from meter.accounts.invitations import MAX_BY_INVITER, MAX_PER_INVITEE
from meter.store import Caps, Invitation
from tests.support.adminkit import Admin
from tests.support.settings import OPERATOR_TOKEN


async def person(admin: Admin, name: str) -> tuple[str, str]:
    """A user with a workspace of their own: ``(id, token)``."""
    email = f"{name}.{secrets.token_hex(4)}@example.com"
    made = await admin.ok("POST", "/v1/users", OPERATOR_TOKEN, {"email": email, "name": name})
    return made["id"], made["token"]


async def held(admin: Admin, token: str) -> list[dict[str, Any]]:
    invitations: list[dict[str, Any]] = (await admin.ok("GET", "/v1/invitations", token))[
        "invitations"
    ]
    return invitations


async def listed(admin: Admin, path: str, token: str, user_id: str) -> list[dict[str, Any]]:
    """The entries of ``user_id`` in the members or collaborators list at ``path``."""
    rows = (await admin.ok("GET", f"{path}?limit=200", token))[path.rsplit("/", 1)[1]]
    return [r for r in rows if r["user_id"] == user_id]


async def test_another_role_is_a_new_offer_from_whoever_made_it(any_admin: Admin) -> None:
    admin = any_admin
    tok, ws = await admin.owner_workspace()
    owner = (await admin.ok("GET", f"/v1/workspaces/{ws}", tok))["owner_id"]
    app_owner = await admin.new_user("appowner")
    await admin.join(ws, tok, app_owner)
    app = await admin.new_app(app_owner[1], ws)
    victim, vtok = await person(admin, "victim")
    path = f"/v1/apps/{app}/collaborators"
    await admin.ok("POST", path, app_owner[1], {"user_id": victim, "role": "viewer"})
    [shown] = await held(admin, vtok)
    assert (shown["role"], shown["invited_by"]) == ("viewer", app_owner[0])
    # The same offer again changes nothing; another role is a new invitation.
    await admin.ok("POST", path, app_owner[1], {"user_id": victim, "role": "viewer"})
    assert await held(admin, vtok) == [shown]
    await admin.ok("POST", path, tok, {"user_id": victim, "role": "developer"})
    [now] = await held(admin, vtok)
    assert now["id"] != shown["id"]
    assert (now["role"], now["invited_by"]) == ("developer", owner)
    status, _ = await admin.api("POST", f"/v1/invitations/{shown['id']}/accept", vtok)
    assert status == 404  # what the invitee saw is gone: they accept nothing unseen
    answer = await admin.ok("POST", f"/v1/invitations/{now['id']}/accept", vtok)
    assert answer["role"] == "developer"
    assert [r["role"] for r in await listed(admin, path, tok, victim)] == ["developer"]


async def test_accept_racing_a_role_change_never_undoes_it(any_admin: Admin) -> None:
    """The owner changes the offered role while an accept has read the invitation but not
    yet locked the app (PostgreSQL; SQLite's write lock makes them one at a time)."""
    admin = any_admin
    if admin.store.dialect != "postgresql":
        return
    tok, ws = await admin.owner_workspace()
    app = await admin.new_app(tok, ws)
    victim, vtok = await person(admin, "victim")
    path = f"/v1/apps/{app}/collaborators"
    await admin.ok("POST", path, tok, {"user_id": victim, "role": "developer"})
    [inv] = await held(admin, vtok)
    real = admin.store._lock_target  # type: ignore[attr-defined]
    reached, go = asyncio.Event(), asyncio.Event()
    calls = []

    async def paused(c: Any, kind: str, target: str) -> Any:
        calls.append(target)
        if len(calls) == 1:  # the accept's
            reached.set()
            await go.wait()
        return await real(c, kind, target)

    admin.store._lock_target = paused  # type: ignore[attr-defined]
    accept = asyncio.ensure_future(admin.api("POST", f"/v1/invitations/{inv['id']}/accept", vtok))
    await reached.wait()
    changed = await admin.ok("POST", path, tok, {"user_id": victim, "role": "viewer"})
    go.set()
    status, answer = await accept
    assert changed["role"] == "viewer"
    rows = await listed(admin, path, tok, victim)
    if status == 200:  # accepted first: the change applies to the collaborator
        assert [(r["role"], r["status"]) for r in rows] == [("viewer", "active")]
    else:  # the change replaced the invitation the accept named
        assert status == 404, answer
        assert [(r["role"], r["status"]) for r in rows] == [("viewer", "invited")]
        assert [i["role"] for i in await held(admin, vtok)] == ["viewer"]


async def test_withdrawing_while_the_invitee_accepts_leaves_no_member(any_admin: Admin) -> None:
    """An accept landing after the route decided to withdraw and before its one-step
    withdrawal (the store's ``withdraw``, held there) cannot make the DELETE answer 404
    nor leave a member behind: the withdrawal takes the membership it made too."""
    admin = any_admin
    tok, ws = await admin.owner_workspace()
    victim, vtok = await person(admin, "victim")
    await admin.ok("POST", f"/v1/workspaces/{ws}/members", tok, {"user_id": victim})
    [inv] = await held(admin, vtok)
    real = admin.store.withdraw
    reached, accepted = asyncio.Event(), asyncio.Event()

    async def held_back(*args: Any, **kwargs: Any) -> Any:
        reached.set()
        await accepted.wait()
        return await real(*args, **kwargs)

    admin.store.withdraw = held_back  # type: ignore[method-assign]
    delete = asyncio.ensure_future(
        admin.api("DELETE", f"/v1/workspaces/{ws}/members/{victim}", tok)
    )
    first = asyncio.ensure_future(reached.wait())
    await asyncio.wait([delete, first], return_when=asyncio.FIRST_COMPLETED)
    assert reached.is_set(), await delete  # the withdrawal is where the accept lands
    accept = await admin.api("POST", f"/v1/invitations/{inv['id']}/accept", vtok)
    assert accept[0] == 200, accept  # a member for the moment
    assert await admin.store.is_member(ws, victim)
    accepted.set()
    status, body = await delete
    assert status == 204, body
    assert not await admin.store.is_member(ws, victim)
    assert await held(admin, vtok) == []


async def test_withdrawing_removes_a_member_and_their_invitation_together(
    any_admin: Admin,
) -> None:
    """A gateway of before the invitations (a rolling upgrade) adds a member directly
    while their invitation is open: lists show them once, active; DELETE takes both away
    so the invitation cannot bring them back; accepting when already active only deletes
    the invitation."""
    admin = any_admin
    tok, ws = await admin.owner_workspace()
    app = await admin.new_app(tok, ws)
    victim, vtok = await person(admin, "victim")
    members, collabs = f"/v1/workspaces/{ws}/members", f"/v1/apps/{app}/collaborators"
    await admin.ok("POST", members, tok, {"user_id": victim})
    await admin.ok("POST", collabs, tok, {"user_id": victim, "role": "viewer"})
    await admin.store.add_member(ws, victim)  # what the old route did
    await admin.store.add_collaborator(app, victim, "tester")
    assert [r["status"] for r in await listed(admin, members, tok, victim)] == ["active"]
    assert [(r["role"], r["status"]) for r in await listed(admin, collabs, tok, victim)] == [
        ("tester", "active")
    ]
    ws_inv, app_inv = sorted(await held(admin, vtok), key=lambda i: i["kind"] == "app")
    # Accepting while active: the invitation goes, the role held stays.
    answer = await admin.ok("POST", f"/v1/invitations/{app_inv['id']}/accept", vtok)
    assert answer["role"] == "tester"
    assert [r["role"] for r in await listed(admin, collabs, tok, victim)] == ["tester"]
    await admin.ok("POST", collabs, tok, {"user_id": victim, "role": "viewer"})  # the role
    for path in (collabs, members):
        status, _ = await admin.api("DELETE", f"{path}/{victim}", tok)
        assert status == 204
        assert await listed(admin, path, tok, victim) == []
        status, _ = await admin.api("DELETE", f"{path}/{victim}", tok)
        assert status == 404
    assert await held(admin, vtok) == []
    status, _ = await admin.api("POST", f"/v1/invitations/{ws_inv['id']}/accept", vtok)
    assert status == 404
    assert not await admin.store.is_member(ws, victim)


async def test_handing_an_app_over_withdraws_its_invitations(any_admin: Admin) -> None:
    admin = any_admin
    tok, ws = await admin.owner_workspace()
    a, b = await admin.new_user("app_a"), await admin.new_user("app_b")
    await admin.join(ws, tok, a)
    await admin.join(ws, tok, b)
    app = await admin.new_app(a[1], ws)
    victim, vtok = await person(admin, "victim")
    await admin.ok(
        "POST", f"/v1/apps/{app}/collaborators", a[1], {"user_id": victim, "role": "developer"}
    )
    [inv] = await held(admin, vtok)
    await admin.ok("POST", f"/v1/apps/{app}/transfer", a[1], {"user_id": b[0]})
    assert await held(admin, vtok) == []
    status, _ = await admin.api("POST", f"/v1/invitations/{inv['id']}/accept", vtok)
    assert status == 404
    assert await listed(admin, f"/v1/apps/{app}/collaborators", b[1], victim) == []
    entries = await admin.store.list_audit(target=f"app:{app}")
    cancelled = [e for e in entries if e.action == "invitation.cancel"]
    assert [e.before for e in cancelled] == [{"reason": "app.transfer", "user_ids": [victim]}]


async def test_invitations_expire(any_admin: Admin) -> None:
    admin = any_admin
    tok, ws = await admin.owner_workspace()
    victim, vtok = await person(admin, "victim")
    path = f"/v1/workspaces/{ws}/members"
    await admin.ok("POST", path, tok, {"user_id": victim})
    [old] = await held(admin, vtok)
    ttl_ms = int(admin.settings.invitation_ttl_s * 1000)
    async with admin.store.connection() as c:  # as if the lifetime had passed
        await c.execute("UPDATE invitations SET created_at = created_at - ? - 1", ttl_ms)
    assert await held(admin, vtok) == []
    assert await listed(admin, path, tok, victim) == []
    status, _ = await admin.api("POST", f"/v1/invitations/{old['id']}/accept", vtok)
    assert status == 404
    assert not await admin.store.is_member(ws, victim)
    # Invited again: a new invitation (201), the expired one replaced.
    status, again = await admin.api("POST", path, tok, {"user_id": victim})
    assert (status, again["status"]) == (201, "invited")
    [new] = await held(admin, vtok)
    assert new["id"] != old["id"]


async def test_invitations_into_a_workspace_and_its_app_at_once_both_succeed(
    any_admin: Admin,
) -> None:
    """The owner invites one user into the workspace and another onto its app at once
    (PostgreSQL). Forced: the workspace invitation holds the workspace's lock until the
    app invitation is seen waiting on a lock (or done). Locking the users' rows after the
    target deadlocked here: the app invitation's foreign key waits for the workspace,
    whose invitation then waits for the inviter's row (one 503 deadlock_detected)."""
    admin = any_admin
    if admin.store.dialect != "postgresql":
        return
    tok, ws = await admin.owner_workspace()
    app = await admin.new_app(tok, ws)
    member, _ = await person(admin, "member")
    dev, _ = await person(admin, "dev")
    real = admin.store._lock_target  # type: ignore[attr-defined]
    paused, second_done = asyncio.Event(), asyncio.Event()

    async def holding(c: Any, kind: str, target: str) -> Any:
        row = await real(c, kind, target)
        if kind == "workspace" and not paused.is_set():
            paused.set()
            while not second_done.is_set() and not await lock_waiters(admin):  # noqa: ASYNC110
                await asyncio.sleep(0.005)  # polls another process's state; no deadline
        return row

    admin.store._lock_target = holding  # type: ignore[attr-defined]
    first = asyncio.ensure_future(
        admin.api("POST", f"/v1/workspaces/{ws}/members", tok, {"user_id": member})
    )
    await paused.wait()
    try:
        second = await admin.api(
            "POST", f"/v1/apps/{app}/collaborators", tok, {"user_id": dev, "role": "viewer"}
        )
    finally:
        second_done.set()
    assert ((await first)[0], second[0]) == (201, 201), (await first, second)


async def test_a_sweep_never_holds_a_row_that_a_replacing_invitation_waits_for(
    any_admin: Admin,
) -> None:
    """P's invitation of X into workspace W has expired. P invites Y onto app A in W
    while the owner invites X into W again (replacing P's row), at once (PostgreSQL).
    Forced: P's invitation waits at its first count until the owner's is seen waiting on
    a lock, or done. Sweeping inside P's transaction deadlocked here: P held the expired
    row the owner's invitation must delete, then its own insert waited for W's lock."""
    admin = any_admin
    if admin.store.dialect != "postgresql":
        return
    tok, ws = await admin.owner_workspace()
    app = await admin.new_app(tok, ws)
    owner = (await admin.ok("GET", f"/v1/workspaces/{ws}", tok))["owner_id"]
    now = 2**52  # the clock of these direct store calls; every TTL check is relative
    since = now - 1
    async with admin.store.connection() as c:
        await c.execute(
            "INSERT INTO invitations (id, kind, target, workspace_id, app_id, user_id, "
            "role, invited_by, created_at) VALUES (?, 'workspace', ?, ?, NULL, 'uX', NULL, "
            "'uP', ?)",
            "iexpired",
            ws,
            ws,
            since,  # expired: not after since
        )
    caps = Caps(100, 200, 100)
    real = admin.store._count  # type: ignore[attr-defined]
    paused, second_done = asyncio.Event(), asyncio.Event()

    async def holding(c: Any, column: str, key: str, since_ms: int, *ws: str) -> int:
        if (column, key) == ("target", app) and not paused.is_set():
            paused.set()
            while not second_done.is_set() and not await lock_waiters(admin):  # noqa: ASYNC110
                await asyncio.sleep(0.005)  # polls another process's state; no deadline
        n: int = await real(c, column, key, since_ms, *ws)
        return n

    admin.store._count = holding  # type: ignore[attr-defined]
    by_p = Invitation("ip", "app", app, ws, app, "uY", "viewer", "uP", now)
    first = asyncio.ensure_future(admin.store.invite(by_p, caps, since, since))
    await paused.wait()
    by_owner = Invitation("iowner", "workspace", ws, ws, None, "uX", None, owner, now)
    try:
        second = await admin.store.invite(by_owner, caps, since, since)  # sweeps all expired
    finally:
        second_done.set()
    assert (await first, second) == (("created", None), ("created", None))


async def test_an_inviters_long_expired_invitations_are_swept_when_they_invite_again(
    any_admin: Admin,
) -> None:
    """Deleted a lifetime past their expiry, not at it: another process whose clock is
    behind, or whose lifetime is longer during a rolling deploy, still counts them as
    open until then."""
    admin = any_admin
    tok, ws = await admin.owner_workspace()
    owner = (await admin.ok("GET", f"/v1/workspaces/{ws}", tok))["owner_id"]
    path = f"/v1/workspaces/{ws}/members"
    people = [(await person(admin, n))[0] for n in ("first", "second", "third", "fourth")]
    first, second, third, fourth = people
    for user in (first, second):
        await admin.ok("POST", path, tok, {"user_id": user})
    other_tok, other_ws = await admin.owner_workspace("other")  # another inviter's
    await admin.ok("POST", f"/v1/workspaces/{other_ws}/members", other_tok, {"user_id": first})
    ttl_ms = int(admin.settings.invitation_ttl_s * 1000)

    async def invitees(inviter: str) -> set[str]:
        async with admin.store.connection() as c:
            rows = await c.fetch("SELECT user_id FROM invitations WHERE invited_by = ?", inviter)
        return {r["user_id"] for r in rows}

    async def age(ms: int) -> None:  # as if that much time had passed
        async with admin.store.connection() as c:
            await c.execute("UPDATE invitations SET created_at = created_at - ?", ms)

    await age(ttl_ms + 1)  # expired, within the margin
    await admin.ok("POST", path, tok, {"user_id": third})
    assert await invitees(owner) == {first, second, third}
    await age(ttl_ms)  # first and second: a lifetime past their expiry; third expired
    await admin.ok("POST", path, tok, {"user_id": fourth})
    assert await invitees(owner) == {third, fourth}
    async with admin.store.connection() as c:  # the other inviter's wait for them
        n = await c.fetchval("SELECT COUNT(*) AS n FROM invitations WHERE target = ?", other_ws)
    assert n == 1


async def fill(admin: Admin, ws: str, n: int, *, user_id: str = "", invited_by: str = "") -> None:
    """``n`` open invitations straight into the store, each to a target of its own: to
    ``user_id`` or from ``invited_by`` (the other side random)."""
    async with admin.store.connection() as c:
        for i in range(n):
            await c.execute(
                "INSERT INTO invitations (id, kind, target, workspace_id, app_id, user_id, "
                "role, invited_by, created_at) VALUES (?, 'workspace', ?, ?, NULL, ?, NULL, ?, ?)",
                "i" + secrets.token_hex(6),
                f"wfill{i:08d}",
                ws,
                user_id or "u" + secrets.token_hex(6),
                invited_by or "u" + secrets.token_hex(6),
                2**53,  # open whatever the clock says
            )


async def test_one_inviter_and_one_invitee_have_caps(any_admin: Admin) -> None:
    admin = any_admin
    tok, ws = await admin.owner_workspace()
    owner = (await admin.ok("GET", f"/v1/workspaces/{ws}", tok))["owner_id"]
    await fill(admin, ws, MAX_BY_INVITER - 1, invited_by=owner)
    path = f"/v1/workspaces/{ws}/members"
    first, _ = await person(admin, "first")
    assert (await admin.api("POST", path, tok, {"user_id": first}))[0] == 201
    status, problem = await admin.api("POST", path, tok, {"user_id": "u" + secrets.token_hex(6)})
    assert (status, problem["code"]) == (409, "too_many_invitations")

    # One invitee holds at most MAX_PER_INVITEE from one workspace and its apps: past it,
    # 409, and nothing is made; another user still gets their invitation.
    tok2, ws2 = await admin.owner_workspace("other")
    victim, _ = await person(admin, "victim")
    control, _ = await person(admin, "control")
    await fill(admin, ws2, MAX_PER_INVITEE, user_id=victim)
    path = f"/v1/workspaces/{ws2}/members"
    status, problem = await admin.api("POST", path, tok2, {"user_id": victim})
    assert (status, problem["code"]) == (409, "too_many_invitations")
    assert (await admin.api("POST", path, tok2, {"user_id": control}))[0] == 201
    async with admin.store.connection() as c:
        n = await c.fetchval("SELECT COUNT(*) AS n FROM invitations WHERE user_id = ?", victim)
    assert n == MAX_PER_INVITEE


async def test_a_flood_from_one_workspace_never_silences_another(any_admin: Admin) -> None:
    """One user fills a victim's room with invitations from one workspace and its apps
    (all but one straight into the store, each to a target of its own, as 99 more apps
    would have them). Another workspace's invitation of the victim is still made, listed
    and accepted; the flooding workspace's next one is 409, never answered as made;
    declining makes room for it again."""
    admin = any_admin
    victim, vtok = await person(admin, "victim")
    htok, hws = await admin.owner_workspace("hostile", "Spam")
    app = await admin.new_app(htok, hws)
    alone, viewer = {"user_id": victim}, {"user_id": victim, "role": "viewer"}
    await admin.ok("POST", f"/v1/apps/{app}/collaborators", htok, viewer)
    await fill(admin, hws, MAX_PER_INVITEE - 1, user_id=victim)
    async with admin.store.connection() as c:  # made when the API's was (listable)
        made = await c.fetchval("SELECT created_at FROM invitations WHERE target = ?", app)
        await c.execute("UPDATE invitations SET created_at = ? WHERE created_at = ?", made, 2**53)
    status, problem = await admin.api("POST", f"/v1/workspaces/{hws}/members", htok, alone)
    assert (status, problem["code"]) == (409, "too_many_invitations")
    assert f"{MAX_PER_INVITEE} invitations of {victim}" in problem["detail"]

    ltok, lws = await admin.owner_workspace("legit", "Legit Co")
    members = f"/v1/workspaces/{lws}/members"
    status, answer = await admin.api("POST", members, ltok, {"user_id": victim})
    assert (status, answer["status"]) == (201, "invited")
    assert [r["status"] for r in await listed(admin, members, ltok, victim)] == ["invited"]
    everything = (await admin.ok("GET", "/v1/invitations?limit=200", vtok))["invitations"]
    assert len(everything) == MAX_PER_INVITEE + 1
    [legit] = [i for i in everything if i["workspace_id"] == lws]
    await admin.ok("POST", f"/v1/invitations/{legit['id']}/accept", vtok)
    assert [r["status"] for r in await listed(admin, members, ltok, victim)] == ["active"]

    [spam] = [i for i in everything if i.get("app_id") == app]
    await admin.ok("POST", f"/v1/invitations/{spam['id']}/decline", vtok)
    status, _ = await admin.api("POST", f"/v1/workspaces/{hws}/members", htok, alone)
    assert status == 201


async def lock_waiters(admin: Admin) -> int:
    """Backends of the test's database waiting on a lock (row or advisory) right now."""
    async with admin.store.connection() as c:
        n = await c.fetchval(
            "SELECT COUNT(*) AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND datname = current_database()"
        )
    return int(n or 0)


async def race_past_count(
    admin: Admin, column: str, key: str, calls: list[tuple[str, str, dict[str, Any]]]
) -> list[int]:
    """Make ``calls`` at once, each going on from its count of ``column`` = ``key`` only
    once the other has counted too or is seen waiting on a lock; their statuses."""
    real = admin.store._count  # type: ignore[attr-defined]
    counted: list[str] = []
    both = asyncio.Event()

    async def paused(c: Any, col: str, k: str, since: int, *ws: str) -> int:
        n: int = await real(c, col, k, since, *ws)
        if (col, k) == (column, key):
            counted.append(k)
            if len(counted) == 2:
                both.set()
            while not both.is_set() and not await lock_waiters(admin):  # noqa: ASYNC110
                await asyncio.sleep(0.005)  # polls another process's state; no deadline
        return n

    admin.store._count = paused  # type: ignore[attr-defined]
    try:
        answers = await asyncio.gather(*(admin.api("POST", p, t, b) for p, t, b in calls))
    finally:
        admin.store._count = real  # type: ignore[attr-defined]
    return [status for status, _ in answers]


async def test_concurrent_invitations_on_other_targets_never_pass_a_cap_together(
    any_admin: Admin,
) -> None:
    """A workspace invites one invitee who has room for one more from it, into itself and
    onto its app at once: each locks its own target, so only a lock of the invitee's
    makes them count one at a time. Forced by :func:`race_past_count` (PostgreSQL;
    SQLite's write lock makes them one at a time)."""
    admin = any_admin
    if admin.store.dialect != "postgresql":
        return
    victim, _ = await person(admin, "victim")
    tok, ws = await admin.owner_workspace("one")
    app = await admin.new_app(tok, ws)
    await fill(admin, ws, MAX_PER_INVITEE - 1, user_id=victim)
    statuses = await race_past_count(admin, "user_id", victim, [
        (f"/v1/workspaces/{ws}/members", tok, {"user_id": victim}),
        (f"/v1/apps/{app}/collaborators", tok, {"user_id": victim, "role": "viewer"}),
    ])  # fmt: skip
    assert sorted(statuses) == [201, 409]  # the second is too_many_invitations
    async with admin.store.connection() as c:
        n = await c.fetchval("SELECT COUNT(*) AS n FROM invitations WHERE user_id = ?", victim)
    assert n == MAX_PER_INVITEE


async def test_one_inviter_never_passes_their_cap_on_two_targets_at_once(
    any_admin: Admin,
) -> None:
    """The same for the inviter's cap: one owner, room for one more invitation, two of
    their workspaces and two invitees at once; only a lock of the inviter's serializes
    them."""
    admin = any_admin
    if admin.store.dialect != "postgresql":
        return
    tok, ws1 = await admin.owner_workspace()
    ws2 = await admin.new_workspace(tok, "Second")
    owner = (await admin.ok("GET", f"/v1/workspaces/{ws1}", tok))["owner_id"]
    await fill(admin, ws1, MAX_BY_INVITER - 1, invited_by=owner)
    first, _ = await person(admin, "first")
    second, _ = await person(admin, "second")
    statuses = await race_past_count(admin, "invited_by", owner, [
        (f"/v1/workspaces/{ws1}/members", tok, {"user_id": first}),
        (f"/v1/workspaces/{ws2}/members", tok, {"user_id": second}),
    ])  # fmt: skip
    assert sorted(statuses) == [201, 409]  # the second is too_many_invitations
    async with admin.store.connection() as c:
        n = await c.fetchval("SELECT COUNT(*) AS n FROM invitations WHERE invited_by = ?", owner)
    assert n == MAX_BY_INVITER


async def test_names_refuse_control_format_and_invisible_characters(any_admin: Admin) -> None:
    admin = any_admin
    tok, ws = await admin.owner_workspace()
    invisible = ("pay\u2028ment", "\u3164", "\u2800\u2800", "a" + "\u0301" * 199, "\ue000")
    for bad in (
        "Payroll \u202egnp.exe",
        "a\u200bb",
        "a\u200cb",  # a non-joiner where nothing joins
        "Acme\ufe00",  # a variation selector that selects nothing (looks like "Acme")
        "two\nlines",
        "bell\x07",
        "x\u2066y",
        *invisible,
    ):
        for path, body in (
            ("/v1/workspaces", {"name": bad}),
            (f"/v1/workspaces/{ws}/apps", {"name": bad, "product": "search"}),
            ("/v1/tokens", {"name": bad}),
        ):
            status, problem = await admin.api("POST", path, tok, body)
            assert status == 422, (path, bad, problem)
            assert "name" in problem["detail"], problem
        status, problem = await admin.api(
            "POST", "/v1/users", OPERATOR_TOKEN, {"email": "n@example.com", "name": bad}
        )
        assert status == 422, problem
        assert "name" in problem["detail"], problem
    for good in (
        "Café 東京 עברית", "Nguyễn Thị Phương", "Cafe\u0301", "❤️ Bots 🤖", "1️⃣ 👍🏽",
        "فن\u200cآوران", "ශ්\u200dරී ලංකා",  # joiners where they join (Persian, Sinhala)
        "☎\ufe0f Desk", "葛\U000e0100城",  # variation selectors where they select
        "王\U00031350 \U00011f04",  # newer than Python 3.11's Unicode 14: Ext H, Kawi
    ):  # fmt: skip
        made = await admin.ok("POST", "/v1/workspaces", tok, {"name": good})
        assert made["name"] == good


async def test_the_invitee_sees_who_invited_them(any_admin: Admin) -> None:
    admin = any_admin
    email = f"inviter.{secrets.token_hex(4)}@example.com"
    made = await admin.ok("POST", "/v1/users", OPERATOR_TOKEN, {"email": email, "name": "Ann"})
    ws = await admin.new_workspace(made["token"], "Acme")
    victim, vtok = await person(admin, "victim")
    await admin.ok("POST", f"/v1/workspaces/{ws}/members", made["token"], {"user_id": victim})
    [inv] = await held(admin, vtok)
    assert (inv["invited_by"], inv["inviter_name"], inv["inviter_email"]) == (
        made["id"], "Ann", email
    )  # fmt: skip


async def test_removing_a_member_takes_them_off_the_workspaces_apps(any_admin: Admin) -> None:
    """A member who collaborates on one app of the workspace and is invited onto another
    is taken off both when removed from the workspace, in the same step, each audited on
    its app; their collaboration on another workspace's app stays."""
    admin = any_admin
    tok, ws = await admin.owner_workspace()
    app = await admin.new_app(tok, ws, name="one")
    invited_app = await admin.new_app(tok, ws, name="two")
    m, mtok = await person(admin, "member")
    await admin.join(ws, tok, (m, mtok))
    tok2, ws2 = await admin.owner_workspace("else", "Elsewhere")
    app2 = await admin.new_app(tok2, ws2)
    developer = {"user_id": m, "role": "developer"}
    await admin.ok("POST", f"/v1/apps/{app}/collaborators", tok, developer)
    await admin.ok("POST", f"/v1/apps/{app2}/collaborators", tok2, developer)
    await admin.accept_invitations(mtok)
    await admin.ok("POST", f"/v1/apps/{invited_app}/collaborators", tok, developer)
    assert (await admin.api("GET", f"/v1/apps/{app}", mtok))[0] == 200

    status, _ = await admin.api("DELETE", f"/v1/workspaces/{ws}/members/{m}", tok)
    assert status == 204
    for path in (f"/v1/apps/{app}", f"/v1/workspaces/{ws}/apps", f"/v1/workspaces/{ws}"):
        status, _ = await admin.api("GET", path, mtok)
        assert status in (403, 404), (path, status)
    mine = (await admin.ok("GET", "/v1/workspaces", mtok))["workspaces"]
    assert [w["id"] for w in mine if w["id"] in (ws, ws2)] == [ws2]
    assert (await admin.api("GET", f"/v1/apps/{app2}", mtok))[0] == 200
    assert await held(admin, mtok) == []
    for a in (app, invited_app):
        assert await listed(admin, f"/v1/apps/{a}/collaborators", tok, m) == []
    why = {"user_id": m, "reason": "member.remove", "workspace_id": ws}
    removed = await admin.store.list_audit(target=f"app:{app}")
    assert [e.before for e in removed if e.action == "collaborator.remove"] == [
        why | {"role": "developer"}
    ]
    cancelled = await admin.store.list_audit(target=f"app:{invited_app}")
    assert [e.before for e in cancelled if e.action == "invitation.cancel"] == [why]
    status, _ = await admin.api("DELETE", f"/v1/workspaces/{ws}/members/{m}", tok)
    assert status == 404


async def test_an_acceptance_under_way_never_outlives_a_members_removal(
    any_admin: Admin,
) -> None:
    """The member accepts an invitation onto an app of the workspace while the owner
    removes them (PostgreSQL). Forced: the acceptance, its invitation deleted and its
    collaboration written, waits before committing until the removal is seen waiting on
    a lock (the invitation's row). The removal deletes the invitations first, so it reads
    the collaborations only once the acceptance has committed, and takes that one too."""
    admin = any_admin
    if admin.store.dialect != "postgresql":
        return
    tok, ws = await admin.owner_workspace()
    app = await admin.new_app(tok, ws)
    m, mtok = await person(admin, "member")
    await admin.join(ws, tok, (m, mtok))
    await admin.ok("POST", f"/v1/apps/{app}/collaborators", tok, {"user_id": m, "role": "tester"})
    [inv] = await held(admin, mtok)
    real = admin.store._lock_target  # type: ignore[attr-defined]
    written = asyncio.Event()

    async def holding(c: Any, kind: str, target: str) -> Any:
        row = await real(c, kind, target)
        if kind == "app" and not written.is_set():  # the acceptance's transaction
            fetchval = c.fetchval

            async def then_wait(sql: str, *args: Any) -> Any:
                value = await fetchval(sql, *args)
                if sql.startswith("SELECT role FROM collaborators"):  # after its insert
                    written.set()
                    while not await lock_waiters(admin):  # noqa: ASYNC110
                        await asyncio.sleep(0.005)  # polls another process's state
                return value

            c.fetchval = then_wait
        return row

    admin.store._lock_target = holding  # type: ignore[attr-defined]
    try:
        accept = asyncio.ensure_future(
            admin.api("POST", f"/v1/invitations/{inv['id']}/accept", mtok)
        )
        await written.wait()
        status, body = await admin.api("DELETE", f"/v1/workspaces/{ws}/members/{m}", tok)
    finally:
        admin.store._lock_target = real  # type: ignore[attr-defined]
    assert status == 204, body
    assert (await accept)[0] == 200
    assert await listed(admin, f"/v1/apps/{app}/collaborators", tok, m) == []
    assert (await admin.api("GET", f"/v1/apps/{app}", mtok))[0] in (403, 404)
