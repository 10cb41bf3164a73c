"""Who may do what in the admin API (docs/design.md §3).

Callers authenticate with ``Authorization: Bearer <token>``: the operator token from the
settings, or a user token (stored only as its SHA-256 hash). Then each rule names the
roles allowed to act:

* workspace rules: ``operator``, ``owner`` (the workspace owner), ``member``, and
  ``app_owner`` (a member who owns at least one app of the workspace);
* app rules: ``operator``, ``workspace_owner``, ``app_owner``, ``collaborator``, ``member``.

Semantics: no or unknown token is :class:`Unauthorized` (401); a workspace is visible to
the operator and its members, an app also to its collaborators; what is not visible is
:class:`NotFound` (404) even when it exists; visible but not allowed is :class:`Forbidden`
(403).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Literal

from meter.errors import Forbidden, NotFound, Unauthorized
from meter.store import App, Store, Workspace

WsAction = Literal[
    "workspace.read",
    "members.add",
    "apps.create",
    "funds.add",
    "checkout.create",
    "transactions.read",
    "upgrade",
    "upgrade_requests.create",
    "plan_usage.read",
    "usage.read",
    "webhook.set",
    "workspace.update",
    "apps.list",
    "members.read",
    "members.remove",
    "upgrade_requests.read",
]
AppAction = Literal[
    "app.read",
    "app.update",
    "collaborators.add",
    "app.transfer",
    "collaborators.read",
    "collaborators.remove",
    "channels.read",
    "channels.set",
    "app.shadow",
    "app.spending",
]

WORKSPACE_RULES: dict[WsAction, frozenset[str]] = {
    "workspace.read": frozenset({"member"}),
    "members.add": frozenset({"owner"}),
    "apps.create": frozenset({"member"}),
    # Funds are paid for: owners top up through a checkout; operators credit by hand.
    "funds.add": frozenset({"operator"}),
    "checkout.create": frozenset({"owner"}),
    "transactions.read": frozenset({"owner", "operator"}),
    "upgrade": frozenset({"operator"}),
    "upgrade_requests.create": frozenset({"owner"}),
    "plan_usage.read": frozenset({"owner", "operator"}),
    "usage.read": frozenset({"owner", "operator", "app_owner"}),
    "webhook.set": frozenset({"owner"}),
    "workspace.update": frozenset({"owner"}),
    # Lists beside the writes (collaborators who are not members: see apps_scope).
    "apps.list": frozenset({"member", "operator"}),
    "members.read": frozenset({"owner", "operator"}),
    "members.remove": frozenset({"owner"}),
    "upgrade_requests.read": frozenset({"owner", "operator"}),
}
APP_RULES: dict[AppAction, frozenset[str]] = {
    # Collaborators read the app they work on; its view carries no money figures.
    "app.read": frozenset({"app_owner", "workspace_owner", "collaborator"}),
    "app.update": frozenset({"app_owner", "workspace_owner"}),
    # What decides whether an app spends the workspace's money (APP_SPENDING) is the
    # workspace owner's: any member may create an app, so an app owner could otherwise
    # lift the owner's suspension or free-credit ban on their own app.
    "app.spending": frozenset({"workspace_owner", "operator"}),
    "collaborators.add": frozenset({"app_owner", "workspace_owner"}),
    "app.transfer": frozenset({"app_owner", "workspace_owner"}),
    "collaborators.read": frozenset({"app_owner", "workspace_owner", "operator"}),
    # Shadow mode serves without refusing: the operator's roll-out tool, never a
    # tenant's (an owner could otherwise serve an app without credit for free).
    "app.shadow": frozenset({"operator"}),
    "collaborators.remove": frozenset({"app_owner", "workspace_owner"}),
    "channels.read": frozenset({"app_owner", "workspace_owner"}),
    "channels.set": frozenset({"app_owner", "workspace_owner"}),
}

# Members of an app's change that need ``app.spending`` besides ``app.update``; checked
# on the body's member names before the body is validated (authorization first).
APP_SPENDING: dict[str, AppAction] = {
    "suspended": "app.spending",
    "use_free_credits": "app.spending",
}

TOKEN_PREFIX = "cgu_"
MAX_TOKEN_LEN = 512
# Visible ASCII only: anything else is malformed (and must never reach a log or encode()).
TOKEN_RE = re.compile(r"^[\x21-\x7e]+$")


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller: the platform operator or one user."""

    user_id: str | None
    operator: bool = False
    token_id: str | None = None  # the API token the caller authenticated with

    @property
    def actor(self) -> str:
        """How the audit log names the caller."""
        if self.operator:
            return "operator"
        return f"user:{self.user_id}" if self.user_id else "anonymous"


OPERATOR = Principal(user_id=None, operator=True)
# The caller of a public route (no bearer token): no role anywhere.
ANONYMOUS = Principal(user_id=None, operator=False)


def new_token() -> str:
    """A fresh user token (shown once; only its hash is stored)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def bearer(header: str | None) -> str:
    """The token of an ``Authorization: Bearer`` header, or :class:`Unauthorized`.

    The messages never quote the header: whatever it holds may be a credential.
    """
    if not header:
        raise Unauthorized("missing Authorization: Bearer <token>")
    scheme, _, token = header.partition(" ")
    token = token.strip(" \t")
    if (
        scheme.lower() != "bearer"
        or not token
        or len(token) > MAX_TOKEN_LEN
        or not TOKEN_RE.fullmatch(token)
    ):
        raise Unauthorized("malformed Authorization header; expected Bearer <token>")
    return token


async def authenticate(store: Store, operator_token: str | None, header: str | None) -> Principal:
    """Resolve the caller of a request from its ``Authorization`` header."""
    token = bearer(header)
    if operator_token and hmac.compare_digest(token.encode(), operator_token.encode()):
        return OPERATOR
    return await user_principal(store, token)


async def user_principal(store: Store, token: str) -> Principal:
    """The user holding the unrevoked API token ``token``, or :class:`Unauthorized`."""
    digest = token_hash(token)
    row = await store.get_active_token(digest)
    if row is None or not hmac.compare_digest(row.token_hash, digest):
        raise Unauthorized("unknown or revoked token")
    return Principal(user_id=row.user_id, token_id=row.id)


def require_operator(principal: Principal) -> None:
    if not principal.operator:
        raise Forbidden("only platform operators may do this")


def require_user(principal: Principal) -> str:
    """The caller's user id; operators act through the internal tool, not as users."""
    if principal.user_id is None:
        raise Forbidden("this needs a user token, not the operator token")
    return principal.user_id


async def workspace_roles(
    store: Store, principal: Principal, ws_id: str
) -> tuple[Workspace, set[str]]:
    """The workspace and the caller's roles in it; :class:`NotFound` if not visible."""
    ws = await store.get_workspace(ws_id)
    if ws is None:
        raise NotFound("workspace", ws_id)
    if principal.operator:
        return ws, {"operator"}
    uid = principal.user_id or ""
    if not await store.is_member(ws_id, uid):
        raise NotFound("workspace", ws_id)
    roles = {"member"}
    if ws.owner_id == uid:
        roles.add("owner")
    if await store.list_apps(ws_id, owner_id=uid):
        roles.add("app_owner")
    return ws, roles


async def authorize_workspace(
    store: Store, principal: Principal, ws_id: str, action: WsAction
) -> tuple[Workspace, set[str]]:
    """Check ``action`` on a workspace; returns it with the caller's roles."""
    ws, roles = await workspace_roles(store, principal, ws_id)
    if not roles & WORKSPACE_RULES[action]:
        raise Forbidden(f"your role in workspace {ws_id} may not do this ({action})")
    return ws, roles


async def app_roles(store: Store, principal: Principal, app_id: str) -> tuple[App, set[str]]:
    """The app and the caller's roles on it; :class:`NotFound` if not visible."""
    app = await store.get_app(app_id)
    if app is None:
        raise NotFound("app", app_id)
    if principal.operator:
        return app, {"operator"}
    uid = principal.user_id or ""
    roles: set[str] = set()
    if await store.is_member(app.workspace_id, uid):
        roles.add("member")
        ws = await store.get_workspace(app.workspace_id)
        if ws is not None and ws.owner_id == uid:
            roles.add("workspace_owner")
        if app.owner_id == uid:
            roles.add("app_owner")
    if await store.get_collaborator_role(app_id, uid) is not None:
        roles.add("collaborator")
    if not roles:
        raise NotFound("app", app_id)
    return app, roles


async def authorize_app(
    store: Store, principal: Principal, app_id: str, action: AppAction
) -> tuple[App, set[str]]:
    """Check ``action`` on an app; returns it with the caller's roles."""
    app, roles = await app_roles(store, principal, app_id)
    if not roles & APP_RULES[action]:
        raise Forbidden(f"your role on app {app_id} may not do this ({action})")
    return app, roles


async def apps_scope(
    store: Store, principal: Principal, ws_id: str
) -> tuple[Workspace, str | None]:
    """Who may list a workspace's apps: members and operators see all (``None``); a
    collaborator who is not a member sees the apps they work on (their user id is the
    filter); anyone else gets :class:`NotFound`."""
    ws = await store.get_workspace(ws_id)
    uid = principal.user_id or ""
    if (
        ws is not None
        and not principal.operator
        and not await store.is_member(ws_id, uid)
        and await store.collaborating_apps(ws_id, uid)
    ):
        return ws, uid
    ws, _ = await authorize_workspace(store, principal, ws_id, "apps.list")
    return ws, None


async def usage_scope(
    store: Store,
    principal: Principal,
    ws_id: str,
    app_id: str | None,
    roles: frozenset[str] | set[str] | None = None,
) -> list[str] | None:
    """Apps whose usage the caller may read (``None``: all of the workspace).

    The owner and operators see everything; an app owner only the apps they own, and
    asking for another app's usage is :class:`Forbidden`. ``roles``: the caller's roles
    when the route's access policy already checked ``usage.read``.
    """
    if roles is None:
        _, roles = await authorize_workspace(store, principal, ws_id, "usage.read")
    if roles & {"owner", "operator"}:
        return None
    own = [a.id for a in await store.list_apps(ws_id, owner_id=principal.user_id or "")]
    if app_id is not None and app_id not in own:
        raise Forbidden(f"you may read the usage of your own apps only, not {app_id}")
    return own
