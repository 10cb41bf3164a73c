"""Users, workspaces, memberships, apps, collaborators, licences and upgrade requests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from meter.store.db import Conn, Row, StoreCore, dumps, loads
from meter.store.ledger import insert_ledger_entry
from meter.store.models import (
    APP_FIELDS,
    ROLES,
    WORKSPACE_TYPES,
    App,
    Collaborator,
    LedgerEntry,
    Licence,
    Role,
    UpgradeRequest,
    User,
    Workspace,
    now_ms,
)

_USER = "id, email, name, token_hash, created_at"
_WS = (
    "id, name, type, owner_id, created_at, free_expires_at, webhook_url, webhook_secret, "
    "low_balance_threshold"
)
_APP = (
    "id, workspace_id, name, product, owner_id, upstream_url, use_free_credits, suspended, "
    "created_at, shadow"
)
_REQ = "id, workspace_id, products, message, status, created_at, granted_at, decided_at, reason"


def _user(r: Row) -> User:
    return User(r["id"], r["email"], r["name"], r["token_hash"], int(r["created_at"]))


def _workspace(r: Row) -> Workspace:
    return Workspace(
        id=r["id"],
        name=r["name"],
        type=r["type"],
        owner_id=r["owner_id"],
        created_at=int(r["created_at"]),
        free_expires_at=r["free_expires_at"],
        webhook_url=r["webhook_url"],
        webhook_secret=r["webhook_secret"],
        low_balance_threshold=r["low_balance_threshold"],
    )


def _app(r: Row) -> App:
    return App(
        id=r["id"],
        workspace_id=r["workspace_id"],
        name=r["name"],
        product=r["product"],
        owner_id=r["owner_id"],
        created_at=int(r["created_at"]),
        upstream_url=r["upstream_url"],
        use_free_credits=bool(r["use_free_credits"]),
        suspended=bool(r["suspended"]),
        shadow=bool(r["shadow"]),
    )


def _request(r: Row) -> UpgradeRequest:
    return UpgradeRequest(
        id=r["id"],
        workspace_id=r["workspace_id"],
        products=tuple(loads(r["products"])),
        message=r["message"],
        status=r["status"],
        created_at=int(r["created_at"]),
        granted_at=r["granted_at"],
        decided_at=r["decided_at"],
        reason=r["reason"],
    )


def _licence(r: Row) -> Licence:
    return Licence(
        r["workspace_id"],
        r["product"],
        int(r["usage_limit"]),
        int(r["per_minute"]),
        int(r["per_hour"]),
    )


class Accounts(StoreCore):
    """Account rows. Unique violations raise ``Conflict``; missing references ``NotFound``."""

    # ------------------------------------------------------------------ users

    async def create_user(self, user: User, *, token_hint: str = "") -> None:
        """Insert the user and, as their first API token, the token they were created with."""
        async with self.transaction() as c:
            await c.execute(
                f"INSERT INTO users ({_USER}) VALUES (?, ?, ?, ?, ?)",
                user.id,
                user.email,
                user.name,
                user.token_hash,
                user.created_at,
            )
            await c.execute(
                "INSERT INTO api_tokens (id, user_id, name, token_hash, hint, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                "t" + user.token_hash[:16],
                user.id,
                "initial token",
                user.token_hash,
                token_hint,
                user.created_at,
            )

    async def get_user(self, user_id: str) -> User | None:
        async with self.connection() as c:
            r = await c.fetchrow(f"SELECT {_USER} FROM users WHERE id = ?", user_id)
        return _user(r) if r else None

    async def get_user_by_token_hash(self, token_hash: str) -> User | None:
        async with self.connection() as c:
            r = await c.fetchrow(f"SELECT {_USER} FROM users WHERE token_hash = ?", token_hash)
        return _user(r) if r else None

    async def get_user_by_email(self, email: str) -> User | None:
        """Case-insensitive lookup (emails are unique regardless of case)."""
        async with self.connection() as c:
            r = await c.fetchrow(f"SELECT {_USER} FROM users WHERE lower(email) = lower(?)", email)
        return _user(r) if r else None

    # ------------------------------------------------------------- workspaces

    async def create_workspace(
        self,
        workspace: Workspace,
        *,
        grant: LedgerEntry | None = None,
        once_per_user: bool = False,
    ) -> bool:
        """Insert the workspace, its owner's membership and (optionally) the free-credit
        grant in one transaction; ``True`` when the grant was recorded.

        Every grant claims the owner's row in ``free_grants`` (primary key: the user).
        With ``once_per_user`` a grant whose claim finds the row taken is not recorded
        and the workspace gets no free-credit expiry: the unique key decides, so
        concurrent creations by one user grant exactly once.
        """
        if workspace.type not in WORKSPACE_TYPES:
            raise ValueError(f"unknown workspace type {workspace.type!r}")
        w = workspace
        if grant is not None and grant.workspace_id != w.id:
            raise ValueError("grant belongs to another workspace")
        async with self.transaction() as c:
            await c.execute(
                f"INSERT INTO workspaces ({_WS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                w.id,
                w.name,
                w.type,
                w.owner_id,
                w.created_at,
                w.free_expires_at,
                w.webhook_url,
                w.webhook_secret,
                w.low_balance_threshold,
            )
            await c.execute(
                "INSERT INTO memberships (workspace_id, user_id) VALUES (?, ?)", w.id, w.owner_id
            )
            if grant is None:
                return False
            claimed = (
                await c.execute(
                    "INSERT INTO free_grants (user_id, workspace_id, created_at) "
                    "VALUES (?, ?, ?) ON CONFLICT (user_id) DO NOTHING",
                    w.owner_id,
                    w.id,
                    w.created_at,
                )
                > 0
            )
            if once_per_user and not claimed:
                await c.execute("UPDATE workspaces SET free_expires_at = NULL WHERE id = ?", w.id)
                return False
            await insert_ledger_entry(c, grant)
            return True

    async def get_workspace(self, workspace_id: str) -> Workspace | None:
        async with self.connection() as c:
            r = await c.fetchrow(f"SELECT {_WS} FROM workspaces WHERE id = ?", workspace_id)
        return _workspace(r) if r else None

    async def list_workspaces(self) -> list[str]:
        """Ids of every workspace (for the flusher and reconcile), sorted."""
        async with self.connection() as c:
            rows = await c.fetch("SELECT id FROM workspaces ORDER BY id")
        return [r["id"] for r in rows]

    async def list_user_workspaces(self, user_id: str) -> list[Workspace]:
        """Workspaces the user is a member of, oldest first."""
        cols = ", ".join(f"w.{c.strip()}" for c in _WS.split(","))
        async with self.connection() as c:
            rows = await c.fetch(
                f"SELECT {cols} FROM workspaces w JOIN memberships m ON m.workspace_id = w.id "
                "WHERE m.user_id = ? ORDER BY w.created_at, w.id",
                user_id,
            )
        return [_workspace(r) for r in rows]

    async def set_webhook(self, workspace_id: str, url: str | None, secret: str | None) -> bool:
        """Set where owner notifications go; ``False`` if there is no such workspace."""
        async with self.connection() as c:
            n = await c.execute(
                "UPDATE workspaces SET webhook_url = ?, webhook_secret = ? WHERE id = ?",
                url,
                secret,
                workspace_id,
            )
        return n > 0

    async def set_low_balance_threshold(self, workspace_id: str, micros: int | None) -> bool:
        """The owner's low-balance threshold (``None``: the default); ``False`` if there is
        no such workspace."""
        async with self.connection() as c:
            n = await c.execute(
                "UPDATE workspaces SET low_balance_threshold = ? WHERE id = ?",
                micros,
                workspace_id,
            )
        return n > 0

    async def set_free_expires_at(self, workspace_id: str, expires_at: int | None) -> bool:
        async with self.connection() as c:
            n = await c.execute(
                "UPDATE workspaces SET free_expires_at = ? WHERE id = ?", expires_at, workspace_id
            )
        return n > 0

    # ------------------------------------------------------------ memberships

    async def add_member(self, workspace_id: str, user_id: str) -> bool:
        """Add a user to a workspace; ``False`` if already a member."""
        async with self.connection() as c:
            n = await c.execute(
                "INSERT INTO memberships (workspace_id, user_id) VALUES (?, ?) "
                "ON CONFLICT (workspace_id, user_id) DO NOTHING",
                workspace_id,
                user_id,
            )
        return n > 0

    async def is_member(self, workspace_id: str, user_id: str) -> bool:
        async with self.connection() as c:
            r = await c.fetchval(
                "SELECT 1 AS x FROM memberships WHERE workspace_id = ? AND user_id = ?",
                workspace_id,
                user_id,
            )
        return r is not None

    async def list_members(self, workspace_id: str) -> list[str]:
        async with self.connection() as c:
            rows = await c.fetch(
                "SELECT user_id FROM memberships WHERE workspace_id = ? ORDER BY user_id",
                workspace_id,
            )
        return [r["user_id"] for r in rows]

    # ------------------------------------------------------------------- apps

    async def create_app(self, app: App) -> None:
        a = app
        async with self.connection() as c:
            await c.execute(
                f"INSERT INTO apps ({_APP}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                a.id,
                a.workspace_id,
                a.name,
                a.product,
                a.owner_id,
                a.upstream_url,
                a.use_free_credits,
                a.suspended,
                a.created_at,
                a.shadow,
            )

    async def get_app(self, app_id: str) -> App | None:
        async with self.connection() as c:
            r = await c.fetchrow(f"SELECT {_APP} FROM apps WHERE id = ?", app_id)
        return _app(r) if r else None

    async def list_apps(self, workspace_id: str, *, owner_id: str | None = None) -> list[App]:
        sql = f"SELECT {_APP} FROM apps WHERE workspace_id = ?"
        args: list[Any] = [workspace_id]
        if owner_id is not None:
            sql += " AND owner_id = ?"
            args.append(owner_id)
        async with self.connection() as c:
            rows = await c.fetch(sql + " ORDER BY created_at, id", *args)
        return [_app(r) for r in rows]

    async def update_app(self, app_id: str, **changes: Any) -> App | None:
        """Change ``name``, ``owner_id``, ``upstream_url``, ``use_free_credits``,
        ``suspended`` or ``shadow``; return the updated app, ``None`` if it does not exist."""
        unknown = set(changes) - APP_FIELDS
        if unknown:
            raise ValueError(f"cannot change app fields {sorted(unknown)}")
        if not changes:
            return await self.get_app(app_id)
        names = sorted(changes)
        sets = ", ".join(f"{n} = ?" for n in names)
        async with self.connection() as c:
            r = await c.fetchrow(
                f"UPDATE apps SET {sets} WHERE id = ? RETURNING {_APP}",
                *(changes[n] for n in names),
                app_id,
            )
        return _app(r) if r else None

    # ---------------------------------------------------------- collaborators

    async def add_collaborator(self, app_id: str, user_id: str, role: Role) -> None:
        """Invite a collaborator, or change the role of an existing one."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}")
        async with self.connection() as c:
            await c.execute(
                "INSERT INTO collaborators (app_id, user_id, role) VALUES (?, ?, ?) "
                "ON CONFLICT (app_id, user_id) DO UPDATE SET role = excluded.role",
                app_id,
                user_id,
                role,
            )

    async def remove_collaborator(self, app_id: str, user_id: str) -> bool:
        async with self.connection() as c:
            n = await c.execute(
                "DELETE FROM collaborators WHERE app_id = ? AND user_id = ?", app_id, user_id
            )
        return n > 0

    async def get_collaborator_role(self, app_id: str, user_id: str) -> Role | None:
        async with self.connection() as c:
            role: Role | None = await c.fetchval(
                "SELECT role FROM collaborators WHERE app_id = ? AND user_id = ?", app_id, user_id
            )
        return role

    async def list_collaborators(self, app_id: str) -> list[Collaborator]:
        async with self.connection() as c:
            rows = await c.fetch(
                "SELECT app_id, user_id, role FROM collaborators WHERE app_id = ? ORDER BY user_id",
                app_id,
            )
        return [Collaborator(r["app_id"], r["user_id"], r["role"]) for r in rows]

    # --------------------------------------------------------------- licences

    async def get_licences(self, workspace_id: str) -> list[Licence]:
        async with self.connection() as c:
            rows = await c.fetch(
                "SELECT workspace_id, product, usage_limit, per_minute, per_hour FROM licences "
                "WHERE workspace_id = ? ORDER BY product",
                workspace_id,
            )
        return [_licence(r) for r in rows]

    async def set_licences(self, workspace_id: str, licences: Sequence[Licence]) -> None:
        """Replace the workspace's licences with ``licences`` (one per product)."""
        async with self.transaction() as c:
            await _replace_licences(c, workspace_id, licences)

    async def upgrade_workspace(self, workspace_id: str, licences: Sequence[Licence]) -> bool:
        """Make the workspace enterprise with exactly these licences and grant its open
        upgrade requests, in one transaction; ``False`` if there is no such workspace."""
        now = now_ms()
        async with self.transaction() as c:
            n = await c.execute(
                "UPDATE workspaces SET type = 'enterprise' WHERE id = ?", workspace_id
            )
            if n == 0:
                return False
            await _replace_licences(c, workspace_id, licences)
            await c.execute(
                "UPDATE upgrade_requests SET status = 'granted', granted_at = ?, decided_at = ? "
                "WHERE workspace_id = ? AND status = 'open'",
                now,
                now,
                workspace_id,
            )
        return True

    # ------------------------------------------------------- upgrade requests

    async def create_upgrade_request(self, request: UpgradeRequest) -> None:
        q = request
        async with self.connection() as c:
            await c.execute(
                f"INSERT INTO upgrade_requests ({_REQ}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                q.id,
                q.workspace_id,
                dumps(list(q.products)),
                q.message,
                q.status,
                q.created_at,
                q.granted_at,
                q.decided_at,
                q.reason,
            )

    async def get_upgrade_request(self, request_id: str) -> UpgradeRequest | None:
        async with self.connection() as c:
            r = await c.fetchrow(f"SELECT {_REQ} FROM upgrade_requests WHERE id = ?", request_id)
        return _request(r) if r else None

    async def list_upgrade_requests(
        self, *, status: str | None = "open", workspace_id: str | None = None
    ) -> list[UpgradeRequest]:
        """Upgrade requests, oldest first (``status=None`` for all)."""
        where, args = ["1 = 1"], []
        if status is not None:
            where.append("status = ?")
            args.append(status)
        if workspace_id is not None:
            where.append("workspace_id = ?")
            args.append(workspace_id)
        async with self.connection() as c:
            rows = await c.fetch(
                f"SELECT {_REQ} FROM upgrade_requests WHERE {' AND '.join(where)} "
                "ORDER BY created_at, id",
                *args,
            )
        return [_request(r) for r in rows]


async def _replace_licences(c: Conn, workspace_id: str, licences: Sequence[Licence]) -> None:
    if any(lic.workspace_id != workspace_id for lic in licences):
        raise ValueError("licence belongs to another workspace")
    await c.execute("DELETE FROM licences WHERE workspace_id = ?", workspace_id)
    if licences:
        await c.executemany(
            "INSERT INTO licences (workspace_id, product, usage_limit, per_minute, per_hour) "
            "VALUES (?, ?, ?, ?, ?)",
            [
                (lic.workspace_id, lic.product, lic.usage_limit, lic.per_minute, lic.per_hour)
                for lic in licences
            ],
        )
