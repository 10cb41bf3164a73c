"""Users, workspaces and memberships."""

from __future__ import annotations

from meter.store.db import Conn, Row, StoreCore, insert_sql, row_as, values
from meter.store.errors import CapReached
from meter.store.ledger import insert_ledger_entry
from meter.store.models import (
    WORKSPACE_TYPES,
    LedgerEntry,
    User,
    Workspace,
)
from meter.store.outbox import NO_WEBHOOK, WAKE

USER_COLUMNS = "id, email, name, token_hash, created_at"
WORKSPACE_COLUMNS = (
    "id, name, type, owner_id, created_at, free_expires_at, webhook_url, webhook_secret, "
    "low_balance_threshold"
)


def user_row(r: Row) -> User:
    return row_as(User, r, USER_COLUMNS)


def workspace_row(r: Row) -> Workspace:
    return row_as(Workspace, r, WORKSPACE_COLUMNS)


class Accounts(StoreCore):
    """Account rows. A unique violation raises ``DuplicateKey``, a missing reference
    ``MissingReference``."""

    # ------------------------------------------------------------------ users

    async def create_user(self, user: User, *, token_hint: str = "") -> None:
        """Insert the user and, as their first API token, the token they were created with."""
        async with self.transaction() as c:
            await c.execute(insert_sql("users", USER_COLUMNS), *values(user, USER_COLUMNS))
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
        return await self.one(user_row, f"SELECT {USER_COLUMNS} FROM users WHERE id = ?", user_id)

    async def get_user_by_token_hash(self, token_hash: str) -> User | None:
        return await self.one(
            user_row, f"SELECT {USER_COLUMNS} FROM users WHERE token_hash = ?", token_hash
        )

    async def get_user_by_email(self, email: str) -> User | None:
        """Case-insensitive lookup (emails are unique regardless of case)."""
        return await self.one(
            user_row, f"SELECT {USER_COLUMNS} FROM users WHERE lower(email) = lower(?)", email
        )

    # ------------------------------------------------------------- workspaces

    async def create_workspace(
        self,
        workspace: Workspace,
        *,
        grant: LedgerEntry | None = None,
        once_per_user: bool = False,
        cap: int | None = None,
    ) -> bool:
        """Insert the workspace, its owner's membership and (optionally) the free-credit
        grant in one transaction; ``True`` when the grant was recorded.

        With ``cap``: :class:`CapReached` (nothing written) when the owner already owns
        ``cap`` workspaces. The owner's row is locked first, so concurrent creations by
        one user are counted one at a time and never pass the cap together (PostgreSQL:
        ``FOR UPDATE``; SQLite: the transaction holds the write lock from the start).

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
            if cap is not None:
                await c.fetch(f"SELECT id FROM users WHERE id = ?{self.for_update}", w.owner_id)
                owned = await c.fetchval(
                    "SELECT COUNT(*) AS n FROM workspaces WHERE owner_id = ?", w.owner_id
                )
                if int(owned or 0) >= cap:
                    raise CapReached(f"user {w.owner_id} owns {cap} workspaces")
            await c.execute(
                insert_sql("workspaces", WORKSPACE_COLUMNS), *values(w, WORKSPACE_COLUMNS)
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
        return await self.one(
            workspace_row, f"SELECT {WORKSPACE_COLUMNS} FROM workspaces WHERE id = ?", workspace_id
        )

    async def list_workspaces(self) -> list[str]:
        """Ids of every workspace (for the flusher and reconcile), sorted."""
        async with self.connection() as c:
            rows = await c.fetch("SELECT id FROM workspaces ORDER BY id")
        return [r["id"] for r in rows]

    async def list_user_workspaces(self, user_id: str) -> list[Workspace]:
        """Workspaces the user is a member of, oldest first."""
        cols = ", ".join(f"w.{c.strip()}" for c in WORKSPACE_COLUMNS.split(","))
        return await self.many(
            workspace_row,
            f"SELECT {cols} FROM workspaces w JOIN memberships m ON m.workspace_id = w.id "
            "WHERE m.user_id = ? ORDER BY w.created_at, w.id",
            user_id,
        )

    async def set_webhook(
        self,
        workspace_id: str,
        url: str | None,
        secret: str | None,
        *,
        overdue: int = 0,
        lease_end_ms: int = 0,
    ) -> Workspace | None:
        """Set where owner notifications go; the workspace as it was before (read with its
        row locked, in this transaction: the audit's "before"), ``None`` if there is no
        such workspace.

        Its parked events, and those failed ``overdue`` times or more (``0``: none) whose
        next attempt is after ``lease_end_ms`` (now plus the notifiers' lease: earlier
        ones may be claimed, being sent), become due at once
        (:data:`meter.store.outbox.WAKE`)."""
        async with self.transaction() as c:
            was = await self.locked_workspace(c, workspace_id)
            if was is None:
                return None
            await c.execute(
                "UPDATE workspaces SET webhook_url = ?, webhook_secret = ? WHERE id = ?",
                url,
                secret,
                workspace_id,
            )
            if url and secret:
                overdue = overdue if overdue > 0 else 2**31 - 1
                await c.execute(WAKE, NO_WEBHOOK, workspace_id, NO_WEBHOOK, overdue, lease_end_ms)
        return was

    async def set_low_balance_threshold(
        self, workspace_id: str, micros: int | None
    ) -> Workspace | None:
        """The owner's low-balance threshold (``None``: the default); the workspace as it
        was before (as :meth:`set_webhook`), ``None`` if there is no such workspace."""
        async with self.transaction() as c:
            was = await self.locked_workspace(c, workspace_id)
            sql = "UPDATE workspaces SET low_balance_threshold = ? WHERE id = ?"
            await c.execute(sql, micros, workspace_id)
        return was

    async def locked_workspace(self, c: Conn, workspace_id: str) -> Workspace | None:
        """The workspace, its row locked until the commit (``None``: no such workspace)."""
        sql = f"SELECT {WORKSPACE_COLUMNS} FROM workspaces WHERE id = ?{self.for_update}"
        row = await c.fetchrow(sql, workspace_id)
        return workspace_row(row) if row is not None else None

    async def set_free_expires_at(self, workspace_id: str, expires_at: int | None) -> bool:
        return await self.changed(
            "UPDATE workspaces SET free_expires_at = ? WHERE id = ?", expires_at, workspace_id
        )

    # ------------------------------------------------------------ memberships

    async def add_member(self, workspace_id: str, user_id: str) -> bool:
        """Add a user to a workspace; ``False`` if already a member."""
        return await self.changed(
            "INSERT INTO memberships (workspace_id, user_id) VALUES (?, ?) "
            "ON CONFLICT (workspace_id, user_id) DO NOTHING",
            workspace_id,
            user_id,
        )

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
