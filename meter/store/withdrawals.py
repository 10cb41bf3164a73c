"""Withdrawals: taking a member out of a workspace or a collaborator off an app together
with any invitation of theirs to it, and handing an app over, which withdraws every
invitation to the app. Each is one transaction that locks rows in the order of
:mod:`meter.store.apps`, like every write of :mod:`meter.store.invitations`, so an
acceptance lands wholly before or wholly after it: a withdrawn user can never be left a
member, nor hold an invitation that lets them back in (a gateway of before migration 11
could add a member directly while their invitation was open). Removing a member locks
their membership too and refuses while they own apps of the workspace; app creation and
transfer lock the new owner's membership, so neither lands on a member being removed.
It also takes them off the workspace's apps: their collaborations and invitations there
go in the same step.
"""

from __future__ import annotations

from dataclasses import dataclass

from meter.store.apps import APP_COLUMNS, app_row, check_owner, locked_member
from meter.store.db import Conn
from meter.store.errors import NotMember, OwnsApps
from meter.store.invitations import Invitations, Kind
from meter.store.models import App


@dataclass(frozen=True, slots=True)
class Withdrawn:
    """What a withdrawal deleted."""

    active: bool  # the membership or the collaboration
    role: str | None  # the collaborator's role (apps; None otherwise)
    invited: bool  # an open invitation (an expired one is deleted, not counted)
    # A workspace's: the collaborations on its apps, ``(app id, role)``, and the apps
    # whose open invitation went with it.
    apps: tuple[tuple[str, str], ...] = ()
    app_invitations: tuple[str, ...] = ()


class Withdrawals(Invitations):
    async def withdraw(
        self, kind: Kind, target: str, user_id: str, since: int, *, expect_owner: str | None = None
    ) -> Withdrawn:
        """Delete ``user_id``'s membership of workspace ``target`` (``kind`` workspace) or
        collaboration on app ``target``, and their invitation to it, in one step; for a
        workspace, their collaborations on its apps and invitations to them too.
        :class:`OwnsApps` (nothing deleted) while they own apps of workspace ``target``;
        :class:`OwnerChanged` (nothing deleted) when ``expect_owner`` is given and no
        longer owns the target. Run again when PostgreSQL aborted it to break a deadlock
        (a gateway of before the lock order, during a rolling deploy)."""
        return await self._retry(lambda: self._withdraw(kind, target, user_id, since, expect_owner))

    async def _withdraw(
        self, kind: Kind, target: str, user_id: str, since: int, expect_owner: str | None
    ) -> Withdrawn:
        async with self.transaction() as c:
            check_owner(await self._lock_target(c, kind, target), target, expect_owner)
            if kind == "workspace":
                # A member who owns apps stays (their apps would have no reachable owner);
                # with their membership locked, no app can be created for or handed to
                # them meanwhile (``create_app_within``, ``transfer_app``).
                await locked_member(c, self.for_update, target, user_id)
                owned = await c.fetch(
                    "SELECT id FROM apps WHERE workspace_id = ? AND owner_id = ? ORDER BY id",
                    target,
                    user_id,
                )
                if owned:
                    raise OwnsApps([str(r["id"]) for r in owned])
                row = await c.fetchrow(
                    "DELETE FROM memberships WHERE workspace_id = ? AND user_id = ? "
                    "RETURNING user_id",
                    target,
                    user_id,
                )
                return await self._off_apps(c, target, user_id, since, row is not None)
            inv = await c.fetchrow(  # invitations, then collaborators: the lock order
                "DELETE FROM invitations WHERE target = ? AND user_id = ? RETURNING created_at",
                target,
                user_id,
            )
            row = await c.fetchrow(
                "DELETE FROM collaborators WHERE app_id = ? AND user_id = ? RETURNING role",
                target,
                user_id,
            )
        role = str(row["role"]) if row is not None else None
        return Withdrawn(row is not None, role, inv is not None and inv["created_at"] > since)

    async def _off_apps(
        self, c: Conn, ws: str, user_id: str, since: int, member: bool
    ) -> Withdrawn:
        """The rest of a member's removal: their invitations to the workspace and its apps,
        then their collaborations on its apps. In that order: an acceptance deletes its
        invitation before it inserts the collaboration, so one under way either finds its
        invitation gone or has committed (the invitations' delete waited for it) before
        the collaborations are read (PostgreSQL reads each statement afresh)."""
        invs = await c.fetch(
            "DELETE FROM invitations WHERE workspace_id = ? AND user_id = ? "
            "RETURNING kind, target, created_at",
            ws,
            user_id,
        )
        open_ = [r for r in invs if int(r["created_at"]) > since]
        collabs = await c.fetch(
            "DELETE FROM collaborators WHERE user_id = ? AND app_id IN "
            "(SELECT id FROM apps WHERE workspace_id = ?) RETURNING app_id, role",
            user_id,
            ws,
        )
        return Withdrawn(
            member,
            None,
            any(r["kind"] == "workspace" for r in open_),
            tuple(sorted((str(r["app_id"]), str(r["role"])) for r in collabs)),
            tuple(sorted(str(r["target"]) for r in open_ if r["kind"] == "app")),
        )

    async def transfer_app(
        self, app_id: str, user_id: str, *, expect_owner: str | None = None
    ) -> tuple[App | None, list[str], str | None]:
        """Make ``user_id`` the app's owner: no longer a collaborator of it (the owner's
        rights include every role's), and every invitation to the app withdrawn (they were
        the previous owner's offers). Returns the app (``None`` if it is gone), the user
        ids whose invitations were withdrawn, and the owner it was taken from (read with
        the row locked: the audit's, whatever the caller read before).
        :class:`NotMember` (nothing written) unless ``user_id`` is a member of the app's
        workspace; :class:`OwnerChanged` (nothing written) when ``expect_owner`` is given
        and no longer owns the app. Run again when aborted to break a deadlock."""
        return await self._retry(lambda: self._transfer(app_id, user_id, expect_owner))

    async def _transfer(
        self, app_id: str, user_id: str, expect_owner: str | None
    ) -> tuple[App | None, list[str], str | None]:
        async with self.transaction() as c:
            found = await c.fetchrow(
                f"SELECT workspace_id, owner_id FROM apps WHERE id = ?{self.for_update}", app_id
            )
            if found is None:
                return None, [], None
            check_owner(found, app_id, expect_owner)
            # Locked, the membership cannot be withdrawn before the commit; withdrawn
            # first, the new owner is no member and nothing is written.
            if not await locked_member(c, self.for_update, found["workspace_id"], user_id):
                raise NotMember(f"{user_id} is not a member of {found['workspace_id']}")
            row = await c.fetchrow(
                f"UPDATE apps SET owner_id = ? WHERE id = ? RETURNING {APP_COLUMNS}",
                user_id,
                app_id,
            )
            gone = await c.fetch(  # invitations, then collaborators: the lock order
                "DELETE FROM invitations WHERE app_id = ? RETURNING user_id", app_id
            )
            await c.execute(
                "DELETE FROM collaborators WHERE app_id = ? AND user_id = ?", app_id, user_id
            )
        withdrawn = sorted(str(r["user_id"]) for r in gone)
        return (app_row(row) if row else None), withdrawn, str(found["owner_id"])
