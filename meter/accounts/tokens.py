"""A user's own API tokens: list, create (the secret is shown once), revoke.

Only a token's SHA-256 hash is stored, with its last four characters as a hint for
telling tokens apart. Revocation takes effect on the next request: every call looks the
token up among the unrevoked ones (:func:`meter.accounts.authz.user_principal`).

A user holds at most :data:`MAX_TOKENS` live tokens. A revoked token's row is kept for
:data:`REVOKED_KEPT_MS` (a day) and deleted by the user's next creation after that (the
audit log keeps the history); live and kept rows together are at most :data:`MAX_ROWS`,
so creating and revoking tokens in a loop is refused (409 ``too_many_tokens``) once a
day's churn reaches it, instead of growing the table without bound.
"""

from __future__ import annotations

import secrets

from meter.accounts import authz
from meter.accounts.deps import Deps, audit, check_text
from meter.accounts.pages import Page, decode, page
from meter.errors import Conflict, NotFound
from meter.store import ApiToken

MAX_TOKENS = 50  # live tokens per user
MAX_ROWS = 2 * MAX_TOKENS  # live tokens and those revoked in the last REVOKED_KEPT_MS
REVOKED_KEPT_MS = 86_400_000
HINT = 4


async def create(d: Deps, user_id: str, name: str) -> tuple[ApiToken, str]:
    """A new token for ``user_id``; returns its row and the secret (shown once)."""
    name = check_text("name", name, 100)
    secret = authz.new_token()
    row = ApiToken(
        id="t" + secrets.token_hex(8),
        user_id=user_id,
        name=name,
        token_hash=authz.token_hash(secret),
        hint=secret[-HINT:],
        created_at=d.now_ms(),
    )
    full = await d.store.create_token_within(
        row, MAX_TOKENS, rows=MAX_ROWS, purge_before=row.created_at - REVOKED_KEPT_MS
    )
    if full == "live":
        raise Conflict(f"you hold {MAX_TOKENS} tokens; revoke one first", code="too_many_tokens")
    if full is not None:
        raise Conflict(
            f"you created and revoked too many tokens: at most {MAX_ROWS} in a day, counting "
            "the live ones; try again tomorrow",
            code="too_many_tokens",
        )
    await audit(d, f"user:{user_id}", "token.create", f"user:{user_id}", None,
                {"id": row.id, "name": name})  # fmt: skip
    return row, secret


async def listing(d: Deps, user_id: str, cursor: str | None, limit: int) -> Page[ApiToken]:
    after = decode("tokens", cursor, (int, str))
    rows = await d.store.list_tokens(
        user_id, after=(after[0], after[1]) if after else None, limit=limit + 1
    )
    return page("tokens", rows, limit, lambda t: (t.created_at, t.id))


async def revoke(d: Deps, user_id: str, token_id: str) -> None:
    """Revoke one of the user's tokens; another user's (or an unknown) token is 404."""
    if not await d.store.revoke_token(user_id, token_id, d.now_ms()):
        raise NotFound("token", token_id)
    await audit(d, f"user:{user_id}", "token.revoke", f"user:{user_id}", {"id": token_id}, None)
