"""An admin request whose body is held back is decided again once the body is in.

Over raw sockets against the admin server (real Redis, real SQLite store): a request is
sent without its body, the server observed waiting for it (its access decided), then the
caller loses the right to it (token revoked, console session signed out, member removed,
app handed over) and the body follows. The request is refused as a new one would be
(401/404/403) and nothing changed. A body that does not arrive within
``admin_body_timeout_s`` is 408 and the connection closed, on every admin route that
reads one (the API, the console's sign-in, the provider's webhook).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.support.adminkit import Admin, admin_server, admin_settings, snapshot
from tests.support.bot import eventually
from tests.support.rawhttp import DEADLINE_S, RawConn

OUTSIDE = "http://127.0.0.1:9/steal"  # where a removed member would send the app's traffic


@pytest.fixture(name="admin")
async def admin_fixture(redis_url: str, tmp_path: Path) -> AsyncIterator[Admin]:
    """The admin server with a body deadline no held body of these tests reaches."""
    settings = admin_settings(redis_url, tmp_path, admin_body_timeout_s=3600.0)
    async with admin_server(settings) as a:
        yield a


def _waits_for_body(handler: Any) -> bool:
    request = handler._current_request
    return request is not None and request.content._waiter is not None


async def waiting_for_body(admin: Admin) -> None:
    """Until a request of the admin server waits for its body (aiohttp's reader of it
    awaits bytes): the request was authenticated and its access decided."""
    runner = admin.client.server.runner
    assert runner is not None
    server = runner.server
    assert server is not None
    assert await eventually(lambda: any(_waits_for_body(h) for h in server.connections), DEADLINE_S)


def head(method: str, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@asynccontextmanager
async def held(
    admin: Admin, method: str, path: str, json: Any, headers: dict[str, str]
) -> AsyncIterator[tuple[RawConn, bytes]]:
    """A connection whose request (``json`` its body) waits for that body."""
    body = orjson.dumps(json)
    async with RawConn.open(admin.url) as conn:
        conn.send(head(method, path, body, headers))
        await waiting_for_body(admin)
        yield conn, body


async def finish(conn: RawConn, body: bytes) -> tuple[int, Any]:
    conn.send(body)
    resp = await conn.response()
    return resp.status, orjson.loads(resp.body) if resp.body else None


async def token_id(admin: Admin, token: str) -> str:
    listed = await admin.ok("GET", "/v1/tokens", token)
    return str(next(t["id"] for t in listed["tokens"] if t["current"]))


async def test_a_token_revoked_while_its_body_was_held_creates_nothing(admin: Admin) -> None:
    _, tok = await admin.new_user("victim")
    other = (await admin.ok("POST", "/v1/tokens", tok, {"name": "other"}))["token"]
    leaked = await token_id(admin, tok)
    async with held(admin, "POST", "/v1/tokens", {"name": "persist"}, bearer(tok)) as (conn, body):
        await admin.ok("DELETE", f"/v1/tokens/{leaked}", other)
        assert (await admin.api("GET", "/v1/tokens", tok))[0] == 401
        before = await snapshot(admin)
        status, answer = await finish(conn, body)
    assert (status, answer["code"]) == (401, "unauthorized"), answer
    assert await snapshot(admin) == before


async def member_app(admin: Admin) -> tuple[str, str, str, tuple[str, str], str]:
    """A workspace's owner (id, token), its id, a member (id, token) and an app the
    member owns."""
    owner_id, owner = await admin.new_user("owner")
    ws = await admin.new_workspace(owner, "Acme")
    member = await admin.new_user("member")
    await admin.join(ws, owner, member)
    app = await admin.new_app(member[1], ws, "http://127.0.0.1:9/bot")
    return owner_id, owner, ws, member, app


WRITES = [
    ("PATCH", "", {"upstream_url": OUTSIDE}),
    ("PUT", "/channels/web", {"secret": "s" * 40}),
    ("POST", "/collaborators", {"user_id": "", "role": "developer"}),  # the accomplice
]


@pytest.mark.parametrize(("method", "tail", "json"), WRITES, ids=["patch", "channel", "collab"])
@pytest.mark.parametrize("removed", [True, False], ids=["removed", "handed-over"])
async def test_an_app_taken_while_the_body_was_held_is_not_changed(
    admin: Admin, method: str, tail: str, json: dict[str, Any], removed: bool
) -> None:
    """The app handed to the workspace owner (and its former owner removed, or not)
    while the former owner's change waits for its body: 404 (no longer visible) or 403
    (a member may not), and the app, its channels and collaborators stay as they are."""
    owner_id, owner, ws, (member_id, tok), app = await member_app(admin)
    if "user_id" in json:
        json = {**json, "user_id": (await admin.new_user("accomplice"))[0]}
    async with held(admin, method, f"/v1/apps/{app}{tail}", json, bearer(tok)) as (conn, body):
        await admin.ok("POST", f"/v1/apps/{app}/transfer", owner, {"user_id": owner_id})
        if removed:
            await admin.ok("DELETE", f"/v1/workspaces/{ws}/members/{member_id}", owner)
        before = await snapshot(admin)
        status, answer = await finish(conn, body)
    assert status == (404 if removed else 403), answer
    assert await snapshot(admin) == before


async def test_a_console_session_signed_out_while_the_body_was_held_writes_nothing(
    admin: Admin,
) -> None:
    _, tok = await admin.new_user("owner")
    jar = aiohttp.CookieJar(unsafe=True)  # keep cookies for 127.0.0.1
    async with aiohttp.ClientSession(cookie_jar=jar) as http:
        async with http.post(f"{admin.url}/ui/session", json={"token": tok}) as r:
            assert r.status == 201
            csrf = {"X-CSRF-Token": (await r.json())["csrf"]}
        cookie = next(iter(jar))
        headers = {"Cookie": f"{cookie.key}={cookie.value}", **csrf}
        async with held(admin, "POST", "/v1/workspaces", {"name": "late"}, headers) as (
            conn,
            body,
        ):
            async with http.delete(f"{admin.url}/ui/session", headers=csrf) as r:
                assert r.status == 204
            before = await snapshot(admin)
            status, answer = await finish(conn, body)
    assert (status, answer["code"]) == (401, "unauthorized"), answer
    assert await snapshot(admin) == before


async def test_a_held_body_still_allowed_is_served(admin: Admin) -> None:
    """Decided again, a caller who keeps the right is served as before."""
    _, owner, _, _, app = await member_app(admin)
    change = {"upstream_url": None}
    async with held(admin, "PATCH", f"/v1/apps/{app}", change, bearer(owner)) as (conn, body):
        status, answer = await finish(conn, body)
    assert (status, answer["upstream_url"]) == (200, None), answer


@pytest.mark.parametrize(
    ("path", "auth"),
    [("/v1/tokens", True), ("/ui/session", False), ("/v1/payments/stripe/webhook", False)],
    ids=["api", "sign-in", "webhook"],
)
async def test_a_body_not_in_within_the_deadline_is_408(
    redis_url: str, tmp_path: Path, path: str, auth: bool
) -> None:
    """Whatever the route: the body's first bytes came, the rest never does."""
    secret = "whsec_" + "w" * 32
    # The client sends nothing after its answer: the lingering close (body_linger_s,
    # 10 s by default) would only hold the connection that long before it closes.
    settings = admin_settings(
        redis_url,
        tmp_path,
        admin_body_timeout_s=0.05,
        body_linger_s=0.05,
        stripe_webhook_secret=secret,
    )
    async with admin_server(settings) as admin:
        _, tok = await admin.new_user("staller")
        before = await snapshot(admin)
        async with RawConn.open(admin.url) as conn:
            conn.send(head("POST", path, b'{"name": "x"}', bearer(tok) if auth else {}) + b'{"na')
            resp = await conn.response()
            assert resp.status == 408, resp
            assert resp.is_problem
            assert orjson.loads(resp.body)["code"] == "body_timeout"
            assert await conn.closed()
        assert await snapshot(admin) == before
