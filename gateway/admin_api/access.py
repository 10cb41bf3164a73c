"""Access policies of admin routes: who may call a route, decided before its input is read.

Each :class:`~gateway.admin_api.http.Route` names one :class:`Access`. The request
pipeline authenticates the caller (401), checks the path ids (404), then asks the
route's policy for a :class:`Grant` (403 for a role that may not, 404 for a workspace or
app the caller may not even see) and only then reads the query and the body. So a
caller who may not use a route never learns anything from its validation errors, and an
empty or malformed body from such a caller is still 401/403/404.

Policies:

* :data:`PUBLIC` - no ``Authorization`` at all; the handler proves the request itself
  (e.g. a payment provider's signature);
* :data:`OPERATOR` - the operator token; :data:`ANY_USER` - any user token (operators
  act through the internal tool, not as users); :data:`ANY_CALLER` - either;
* :func:`workspace` ``(action)`` - the roles :data:`meter.accounts.authz.WORKSPACE_RULES` allows
  for ``action`` on the workspace of path parameter ``{ws}``;
* :func:`app` ``(action)`` - the roles :data:`meter.accounts.authz.APP_RULES` allows on ``{app}``;
* :data:`APPS_LISTER` - members and operators, or a collaborator who is not a member
  (who then sees only the apps they work on).

The rules stay in :mod:`meter.accounts.authz`, one table. The grant carries what the check loaded
(the workspace or app and the caller's roles), so handlers need no second look-up;
checks that depend on the body (an ``app_id`` in it belonging to the workspace) stay in
the handler.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from meter.accounts import authz
from meter.accounts.authz import Principal
from meter.errors import Forbidden
from meter.store import App, Store, Workspace

AccessKind = Literal["public", "operator", "user", "caller", "workspace", "app", "custom"]

# How the OpenAPI document names each role.
_WS_WHO = {
    "owner": "workspace owner",
    "operator": "operator",
    "member": "members",
    "app_owner": "app owner (own apps)",
}
_APP_WHO = {
    "app_owner": "app owner",
    "workspace_owner": "workspace owner",
    "collaborator": "collaborators",
    "member": "members",
    "operator": "operator",
}


@dataclass(frozen=True, slots=True)
class Grant:
    """What a passed access check established about the caller."""

    workspace: Workspace | None = None
    app: App | None = None
    roles: frozenset[str] = frozenset()

    @property
    def relied_owner(self) -> str | None:
        """The app owner this grant relied on, whom an app write must still find owning
        the app (the store's ``expect_owner``; else 409 ``owner_changed``): ``app.owner_id``
        when the caller holds the route's role as the app's owner alone, ``None`` for the
        operator and the workspace owner (who never changes), whose rights hold whoever
        owns the app. The pipeline reads the app again once the body is in; a transfer
        landing after that and before the write is what this guards against."""
        if self.app is None or self.roles & {"operator", "workspace_owner"}:
            return None
        return self.app.owner_id


Check = Callable[[Store, Principal, Mapping[str, str]], Awaitable[Grant]]


@dataclass(frozen=True, slots=True)
class Access:
    """Who may call a route. ``who`` is the text the OpenAPI document shows."""

    kind: AccessKind
    who: str
    action: str = ""  # the meter.accounts.authz rule of a workspace or app policy
    param: str = ""  # the path parameter naming the workspace or app
    check: Check | None = None  # a custom policy's check
    # Body members that need another action of the same table (member -> action),
    # checked on the member names before the body is validated.
    members: Mapping[str, str] = field(default_factory=dict)

    @property
    def authenticated(self) -> bool:
        """Whether the caller must present a valid bearer token (or console session)."""
        return self.kind != "public"

    async def grant(self, store: Store, principal: Principal, path: Mapping[str, str]) -> Grant:
        """The caller's grant, or :class:`Forbidden` / :class:`NotFound`."""
        if self.kind in ("public", "caller"):
            return Grant()
        if self.kind == "operator":
            authz.require_operator(principal)
            return Grant(roles=frozenset({"operator"}))
        if self.kind == "user":
            authz.require_user(principal)
            return Grant()
        if self.kind == "workspace":
            ws, roles = await authz.workspace_roles(store, principal, path[self.param])
            self._allow(roles, authz.WORKSPACE_RULES[self.action], f"workspace {ws.id}")  # type: ignore[index]
            return Grant(workspace=ws, roles=frozenset(roles))
        if self.kind == "app":
            found, roles = await authz.app_roles(store, principal, path[self.param])
            self._allow(roles, authz.APP_RULES[self.action], f"app {found.id}")  # type: ignore[index]
            return Grant(app=found, roles=frozenset(roles))
        assert self.check is not None
        return await self.check(store, principal, path)

    def _allow(self, roles: set[str], allowed: frozenset[str], what: str) -> None:
        if not roles & allowed:
            raise Forbidden(f"your role on {what} may not do this ({self.action})")

    def check_members(self, grant: Grant, data: Mapping[str, Any]) -> None:
        """:class:`Forbidden` when the body names a member the caller's roles may not
        change (whatever its value: authorization comes before validation)."""
        rules: Mapping[str, frozenset[str]] = (
            authz.APP_RULES if self.kind == "app" else authz.WORKSPACE_RULES  # type: ignore[assignment]
        )
        for member, action in self.members.items():
            if member in data and not grant.roles & rules[action]:
                raise Forbidden(f"your role may not change {member} ({action})")


def _who(roles: frozenset[str], names: dict[str, str]) -> str:
    return ", ".join(text for role, text in names.items() if role in roles)


def workspace(action: authz.WsAction, param: str = "ws") -> Access:
    """The roles ``WORKSPACE_RULES[action]`` allows, in the workspace of ``{param}``."""
    who = _who(authz.WORKSPACE_RULES[action], _WS_WHO)
    return Access("workspace", who, action, param)


def app(
    action: authz.AppAction,
    param: str = "app",
    members: Mapping[str, authz.AppAction] | None = None,
) -> Access:
    """The roles ``APP_RULES[action]`` allows, on the app of ``{param}``; a body member of
    ``members`` needs its own action as well."""
    who = _who(authz.APP_RULES[action], _APP_WHO)
    for member, needs in (members or {}).items():
        who += f"; {member}: {_who(authz.APP_RULES[needs] & authz.APP_RULES[action], _APP_WHO)}"
    return Access("app", who, action, param, members=dict(members or {}))


async def _apps_lister(store: Store, principal: Principal, path: Mapping[str, str]) -> Grant:
    ws, only = await authz.apps_scope(store, principal, path["ws"])
    # A collaborator who is not a member lists only the apps they work on.
    return Grant(workspace=ws, roles=frozenset({"collaborator" if only else "member"}))


PUBLIC = Access("public", "anyone; the request proves itself (e.g. a provider signature)")
OPERATOR = Access("operator", "operator")
ANY_USER = Access("user", "any user")
ANY_CALLER = Access("caller", "any user, operator")
APPS_LISTER = Access(
    "custom", "members, operator, collaborators (their apps)", param="ws", check=_apps_lister
)
