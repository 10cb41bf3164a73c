"""API tokens: each user's bearer tokens, stored as SHA-256 hashes, revocable one by one."""

from __future__ import annotations

from meter.store.db import Row, StoreCore, insert_sql, row_as, values
from meter.store.models import ApiToken

_TOKEN = "id, user_id, name, token_hash, hint, created_at, revoked_at"
_LIVE = "SELECT COUNT(*) AS n FROM api_tokens WHERE user_id = ? AND revoked_at IS NULL"


def _token(r: Row) -> ApiToken:
    return row_as(ApiToken, r, _TOKEN)


class Tokens(StoreCore):
    async def create_token(self, token: ApiToken) -> None:
        await self.insert("api_tokens", _TOKEN, token)

    async def create_token_within(
        self, token: ApiToken, cap: int, *, rows: int, purge_before: int
    ) -> str | None:
        """Insert ``token`` unless its user already holds ``cap`` live tokens (``"live"``)
        or ``rows`` tokens, live or revoked (``"rows"``); ``None`` when inserted.

        First the user's tokens revoked before ``purge_before`` are deleted, so the rows
        left are live ones and those revoked since: create-and-revoke churn is bounded
        by ``rows`` per user, not by time. The purge, the counts and the insert are one
        step: the user's row is locked first, so concurrent creations never pass a cap
        together (PostgreSQL: ``FOR UPDATE``; SQLite: the transaction holds the write lock
        from the start)."""
        async with self.transaction() as c:
            await c.fetch(f"SELECT id FROM users WHERE id = ?{self.for_update}", token.user_id)
            await c.execute(
                "DELETE FROM api_tokens WHERE user_id = ? AND revoked_at < ?",
                token.user_id,
                purge_before,
            )
            if int(await c.fetchval(_LIVE, token.user_id) or 0) >= cap:
                return "live"
            every = "SELECT COUNT(*) AS n FROM api_tokens WHERE user_id = ?"
            if int(await c.fetchval(every, token.user_id) or 0) >= rows:
                return "rows"
            await c.execute(insert_sql("api_tokens", _TOKEN), *values(token, _TOKEN))
        return None

    async def get_active_token(self, token_hash: str) -> ApiToken | None:
        """The unrevoked token with this hash (how every API call is authenticated)."""
        return await self.one(
            _token,
            f"SELECT {_TOKEN} FROM api_tokens WHERE token_hash = ? AND revoked_at IS NULL",
            token_hash,
        )

    async def get_token(self, token_id: str) -> ApiToken | None:
        return await self.one(_token, f"SELECT {_TOKEN} FROM api_tokens WHERE id = ?", token_id)

    async def list_tokens(
        self, user_id: str, *, after: tuple[int, str] | None = None, limit: int = 100
    ) -> list[ApiToken]:
        """The user's unrevoked tokens, oldest first, after the ``(created_at, id)`` key."""
        sql = f"SELECT {_TOKEN} FROM api_tokens WHERE user_id = ? AND revoked_at IS NULL"
        rows = await self.page(sql, [user_id], ("created_at", "id"), after, limit)
        return [_token(r) for r in rows]

    async def count_tokens(self, user_id: str) -> int:
        async with self.connection() as c:
            n = await c.fetchval(_LIVE, user_id)
        return int(n or 0)

    async def revoke_token(self, user_id: str, token_id: str, at: int) -> bool:
        """Revoke one of ``user_id``'s tokens and delete the console sessions signed in
        with it, in one step under the user's row lock (the lock a sign-in takes: none
        signs in with the token after this); ``False`` if they hold no such live token."""
        async with self.transaction() as c:
            await c.fetch(f"SELECT id FROM users WHERE id = ?{self.for_update}", user_id)
            n = await c.execute(
                "UPDATE api_tokens SET revoked_at = ? "
                "WHERE id = ? AND user_id = ? AND revoked_at IS NULL",
                at,
                token_id,
                user_id,
            )
            if n:
                await c.execute(
                    "DELETE FROM console_sessions WHERE user_id = ? AND token_id = ?",
                    user_id,
                    token_id,
                )
        return n > 0
