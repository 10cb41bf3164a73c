"""Each worker's cache of the channel secrets projected into Redis
(:mod:`meter.channel_secrets`): read per app and channel at most every
``channel_secret_max_age_s`` (in the last eighth of that, again in the background: an
app with steady traffic never makes a message wait for the read), decrypted once per
change, kept stale while Redis does not answer.

Only what could hold a secret is remembered: a well-formed app id (``keys.APP_RE``, at
most 65 characters) and channel name (``keys.CHANNEL_RE``, the names
:func:`meter.accounts.channel_secrets.set_channel` accepts, at most 32). Anything else
from a URL has no secret, without a read, and takes no room: a client making up ids of
kilobytes cannot fill a worker's memory with them. What is remembered is then at most
:data:`MAX_ENTRIES` small entries (about 40 MB, an unknown app's included)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import orjson
from cryptography.fernet import InvalidToken
from redis.exceptions import RedisError

from config import Settings
from gateway.channel_credentials import auth_unavailable
from gateway.single_flight import AHEAD, SingleFlight
from meter.accounts import channel_secrets
from meter.errors import MeteringUnavailable
from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient, hard_deadline

log = logging.getLogger(__name__)
MAX_ENTRIES = 100_000


@dataclass(frozen=True, slots=True)
class ChannelKey:
    """A channel's secrets in the clear, for one worker's cache."""

    scheme: str
    secret: str
    notify: str | None  # key of /notify JWTs; None: /notify is refused


class _Entry(NamedTuple):
    expires: float
    raw: bytes | None  # what Redis held, to skip decrypting an unchanged value
    key: ChannelKey | None
    broken: bool = False  # held a secret this worker cannot decrypt


class ChannelKeys:
    """Cached ``(app, channel)`` -> :class:`ChannelKey` (``None``: no secret)."""

    def __init__(
        self,
        client: RedisClient,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._clock = clock
        self._cipher = channel_secrets.cipher(settings)
        self._timeout = settings.redis_timeout_s
        self._max_age = settings.channel_secret_max_age_s
        self._ahead = self._max_age * AHEAD  # an entry with less left is read again ahead
        self._cache: dict[tuple[str, str], _Entry] = {}
        self._loads: SingleFlight[tuple[str, str], _Entry] = SingleFlight()

    async def get(self, app_id: str, channel: str) -> ChannelKey | None:
        """The channel's secrets, cached for ``channel_secret_max_age_s`` (one read at a
        time per app and channel, shared by the messages that wait for it)."""
        key = (app_id, channel)
        entry = self._cache.get(key)
        # partial, not lambda: a closure would make cells of these names on every call.
        if entry is None:
            if keys.workspace_of(app_id) is None or not keys.CHANNEL_RE.fullmatch(channel):
                return None  # no secret can exist for it (see the module): nothing kept
            entry = await self._loads.run(key, partial(self._fill, app_id, channel, entry))
        elif (left := entry.expires - self._clock()) <= 0:
            entry = await self._loads.run(key, partial(self._fill, app_id, channel, entry))
        elif left < self._ahead:  # read again ahead, so that nobody waits for it
            self._loads.prefetch(key, partial(self._fill, app_id, channel, entry))
        if entry.broken:
            raise auth_unavailable()
        return entry.key

    async def _fill(self, app_id: str, channel: str, stale: _Entry | None) -> _Entry:
        ws = keys.workspace_of(app_id)
        assert ws is not None  # get() reads only well-formed ids
        field = channel_secrets.field_of(channel)
        try:
            got = await hard_deadline(
                self._client.hget(keys.app_key(ws, app_id), field), self._timeout
            )
        except (RedisError, OSError, TimeoutError) as exc:
            if stale is not None:
                return stale
            raise MeteringUnavailable(f"redis: {exc!r}", ambiguous=False) from None
        raw: bytes | None = got.encode() if isinstance(got, str) else got
        expires = self._clock() + self._max_age
        if stale is not None and stale.raw == raw:
            entry = stale._replace(expires=expires)
        else:
            entry = self._decrypt(app_id, channel, raw, expires)
        if len(self._cache) >= MAX_ENTRIES:
            self._cache.clear()
        self._cache[(app_id, channel)] = entry
        return entry

    def _decrypt(self, app_id: str, channel: str, raw: bytes | None, expires: float) -> _Entry:
        if raw is None:
            return _Entry(expires, None, None)
        try:
            doc = orjson.loads(raw)
            if self._cipher is None:
                raise InvalidToken
            notify = doc.get("notify")
            key = ChannelKey(
                scheme=str(doc["scheme"]),
                secret=channel_secrets.decrypt(self._cipher, doc["secret"]),
                notify=channel_secrets.decrypt(self._cipher, notify) if notify else None,
            )
        except (InvalidToken, orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            log.error(
                "channel %s of app %s: its secret cannot be decrypted with this gateway's "
                "secret_key; its traffic is refused (503)",
                channel,
                app_id,
            )
            return _Entry(expires, raw, None, broken=True)
        if key.notify is None and key.scheme != "botframework_jwt":
            key = ChannelKey(key.scheme, key.secret, key.secret)
        return _Entry(expires, raw, key)
