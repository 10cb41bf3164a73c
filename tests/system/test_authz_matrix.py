"""Every admin route x every role -> the status docs/design.md §3 prescribes, from ONE table.

Real HTTP through the admin application of ``create_app`` on a loopback socket, with a
real redis-server and a real SQLite store; a smaller smoke subset runs on PostgreSQL.

Roles: ``op`` operator token; ``owner`` the workspace owner; ``appown`` a member who owns
the app; ``collab`` a developer invited to the app who is not a workspace member;
``member`` a plain member; ``other`` a user of another workspace; ``none`` no token;
``bad`` an unknown token. 404 = the caller may not even see the resource.

Each route runs as every role in that order in one world, so after a successful removal
the later roles meet what is left (e.g. the collaborator the owner just removed).

Authorization comes before the input is read: every row is first sent with an invalid
body (and query), a malformed JSON body and an empty body. Callers the table refuses get
the same 401/403/404; callers it admits get 422/400; and none of these calls changes any
row of the store or any Redis key.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.admin_api import ROUTES
from gateway.admin_api.http import Route
from meter.accounts.authz import token_hash
from meter.store.refund_failures import RefundFailure
from tests.support.adminkit import Admin, admin_server, snapshot
from tests.support.payments import deliver
from tests.support.settings import OPERATOR_TOKEN
from tests.support.stripe_standin import refunded, settings_with_stripe, signed, stripe_standin

ROLES = ("op", "owner", "appown", "collab", "member", "other", "none", "bad")


@dataclass
class World:
    """One workspace with an app, and a user in each role."""

    admin: Admin
    ws: str
    app: str
    tokens: dict[str, str | None]
    users: dict[str, str]
    request: str  # an open upgrade request of the workspace
    invitation: str  # "other"'s pending invitation into the workspace

    def token_id(self, role: str) -> str:
        """The id of the API token ``role`` was created with."""
        return "t" + token_hash(self.tokens[role] or "")[:16]


Req = Callable[[World], tuple[str, str, Any]]

# route -> statuses in ROLES order. THE table.
MATRIX: list[tuple[str, Req, tuple[int, ...]]] = [
    ("POST /v1/users",
     lambda w: ("POST", "/v1/users", {"email": f"n{id(w)}@example.com", "name": "N"}),
     (201, 403, 403, 403, 403, 403, 401, 401)),
    ("POST /v1/workspaces",
     lambda w: ("POST", "/v1/workspaces", {"name": "Another"}),
     (403, 201, 201, 201, 201, 201, 401, 401)),
    ("GET /v1/workspaces/{ws}",
     lambda w: ("GET", f"/v1/workspaces/{w.ws}", None),
     (403, 200, 200, 404, 200, 404, 401, 401)),
    ("POST /v1/workspaces/{ws}/members",
     lambda w: ("POST", f"/v1/workspaces/{w.ws}/members", {"user_id": w.users["spare"]}),
     (403, 201, 403, 404, 403, 404, 401, 401)),
    ("POST /v1/workspaces/{ws}/apps",
     lambda w: ("POST", f"/v1/workspaces/{w.ws}/apps", {"name": "b", "product": "search"}),
     (403, 201, 201, 404, 201, 404, 401, 401)),
    ("GET /v1/apps/{app}",
     lambda w: ("GET", f"/v1/apps/{w.app}", None),
     (403, 200, 200, 200, 403, 404, 401, 401)),
    ("PATCH /v1/apps/{app}",
     lambda w: ("PATCH", f"/v1/apps/{w.app}", {"upstream_url": None}),
     (403, 200, 200, 403, 403, 404, 401, 401)),
    # What decides the app's spending of the workspace's money is the workspace owner's:
    # any member may create an app, and must not lift the owner's controls on it.
    ("PATCH /v1/apps/{app} spending",
     lambda w: ("PATCH", f"/v1/apps/{w.app}", {"use_free_credits": True, "suspended": False}),
     (403, 200, 403, 403, 403, 404, 401, 401)),
    ("POST /v1/apps/{app}/collaborators",
     lambda w: ("POST", f"/v1/apps/{w.app}/collaborators",
                {"user_id": w.users["spare"], "role": "viewer"}),
     (403, 201, 201, 403, 403, 404, 401, 401)),
    ("POST /v1/apps/{app}/transfer",
     lambda w: ("POST", f"/v1/apps/{w.app}/transfer", {"user_id": w.users["appown"]}),
     (403, 200, 200, 403, 403, 404, 401, 401)),
    ("GET /v1/apps/{app}/channels",
     lambda w: ("GET", f"/v1/apps/{w.app}/channels", None),
     (403, 200, 200, 403, 403, 404, 401, 401)),
    ("PUT /v1/apps/{app}/channels/{channel}",
     lambda w: ("PUT", f"/v1/apps/{w.app}/channels/web", {"secret": "k" * 32}),
     (403, 200, 200, 403, 403, 404, 401, 401)),
    ("DELETE /v1/apps/{app}/channels/{channel}",
     lambda w: ("DELETE", f"/v1/apps/{w.app}/channels/web", None),
     (403, 200, 200, 403, 403, 404, 401, 401)),
    ("POST /v1/workspaces/{ws}/funds",
     lambda w: ("POST", f"/v1/workspaces/{w.ws}/funds", {"amount": "100.00", "reference": "m"}),
     (201, 403, 403, 404, 403, 404, 401, 401)),
    # Operators only (the world's refund took 30.00, Stripe lists none: 30.00 back).
    ("POST /v1/workspaces/{ws}/refund-credits",
     lambda w: ("POST", f"/v1/workspaces/{w.ws}/refund-credits", {"refund": f"re_{w.ws}"}),
     (201, 403, 403, 404, 403, 404, 401, 401)),
    ("POST /v1/workspaces/{ws}/checkout",
     lambda w: ("POST", f"/v1/workspaces/{w.ws}/checkout", {"amount": "100.00"}),
     (403, 201, 403, 404, 403, 404, 401, 401)),
    # The provider's route takes no bearer token: unsigned is 400 whoever calls.
    ("POST /v1/payments/stripe/webhook",
     lambda w: ("POST", "/v1/payments/stripe/webhook", {"id": "evt_1", "type": "x"}),
     (400, 400, 400, 400, 400, 400, 400, 400)),
    ("GET /v1/workspaces/{ws}/transactions",
     lambda w: ("GET", f"/v1/workspaces/{w.ws}/transactions", None),
     (200, 200, 403, 404, 403, 404, 401, 401)),
    ("POST /v1/workspaces/{ws}/upgrade",
     lambda w: ("POST", f"/v1/workspaces/{w.ws}/upgrade",
                {"licences": {"automation": {"usage_limit": 9, "per_minute": 1, "per_hour": 2}}}),
     (200, 403, 403, 404, 403, 404, 401, 401)),
    # The world's open request, asked for again: answered (one open request a workspace).
    ("POST /v1/workspaces/{ws}/upgrade-requests",
     lambda w: ("POST", f"/v1/workspaces/{w.ws}/upgrade-requests", {"products": ["search"]}),
     (403, 200, 403, 404, 403, 404, 401, 401)),
    ("GET /v1/upgrade-requests",
     lambda w: ("GET", "/v1/upgrade-requests", None),
     (200, 403, 403, 403, 403, 403, 401, 401)),
    ("GET /v1/workspaces/{ws}/plan-usage",
     lambda w: ("GET", f"/v1/workspaces/{w.ws}/plan-usage", None),
     (200, 200, 403, 404, 403, 404, 401, 401)),
    ("GET /v1/workspaces/{ws}/usage",
     lambda w: ("GET", f"/v1/workspaces/{w.ws}/usage?granularity=day", None),
     (200, 200, 200, 404, 403, 404, 401, 401)),
    ("GET /v1/workspaces/{ws}/sessions",
     lambda w: ("GET", f"/v1/workspaces/{w.ws}/sessions", None),
     (200, 200, 200, 404, 403, 404, 401, 401)),
    ("PUT /v1/workspaces/{ws}/webhook",
     lambda w: ("PUT", f"/v1/workspaces/{w.ws}/webhook",
                {"url": "http://127.0.0.1:9/hook", "secret": "s" * 32}),
     (403, 200, 403, 404, 403, 404, 401, 401)),
    ("PUT /v1/apps/{app}/shadow",
     lambda w: ("PUT", f"/v1/apps/{w.app}/shadow", {"shadow": False}),
     (200, 403, 403, 403, 403, 404, 401, 401)),
    ("PATCH /v1/workspaces/{ws}",
     lambda w: ("PATCH", f"/v1/workspaces/{w.ws}", {"low_balance_threshold": "25.00"}),
     (403, 200, 403, 404, 403, 404, 401, 401)),
    ("GET /v1/workspaces",
     lambda w: ("GET", "/v1/workspaces", None),
     (200, 200, 200, 200, 200, 200, 401, 401)),
    ("GET /v1/workspaces/{ws}/apps",
     lambda w: ("GET", f"/v1/workspaces/{w.ws}/apps", None),
     (200, 200, 200, 200, 200, 404, 401, 401)),
    ("GET /v1/workspaces/{ws}/members",
     lambda w: ("GET", f"/v1/workspaces/{w.ws}/members", None),
     (200, 200, 403, 404, 403, 404, 401, 401)),
    ("DELETE /v1/workspaces/{ws}/members/{user}",
     lambda w: ("DELETE", f"/v1/workspaces/{w.ws}/members/{w.users['extra']}", None),
     (403, 204, 403, 404, 403, 404, 401, 401)),
    ("GET /v1/apps/{app}/collaborators",
     lambda w: ("GET", f"/v1/apps/{w.app}/collaborators", None),
     (200, 200, 200, 403, 403, 404, 401, 401)),
    # The owner removes the collaborator: the app owner then finds none (404), and the
    # removed collaborator no longer sees the app (404).
    ("DELETE /v1/apps/{app}/collaborators/{user}",
     lambda w: ("DELETE", f"/v1/apps/{w.app}/collaborators/{w.users['collab']}", None),
     (403, 204, 404, 404, 403, 404, 401, 401)),
    ("GET /v1/workspaces/{ws}/upgrade-requests",
     lambda w: ("GET", f"/v1/workspaces/{w.ws}/upgrade-requests", None),
     (200, 200, 403, 404, 403, 404, 401, 401)),
    ("POST /v1/upgrade-requests/{request}/decline",
     lambda w: ("POST", f"/v1/upgrade-requests/{w.request}/decline", {"reason": "not yet"}),
     (200, 403, 403, 403, 403, 403, 401, 401)),
    # Only the invitee reaches their invitation; to anyone else it does not exist.
    ("GET /v1/invitations",
     lambda w: ("GET", "/v1/invitations", None),
     (403, 200, 200, 200, 200, 200, 401, 401)),
    ("POST /v1/invitations/{invitation}/accept",
     lambda w: ("POST", f"/v1/invitations/{w.invitation}/accept", None),
     (403, 404, 404, 404, 404, 200, 401, 401)),
    ("POST /v1/invitations/{invitation}/decline",
     lambda w: ("POST", f"/v1/invitations/{w.invitation}/decline", None),
     (403, 404, 404, 404, 404, 200, 401, 401)),
    ("GET /v1/tokens",
     lambda w: ("GET", "/v1/tokens", None),
     (403, 200, 200, 200, 200, 200, 401, 401)),
    ("POST /v1/tokens",
     lambda w: ("POST", "/v1/tokens", {"name": "ci"}),
     (403, 201, 201, 201, 201, 201, 401, 401)),
    # Nobody but its holder may revoke a token: to anyone else it does not exist.
    ("DELETE /v1/tokens/{token}",
     lambda w: ("DELETE", f"/v1/tokens/{w.token_id('spare')}", None),
     (403, 404, 404, 404, 404, 404, 401, 401)),
    ("GET /v1/openapi.json",
     lambda w: ("GET", "/v1/openapi.json", None),
     (200, 200, 200, 200, 200, 200, 200, 200)),
]  # fmt: skip
SMOKE = {
    "GET /v1/workspaces/{ws}",
    "POST /v1/workspaces/{ws}/funds",
    "GET /v1/apps/{app}",
    "GET /v1/workspaces/{ws}/usage",
}


async def build_world(admin: Admin) -> World:
    """Users in every role around one workspace and its app, all through the API."""
    users: dict[str, str] = {}
    tokens: dict[str, str | None] = {"op": OPERATOR_TOKEN, "none": None, "bad": "cgu_not-a-token"}
    for role in ("owner", "appown", "collab", "member", "other", "spare", "extra"):
        users[role], token = await admin.new_user(role)
        tokens[role] = token
    ws = (await admin.ok("POST", "/v1/workspaces", tokens["owner"], {"name": "Acme"}))["id"]
    await admin.ok("POST", "/v1/workspaces", tokens["other"], {"name": "Elsewhere"})
    for role in ("appown", "member", "extra"):
        await admin.join(ws, tokens["owner"], (users[role], tokens[role] or ""))
    app = await admin.ok(
        "POST", f"/v1/workspaces/{ws}/apps", tokens["appown"],
        {"name": "Helpdesk", "product": "automation"},
    )  # fmt: skip
    await admin.ok(
        "POST", f"/v1/apps/{app['id']}/collaborators", tokens["appown"],
        {"user_id": users["collab"], "role": "developer"},
    )  # fmt: skip
    await admin.accept_invitations(tokens["collab"] or "")
    # A pending invitation gives nothing: "other" is invited into the workspace and onto
    # the app, never accepts, and stays a stranger (404) on every route of the table.
    await admin.ok("POST", f"/v1/workspaces/{ws}/members", tokens["owner"],
                   {"user_id": users["other"]})  # fmt: skip
    await admin.ok("POST", f"/v1/apps/{app['id']}/collaborators", tokens["appown"],
                   {"user_id": users["other"], "role": "viewer"})  # fmt: skip
    invitations = (await admin.ok("GET", "/v1/invitations", tokens["other"]))["invitations"]
    request = await admin.ok(
        "POST", f"/v1/workspaces/{ws}/upgrade-requests", tokens["owner"], {"products": ["search"]}
    )
    invited = next(i["id"] for i in invitations if i["kind"] == "workspace")
    # A payment credited by hand under its pi_, refunded 30.00, whose refund re_<ws>
    # failed at Stripe (which lists no refund of the charge).
    await admin.ok("POST", f"/v1/workspaces/{ws}/funds", OPERATOR_TOKEN,
                   {"amount": "100.00", "reference": f"pi_{ws}"})  # fmt: skip
    back = refunded(f"pi_{ws}", 3000, amount=10000)
    assert (await deliver(admin, back, signed(back)))[0] == 200
    await admin.store.record_refund_failure(
        RefundFailure(f"re_{ws}", f"pi_{ws}", f"ch_{ws}", 0, "usd", "failed", f"evt_{ws}", 0)
    )
    return World(admin, ws, app["id"], tokens, users, request["id"], invited)


@pytest.fixture
async def sqlite_admin(redis_url: str, tmp_path: Path) -> AsyncIterator[Admin]:
    url = f"sqlite:///{tmp_path}/store.db"
    async with (
        stripe_standin() as standin,
        admin_server(settings_with_stripe(url, redis_url, standin)) as a,
    ):
        yield a


def route_of(name: str) -> Route | None:
    """The route of a row (``METHOD path``, then what the row is about)."""
    key = " ".join(name.split()[:2])
    return next((r for r in ROUTES if f"{r.method} {r.path}" == key), None)


# Input variants sent before the valid one: (name, body bytes, extra query).
VARIANTS: tuple[tuple[str, bytes | None, str], ...] = (
    ("invalid", b'{"unexpected": [1, 2], "name": 7, "user_id": "NOT AN ID"}', "bogus=1"),
    ("malformed", b'{"licences": {"automation": ', ""),
    ("empty", b"", ""),
)


# Rows whose refusal depends on the body's member names: their bad input names them, so
# a refused caller still learns nothing from validation (and malformed or empty input,
# which names nothing, is the route's own row's).
ROW_VARIANTS: dict[str, tuple[tuple[str, bytes | None, str], ...]] = {
    "PATCH /v1/apps/{app} spending": (
        ("invalid", b'{"suspended": "yes", "use_free_credits": 1}', ""),
        ("invalid", b'{"use_free_credits": null, "unexpected": [1]}', ""),
        ("invalid", b'{"suspended": true, "upstream_url": "ftp://x"}', ""),
    ),
}


def expected_for(route: Route | None, variant: str, want: int) -> int:
    """What a call with bad input answers: the table's refusal, else the input error."""
    if want >= 400 or route is None:
        return want
    if route.body is not None:
        return 422 if variant == "invalid" else 400
    if route.query is not None and variant == "invalid":
        return 422
    return want


async def bad_input_calls(
    admin: Admin, world: World, name: str, req: Req, expected: tuple[int, ...]
) -> list[str]:
    """Every role with every bad-input variant: authorization is decided first."""
    route = route_of(name)
    if route is not None and route.body is None and route.query is None:
        return []  # it reads no input: any call is a valid one (made after this sweep)
    wrong = []
    for variant, raw, query in ROW_VARIANTS.get(name, VARIANTS):
        for role, want in zip(ROLES, expected, strict=True):
            method, path, _ = req(world)
            if query:
                path += ("&" if "?" in path else "?") + query
            headers = {"Content-Type": "application/json"}
            if world.tokens[role] is not None:
                headers["Authorization"] = f"Bearer {world.tokens[role]}"
            status, answer = await admin.api(method, path, data=raw, headers=headers)
            exp = expected_for(route, variant, want)
            if status != exp:
                got = f"{status} (want {exp}) {answer}"
                wrong.append(f"{name} as {role} with {variant} input: {got}")
            elif status >= 400:
                assert answer["status"] == status, answer
                assert answer["code"], answer
    return wrong


async def state(admin: Admin) -> dict[str, Any]:
    """Store rows and Redis keys; outbox rows only counted (delivery runs in the background)."""
    snap = await snapshot(admin)
    snap["outbox"] = len(snap["outbox"])
    return snap


async def check_route(admin: Admin, name: str, req: Req, expected: tuple[int, ...]) -> list[str]:
    """Call one route as every role (in a fresh world); return the mismatches."""
    world = await build_world(admin)
    before = await state(admin)
    wrong = await bad_input_calls(admin, world, name, req, expected)
    after = await state(admin)
    if after != before:
        changed = sorted(k for k in after.keys() | before.keys() if after.get(k) != before.get(k))
        wrong.append(f"{name}: a call with bad input changed {changed}")
    for role, want in zip(ROLES, expected, strict=True):
        method, path, body = req(world)
        status, answer = await admin.api(method, path, world.tokens[role], body)
        if status != want:
            wrong.append(f"{name} as {role}: {status} (want {want}) {answer}")
        elif status >= 400:
            assert answer["status"] == status, answer
            assert answer["code"], answer
    return wrong


def test_the_table_covers_every_route() -> None:
    listed = {name for name, _, _ in MATRIX}
    assert {f"{r.method} {r.path}" for r in ROUTES} <= listed


async def test_authorization_matrix(sqlite_admin: Admin) -> None:
    wrong: list[str] = []
    for name, req, expected in MATRIX:
        wrong += await check_route(sqlite_admin, name, req, expected)
    assert not wrong, "\n".join(wrong)


async def test_authorization_smoke_on_postgres(redis_url: str, pg_dsn: str) -> None:
    async with (
        stripe_standin() as standin,
        admin_server(settings_with_stripe(pg_dsn, redis_url, standin)) as admin,
    ):
        wrong: list[str] = []
        for name, req, expected in MATRIX:
            if name in SMOKE:
                wrong += await check_route(admin, name, req, expected)
        assert not wrong, "\n".join(wrong)


async def test_malformed_authorization_headers_are_401(sqlite_admin: Admin) -> None:
    for header in ("", "Bearer", "Basic abc", "Bearer " + "x" * 600, "bearer  "):
        status, body = await sqlite_admin.api(
            "GET", "/v1/upgrade-requests", headers={"Authorization": header}
        )
        assert status == 401, (header, body)
        assert body["code"] == "unauthorized"


async def test_a_public_route_needs_no_token_and_a_route_needs_a_policy() -> None:
    from gateway.admin_api import access
    from gateway.admin_api.openapi import build
    from meter.accounts.authz import ANONYMOUS

    async def handler(call: Any) -> Any:
        raise AssertionError("never called")

    hook = Route("POST", "/v1/hooks/x", handler, "A provider webhook", access.PUBLIC)
    assert not hook.access.authenticated
    assert hook.public
    assert await access.PUBLIC.grant(None, ANONYMOUS, {}) == access.Grant()  # type: ignore[arg-type]
    op = build((hook,))["paths"]["/v1/hooks/x"]["post"]
    assert op["security"] == []
    assert "401" not in op["responses"]
    with pytest.raises(TypeError, match="access must be a policy"):
        Route("GET", "/v1/x", handler, "X", "operator")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not in params"):
        Route("GET", "/v1/x/{ws}", handler, "X", access.workspace("members.read"))


async def test_an_app_owner_cannot_undo_the_workspace_owners_spending_controls(
    sqlite_admin: Admin,
) -> None:
    """The review's case: the owner suspends a member's app and denies it the free
    credits; its app owner cannot lift either (403 whatever the value, nothing changes),
    but still changes what is theirs (the upstream URL)."""
    admin = sqlite_admin
    owner_tok, ws = await admin.owner_workspace()
    bob, bob_tok = await admin.new_user("bob")
    await admin.ok("POST", f"/v1/workspaces/{ws}/members", owner_tok, {"user_id": bob})
    await admin.accept_invitations(bob_tok)
    app = await admin.new_app(bob_tok, ws)
    controls = {"suspended": True, "use_free_credits": False}
    await admin.ok("PATCH", f"/v1/apps/{app}", owner_tok, controls)
    before = await state(admin)
    for body in ({"suspended": False, "use_free_credits": True}, {"suspended": False},
                 {"use_free_credits": True}, {"suspended": True}, {"suspended": "no"},
                 {"use_free_credits": True, "upstream_url": None}):  # fmt: skip
        status, problem = await admin.api("PATCH", f"/v1/apps/{app}", bob_tok, body)
        assert (status, problem["code"]) == (403, "forbidden"), (body, problem)
    assert await state(admin) == before
    view = await admin.ok("PATCH", f"/v1/apps/{app}", bob_tok, {"upstream_url": None})
    assert {k: view[k] for k in controls} == controls
    # The workspace owner's own app: theirs to change either way.
    mine = await admin.new_app(owner_tok, ws)
    await admin.ok("PATCH", f"/v1/apps/{mine}", owner_tok, {"use_free_credits": False})
