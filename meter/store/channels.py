"""Channel verification secrets of apps (encrypted by the caller, never decrypted here)."""

from __future__ import annotations

from meter.store.apps import locked_owner
from meter.store.db import Row, StoreCore, insert_sql, row_as, values
from meter.store.errors import CapReached
from meter.store.models import AppChannel

_COLS = "app_id, channel, scheme, secret_enc, notify_secret_enc, updated_at"


def _channel(r: Row) -> AppChannel:
    return row_as(AppChannel, r, _COLS)


class Channels(StoreCore):
    """Rows of ``app_channels``: at most one per app and channel."""

    async def put_app_channel(
        self, ch: AppChannel, cap: int | None = None, *, expect_owner: str | None = None
    ) -> AppChannel | None:
        """Insert or replace the secret of ``(ch.app_id, ch.channel)``; return the row it
        replaced (``None``: a new channel), read in the same transaction. When that is a
        new channel and the app already has ``cap`` others: :class:`CapReached`, nothing
        written.

        With ``cap`` (or ``expect_owner``) the app's row is locked first, so concurrent
        new channels of one app never pass the cap together and the replaced row is the
        one this write replaced (PostgreSQL: ``FOR UPDATE``; SQLite: the transaction
        holds the write lock from the start). With ``expect_owner``,
        :class:`OwnerChanged` (nothing written) unless the app, locked so, is still that
        user's."""
        async with self.transaction() as c:
            if cap is not None or expect_owner is not None:
                await locked_owner(c, self.for_update, ch.app_id, expect_owner)
            sql = f"SELECT {_COLS} FROM app_channels WHERE app_id = ? AND channel = ?"
            before = await c.fetchrow(sql, ch.app_id, ch.channel)
            if cap is not None and before is None:
                others = await c.fetchval(
                    "SELECT COUNT(*) AS n FROM app_channels WHERE app_id = ?", ch.app_id
                )
                if int(others or 0) >= cap:
                    raise CapReached(f"app {ch.app_id} has {cap} channels")
            await c.execute(
                insert_sql("app_channels", _COLS)
                + " ON CONFLICT (app_id, channel) DO UPDATE SET scheme = excluded.scheme, "
                "secret_enc = excluded.secret_enc, "
                "notify_secret_enc = excluded.notify_secret_enc, "
                "updated_at = excluded.updated_at",
                *values(ch, _COLS),
            )
        return _channel(before) if before is not None else None

    async def reencrypt_app_channel(self, before: AppChannel, after: AppChannel) -> bool:
        """Replace ``before``'s encrypted secrets with ``after``'s only if the row still
        holds ``before``'s (a secret set meanwhile wins: every set encrypts anew)."""
        return await self.changed(
            "UPDATE app_channels SET secret_enc = ?, notify_secret_enc = ? "
            "WHERE app_id = ? AND channel = ? AND secret_enc = ?",
            after.secret_enc,
            after.notify_secret_enc,
            before.app_id,
            before.channel,
            before.secret_enc,
        )

    async def delete_app_channel(
        self, app_id: str, channel: str, *, expect_owner: str | None = None
    ) -> AppChannel | None:
        """Remove the secret; the row removed (``None``: there was none when this ran).
        With ``expect_owner``, :class:`OwnerChanged` (nothing deleted) unless the app is
        still that user's."""
        async with self.transaction() as c:
            await locked_owner(c, self.for_update, app_id, expect_owner)
            gone = await c.fetchrow(
                f"DELETE FROM app_channels WHERE app_id = ? AND channel = ? RETURNING {_COLS}",
                app_id,
                channel,
            )
        return _channel(gone) if gone is not None else None

    async def get_app_channel(self, app_id: str, channel: str) -> AppChannel | None:
        return await self.one(
            _channel,
            f"SELECT {_COLS} FROM app_channels WHERE app_id = ? AND channel = ?",
            app_id,
            channel,
        )

    async def list_app_channels(self, app_id: str | None = None) -> list[AppChannel]:
        """The secrets of one app (or of every app), by app and channel."""
        where, args = ("WHERE app_id = ? ", (app_id,)) if app_id is not None else ("", ())
        return await self.many(
            _channel, f"SELECT {_COLS} FROM app_channels {where}ORDER BY app_id, channel", *args
        )
