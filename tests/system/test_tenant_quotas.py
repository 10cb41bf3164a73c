"""Tenant quotas: workspaces a user owns (``max_workspaces_per_user``), apps in a
workspace (``max_apps_per_workspace``) and channel secrets of an app
(``max_channels_per_app``), each capped so one tenant cannot fill the shared store and
Redis with workspaces, apps and channels.

Real HTTP to the admin application of ``create_app`` on a loopback socket, a real
redis-server, and a real store: SQLite and PostgreSQL. Each cap holds for sequential and
concurrent creation (count and insert are one step), counts per user / per workspace
only, answers one more with a 409 problem naming the limit, and a refused creation
writes nothing. Authorization and validation still come first at the cap.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.webhooks import WebhookOptions
from tests.support.adminkit import Admin, admin_server, snapshot
from tests.support.settings import OPERATOR_TOKEN, make_settings

WS_CAP = 8
APP_CAP = 10
CHANNEL_CAP = 6
RACERS = 30


@pytest.fixture(params=["sqlite", "postgresql"])
async def admin(
    request: pytest.FixtureRequest, redis_url: str, tmp_path: Path
) -> AsyncIterator[Admin]:
    url = f"sqlite:///{tmp_path}/store.db"
    if request.param == "postgresql":
        url = request.getfixturevalue("pg_dsn")
    settings = make_settings(
        redis_url,
        store_url=url,
        operator=True,
        max_workspaces_per_user=WS_CAP,
        max_apps_per_workspace=APP_CAP,
        max_channels_per_app=CHANNEL_CAP,
    )
    async with admin_server(settings, webhooks=WebhookOptions(poll_s=3600)) as a:
        yield a


async def count(admin: Admin, sql: str, arg: str) -> int:
    async with admin.store.connection() as c:
        return int(await c.fetchval(sql, arg) or 0)


def check_problem(status: int, body: Any, code: str, *needles: str) -> None:
    assert status == 409, (status, body)
    assert body["code"] == code, body
    assert body["status"] == 409, body
    for needle in needles:
        assert needle in body["detail"], body


async def test_a_user_owns_at_most_the_workspace_cap(admin: Admin) -> None:
    uid, tok = await admin.new_user("busy")
    other_tok, elsewhere = await admin.owner_workspace("other", "Elsewhere")
    # Membership of another user's workspace is not ownership: it does not count.
    await admin.join(elsewhere, other_tok, (uid, tok))
    for i in range(WS_CAP - 5):
        await admin.new_workspace(tok, f"w{i}")

    # Concurrent creations never pass the cap together: exactly the 5 places left.
    answers = await asyncio.gather(
        *(admin.api("POST", "/v1/workspaces", tok, {"name": f"race{i}"}) for i in range(RACERS))
    )
    assert sorted(s for s, _ in answers) == [201] * 5 + [409] * (RACERS - 5), answers
    for status, body in answers:
        if status == 409:
            check_problem(
                status, body, "too_many_workspaces", str(WS_CAP), "max_workspaces_per_user"
            )
    owned = "SELECT COUNT(*) AS n FROM workspaces WHERE owner_id = ?"
    assert await count(admin, owned, uid) == WS_CAP

    # Sequentially too; a refusal writes nothing (store rows, Redis keys, audit).
    before = await snapshot(admin)
    status, body = await admin.api("POST", "/v1/workspaces", tok, {"name": "one more"})
    check_problem(status, body, "too_many_workspaces", str(WS_CAP))
    assert await snapshot(admin) == before
    listed = await admin.ok("GET", "/v1/workspaces?limit=100", tok)
    assert len(listed["workspaces"]) == WS_CAP + 1  # the owned ones and the one joined

    # Another user is unaffected, and can still create up to their own cap.
    for i in range(WS_CAP - 1):
        await admin.new_workspace(other_tok, f"o{i}")
    status, body = await admin.api("POST", "/v1/workspaces", other_tok, {"name": "ninth"})
    check_problem(status, body, "too_many_workspaces")


async def test_a_workspace_holds_at_most_the_app_cap_whoever_owns_them(admin: Admin) -> None:
    tok, ws = await admin.owner_workspace()
    member = await admin.new_user("member")
    await admin.join(ws, tok, member)
    # Apps of the owner and of a member count together.
    for i in range(APP_CAP - 5):
        await admin.new_app(tok if i % 2 else member[1], ws, name=f"a{i}")

    answers = await asyncio.gather(
        *(
            admin.api("POST", f"/v1/workspaces/{ws}/apps", (tok, member[1])[i % 2],
                      {"name": f"race{i}", "product": "search"})
            for i in range(RACERS)
        )
    )  # fmt: skip
    assert sorted(s for s, _ in answers) == [201] * 5 + [409] * (RACERS - 5), answers
    for status, body in answers:
        if status == 409:
            check_problem(status, body, "too_many_apps", ws, str(APP_CAP), "max_apps_per_workspace")
    in_ws = "SELECT COUNT(*) AS n FROM apps WHERE workspace_id = ?"
    assert await count(admin, in_ws, ws) == APP_CAP

    before = await snapshot(admin)
    for t in (tok, member[1]):
        status, body = await admin.api(
            "POST", f"/v1/workspaces/{ws}/apps", t, {"name": "more", "product": "search"}
        )
        check_problem(status, body, "too_many_apps", ws)
    assert await snapshot(admin) == before

    # Another workspace (even the same owner's) is unaffected.
    second = await admin.new_workspace(tok, "Second")
    for i in range(APP_CAP):
        await admin.new_app(tok, second, name=f"s{i}")
    assert await count(admin, in_ws, second) == APP_CAP
    status, body = await admin.api(
        "POST", f"/v1/workspaces/{second}/apps", tok, {"name": "x", "product": "search"}
    )
    check_problem(status, body, "too_many_apps", second)


async def test_an_app_has_at_most_the_channel_cap(admin: Admin) -> None:
    """Any well-formed channel name is a channel: a member set 400 secrets of 512
    characters on one app (400 rows, 400 fields of the app's Redis hash), all 200."""
    tok, ws = await admin.owner_workspace()
    member = await admin.new_user("member")
    await admin.join(ws, tok, member)
    app = await admin.new_app(member[1], ws)
    secret = {"secret": "k" * 512}
    for name in ("web", "slack", "c0"):
        await admin.ok("PUT", f"/v1/apps/{app}/channels/{name}", member[1], secret)
    answers = await asyncio.gather(
        *(
            admin.api("PUT", f"/v1/apps/{app}/channels/race{i}", (tok, member[1])[i % 2], secret)
            for i in range(RACERS)
        )
    )
    assert sorted(s for s, _ in answers) == [200] * 3 + [409] * (RACERS - 3), answers
    for status, body in answers:
        if status == 409:
            check_problem(
                status, body, "too_many_channels", app, str(CHANNEL_CAP), "max_channels_per_app"
            )
    of_app = "SELECT COUNT(*) AS n FROM app_channels WHERE app_id = ?"
    assert await count(admin, of_app, app) == CHANNEL_CAP
    listed = await admin.ok("GET", f"/v1/apps/{app}/channels", tok)
    assert len(listed["items"]) == CHANNEL_CAP

    # One more is refused and writes nothing; replacing a secret still works.
    before = await snapshot(admin)
    status, body = await admin.api("PUT", f"/v1/apps/{app}/channels/more", tok, secret)
    check_problem(status, body, "too_many_channels", app)
    assert await snapshot(admin) == before
    await admin.ok("PUT", f"/v1/apps/{app}/channels/slack", tok, {"secret": "n" * 40})
    # A removal makes room; another app is unaffected.
    await admin.ok("DELETE", f"/v1/apps/{app}/channels/c0", tok)
    await admin.ok("PUT", f"/v1/apps/{app}/channels/more", tok, secret)
    other = await admin.new_app(tok, ws, name="other")
    for i in range(CHANNEL_CAP):
        await admin.ok("PUT", f"/v1/apps/{other}/channels/o{i}", tok, secret)
    status, body = await admin.api("PUT", f"/v1/apps/{other}/channels/more", tok, secret)
    check_problem(status, body, "too_many_channels", other)


async def test_at_the_caps_authorization_and_validation_still_come_first(admin: Admin) -> None:
    tok, ws = await admin.owner_workspace()
    for i in range(WS_CAP - 1):
        await admin.new_workspace(tok, f"w{i}")
    for i in range(APP_CAP):
        await admin.new_app(tok, ws, name=f"a{i}")
    stranger_tok, _ = await admin.owner_workspace("stranger", "Theirs")
    apps = f"/v1/workspaces/{ws}/apps"
    good = {"name": "b", "product": "search"}
    bad = {"name": "", "product": "nope"}
    before = await snapshot(admin)
    expected = [
        ("POST", "/v1/workspaces", None, {"name": "x"}, 401),
        ("POST", "/v1/workspaces", OPERATOR_TOKEN, {"name": "x"}, 403),
        ("POST", "/v1/workspaces", tok, {"name": ""}, 422),
        ("POST", "/v1/workspaces", tok, {"name": "x"}, 409),
        ("POST", apps, None, good, 401),
        ("POST", apps, OPERATOR_TOKEN, good, 403),
        ("POST", apps, stranger_tok, good, 404),
        ("POST", apps, stranger_tok, bad, 404),
        ("POST", apps, tok, bad, 422),
        ("POST", apps, tok, good, 409),
    ]
    got = [(m, p, (await admin.api(m, p, t, b))[0]) for m, p, t, b, _ in expected]
    assert got == [(m, p, s) for m, p, _, _, s in expected]
    assert await snapshot(admin) == before
