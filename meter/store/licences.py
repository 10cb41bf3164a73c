"""Licences of enterprise workspaces and the upgrade requests that lead to them."""

from __future__ import annotations

from collections.abc import Sequence

from meter.store.db import Conn, Row, StoreCore, dumps, loads, row_as
from meter.store.models import Licence, UpgradeRequest, now_ms

REQUEST_COLUMNS = (
    "id, workspace_id, products, message, status, created_at, granted_at, decided_at, reason"
)
LICENCE_COLUMNS = "workspace_id, product, usage_limit, per_minute, per_hour"


def request_row(r: Row) -> UpgradeRequest:
    return row_as(UpgradeRequest, r, REQUEST_COLUMNS, products=tuple(loads(r["products"])))


def licence_row(r: Row) -> Licence:
    return row_as(Licence, r, LICENCE_COLUMNS)


class Licences(StoreCore):
    """Licence and upgrade-request rows."""

    async def get_licences(self, workspace_id: str) -> list[Licence]:
        return await self.many(
            licence_row,
            f"SELECT {LICENCE_COLUMNS} FROM licences WHERE workspace_id = ? ORDER BY product",
            workspace_id,
        )

    async def set_licences(self, workspace_id: str, licences: Sequence[Licence]) -> None:
        """Replace the workspace's licences with ``licences`` (one per product)."""
        async with self.transaction() as c:
            await _replace_licences(c, workspace_id, licences)

    async def upgrade_workspace(
        self, workspace_id: str, licences: Sequence[Licence]
    ) -> tuple[str, list[Licence]] | None:
        """Make the workspace enterprise with exactly these licences and grant its open
        upgrade requests, in one transaction; its type and licences before (read with its
        row locked, in this transaction: the audit's "before"), ``None`` if there is no
        such workspace."""
        now = now_ms()
        async with self.transaction() as c:
            sql = f"SELECT type FROM workspaces WHERE id = ?{self.for_update}"
            was = await c.fetchval(sql, workspace_id)
            if was is None:
                return None
            sql = f"SELECT {LICENCE_COLUMNS} FROM licences WHERE workspace_id = ? ORDER BY product"
            before = [licence_row(r) for r in await c.fetch(sql, workspace_id)]
            await c.execute("UPDATE workspaces SET type = 'enterprise' WHERE id = ?", workspace_id)
            await _replace_licences(c, workspace_id, licences)
            await c.execute(
                "UPDATE upgrade_requests SET status = 'granted', granted_at = ?, decided_at = ? "
                "WHERE workspace_id = ? AND status = 'open'",
                now,
                now,
                workspace_id,
            )
        return str(was), before

    # ------------------------------------------------------- upgrade requests

    async def create_upgrade_request_if_none_open(self, request: UpgradeRequest) -> bool:
        """Insert ``request`` unless its workspace has an open one (checked and inserted
        in one step); whether it was inserted."""
        return await self.insert_capped(
            "upgrade_requests",
            REQUEST_COLUMNS,
            request,
            owner=("workspaces", request.workspace_id),
            count="SELECT COUNT(*) AS n FROM upgrade_requests WHERE workspace_id = ? "
            "AND status = 'open'",
            args=[request.workspace_id],
            cap=1,
            products=dumps(list(request.products)),
        )

    async def open_upgrade_request(self, workspace_id: str) -> UpgradeRequest | None:
        """The workspace's open request (the oldest, should there be several from before
        one was the most)."""
        return await self.one(
            request_row,
            f"SELECT {REQUEST_COLUMNS} FROM upgrade_requests WHERE workspace_id = ? "
            "AND status = 'open' ORDER BY created_at, id LIMIT 1",
            workspace_id,
        )

    async def get_upgrade_request(self, request_id: str) -> UpgradeRequest | None:
        return await self.one(
            request_row, f"SELECT {REQUEST_COLUMNS} FROM upgrade_requests WHERE id = ?", request_id
        )

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
        return await self.many(
            request_row,
            f"SELECT {REQUEST_COLUMNS} FROM upgrade_requests WHERE {' AND '.join(where)} "
            "ORDER BY created_at, id",
            *args,
        )


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
