"""Where an admission goes: the workspace of a well-formed app id and channel.

Checked before anything reaches Redis, so a value that cannot exist is answered
``unknown_app`` locally and a malformed channel user or key (``InvalidChannelUser``)
fails its own message alone. Well-formed channels are remembered (bounded), app ids by
:func:`~meter.redis_layer.keys.workspace_of`.
"""

from __future__ import annotations

from meter.admission.wire import MAX_KEY_LEN, MAX_USER_LEN, check_channel_text
from meter.redis_layer import keys

_CACHE_MAX = 100_000  # channels remembered as well-formed


class Targets:
    """The workspace of each admission, from a bounded cache of well-formed names."""

    def __init__(self) -> None:
        self._channels: set[str] = set()  # well-formed channel names

    def workspace(self, app_id: str, channel: str, user: str, key: str) -> str | None:
        """The app's workspace, or None for an app id or channel that cannot exist."""
        ws = keys.workspace_of(app_id)  # remembered there
        if ws is None:
            return None
        if channel not in self._channels:
            if not keys.CHANNEL_RE.fullmatch(channel):
                return None
            if len(self._channels) < _CACHE_MAX:
                self._channels.add(channel)
        # check_channel_text's test, its frame only for a value it refuses (once a message)
        if not (0 < len(user) <= MAX_USER_LEN and user.isprintable()):
            check_channel_text("user", user, MAX_USER_LEN)
        if key:
            check_channel_text("idempotency_key", key, MAX_KEY_LEN)
        return ws
