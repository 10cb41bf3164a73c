"""Invitations: a user becomes a member of a workspace or a collaborator on an app only
by accepting one (migration 11).

A pending invitation is a row here and nowhere else: ``memberships`` and
``collaborators`` hold only the people who accepted, so every access check that reads
them treats a pending invitee as a stranger. Accepting moves the row over in one
transaction; declining or cancelling deletes it.

Writes lock the target's row (an app's after its workspace's: the lock order of
:mod:`meter.store.apps`), so an invitation, its acceptance, its withdrawal and the cap
on pending invitations are decided one at a time per target. A new invitation first
takes the inviter's and the invitee's advisory locks, whose caps span targets
(``_lock_people``): the invitee's counts only the invitations of the inviting workspace
and its apps, so no outsider can use up the room another workspace's invitations need.

An invitation is open while ``created_at > since`` (the caller's clock less the
invitation lifetime): an expired one is neither listed, accepted nor counted, and a new
invitation of the same user to the same target replaces it; its inviter's next
invitation, to anyone, deletes it once it is a lifetime past its expiry. An offer never
changes in place: another role is a new invitation with a new id, so the invitee accepts
exactly what they were shown.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Any, Literal

from meter.store.apps import check_owner, lock_app_workspace
from meter.store.db import Conn, Row, StoreCore, insert_sql, row_as, values

Kind = Literal["workspace", "app"]
Full = Literal["full", "inviter_full", "invitee_full"]  # a cap reached: nothing written
Outcome = Literal["created", "pending", "active", "gone", "owner"] | Full
Done = tuple[Outcome, str | None]  # what an invitation did, and the role held before

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
    """An invitation as its invitee lists it: with the names of what it opens and of who
    offers it (the inviter chose to show themself to the invitee)."""

    invitation: Invitation
    workspace_name: str
    app_name: str | None
    inviter_name: str | None  # None: the inviter's account is gone
    inviter_email: str | None


@dataclass(frozen=True, slots=True)
class Caps:
    """Open invitations at most: per target, per inviter (all targets), per invitee from
    one workspace (its own invitation and those to its apps)."""

    target: int
    inviter: int
    invitee: int


def _lock_key(user_id: str) -> int:
    """A user's advisory-lock key for invitations: 64 bits of a digest, signed."""
    digest = hashlib.blake2b(b"invitations:" + user_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def invitation_row(r: Row) -> Invitation:
    return row_as(Invitation, r, INVITATION_COLUMNS)


def _cols(alias: str) -> str:
    return ", ".join(f"{alias}.{c.strip()}" for c in INVITATION_COLUMNS.split(","))


class Invitations(StoreCore):
    async def _lock_target(self, c: Conn, kind: str, target: str) -> Row | None:
        """Lock the workspace's or app's row until the commit; ``None`` if it is gone."""
        if kind == "app":
            await lock_app_workspace(c, self.for_key_share, target)
        sql = f"SELECT id, owner_id FROM {'workspaces' if kind == 'workspace' else 'apps'}"
        return await c.fetchrow(f"{sql} WHERE id = ?{self.for_update}", target)

    async def _lock_people(self, c: Conn, *user_ids: str) -> None:
        """Hold the caps of these users until the commit (PostgreSQL; SQLite's write lock
        already makes invitations one at a time). The inviter's and the invitee's caps
        span targets, which the target's lock does not serialize: without this,
        concurrent invitations to other targets would all see room and pass a cap
        together. Advisory locks, taken first and in one order, so they never close a
        cycle with a row lock: a transaction waits for them holding nothing, and no other
        transaction takes them (user rows, whose locks meet every foreign-key check on
        them, deadlocked with app creation and acceptance)."""
        if self.dialect != "postgresql":
            return
        for key in sorted({_lock_key(u) for u in user_ids}):
            await c.execute("SELECT pg_advisory_xact_lock(?)", key)

    async def _count(self, c: Conn, column: str, key: str, since: int, ws: str = "") -> int:
        """Open invitations with ``column`` = ``key`` (of workspace ``ws`` only, if any)."""
        sql = f"SELECT COUNT(*) AS n FROM invitations WHERE {column} = ? AND created_at > ?"
        args: list[Any] = [key, since]
        if ws:
            sql, args = sql + " AND workspace_id = ?", [*args, ws]
        return int(await c.fetchval(sql, *args) or 0)

    async def invite(
        self, inv: Invitation, caps: Caps, since: int, swept: int, expect_owner: str | None = None
    ) -> Done:
        """:meth:`_invite`, then the inviter's invitations made at or before ``swept``
        (long expired: nothing reads them) go. ``swept`` is a lifetime before ``since``, so
        a process with a clock ahead, or a shorter lifetime during a rolling deploy, never
        deletes an invitation another still counts as open. In a transaction of its own
        that skips rows another one holds: it waits for nothing, so it is in no deadlock
        (inside the invitation's, it held rows a replacing one waited for while it waited)."""
        outcome = await self._retry(lambda: self._invite(inv, caps, since, expect_owner))
        async with self.transaction() as c:
            await c.execute(
                "DELETE FROM invitations WHERE id IN (SELECT id FROM invitations "
                f"WHERE invited_by = ? AND created_at <= ?{self.skip_locked})",
                inv.invited_by,
                swept,
            )
        return outcome

    async def _invite(self, inv: Invitation, caps: Caps, since: int, owner: str | None) -> Done:
        """Invite ``inv.user_id`` to ``inv.target``, in one step; returns what happened
        and, for an app, the role the user had before (active or offered):

        * ``active``: they already belong (an active collaborator's role is changed);
        * ``pending``: an invitation of theirs is open; another role replaces it by
          ``inv`` (a new id: the old one can no longer be accepted);
        * ``full`` / ``inviter_full``: the target / the inviter has as many open
          invitations as its cap; no invitation is written;
        * ``invitee_full``: the invitee holds ``caps.invitee`` open invitations of this
          workspace and its apps; no invitation is written;
        * ``created``: a new pending invitation;
        * ``owner``: the invitee owns the app by now (no collaborator); nothing written;
        * ``gone``: the workspace or app no longer exists (an app no longer owned by
          ``owner``, if given: :class:`~meter.store.OwnerChanged`, nothing written).
        """
        async with self.transaction() as c:
            await self._lock_people(c, inv.invited_by, inv.user_id)
            locked = await self._lock_target(c, inv.kind, inv.target)
            if locked is None:
                return "gone", None  # the workspace or app was deleted meanwhile
            check_owner(locked, inv.target, owner)  # nothing written if another's by now
            if inv.kind == "app" and locked["owner_id"] == inv.user_id:  # handed to them
                return "owner", None
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
            # Locked: a decline (which locks no target) waits, or has deleted it already.
            mine = "invitations WHERE target = ? AND user_id = ?"
            sql = f"SELECT role, created_at FROM {mine}{self.for_update}"
            offered = await c.fetchrow(sql, inv.target, inv.user_id)
            insert = insert_sql("invitations", INVITATION_COLUMNS)
            if offered is not None:
                if int(offered["created_at"]) > since and offered["role"] == inv.role:
                    return "pending", offered["role"]  # the same offer stands, unchanged
                await c.execute(f"DELETE FROM {mine}", inv.target, inv.user_id)
                if int(offered["created_at"]) > since:  # another role: a new offer
                    await c.execute(insert, *values(inv, INVITATION_COLUMNS))
                    return "pending", offered["role"]
            if await self._count(c, "target", inv.target, since) >= caps.target:
                return "full", None
            if await self._count(c, "invited_by", inv.invited_by, since) >= caps.inviter:
                return "inviter_full", None
            held = await self._count(c, "user_id", inv.user_id, since, inv.workspace_id)
            if held >= caps.invitee:
                return "invitee_full", None
            await c.execute(insert, *values(inv, INVITATION_COLUMNS))
        return "created", None

    async def accept_invitation(
        self, invitation_id: str, user_id: str, since: int
    ) -> Invitation | None:
        """Accept the user's own open invitation: they become a member (or collaborator,
        unless they own the app or collaborate on it by now: then the invitation is only
        deleted) with the role the invitation holds when the target is locked. ``None``
        when the user holds no such open invitation (someone else's, answered, replaced,
        expired or never made)."""
        async with self.transaction() as c:
            # Which target to lock: an invitation's target never changes (another role is
            # a new invitation), so this read may be stale only in being gone by now.
            found = await c.fetchrow(
                "SELECT kind, target FROM invitations WHERE id = ? AND user_id = ?",
                invitation_id,
                user_id,
            )
            if found is None:
                return None
            target = await self._lock_target(c, found["kind"], found["target"])
            gone = await c.fetchrow(
                "DELETE FROM invitations WHERE id = ? AND user_id = ? "
                f"RETURNING {INVITATION_COLUMNS}",
                invitation_id,
                user_id,
            )
            if target is None or gone is None:
                return None
            inv = invitation_row(gone)
            if inv.created_at <= since:
                return None  # expired: deleted, never accepted
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
                    "ON CONFLICT (app_id, user_id) DO NOTHING",
                    inv.target,
                    user_id,
                    inv.role,
                )
                held = await c.fetchval(
                    "SELECT role FROM collaborators WHERE app_id = ? AND user_id = ?",
                    inv.target,
                    user_id,
                )
                inv = replace(inv, role=held)  # an active collaborator keeps their role
        return inv

    async def decline_invitation(
        self, invitation_id: str, user_id: str, since: int
    ) -> Invitation | None:
        """Delete the user's own invitation; ``None`` when they hold no such open one."""
        inv = await self.one(
            invitation_row,
            f"DELETE FROM invitations WHERE id = ? AND user_id = ? RETURNING {INVITATION_COLUMNS}",
            invitation_id,
            user_id,
        )
        return inv if inv is not None and inv.created_at > since else None

    async def user_invitations_page(
        self, user_id: str, since: int, *, after: tuple[int, str] | None, limit: int
    ) -> list[OpenInvitation]:
        """The user's open invitations by ``(created_at, id)``, with the names of the
        workspace and app they open and the inviter's name and email."""
        sql = (
            f"SELECT {_cols('i')}, w.name AS workspace_name, a.name AS app_name, "
            "u.name AS inviter_name, u.email AS inviter_email "
            "FROM invitations i JOIN workspaces w ON w.id = i.workspace_id "
            "LEFT JOIN apps a ON a.id = i.app_id LEFT JOIN users u ON u.id = i.invited_by "
            "WHERE i.user_id = ? AND i.created_at > ?"
        )
        args: list[Any] = [user_id, since]
        rows = await self.page(sql, args, ("i.created_at", "i.id"), after, limit)
        return [
            OpenInvitation(
                invitation_row(r),
                r["workspace_name"],
                r["app_name"],
                r["inviter_name"],
                r["inviter_email"],
            )
            for r in rows
        ]
