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
# The user's sessions beyond the newest ``keep`` (the new one, named by its hash, first).
_BEYOND = (
    "DELETE FROM console_sessions WHERE user_id = ? AND id_hash NOT IN ("
    "SELECT id_hash FROM console_sessions WHERE user_id = ? "
    "ORDER BY id_hash = ? DESC, created_at DESC, id_hash DESC LIMIT ?)"
)


class ConsoleSessions(StoreCore):
    async def create_console_session(self, s: ConsoleSession, keep: int) -> bool:
        """Insert ``s`` and delete its user's sessions beyond the newest ``keep`` (``s``
        among them), in one step: the user's row is locked first, so concurrent sign-ins
        of one user queue and never leave more than ``keep`` (PostgreSQL: ``FOR UPDATE``;
        SQLite: the transaction holds the write lock from the start). ``False``, and
        nothing inserted, when the token ``s`` signs in with is no longer live (revoked
        meanwhile: :meth:`revoke_token` takes the same lock)."""
        lock = f"SELECT id FROM users WHERE id = ?{self.for_update}"
        live = "SELECT id FROM api_tokens WHERE id = ? AND user_id = ? AND revoked_at IS NULL"
        async with self.transaction() as c:
            await c.fetch(lock, s.user_id)
            if await c.fetchrow(live, s.token_id, s.user_id) is None:
                return False
            await c.execute(insert_sql("console_sessions", _COLS), *values(s, _COLS))
            await c.execute(_BEYOND, s.user_id, s.user_id, s.id_hash, keep)
        # Expired sessions of anybody: swept outside the user's lock, the table stays small.
        await self.changed("DELETE FROM console_sessions WHERE expires_at <= ?", s.created_at)
        return True

    async def count_console_sessions(self, user_id: str) -> int:
        """Rows kept for ``user_id``, expired ones included."""
        async with self.connection() as c:
            n = await c.fetchval(
                "SELECT COUNT(*) AS n FROM console_sessions WHERE user_id = ?", user_id
            )
        return int(n or 0)

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
