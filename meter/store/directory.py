"""Pages of the account lists the console reads: workspaces, apps, members, collaborators,
upgrade requests; and the removals beside them.

Every list is keyset-paginated on a unique sort key (``after`` = the key of the last row
of the previous page), so pages stay stable while rows are added or removed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from meter.store.accounts import WORKSPACE_COLUMNS, workspace_row
from meter.store.apps import APP_COLUMNS, app_row
from meter.store.db import StoreCore, one_column
from meter.store.licences import REQUEST_COLUMNS, request_row
from meter.store.models import App, UpgradeRequest, Workspace

WsRole = str  # "owner" | "member" | "collaborator" ("operator" is decided by the caller)


@dataclass(frozen=True, slots=True)
class Person:
    """A user as a list of members or collaborators shows them."""

    user_id: str
    email: str | None  # None for a pending invitee: shown to nobody before they accept
    name: str | None
    role: str  # members: "owner" | "member"; collaborators: their role on the app
    status: str = "active"  # or "invited": an invitation not accepted (yet)


# Pending invitees as a list shows them: no email, no name (the same columns as members);
# only open invitations (``created_at > since``), and never beside an active row of the
# same user (active wins: a gateway of before migration 11 could add a member directly).
_INVITED = (
    "SELECT i.user_id, CAST(NULL AS TEXT) AS email, CAST(NULL AS TEXT) AS name, "
    "'invited' AS status FROM invitations i"
)
_INVITED_ROLE = (
    "SELECT i.user_id, CAST(NULL AS TEXT) AS email, CAST(NULL AS TEXT) AS name, i.role, "
    "'invited' AS status FROM invitations i"
)


def _cols(alias: str, columns: str) -> str:
    return ", ".join(f"{alias}.{c.strip()}" for c in columns.split(","))


class Directory(StoreCore):
    async def workspaces_page(
        self, user_id: str | None, *, after: tuple[int, str] | None, limit: int
    ) -> list[tuple[Workspace, WsRole]]:
        """Workspaces by ``(created_at, id)``: all of them (``user_id=None``), or those the
        user is a member of or collaborates in, with the user's role there."""
        where: list[str] = []
        args: list[Any] = []
        role = "'operator'"
        if user_id is not None:
            role = (
                "CASE WHEN w.owner_id = ? THEN 'owner' WHEN EXISTS (SELECT 1 FROM memberships m "
                "WHERE m.workspace_id = w.id AND m.user_id = ?) THEN 'member' "
                "ELSE 'collaborator' END"
            )
            where.append(
                "(EXISTS (SELECT 1 FROM memberships m WHERE m.workspace_id = w.id "
                "AND m.user_id = ?) OR EXISTS (SELECT 1 FROM apps a JOIN collaborators c "
                "ON c.app_id = a.id WHERE a.workspace_id = w.id AND c.user_id = ?))"
            )
            args += [user_id, user_id]
        if after is not None:
            where.append("(w.created_at, w.id) > (?, ?)")
            args += list(after)
        head = [user_id, user_id] if user_id is not None else []
        sql = (
            f"SELECT {_cols('w', WORKSPACE_COLUMNS)}, {role} AS role FROM workspaces w "
            f"WHERE {' AND '.join(where) or '1 = 1'} ORDER BY w.created_at, w.id LIMIT ?"
        )
        async with self.connection() as c:
            rows = await c.fetch(sql, *head, *args, limit)
        return [(workspace_row(r), str(r["role"])) for r in rows]

    async def apps_page(
        self,
        workspace_id: str,
        *,
        collaborator: str | None = None,
        after: tuple[int, str] | None,
        limit: int,
    ) -> list[App]:
        """Apps of the workspace by ``(created_at, id)``; only those ``collaborator``
        works on when given."""
        sql = f"SELECT {_cols('a', APP_COLUMNS)} FROM apps a"
        args: list[Any] = []
        if collaborator is not None:
            sql += " JOIN collaborators c ON c.app_id = a.id AND c.user_id = ?"
            args.append(collaborator)
        sql += " WHERE a.workspace_id = ?"
        args.append(workspace_id)
        rows = await self.page(sql, args, ("a.created_at", "a.id"), after, limit)
        return [app_row(r) for r in rows]

    async def collaborating_apps(self, workspace_id: str, user_id: str) -> list[str]:
        """Ids of the workspace's apps that ``user_id`` collaborates on."""
        async with self.connection() as c:
            rows = await c.fetch(
                "SELECT a.id FROM apps a JOIN collaborators c ON c.app_id = a.id "
                "WHERE a.workspace_id = ? AND c.user_id = ? ORDER BY a.id",
                workspace_id,
                user_id,
            )
        return [r["id"] for r in rows]

    async def members_page(
        self, workspace_id: str, owner_id: str, *, after: str | None, limit: int, since: int = 0
    ) -> list[Person]:
        """Members of the workspace by user id, with their email and name; then pending
        invitees among them, by id alone (their email and name are theirs until they
        accept)."""
        sql = (
            "SELECT * FROM (SELECT u.id AS user_id, u.email, u.name, 'active' AS status "
            "FROM memberships m JOIN users u ON u.id = m.user_id WHERE m.workspace_id = ? "
            f"UNION ALL {_INVITED} WHERE i.target = ? AND i.created_at > ? AND NOT EXISTS "
            "(SELECT 1 FROM memberships m WHERE m.workspace_id = i.target "
            "AND m.user_id = i.user_id)) x WHERE 1 = 1"
        )
        args = [workspace_id, workspace_id, since]
        rows = await self.page(sql, args, ("user_id",), one_column(after), limit)
        return [
            Person(
                r["user_id"],
                r["email"],
                r["name"],
                "owner" if r["user_id"] == owner_id else "member",
                r["status"],
            )
            for r in rows
        ]

    async def collaborators_page(
        self, app_id: str, *, after: str | None, limit: int, since: int = 0
    ) -> list[Person]:
        """Collaborators of the app by user id, with their email, name and role; pending
        invitees by id and offered role alone."""
        sql = (
            "SELECT * FROM (SELECT u.id AS user_id, u.email, u.name, c.role, "
            "'active' AS status FROM collaborators c JOIN users u ON u.id = c.user_id "
            f"WHERE c.app_id = ? UNION ALL {_INVITED_ROLE} WHERE i.target = ? "
            "AND i.created_at > ? AND NOT EXISTS (SELECT 1 FROM collaborators k "
            "WHERE k.app_id = i.target AND k.user_id = i.user_id)) x WHERE 1 = 1"
        )
        args = [app_id, app_id, since]
        rows = await self.page(sql, args, ("user_id",), one_column(after), limit)
        return [Person(r["user_id"], r["email"], r["name"], r["role"], r["status"]) for r in rows]

    async def upgrade_requests_page(
        self, workspace_id: str, *, after: tuple[int, str] | None, limit: int
    ) -> list[UpgradeRequest]:
        """Every upgrade request of the workspace (any status), newest first."""
        sql = f"SELECT {REQUEST_COLUMNS} FROM upgrade_requests WHERE workspace_id = ?"
        key = ("created_at", "id")
        rows = await self.page(sql, [workspace_id], key, after, limit, desc=True)
        return [request_row(r) for r in rows]

    async def open_upgrade_requests_page(
        self, *, after: tuple[int, str] | None, limit: int
    ) -> list[UpgradeRequest]:
        """The open upgrade requests of every workspace, oldest first (the operators'
        queue)."""
        sql = f"SELECT {REQUEST_COLUMNS} FROM upgrade_requests WHERE status = 'open'"
        rows = await self.page(sql, [], ("created_at", "id"), after, limit)
        return [request_row(r) for r in rows]

    async def decline_upgrade_request(self, request_id: str, reason: str, at: int) -> bool:
        """Decline an open request; ``False`` if it is not open (or does not exist)."""
        return await self.changed(
            "UPDATE upgrade_requests SET status = 'declined', decided_at = ?, reason = ? "
            "WHERE id = ? AND status = 'open'",
            at,
            reason,
            request_id,
        )
