"""The console's API: paginated lists, removals, API tokens, upgrade-request status,
collaborators reading their app, and sessions live from Redis (issue 11).

Real sockets, a real redis-server and a real SQLite store (PostgreSQL for the store's
pages); the gateway's clock is a test clock where session blocks must end.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from gateway.webhooks import WebhookOptions
from meter.accounts.authz import token_hash
from meter.accounts.tokens import MAX_ROWS, MAX_TOKENS, REVOKED_KEPT_MS
from meter.store import User, open_store
from meter.store.schema import MIGRATIONS
from meter.usage.flusher import Flusher
from tests.support.adminkit import Admin, admin_server, admin_settings, snapshot
from tests.support.bot import Bot, running_bot
from tests.support.clock import Clock
from tests.support.settings import OPERATOR_TOKEN, make_settings

MONEY_WORDS = ("amount", "balance", "remaining", "paid", "price", "credit", "fund")


@pytest.fixture
async def admin(redis_url: str, tmp_path: Path) -> AsyncIterator[Admin]:
    settings = admin_settings(redis_url, tmp_path)
    async with admin_server(settings, webhooks=WebhookOptions(poll_s=3600)) as a:
        yield a


async def everything(admin: Admin, path: str, token: str, member: str, limit: int) -> list[Any]:
    """Every item of a list, following ``next_cursor`` page by page."""
    items: list[Any] = []
    cursor = None
    sep = "&" if "?" in path else "?"
    for _ in range(100):
        url = f"{path}{sep}limit={limit}" + (f"&cursor={cursor}" if cursor else "")
        page = await admin.ok("GET", url, token)
        assert len(page[member]) <= limit
        items += page[member]
        cursor = page["next_cursor"]
        if cursor is None:
            return items
    raise AssertionError("the cursor never ended")


async def test_workspace_and_app_lists_paginate_in_a_stable_order(any_admin: Admin) -> None:
    admin = any_admin
    _, tok = await admin.new_user("owner")
    _, other_tok = await admin.new_user("other")
    wss = [(await admin.ok("POST", "/v1/workspaces", tok, {"name": f"W{i}"}))["id"]
           for i in range(5)]  # fmt: skip
    theirs = await admin.new_workspace(other_tok, "Theirs")

    mine = await everything(admin, "/v1/workspaces", tok, "workspaces", 2)
    assert [w["id"] for w in mine] == wss
    assert {w["role"] for w in mine} == {"owner"}
    assert [w["id"] for w in await everything(admin, "/v1/workspaces", other_tok,
                                              "workspaces", 2)] == [theirs]  # fmt: skip
    seen = {w["id"] for w in await everything(admin, "/v1/workspaces", OPERATOR_TOKEN,
                                              "workspaces", 3)}  # fmt: skip
    assert set(wss) | {theirs} <= seen

    ws = wss[0]
    apps = []
    for i in range(5):
        body = {"name": f"bot{i}", "product": "automation"}
        apps.append((await admin.ok("POST", f"/v1/workspaces/{ws}/apps", tok, body))["id"])
    listed = await everything(admin, f"/v1/workspaces/{ws}/apps", tok, "apps", 2)
    assert [a["id"] for a in listed] == apps
    assert {a["role"] for a in listed} == {"owner"}

    # A plain member sees every app; a collaborator who is not a member only theirs.
    member, member_tok = await admin.new_user("member")
    await admin.ok("POST", f"/v1/workspaces/{ws}/members", tok, {"user_id": member})
    await admin.accept_invitations(member_tok)
    listed = await everything(admin, f"/v1/workspaces/{ws}/apps", member_tok, "apps", 50)
    assert [a["id"] for a in listed] == apps
    assert {a["role"] for a in listed} == {"member"}
    collab, collab_tok = await admin.new_user("collab")
    body = {"user_id": collab, "role": "viewer"}
    await admin.ok("POST", f"/v1/apps/{apps[3]}/collaborators", tok, body)
    await admin.accept_invitations(collab_tok)
    listed = await everything(admin, f"/v1/workspaces/{ws}/apps", collab_tok, "apps", 1)
    assert [(a["id"], a["role"]) for a in listed] == [(apps[3], "collaborator")]
    theirs_ws = await admin.ok("GET", "/v1/workspaces", collab_tok)
    assert [(w["id"], w["role"]) for w in theirs_ws["workspaces"]] == [(ws, "collaborator")]
    status, _ = await admin.api("GET", f"/v1/workspaces/{wss[1]}/apps", collab_tok)
    assert status == 404

    # Cursors are checked: garbage, another list's cursor and bad limits are 422.
    page = await admin.ok("GET", f"/v1/workspaces/{ws}/apps?limit=1", tok)
    foreign = page["next_cursor"]
    for query, field in (
        ("cursor=not-a-cursor", "cursor"),
        (f"cursor={foreign}", "cursor"),
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("limit=x", "limit"),
    ):
        status, problem = await admin.api("GET", f"/v1/workspaces?{query}", tok)
        assert (status, problem["field"]) == (422, field), (query, problem)


async def test_members_list_and_removal(any_admin: Admin) -> None:
    admin = any_admin
    owner, tok = await admin.new_user("owner")
    ws = await admin.new_workspace(tok, "Acme")
    people = {}
    for name in ("amy", "bob", "cyd"):
        uid, utok = await admin.new_user(name)
        people[name] = (uid, utok)
        await admin.ok("POST", f"/v1/workspaces/{ws}/members", tok, {"user_id": uid})
        await admin.accept_invitations(utok)
    listed = await everything(admin, f"/v1/workspaces/{ws}/members", tok, "members", 2)
    assert [m["user_id"] for m in listed] == sorted([owner] + [u for u, _ in people.values()])
    roles = {m["user_id"]: m["role"] for m in listed}
    assert roles[owner] == "owner"
    assert list(roles.values()).count("owner") == 1
    assert all("@example.com" in m["email"] for m in listed)

    # Refusals change nothing: the owner stays, and so does a member owning apps.
    amy, amy_tok = people["amy"]
    app = (await admin.ok("POST", f"/v1/workspaces/{ws}/apps", amy_tok,
                          {"name": "a", "product": "search"}))["id"]  # fmt: skip
    before = await snapshot(admin)
    for user, code in ((owner, "owner_cannot_be_removed"), (amy, "member_owns_apps")):
        status, problem = await admin.api("DELETE", f"/v1/workspaces/{ws}/members/{user}", tok)
        assert (status, problem["code"]) == (409, code), problem
    bob, bob_tok = people["bob"]
    status, _ = await admin.api("DELETE", f"/v1/workspaces/{ws}/members/{bob}", amy_tok)
    assert status == 403  # a member may not remove another
    assert await snapshot(admin) == before

    status, _ = await admin.api("DELETE", f"/v1/workspaces/{ws}/members/{bob}", tok)
    assert status == 204
    status, _ = await admin.api("GET", f"/v1/workspaces/{ws}", bob_tok)
    assert status == 404  # gone at once
    status, _ = await admin.api("DELETE", f"/v1/workspaces/{ws}/members/{bob}", tok)
    assert status == 404  # not a member any more

    await admin.ok("POST", f"/v1/apps/{app}/transfer", tok, {"user_id": owner})
    status, _ = await admin.api("DELETE", f"/v1/workspaces/{ws}/members/{amy}", tok)
    assert status == 204
    listed = await everything(admin, f"/v1/workspaces/{ws}/members", tok, "members", 50)
    assert [m["user_id"] for m in listed] == sorted([owner, people["cyd"][0]])


def money_keys(value: Any, path: str = "") -> list[str]:
    """Members that name or hold money (decimal strings) anywhere in ``value``."""
    found = []
    if isinstance(value, dict):
        for k, v in value.items():
            named = any(word in k for word in MONEY_WORDS) and k != "use_free_credits"
            if named or (isinstance(v, str) and re.fullmatch(r"-?[0-9]+\.[0-9]{2,6}", v)):
                found.append(f"{path}.{k}")
            found += money_keys(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += money_keys(v, f"{path}[{i}]")
    return found


async def test_collaborators_list_removal_and_reading_the_app(admin: Admin) -> None:
    tok, ws = await admin.owner_workspace()
    appown, appown_tok = await admin.new_user("appown")
    await admin.ok("POST", f"/v1/workspaces/{ws}/members", tok, {"user_id": appown})
    await admin.accept_invitations(appown_tok)
    app = (await admin.ok("POST", f"/v1/workspaces/{ws}/apps", appown_tok,
                          {"name": "Helpdesk", "product": "automation"}))["id"]  # fmt: skip
    collabs = {}
    for name, role in (("dev", "developer"), ("qa", "tester"), ("viewer", "viewer")):
        uid, utok = await admin.new_user(name)
        collabs[name] = (uid, utok)
        body = {"user_id": uid, "role": role}
        await admin.ok("POST", f"/v1/apps/{app}/collaborators", appown_tok, body)
        await admin.accept_invitations(utok)
    listed = await everything(admin, f"/v1/apps/{app}/collaborators", appown_tok,
                              "collaborators", 2)  # fmt: skip
    assert [c["user_id"] for c in listed] == sorted(u for u, _ in collabs.values())
    assert {c["user_id"]: c["role"] for c in listed}[collabs["qa"][0]] == "tester"

    # The collaborator reads the app they work on: settings and counts, no money.
    dev, dev_tok = collabs["dev"]
    view = await admin.ok("GET", f"/v1/apps/{app}", dev_tok)
    assert view["id"] == app
    assert view["usage"]["sessions"] == 0
    assert set(view["usage"]) >= {"sessions", "requests", "messages", "notifications"}
    assert money_keys(view) == []
    for method, path, body in (
        ("PATCH", f"/v1/apps/{app}", {"suspended": True}),
        ("GET", f"/v1/apps/{app}/collaborators", None),
        ("DELETE", f"/v1/apps/{app}/collaborators/{collabs['qa'][0]}", None),
        ("GET", f"/v1/workspaces/{ws}/plan-usage", None),
    ):
        status, _ = await admin.api(method, path, dev_tok, body)
        assert status in (403, 404), (method, path, status)

    # Removal: at once, once.
    status, _ = await admin.api("DELETE", f"/v1/apps/{app}/collaborators/{dev}", appown_tok)
    assert status == 204
    status, _ = await admin.api("GET", f"/v1/apps/{app}", dev_tok)
    assert status == 404
    status, _ = await admin.api("DELETE", f"/v1/apps/{app}/collaborators/{dev}", tok)
    assert status == 404
    listed = await everything(admin, f"/v1/apps/{app}/collaborators", tok, "collaborators", 9)
    assert dev not in [c["user_id"] for c in listed]
    assert len(listed) == 2


async def test_the_upstream_url_is_shown_only_to_who_may_change_it(admin: Admin) -> None:
    """Its query may hold the bot's credentials, and the bot called directly is not
    metered: collaborators (whatever their role) read the app without it."""
    tok, ws = await admin.owner_workspace()
    appown, appown_tok = await admin.new_user("appown")
    await admin.ok("POST", f"/v1/workspaces/{ws}/members", tok, {"user_id": appown})
    await admin.accept_invitations(appown_tok)
    url = "http://127.0.0.1:9/bot?api_key=s3cret-key"
    made = await admin.ok("POST", f"/v1/workspaces/{ws}/apps", appown_tok,
                          {"name": "Helpdesk", "product": "automation",
                           "upstream_url": url})  # fmt: skip
    app = made["id"]
    assert made["upstream_url"] == url
    for role in ("developer", "tester", "viewer"):
        uid, utok = await admin.new_user(role)
        await admin.ok("POST", f"/v1/apps/{app}/collaborators", appown_tok,
                       {"user_id": uid, "role": role})  # fmt: skip
        await admin.accept_invitations(utok)
        status, raw = await admin.api("GET", f"/v1/apps/{app}", utok)
        assert status == 200
        assert raw["upstream_url"] is None, role
        assert "s3cret" not in orjson.dumps(raw).decode(), role
    for who in (appown_tok, tok):
        assert (await admin.ok("GET", f"/v1/apps/{app}", who))["upstream_url"] == url
    shadow = await admin.ok("PUT", f"/v1/apps/{app}/shadow", OPERATOR_TOKEN, {"shadow": False})
    assert shadow["upstream_url"] == url
    # Handed to the workspace owner: the former app owner no longer sees it.
    owner = (await admin.ok("GET", f"/v1/workspaces/{ws}", tok))["owner_id"]
    given = await admin.ok("POST", f"/v1/apps/{app}/transfer", appown_tok, {"user_id": owner})
    assert given["upstream_url"] is None


async def test_the_collaborators_are_shown_only_to_who_may_list_them(admin: Admin) -> None:
    """``GET /v1/apps/{app}/collaborators`` is 403 to a collaborator: the app's own view
    left them out (it listed every collaborator with its role)."""
    tok, ws = await admin.owner_workspace()
    appown, appown_tok = await admin.new_user("appown")
    await admin.join(ws, tok, (appown, appown_tok))
    app = await admin.new_app(appown_tok, ws)
    roles = {}
    for role in ("developer", "tester", "viewer"):
        uid, utok = await admin.new_user(role)
        await admin.ok("POST", f"/v1/apps/{app}/collaborators", appown_tok,
                       {"user_id": uid, "role": role})  # fmt: skip
        await admin.accept_invitations(utok)
        roles[uid] = (role, utok)
    for role, utok in roles.values():
        status, listed = await admin.api("GET", f"/v1/apps/{app}/collaborators", utok)
        assert (status, listed["code"]) == (403, "forbidden"), role
        view = await admin.ok("GET", f"/v1/apps/{app}", utok)
        assert "collaborators" not in view, role
        assert not any(uid in orjson.dumps(view).decode() for uid in roles), role
    expected = sorted((uid, role) for uid, (role, _) in roles.items())
    for who in (appown_tok, tok):
        view = await admin.ok("GET", f"/v1/apps/{app}", who)
        assert sorted((c["user_id"], c["role"]) for c in view["collaborators"]) == expected
    # Handed to the workspace owner: the former app owner, now a member, no longer sees them.
    owner = (await admin.ok("GET", f"/v1/workspaces/{ws}", tok))["owner_id"]
    given = await admin.ok("POST", f"/v1/apps/{app}/transfer", appown_tok, {"user_id": owner})
    assert "collaborators" not in given
    assert len((await admin.ok("GET", f"/v1/apps/{app}", tok))["collaborators"]) == 3


async def test_api_tokens_list_create_revoke(any_admin: Admin) -> None:
    admin = any_admin
    me, tok = await admin.new_user("me")
    _, other_tok = await admin.new_user("other")
    first = await admin.ok("GET", "/v1/tokens", tok)
    [initial] = first["tokens"]
    assert initial["id"] == "t" + token_hash(tok)[:16]
    assert initial["current"] is True
    assert initial["hint"] == tok[-4:]
    assert initial["prefix"] == "cgu_"

    created = await admin.ok("POST", "/v1/tokens", tok, {"name": "ci"})
    secret = created["token"]
    assert secret.startswith("cgu_")
    assert created["hint"] == secret[-4:]
    listing = await admin.api("GET", "/v1/tokens", tok)
    text = orjson.dumps(listing[1]).decode()
    assert secret not in text
    assert tok not in text
    assert [t["name"] for t in listing[1]["tokens"]] == ["initial token", "ci"]
    mine = await admin.ok("GET", "/v1/tokens", secret)
    assert [t["current"] for t in mine["tokens"]] == [False, True]

    # Another user's token does not exist for them; it keeps working.
    status, _ = await admin.api("DELETE", f"/v1/tokens/{created['id']}", other_tok)
    assert status == 404
    assert (await admin.api("GET", "/v1/tokens", secret))[0] == 200

    # Revoked: 401 from the very next request; the other token is unaffected.
    status, _ = await admin.api("DELETE", f"/v1/tokens/{created['id']}", tok)
    assert status == 204
    status, problem = await admin.api("GET", "/v1/tokens", secret)
    assert (status, problem["code"]) == (401, "unauthorized")
    assert (await admin.api("DELETE", f"/v1/tokens/{created['id']}", tok))[0] == 404
    assert [t["id"] for t in (await admin.ok("GET", "/v1/tokens", tok))["tokens"]] == [
        initial["id"]
    ]
    # Revoking the token in use signs that caller out too.
    assert (await admin.api("DELETE", f"/v1/tokens/{initial['id']}", tok))[0] == 204
    assert (await admin.api("GET", "/v1/workspaces", tok))[0] == 401
    assert (await admin.api("GET", "/v1/tokens", OPERATOR_TOKEN))[0] == 403
    assert me


async def test_the_token_cap_holds_under_concurrent_creation(any_admin: Admin) -> None:
    """Count and insert are one step: creations racing past the cap leave exactly it."""
    admin = any_admin
    _, tok = await admin.new_user("busy")
    for i in range(MAX_TOKENS - 3):  # with the initial token: room for two more
        await admin.ok("POST", "/v1/tokens", tok, {"name": f"t{i}"})
    answers = await asyncio.gather(
        *(admin.api("POST", "/v1/tokens", tok, {"name": f"race{i}"}) for i in range(60))
    )
    statuses = sorted(status for status, _ in answers)
    assert statuses == [201] * 2 + [409] * 58, statuses
    assert {body["code"] for status, body in answers if status == 409} == {"too_many_tokens"}
    assert len(await everything(admin, "/v1/tokens", tok, "tokens", 200)) == MAX_TOKENS


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
async def test_token_churn_is_bounded_and_revoked_rows_go_after_a_day(
    store: str, request: pytest.FixtureRequest, redis_url: str, tmp_path: Path
) -> None:
    """The cap counted live tokens only: 300 create-and-revoke cycles left 301 rows."""
    url = request.getfixturevalue("pg_dsn") if store == "postgresql" else (
        f"sqlite:///{tmp_path}/store.db")  # fmt: skip
    clock = Clock()  # whole seconds: revocations fall exactly either side of a day
    settings = make_settings(redis_url, store_url=url, operator=True)
    async with admin_server(settings, clock=clock) as admin:
        me, tok = await admin.new_user("churn")
        rows = "SELECT COUNT(*) AS n FROM api_tokens WHERE user_id = ?"
        for i in range(MAX_ROWS - 1):  # with the initial token: MAX_ROWS rows
            made = await admin.ok("POST", "/v1/tokens", tok, {"name": f"n{i}"})
            assert (await admin.api("DELETE", f"/v1/tokens/{made['id']}", tok))[0] == 204
            clock.advance(1)
        status, body = await admin.api("POST", "/v1/tokens", tok, {"name": "one more"})
        assert (status, body.get("code")) == (409, "too_many_tokens"), body
        async with admin.store.connection() as c:
            assert await c.fetchval(rows, me) == MAX_ROWS
        # A day after the first 49 revocations (one a second), their rows go: the next
        # creation finds room, and the initial token, 50 revoked and it remain.
        clock.advance(REVOKED_KEPT_MS // 1000 - 50)
        await admin.ok("POST", "/v1/tokens", tok, {"name": "next day"})
        async with admin.store.connection() as c:
            assert await c.fetchval(rows, me) == 1 + 50 + 1
        assert len((await admin.ok("GET", "/v1/tokens", tok))["tokens"]) == 2


async def test_upgrade_requests_open_declined_granted(any_admin: Admin) -> None:
    admin = any_admin
    tok, ws = await admin.owner_workspace()
    first = await admin.ok("POST", f"/v1/workspaces/{ws}/upgrade-requests", tok,
                           {"products": ["search"], "message": "please"})  # fmt: skip
    listed = await admin.ok("GET", f"/v1/workspaces/{ws}/upgrade-requests", tok)
    assert [(r["id"], r["status"]) for r in listed["requests"]] == [(first["id"], "open")]

    status, _ = await admin.api("POST", f"/v1/upgrade-requests/{first['id']}/decline", tok,
                                {"reason": "mine"})  # fmt: skip
    assert status == 403  # owners cannot decide their own requests
    declined = await admin.ok("POST", f"/v1/upgrade-requests/{first['id']}/decline",
                              OPERATOR_TOKEN, {"reason": "no contract yet"})  # fmt: skip
    assert declined["status"] == "declined"
    assert declined["reason"] == "no contract yet"
    status, problem = await admin.api("POST", f"/v1/upgrade-requests/{first['id']}/decline",
                                      OPERATOR_TOKEN, {"reason": "again"})  # fmt: skip
    assert (status, problem["code"]) == (409, "request_not_open")
    status, _ = await admin.api("POST", "/v1/upgrade-requests/rnothere0000/decline",
                                OPERATOR_TOKEN, {"reason": "x"})  # fmt: skip
    assert status == 404
    open_ids = [r["id"] for r in (await admin.ok("GET", "/v1/upgrade-requests",
                                                 OPERATOR_TOKEN))["requests"]]  # fmt: skip
    assert first["id"] not in open_ids

    second = await admin.ok("POST", f"/v1/workspaces/{ws}/upgrade-requests", tok,
                            {"products": ["search", "agent"]})  # fmt: skip
    lic = {"search": {"usage_limit": 1000, "per_minute": 10, "per_hour": 100}}
    await admin.ok("POST", f"/v1/workspaces/{ws}/upgrade", OPERATOR_TOKEN, {"licences": lic})
    pages = await everything(admin, f"/v1/workspaces/{ws}/upgrade-requests", tok, "requests", 1)
    assert [(r["id"], r["status"]) for r in pages] == [
        (second["id"], "granted"),
        (first["id"], "declined"),
    ]
    assert pages[0]["decided_at"]
    assert pages[1]["reason"] == "no contract yet"


async def test_one_open_upgrade_request_per_workspace_and_a_paged_queue(
    any_admin: Admin,
) -> None:
    """An owner cannot grow the operators' queue: one open request per workspace (the
    same one again answers it), and the operators' list comes page by page."""
    admin = any_admin
    tok, ws = await admin.owner_workspace()
    path = f"/v1/workspaces/{ws}/upgrade-requests"
    first = await admin.ok("POST", path, tok, {"products": ["search", "agent"], "message": "hi"})
    status, again = await admin.api("POST", path, tok,
                                    {"products": ["agent", "search"], "message": "hi"})  # fmt: skip
    assert (status, again["id"]) == (200, first["id"])
    for other in ({"products": ["search"]}, {"products": ["search", "agent"], "message": "X"}):
        status, problem = await admin.api("POST", path, tok, other)
        assert (status, problem["code"]) == (409, "upgrade_request_open"), problem
        assert first["id"] in problem["detail"]
    # Concurrent requests of another workspace: one is recorded.
    tok2, ws2 = await admin.owner_workspace()
    answers = await asyncio.gather(*(
        admin.api("POST", f"/v1/workspaces/{ws2}/upgrade-requests", tok2,
                  {"products": ["search"], "message": f"m{i}"})
        for i in range(20)
    ))  # fmt: skip
    assert sorted(status for status, _ in answers) == [201] + [409] * 19
    assert [r["id"] for r in await everything(admin, path, tok, "requests", 50)] == [first["id"]]

    # Declined: the owner may ask again.
    await admin.ok("POST", f"/v1/upgrade-requests/{first['id']}/decline", OPERATOR_TOKEN,
                   {"reason": "no contract yet"})  # fmt: skip
    second = await admin.ok("POST", path, tok, {"products": ["search"]})
    opened = {second["id"], next(b["id"] for s, b in answers if s == 201)}
    for _ in range(3):
        t, w = await admin.owner_workspace()
        opened.add((await admin.ok("POST", f"/v1/workspaces/{w}/upgrade-requests", t,
                                   {"products": ["agent"]}))["id"])  # fmt: skip
    queue = await everything(admin, "/v1/upgrade-requests", OPERATOR_TOKEN, "requests", 2)
    assert {r["id"] for r in queue} == opened
    assert queue == sorted(queue, key=lambda r: (r["created_at"], r["id"]))
    status, problem = await admin.api("GET", "/v1/upgrade-requests?limit=201", OPERATOR_TOKEN)
    assert (status, problem["code"]) == (422, "invalid_input"), problem


async def send(http: aiohttp.ClientSession, base: str, app: str, user: str) -> None:
    url = f"{base}/hooks/web/{app}/msg"
    async with http.post(url, json={"t": 1}, headers={"X-Channel-User-Id": user}) as r:
        assert r.status == 200, await r.text()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_sessions_list_open_sessions_live_from_redis(redis_url: str, tmp_path: Path) -> None:
    store_url = f"sqlite:///{tmp_path}/store.db"
    settings = make_settings(
        redis_url, store_url=store_url, operator=True, session_block_s=60, session_idle_s=30
    )
    clock = Clock.wall()
    bot: Bot
    async with (
        running_bot() as bot,
        admin_server(settings, clock=clock, traffic=True) as admin,
        aiohttp.ClientSession() as http,
    ):
        tok, ws = await admin.owner_workspace()
        app = await admin.new_app(tok, ws, bot.url)
        for i in range(5):
            await send(http, admin.traffic_url, app, f"user{i}")
            clock.now += 0.01
        await send(http, admin.traffic_url, app, "user0")  # inside user0's paid session
        clock.now += 1

        # Before any flush the store holds nothing; /sessions still lists all five, open,
        # as /usage counts them.
        assert await admin.store.sessions(ws, 0, 2**62) == []
        sessions = f"/v1/workspaces/{ws}/sessions"
        rows = await everything(admin, sessions, tok, "sessions", 2)
        assert len(rows) == 5
        assert all(r["open"] for r in rows)
        assert len({r["billing_session_id"] for r in rows}) == 5
        assert sorted(r["messages"] for r in rows) == [1, 1, 1, 1, 2]
        assert [r["start"] for r in rows] == sorted(r["start"] for r in rows)
        usage = await admin.ok("GET", f"/v1/workspaces/{ws}/usage", tok)
        assert usage["totals"]["sessions"] == 5
        assert usage["live"] is True
        newest = await everything(admin, sessions + "?order=desc", tok, "sessions", 2)
        assert [r["billing_session_id"] for r in newest] == [
            r["billing_session_id"] for r in reversed(rows)
        ]

        # Flushed (open buckets are copied, not moved): still five, none twice.
        await Flusher(admin.redis, admin.store, settings, clock=clock).flush_once(force=True)
        assert len(await admin.store.sessions(ws, 0, 2**62)) == 5
        rows = await everything(admin, sessions, tok, "sessions", 3)
        assert len(rows) == 5
        assert len({r["billing_session_id"] for r in rows}) == 5

        # Once the block ran out and the talk went idle, the sessions are closed.
        clock.now += 120
        rows = await everything(admin, sessions, tok, "sessions", 50)
        assert len(rows) == 5
        assert not any(r["open"] for r in rows)
        status, text = await admin.api("GET", sessions, tok, headers={"Accept": "text/csv"})
        lines = text.strip().split("\n")
        assert status == 200
        assert lines[0].endswith(",open")
        assert len(lines) == 6

        await Flusher(admin.redis, admin.store, settings, clock=clock).flush_once(force=True)

    # Redis down: the stored history is still served, marked as not live.
    dead = make_settings(f"redis://127.0.0.1:{free_port()}/0", store_url=store_url, operator=True)
    async with admin_server(dead, clock=clock) as down:
        got = await down.ok("GET", f"/v1/workspaces/{ws}/usage", tok)
        assert got["live"] is False
        assert got["totals"]["sessions"] == 5
        got = await down.ok("GET", f"/v1/workspaces/{ws}/sessions", tok)
        assert got["live"] is False
        assert len(got["sessions"]) == 5
        got = await down.ok("GET", f"/v1/apps/{app}", tok)
        assert got["usage"]["live"] is False
        assert got["usage"]["sessions"] == 5


@pytest.mark.parametrize("store_url", ["sqlite", "postgresql"], indirect=True)
async def test_migration_keeps_user_tokens_and_request_statuses(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import meter.store.postgres as pg
    import meter.store.sqlite as lite

    for module in (lite, pg):
        monkeypatch.setattr(module, "MIGRATIONS", MIGRATIONS[:1])
    store = open_store(store_url)
    try:
        await store.migrate()
        async with store.connection() as c:
            await c.execute(
                "INSERT INTO users (id, email, name, token_hash, created_at) "
                "VALUES ('uold1', 'old@example.com', 'Old', ?, 5)",
                token_hash("cgu_old-token"),
            )
        for module in (lite, pg):
            monkeypatch.setattr(module, "MIGRATIONS", MIGRATIONS)
        assert 5 in await store.migrate()
        row = await store.get_active_token(token_hash("cgu_old-token"))
        assert row is not None
        assert row.user_id == "uold1"
        assert row.name == "initial token"
        await store.create_user(User("unew1", "new@example.com", "New", "hash-new", 6))
        assert [t.user_id for t in await store.list_tokens("unew1")] == ["unew1"]
    finally:
        await store.close()


@pytest.fixture
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/m.db"
    dsn: str = request.getfixturevalue("pg_dsn")
    return dsn
