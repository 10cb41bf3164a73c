"""Invitations: a user becomes a member of a workspace or a collaborator on an app only
by accepting one (migration 11).

A pending invitation is a row here and nowhere else: ``memberships`` and
``collaborators`` hold only the people who accepted, so every access check that reads
them treats a pending invitee as a stranger. Accepting moves the row over in one
transaction; declining or cancelling deletes it.

Writes lock the target's row (the workspace or the app) first, so an invitation, its
acceptance and the cap on pending invitations are decided one at a time per target
(PostgreSQL: ``FOR UPDATE``; SQLite: the transaction holds the write lock from the start).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from meter.store.db import Conn, Row, StoreCore, insert_sql, row_as, values

Kind = Literal["workspace", "app"]
Outcome = Literal["created", "pending", "active", "full", "gone"]

INVITATION_COLUMNS = "id, kind, target, workspace_id, app_id, user_id, role, invited_by, created_at"


@dataclass(frozen=True, slots=True)
class Invitation:
    id: str
    kind: str  # "workspace" | "app"
    target: str  # the workspace id or the app id
    workspace_id: str
    app_id: str | None
    user_id: str
    role: str | None  # the collaborator role offered (apps only)
    invited_by: str  # the inviting user's id
    created_at: int


@dataclass(frozen=True, slots=True)
class OpenInvitation:
    """An invitation as its invitee lists it: with the names of what it opens."""

    invitation: Invitation
    workspace_name: str
    app_name: str | None


def invitation_row(r: Row) -> Invitation:
    return row_as(Invitation, r, INVITATION_COLUMNS)


def _cols(alias: str) -> str:
    return ", ".join(f"{alias}.{c.strip()}" for c in INVITATION_COLUMNS.split(","))


class Invitations(StoreCore):
    async def _lock_target(self, c: Conn, kind: str, target: str) -> Row | None:
        """Lock the workspace's or app's row until the commit; ``None`` if it is gone."""
        sql = (
            "SELECT id, owner_id FROM workspaces WHERE id = ?"
            if kind == "workspace"
            else "SELECT id, owner_id FROM apps WHERE id = ?"
        )
        return await c.fetchrow(sql + self.for_update, target)

    async def invite(self, inv: Invitation, cap: int) -> tuple[Outcome, str | None]:
        """Invite ``inv.user_id`` to ``inv.target``, in one step; returns what happened
        and, for an app, the role the user had before (active or offered):

        * ``active``: they already belong (an active collaborator's role is changed);
        * ``pending``: an invitation of theirs is open (its offered role is changed);
        * ``full``: ``cap`` invitations of the target are open; nothing is written;
        * ``created``: a new pending invitation;
        * ``gone``: the workspace or app no longer exists.
        """
        async with self.transaction() as c:
            if await self._lock_target(c, inv.kind, inv.target) is None:
                return "gone", None  # the workspace or app was deleted meanwhile
            if inv.kind == "workspace":
                member = await c.fetchval(
                    "SELECT 1 AS x FROM memberships WHERE workspace_id = ? AND user_id = ?",
                    inv.target,
                    inv.user_id,
                )
                if member is not None:
                    return "active", None
            else:
                role = await c.fetchval(
                    "SELECT role FROM collaborators WHERE app_id = ? AND user_id = ?",
                    inv.target,
                    inv.user_id,
                )
                if role is not None:
                    await c.execute(
                        "UPDATE collaborators SET role = ? WHERE app_id = ? AND user_id = ?",
                        inv.role,
                        inv.target,
                        inv.user_id,
                    )
                    return "active", str(role)
            offered = await c.fetchrow(
                "SELECT role FROM invitations WHERE target = ? AND user_id = ?",
                inv.target,
                inv.user_id,
            )
            if offered is not None:
                await c.execute(
                    "UPDATE invitations SET role = ? WHERE target = ? AND user_id = ?",
                    inv.role,
                    inv.target,
                    inv.user_id,
                )
                return "pending", offered["role"]
            n = await c.fetchval(
                "SELECT COUNT(*) AS n FROM invitations WHERE target = ?", inv.target
            )
            if int(n or 0) >= cap:
                return "full", None
            await c.execute(
                insert_sql("invitations", INVITATION_COLUMNS), *values(inv, INVITATION_COLUMNS)
            )
        return "created", None

    async def accept_invitation(self, invitation_id: str, user_id: str) -> Invitation | None:
        """Accept the user's own invitation: they become a member (or collaborator, unless
        they own the app by now) and the invitation is gone. ``None`` when the user holds
        no such invitation (someone else's, already answered, or never made)."""
        async with self.transaction() as c:
            found = await c.fetchrow(
                f"SELECT {INVITATION_COLUMNS} FROM invitations WHERE id = ? AND user_id = ?",
                invitation_id,
                user_id,
            )
            if found is None:
                return None
            inv = invitation_row(found)
            target = await self._lock_target(c, inv.kind, inv.target)
            gone = await c.execute(
                "DELETE FROM invitations WHERE id = ? AND user_id = ?", invitation_id, user_id
            )
            if target is None or not gone:
                return None
            if inv.kind == "workspace":
                await c.execute(
                    "INSERT INTO memberships (workspace_id, user_id) VALUES (?, ?) "
                    "ON CONFLICT (workspace_id, user_id) DO NOTHING",
                    inv.target,
                    user_id,
                )
            elif target["owner_id"] != user_id:
                await c.execute(
                    "INSERT INTO collaborators (app_id, user_id, role) VALUES (?, ?, ?) "
                    "ON CONFLICT (app_id, user_id) DO UPDATE SET role = excluded.role",
                    inv.target,
                    user_id,
                    inv.role,
                )
        return inv

    async def decline_invitation(self, invitation_id: str, user_id: str) -> Invitation | None:
        """Delete the user's own invitation; ``None`` when they hold no such invitation."""
        return await self.one(
            invitation_row,
            f"DELETE FROM invitations WHERE id = ? AND user_id = ? RETURNING {INVITATION_COLUMNS}",
            invitation_id,
            user_id,
        )

    async def cancel_invitation(self, target: str, user_id: str) -> bool:
        """Withdraw the pending invitation of ``user_id`` to ``target``; whether there was one."""
        return await self.changed(
            "DELETE FROM invitations WHERE target = ? AND user_id = ?", target, user_id
        )

    async def user_invitations_page(
        self, user_id: str, *, after: tuple[int, str] | None, limit: int
    ) -> list[OpenInvitation]:
        """The user's pending invitations by ``(created_at, id)``, with the names of the
        workspace and app they open."""
        sql = (
            f"SELECT {_cols('i')}, w.name AS workspace_name, a.name AS app_name "
            "FROM invitations i JOIN workspaces w ON w.id = i.workspace_id "
            "LEFT JOIN apps a ON a.id = i.app_id WHERE i.user_id = ?"
        )
        args: list[Any] = [user_id]
        rows = await self.page(sql, args, ("i.created_at", "i.id"), after, limit)
        return [OpenInvitation(invitation_row(r), r["workspace_name"], r["app_name"]) for r in rows]
