"""Channel authentication of traffic (docs/design.md §3): is this request really from the channel?

A channel with a secret (``meter.accounts.channel_secrets``) verifies every request before
anything is metered or forwarded; a failure is 401 ``invalid_channel_signature``:

* ``slack_v0``: ``X-Slack-Signature`` = ``v0=`` + HMAC-SHA256(secret, ``v0:{ts}:{body}``)
  and ``X-Slack-Request-Timestamp`` within ``slack_signature_window_s`` of now;
* ``meta_sha256``: ``X-Hub-Signature-256`` = ``sha256=`` + HMAC-SHA256(secret, body)
  (no time in it: :meth:`ChannelAuth.check_fresh` checks the items' own, if any).
  Meta's subscription handshake cannot be signed: a bodiless ``GET`` to the webhook
  itself (no tail) whose query is exactly ``hub.mode=subscribe``, ``hub.verify_token``
  and ``hub.challenge`` is let through, unmetered, for the bot to check its verify
  token, and only a 2xx answer whose body is the challenge goes back
  (:meth:`Verified.answer_handshake`, else 502); anything else is verified as usual;
* ``botframework_jwt``: ``Authorization: Bearer`` JWT, RS256 with a key of the OpenID
  metadata at ``msteams_openid_url`` (cached, refetched for an unknown key id at most
  every ``msteams_keys_min_refresh_s``), the metadata's issuer, audience = the secret
  (the bot's App ID), unexpired, with a ``serviceurl`` claim; the body must be a JSON
  object (an activity) whose ``serviceUrl`` (any spelling of it), if any, is that claim,
  and the key's ``endorsements`` must list its ``channelId`` (every spelling of it, all
  the same), if any (as botbuilder). The token is checked before the body is read
  (:mod:`gateway.channel_botframework`);
* ``jwt_hs256`` (every other channel): ``Authorization: Bearer`` JWT, HS256 with the
  secret, ``exp`` and ``sub`` required; ``sub`` is the channel user (it replaces
  ``X-Channel-User-Id``, also towards the bot); a token for ``/notify`` (``aud`` =
  ``creditgate:notify``) is refused. A WebSocket upgrade may carry the token as
  ``?token=`` (any spelling that decodes to it), which is not passed on to the bot; the
  socket lives only while it would still verify (:meth:`ChannelAuth.still_keyed`, the
  token's ``exp``: :mod:`gateway.ws_pump`).

A channel without a secret is unauthenticated: allowed unless ``require_channel_auth``
(then 403 ``channel_not_authenticated``). ``/notify`` always needs an HS256 JWT signed
with the channel's notify key with ``aud`` = ``creditgate:notify`` and ``exp``, so an end
user's chat token (same key when there is no ``notify_secret``) is not a notify
credential; the ``Authorization`` header carrying it is not passed on.

Each worker caches an app's projected secret for ``channel_secret_max_age_s`` and
decrypts it once per change; JWKS are fetched with aiohttp, never blocking the loop.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import jwt
from aiohttp import web

from config import Settings
from gateway import channel_botframework as botframework
from gateway.channel_credentials import (
    MAX_TOKEN,
    NOTIFY_AUDIENCE,
    TOKEN_PARAM,
    UNAUTHENTICATED,
    Verified,
    bearer,
    invalid_signature,
    jwt_reason,
    meta_handshake,
    not_authenticated,
    same,
    without_token,
)
from gateway.channel_keys import ChannelKeys
from gateway.channel_stamps import Stamps, refusal
from gateway.inbound import Inbound
from gateway.openid_keys import OpenIdKeys
from gateway.problems import Problem
from meter.accounts import channel_secrets
from meter.errors import MeteringUnavailable
from meter.redis_layer.client import RedisClient

__all__ = ["NOTIFY_AUDIENCE", "ChannelAuth", "Verified", "without_token"]
MAX_USER = 256
_TIMESTAMP = re.compile(r"[0-9]{1,12}")  # ASCII only: str.isdigit() accepts "²"


class ChannelAuth:
    """Verifies traffic per app and channel; one per worker process."""

    def __init__(self, client: RedisClient, settings: Settings) -> None:
        self._keys = ChannelKeys(client, settings)
        self._window = settings.slack_signature_window_s
        self._leeway = settings.channel_jwt_leeway_s
        self._ttl = settings.idempotency_ttl_s
        self._require = settings.require_channel_auth
        self.openid = OpenIdKeys(
            settings.msteams_openid_url,
            max_age=settings.msteams_keys_max_age_s,
            min_refresh=settings.msteams_keys_min_refresh_s,
            timeout=max(1.0, settings.upstream_connect_timeout_s * 2),
        )

    async def close(self) -> None:
        await self.openid.close()

    # ------------------------------------------------------------------ entry points

    async def verify(
        self,
        request: Inbound,
        channel: str,
        app_id: str,
        read_body: Callable[[], Awaitable[bytes]],
    ) -> Verified:
        """``/hooks`` over HTTP: 401/403 as :class:`Problem`, else what was verified."""
        key = await self._keys.get(app_id, channel)
        if key is None:
            if self._require:
                raise not_authenticated(channel)
            return UNAUTHENTICATED
        headers = request.headers
        if key.scheme == channel_secrets.HS256:
            return Verified(True, self._hs256(bearer(headers.get("Authorization")), key.secret)[0])
        if key.scheme == "meta_sha256":
            challenge = meta_handshake(request)
            if challenge is not None:
                return Verified(True, handshake_challenge=challenge)
        # What the head alone refuses is refused before the body is asked for (no 100
        # to an ``Expect``, no body read from a client that cannot be verified).
        if key.scheme == "slack_v0":
            ts, sig = self._slack_head(headers)
            body = await read_body()
            self._slack(ts, sig, body, key.secret)
        elif key.scheme == "meta_sha256":
            hub = headers.get("X-Hub-Signature-256")
            if not hub:
                raise invalid_signature("missing X-Hub-Signature-256")
            body = await read_body()
            self._meta(hub, body, key.secret)
        elif key.scheme == "botframework_jwt":
            token = bearer(headers.get("Authorization"))
            bf = await botframework.verify_token(self.openid, token, key.secret, self._leeway)
            body = await read_body()
            botframework.bind_activity(bf, body)
        else:  # a scheme this worker does not know (newer gateway): never a free pass
            raise invalid_signature(f"unknown scheme {key.scheme}")
        return Verified(True, body=body)

    async def verify_upgrade(self, request: web.Request, channel: str, app_id: str) -> Verified:
        """A WebSocket upgrade on ``/hooks``: a bearer header, or ``?token=`` for HS256."""
        key = await self._keys.get(app_id, channel)
        if key is None:
            if self._require:
                raise not_authenticated(channel)
            return UNAUTHENTICATED
        header = request.headers.get("Authorization")
        if key.scheme == channel_secrets.HS256:
            token = bearer(header) if header else request.query.get(TOKEN_PARAM, "")
            if not token or len(token) > MAX_TOKEN:
                raise invalid_signature("missing bearer token or ?token=")
            user, exp = self._hs256(token, key.secret)
            return Verified(True, user, expires=exp + self._leeway, key=key)
        if key.scheme == "botframework_jwt":
            # Its token names no user (the user would be the client's pick), and Bot
            # Framework never opens a WebSocket to a bot: refused as the body-signed ones.
            raise invalid_signature("Bot Framework does not open WebSockets to a bot")
        raise invalid_signature(f"{key.scheme} signs request bodies; a WebSocket has none")

    async def still_keyed(self, app_id: str, channel: str, verified: Verified) -> bool:
        """Is the channel's key still the one ``verified`` was made with (an open
        WebSocket's check: a secret rotated, added or removed, or that no longer decrypts,
        is not)? Redis away: the cached key stands, as for every other request."""
        try:
            return await self._keys.get(app_id, channel) == verified.key
        except Problem:  # the new secret cannot be decrypted: it changed
            return False
        except MeteringUnavailable:
            return True

    async def verify_notify(self, request: web.Request, channel: str, app_id: str) -> Verified:
        """``/notify``: always an HS256 JWT signed with the channel's notify key."""
        key = await self._keys.get(app_id, channel)
        if key is None:
            raise not_authenticated(channel)
        if key.notify is None:
            raise not_authenticated(channel, "has no notify_secret")
        token = bearer(request.headers.get("Authorization"))
        try:
            # The audience keeps a chat token (same key without a notify_secret) out.
            jwt.decode(
                token,
                key.notify,
                algorithms=["HS256"],
                audience=NOTIFY_AUDIENCE,
                options={"require": ["exp", "aud"]},
                leeway=self._leeway,
            )
        except jwt.InvalidTokenError as exc:
            raise invalid_signature(jwt_reason(exc)) from None
        return Verified(True, drop_authorization=True)

    def check_fresh(self, stamps: Stamps) -> None:
        """401 for signed items too old or new to tell from a replay (channel_stamps)."""
        if why := refusal(stamps, time.time(), self._ttl, self._leeway):
            raise invalid_signature(why)

    # ---------------------------------------------------------------------- schemes

    def _slack_head(self, headers: Any) -> tuple[str, str]:
        """Timestamp and signature of a Slack request whose head may verify."""
        ts, sig = headers.get("X-Slack-Request-Timestamp"), headers.get("X-Slack-Signature")
        if not ts or not sig:
            raise invalid_signature("missing X-Slack-Signature or X-Slack-Request-Timestamp")
        if not _TIMESTAMP.fullmatch(ts):
            raise invalid_signature("malformed X-Slack-Request-Timestamp")
        if abs(time.time() - int(ts)) > self._window:
            raise invalid_signature(f"timestamp outside the {self._window:.0f} s window")
        return ts, sig

    def _slack(self, ts: str, sig: str, body: bytes, secret: str) -> None:
        base = b"v0:" + ts.encode() + b":" + body
        expected = "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()
        if not same(expected, sig):
            raise invalid_signature("X-Slack-Signature does not match")

    def _meta(self, sig: str, body: bytes, secret: str) -> None:
        expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        if not same(expected, sig):
            raise invalid_signature("X-Hub-Signature-256 does not match")

    def _hs256(self, token: str, secret: str) -> tuple[str, float]:
        """The verified ``sub`` and ``exp`` of an HS256 channel JWT."""
        try:
            claims = jwt.decode(
                token,
                secret,
                algorithms=["HS256"],
                options={"require": ["exp", "sub"], "verify_aud": False},
                leeway=self._leeway,
            )
        except jwt.InvalidTokenError as exc:
            raise invalid_signature(jwt_reason(exc)) from None
        aud = claims.get("aud")
        if aud == NOTIFY_AUDIENCE or (isinstance(aud, list) and NOTIFY_AUDIENCE in aud):
            raise invalid_signature("a /notify token is not a channel user's")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not 1 <= len(sub) <= MAX_USER or not sub.isprintable():
            raise invalid_signature("sub must be 1-256 printable characters")
        return sub, float(claims["exp"])
