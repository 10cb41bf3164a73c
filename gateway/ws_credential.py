"""The credential a proxied WebSocket's upgrade verified, held for the socket's life.

It holds only while it would still verify: the socket is closed 1008
``invalid_channel_signature`` once the token's ``exp`` (plus the leeway) passes, and
before a client message is admitted once the channel's key is no longer the one it
verified with (rotated, removed, added): the per-worker key cache reads it again at most
every ``channel_secret_max_age_s``. Past the expiry no client message is read, admitted
or sent (:mod:`gateway.ws_pump`: one admitted as it passed is refunded; one being sent
then finishes first, within its deadline). Either way, as for a refused message, the bot
gets a close frame and its answers to the messages paid before still reach the client
until it answers (:func:`gateway.ws_wire.answers_then_close`), with the same bounds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import NamedTuple

INVALID_CREDENTIAL = "invalid_channel_signature"


class Credential(NamedTuple):
    """What the upgrade verified, checked for the socket's life: ``expires``, past which
    its token no longer verifies (epoch s; 0: no token), and ``current()``, whether the
    channel's key is still the one it verified with."""

    expires: float
    current: Callable[[], Awaitable[bool]]

    def until(self) -> float | None:
        """``expires`` on the running loop's clock (the one its timeouts use); None: none."""
        if not self.expires:
            return None
        return asyncio.get_running_loop().time() + self.expires - time.time()
