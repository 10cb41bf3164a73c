"""Apps and their collaborators; the order in which admin writes lock rows.

Lock order. A write that locks more than one row of these tables takes them in this
order (each write a subsequence of it), so no two ever wait for each other in a cycle;
on PostgreSQL a cycle is a deadlock that aborts one of them (SQLSTATE 40P01, its
request answered 503 though nothing was wrong with it). SQLite's writers hold the one
write lock from ``BEGIN IMMEDIATE``: no cycle there.

1. the advisory locks of the people an invitation counts against (``_lock_people``);
2. the workspace's row: ``FOR UPDATE`` by a write to the workspace itself (a member
   added, accepted or removed, an app created, a capped insert); ``FOR KEY SHARE`` by a
   write to one of its apps (:func:`lock_app_workspace`), the lock a foreign-key check of
   a row naming the workspace takes anyway: taken late (an invitation to an app inserted
   after the app's row and the replaced offer's were held), it closed a cycle with a
   member's removal, which holds the workspace and waits for that member's offers;
3. the app's row (``FOR UPDATE``);
4. membership rows;
5. invitation rows, then collaborator rows (deleted or updated).

A new row (a membership, a collaboration, an app) waits only for a transaction writing
the same key, which took the same rows above first. A user's row is locked (token,
session and workspace caps) first in transactions that lock nothing else of these.
A write that still loses a deadlock (to a gateway of before this order, during a rolling
deploy) is run again (``StoreCore._retry``): an invitation, a member's or
collaborator's removal, a handover, an app's creation.
"""

from __future__ import annotations

from typing import Any

from meter.store.db import Conn, Row, StoreCore, insert_sql, row_as, values
from meter.store.errors import NotMember, OwnerChanged
from meter.store.models import APP_FIELDS, ROLES, App, Collaborator, Role

APP_COLUMNS = (
    "id, workspace_id, name, product, owner_id, upstream_url, use_free_credits, suspended, "
    "created_at, shadow"
)


def app_row(r: Row) -> App:
    # SQLite answers a BOOLEAN column with 0 or 1.
    flags = ("use_free_credits", "suspended", "shadow")
    return row_as(App, r, APP_COLUMNS, **{f: bool(r[f]) for f in flags})


async def locked_member(c: Conn, for_update: str, workspace_id: str, user_id: str) -> bool:
    """Whether ``user_id`` is a member of the workspace, their membership row locked until
    the commit (``for_update``: the store's); a removal of them waits, or was first."""
    sql = f"SELECT 1 AS x FROM memberships WHERE workspace_id = ? AND user_id = ?{for_update}"
    return await c.fetchval(sql, workspace_id, user_id) is not None


async def lock_app_workspace(c: Conn, for_key_share: str, app_id: str) -> None:
    """Hold the app's workspace row shared until the commit (``for_key_share``: the
    store's): step 2 of the lock order, before the app's own row."""
    sql = "SELECT id FROM workspaces WHERE id = (SELECT workspace_id FROM apps WHERE id = ?)"
    await c.fetch(sql + for_key_share, app_id)


def check_owner(locked: Row | None, app_id: str, expect_owner: str | None) -> None:
    """:class:`OwnerChanged` when ``expect_owner`` is given and the app's locked row
    (``None``: gone) names another owner by now."""
    if locked is not None and expect_owner is not None and locked["owner_id"] != expect_owner:
        raise OwnerChanged(app_id, expect_owner)


async def locked_owner(c: Conn, for_update: str, app_id: str, expect_owner: str | None) -> bool:
    """Lock the app's row until the commit (``for_update``: the store's) and return
    whether it exists; :class:`OwnerChanged` when ``expect_owner`` is given and the app
    is owned by someone else by now. A transfer locks the same row, so it lands wholly
    before the check (refused here) or after the caller's write (``transfer_app``)."""
    row = await c.fetchrow(f"SELECT owner_id FROM apps WHERE id = ?{for_update}", app_id)
    check_owner(row, app_id, expect_owner)
    return row is not None


class Apps(StoreCore):
    """App rows. Unique violations raise ``DuplicateKey``."""

    async def create_app(self, app: App) -> None:
        await self.insert("apps", APP_COLUMNS, app)

    async def create_app_within(self, app: App, cap: int) -> bool:
        """Insert ``app`` unless its workspace already holds ``cap`` apps, whoever owns
        them (count and insert in one step: concurrent creations never pass the cap).

        The owner must be a member of the workspace when the app is written, else
        :class:`NotMember` and nothing is written: the workspace's row and the owner's
        membership are locked first, so a removal of the owner (``withdraw``, which
        refuses a member who owns apps) lands wholly before or after the creation, on
        any number of gateways (PostgreSQL: ``FOR UPDATE``; SQLite: the transaction holds
        the write lock from the start). Run again when aborted to break a deadlock."""
        return await self._retry(lambda: self._create_app_within(app, cap))

    async def _create_app_within(self, app: App, cap: int) -> bool:
        async with self.transaction() as c:
            lock = f"SELECT id FROM workspaces WHERE id = ?{self.for_update}"
            await c.fetch(lock, app.workspace_id)
            if not await locked_member(c, self.for_update, app.workspace_id, app.owner_id):
                raise NotMember(f"{app.owner_id} is not a member of {app.workspace_id}")
            count = "SELECT COUNT(*) AS n FROM apps WHERE workspace_id = ?"
            if int(await c.fetchval(count, app.workspace_id) or 0) >= cap:
                return False
            await c.execute(insert_sql("apps", APP_COLUMNS), *values(app, APP_COLUMNS))
        return True

    async def get_app(self, app_id: str) -> App | None:
        return await self.one(app_row, f"SELECT {APP_COLUMNS} FROM apps WHERE id = ?", app_id)

    async def list_apps(self, workspace_id: str, *, owner_id: str | None = None) -> list[App]:
        sql = f"SELECT {APP_COLUMNS} FROM apps WHERE workspace_id = ?"
        args: list[Any] = [workspace_id]
        if owner_id is not None:
            sql += " AND owner_id = ?"
            args.append(owner_id)
        return await self.many(app_row, sql + " ORDER BY created_at, id", *args)

    async def update_app(
        self, app_id: str, *, expect_owner: str | None = None, **changes: Any
    ) -> tuple[App, App] | None:
        """Change ``name``, ``owner_id``, ``upstream_url``, ``use_free_credits``,
        ``suspended`` or ``shadow``; return the app before and after the change, ``None``
        if it does not exist. The before-value is read with the app's row locked, in the
        change's own transaction: what this change replaced, whatever landed before it
        (the audit's "before").

        With ``expect_owner`` the write is conditional on the app still being owned by
        that user: :class:`OwnerChanged`, nothing written, otherwise."""
        unknown = set(changes) - APP_FIELDS
        if unknown:
            raise ValueError(f"cannot change app fields {sorted(unknown)}")
        names = sorted(changes)
        sets = ", ".join(f"{n} = ?" for n in names)
        async with self.transaction() as c:
            sql = f"SELECT {APP_COLUMNS} FROM apps WHERE id = ?{self.for_update}"
            found = await c.fetchrow(sql, app_id)
            if found is None:
                return None
            check_owner(found, app_id, expect_owner)
            if not changes:
                return app_row(found), app_row(found)
            sql = f"UPDATE apps SET {sets} WHERE id = ? RETURNING {APP_COLUMNS}"
            updated = await c.fetchrow(sql, *(changes[n] for n in names), app_id)
        assert updated is not None  # the row is locked: still there
        return app_row(found), app_row(updated)

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
        return await self.changed(
            "DELETE FROM collaborators WHERE app_id = ? AND user_id = ?", app_id, user_id
        )

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
