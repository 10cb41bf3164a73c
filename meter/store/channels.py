"""Channel verification secrets of apps (encrypted by the caller, never decrypted here)."""

from __future__ import annotations

from meter.store.db import Row, StoreCore, insert_sql, row_as, values
from meter.store.models import AppChannel

_COLS = "app_id, channel, scheme, secret_enc, notify_secret_enc, updated_at"


def _channel(r: Row) -> AppChannel:
    return row_as(AppChannel, r, _COLS)


class Channels(StoreCore):
    """Rows of ``app_channels``: at most one per app and channel."""

    async def put_app_channel(self, ch: AppChannel) -> None:
        """Insert or replace the secret of ``(ch.app_id, ch.channel)``."""
        async with self.connection() as c:
            await c.execute(
                insert_sql("app_channels", _COLS)
                + " ON CONFLICT (app_id, channel) DO UPDATE SET scheme = excluded.scheme, "
                "secret_enc = excluded.secret_enc, "
                "notify_secret_enc = excluded.notify_secret_enc, "
                "updated_at = excluded.updated_at",
                *values(ch, _COLS),
            )

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

    async def delete_app_channel(self, app_id: str, channel: str) -> bool:
        """Remove the secret; ``False`` if there was none."""
        return await self.changed(
            "DELETE FROM app_channels WHERE app_id = ? AND channel = ?", app_id, channel
        )

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
