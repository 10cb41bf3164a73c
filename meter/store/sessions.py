"""Reading billing sessions back: by page, collected, or as an export iterator.

Ranges are half-open ``[from_ms, to_ms)`` on the billing session start.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Collection
from contextlib import aclosing

from meter.store.db import Row, StoreCore
from meter.store.flush_merge import SESSION_COLUMNS
from meter.store.usage import PAGE, filters
from meter.store.usage_rows import SessionRow


def _session(r: Row) -> SessionRow:
    return SessionRow(**{c: r[c] for c in SESSION_COLUMNS})


class Sessions(StoreCore):
    async def iter_sessions(
        self,
        workspace_id: str,
        from_ms: int,
        to_ms: int,
        *,
        app_id: str | None = None,
        app_ids: Collection[str] | None = None,
        channel: str | None = None,
        page: int = PAGE,
    ) -> AsyncGenerator[SessionRow, None]:
        """Billing sessions that started in ``[from_ms, to_ms)``, by start then id."""
        where, args = filters(workspace_id, from_ms, to_ms, "start_ms", app_id, app_ids, channel)
        select = f"SELECT {', '.join(SESSION_COLUMNS)} FROM billing_sessions WHERE "
        rows = self.keyset(select + " AND ".join(where), args, ("start_ms", "id"), page)
        async with aclosing(rows):
            async for r in rows:
                yield _session(r)

    async def sessions(
        self,
        workspace_id: str,
        from_ms: int,
        to_ms: int,
        *,
        app_id: str | None = None,
        app_ids: Collection[str] | None = None,
        channel: str | None = None,
        limit: int | None = None,
    ) -> list[SessionRow]:
        """Like :meth:`iter_sessions`, collected (at most ``limit`` rows)."""
        out: list[SessionRow] = []
        rows = self.iter_sessions(
            workspace_id, from_ms, to_ms, app_id=app_id, app_ids=app_ids, channel=channel
        )
        async with aclosing(rows):
            async for s in rows:
                out.append(s)
                if limit is not None and len(out) >= limit:
                    break
        return out

    async def sessions_page(
        self,
        workspace_id: str,
        from_ms: int,
        to_ms: int,
        *,
        app_id: str | None = None,
        app_ids: Collection[str] | None = None,
        channel: str | None = None,
        after: tuple[int, str] | None = None,
        desc: bool = False,
        limit: int = PAGE,
    ) -> list[SessionRow]:
        """Billing sessions that started in ``[from_ms, to_ms)`` ordered by
        ``(start_ms, id)`` (newest first with ``desc``), after the key ``after``."""
        where, args = filters(workspace_id, from_ms, to_ms, "start_ms", app_id, app_ids, channel)
        select = f"SELECT {', '.join(SESSION_COLUMNS)} FROM billing_sessions WHERE "
        key = ("start_ms", "id")
        rows = await self.page(select + " AND ".join(where), args, key, after, limit, desc=desc)
        return [_session(r) for r in rows]
