"""Console sign-in sessions: cookie hash -> user, the API token signed in with, CSRF token."""

from __future__ import annotations

from dataclasses import dataclass

from meter.store.db import StoreCore, insert_sql, row_as, values


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    id_hash: str
    user_id: str
    token_id: str
    csrf: str
    created_at: int
    expires_at: int


_COLS = "id_hash, user_id, token_id, csrf, created_at, expires_at"


class ConsoleSessions(StoreCore):
    async def create_console_session(self, s: ConsoleSession) -> None:
        async with self.connection() as c:
            await c.execute(insert_sql("console_sessions", _COLS), *values(s, _COLS))
            # Sign-ins are rare: sweeping expired sessions here keeps the table small.
            await c.execute("DELETE FROM console_sessions WHERE expires_at <= ?", s.created_at)

    async def get_console_session(self, id_hash: str, now: int) -> ConsoleSession | None:
        """The unexpired session with this cookie hash."""
        async with self.connection() as c:
            r = await c.fetchrow(
                f"SELECT {_COLS} FROM console_sessions WHERE id_hash = ? AND expires_at > ?",
                id_hash,
                now,
            )
        return None if r is None else row_as(ConsoleSession, r, _COLS)

    async def delete_console_session(self, id_hash: str) -> bool:
        return await self.changed("DELETE FROM console_sessions WHERE id_hash = ?", id_hash)
