"""Channel authentication of traffic (docs/design.md §3): is this request really from the channel?

A channel with a secret (``meter.accounts.channel_secrets``) verifies every request before
anything is metered or forwarded; a failure is 401 ``invalid_channel_signature``:

* ``slack_v0``: ``X-Slack-Signature`` = ``v0=`` + HMAC-SHA256(secret, ``v0:{ts}:{body}``)
  and ``X-Slack-Request-Timestamp`` within ``slack_signature_window_s`` of now;
* ``meta_sha256``: ``X-Hub-Signature-256`` = ``sha256=`` + HMAC-SHA256(secret, body).
  Meta's subscription handshake cannot be signed: a bodiless ``GET`` to the webhook
  itself (no tail) whose query is exactly ``hub.mode=subscribe``, ``hub.verify_token``
  and ``hub.challenge`` is let through, unmetered, for the bot to check its verify
  token, and only a 2xx answer whose body is the challenge goes back
  (:meth:`Verified.answer_handshake`, else 502); anything else is verified as usual;
* ``botframework_jwt``: ``Authorization: Bearer`` JWT, RS256 with a key of the OpenID
  metadata at ``msteams_openid_url`` (cached, refetched for an unknown key id at most
  every ``msteams_keys_min_refresh_s``), the metadata's issuer, audience = the secret
  (the bot's App ID), unexpired; a ``serviceUrl`` claim must match the activity's;
* ``jwt_hs256`` (every other channel): ``Authorization: Bearer`` JWT, HS256 with the
  secret, ``exp`` and ``sub`` required; ``sub`` is the channel user (it replaces
  ``X-Channel-User-Id``, also towards the bot); a token for ``/notify`` (``aud`` =
  ``creditgate:notify``) is refused. A WebSocket upgrade may carry the token as
  ``?token=`` (any spelling that decodes to it), which is not passed on to the bot.

A channel without a secret is unauthenticated: allowed unless ``require_channel_auth``
(then 403 ``channel_not_authenticated``). ``/notify`` always needs an HS256 JWT signed
with the channel's notify key with ``aud`` = ``creditgate:notify`` and ``exp``, so an end
user's chat token (same key when there is no ``notify_secret``) is not a notify
credential; the ``Authorization`` header carrying it is not passed on.

Each worker caches an app's projected secret for ``channel_secret_max_age_s`` and
decrypts it once per change; JWKS are fetched with aiohttp, never blocking the loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import aiohttp
import jwt
import orjson
from aiohttp import web
from cryptography.fernet import Fernet, InvalidToken
from redis.exceptions import RedisError
from yarl import URL

from config import Settings
from gateway.channels import USER_HEADER
from gateway.problems import Problem, Refused
from meter.accounts import channel_secrets
from meter.errors import MeteringUnavailable
from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient

log = logging.getLogger(__name__)
MAX_TOKEN = 8192
MAX_USER = 256
MAX_ENTRIES = 100_000
TOKEN_PARAM = "token"
NOTIFY_AUDIENCE = "creditgate:notify"  # ``aud`` of /notify tokens, refused on /hooks
HANDSHAKE_PARAMS = frozenset({"hub.mode", "hub.verify_token", "hub.challenge"})
MAX_CHALLENGE = 256
_TIMESTAMP = re.compile(r"[0-9]{1,12}")  # ASCII only: str.isdigit() accepts "²"


def invalid_signature(reason: str) -> Refused:
    exc = Refused("invalid_channel_signature")
    exc.detail = f"the request did not verify as coming from the channel: {reason}"
    return exc


def not_authenticated(channel: str, why: str = "has no verification secret") -> Refused:
    exc = Refused("channel_not_authenticated")
    exc.detail = f"channel {channel} of this app {why}; authentication is required"
    return exc


def auth_unavailable() -> Problem:
    return Problem(
        503,
        "channel_auth_unavailable",
        "Channel authentication unavailable",
        "the channel's verification keys cannot be read; retry later",
        headers={"Retry-After": "1"},
    )


class Verified(NamedTuple):
    """Outcome of a verification that did not refuse the request."""

    authenticated: bool
    user: str = ""  # the channel user the credential names (HS256 ``sub``)
    body: bytes | None = None  # the raw body, when verifying needed it
    drop_authorization: bool = False  # the credential is the gateway's, not the bot's
    handshake_challenge: str | None = None  # a Meta handshake: the answer must echo this

    def rewrite(self, headers: MutableMapping[str, str]) -> None:
        """Make the headers sent on match what was verified."""
        if self.user:
            headers[USER_HEADER] = self.user
        if self.drop_authorization:
            headers.pop("Authorization", None)

    async def answer_handshake(self, upstream: aiohttp.ClientResponse) -> web.Response:
        """The bot's answer to an unsigned Meta handshake, passed on only if it is a 2xx
        whose body is exactly ``hub.challenge``: the handshake buys nothing else (502)."""
        assert self.handshake_challenge is not None
        want = self.handshake_challenge.encode()
        got: bytes | None = None
        try:
            if 200 <= upstream.status < 300:
                got = b""
                # At most one byte more than the challenge: enough to tell it differs.
                async for chunk in upstream.content.iter_chunked(len(want) + 1):
                    got += chunk
                    if len(got) > len(want):
                        break
        except (aiohttp.ClientError, TimeoutError):
            got = None
        finally:
            upstream.release()
        if got != want:
            raise Problem(
                502,
                "invalid_handshake_answer",
                "Bot did not answer the handshake",
                "the bot's answer to the webhook subscription handshake is not its challenge",
            )
        return web.Response(status=upstream.status, body=want, content_type="text/plain")


UNAUTHENTICATED = Verified(False)


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


def bearer(header: str | None) -> str:
    """The token of ``Authorization: Bearer <token>``; 401 without one."""
    if not header:
        raise invalid_signature("missing Authorization: Bearer token")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN:
        raise invalid_signature("malformed Authorization header")
    return token


def _same(expected: str, given: str) -> bool:
    return hmac.compare_digest(expected.encode(), given.encode("utf-8", "replace"))


def without_token(url: URL) -> URL:
    """``url`` without ``token`` query parameters, the rest of the query byte for byte.

    A parameter is dropped by its *decoded* name (``%74oken``, ``tok%65n`` are ``token``
    to the verifier, which reads ``request.query``): each ``&``-separated part is decoded
    by yarl exactly as the request's query was.
    """
    query = url.raw_query_string
    if not query:
        return url
    kept = [p for p in query.split("&") if not p or TOKEN_PARAM not in _decoded_names(p)]
    if len(kept) == query.count("&") + 1:
        return url
    base = str(url.with_query(None))
    return URL(base + ("?" + "&".join(kept) if kept else ""), encoded=True)


def _decoded_names(part: str) -> set[str]:
    return set(URL.build(query_string=part, encoded=True).query.keys())


class OpenIdKeys:
    """Signing keys of an OpenID provider (the Bot Framework), cached per process."""

    def __init__(self, url: str, *, max_age: float, min_refresh: float, timeout: float) -> None:
        self._url = url
        self._max_age = max_age
        self._min_refresh = min_refresh
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._keys: dict[str, jwt.PyJWK] = {}
        self._issuer = ""
        self._fetched = -math.inf  # monotonic time of the last successful fetch
        self._tried = -math.inf  # ... of the last attempt
        self._lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None
        self.fetches = 0

    async def get(self, kid: str) -> tuple[jwt.PyJWK, str] | None:
        """The key ``kid`` and the issuer; ``None`` for a key the provider does not list."""
        found = self._fresh(kid)
        if found is not None:
            return found
        async with self._lock:
            found = self._fresh(kid)  # fetched meanwhile by another request
            if found is not None:
                return found
            # Unknown or stale: refetch, but at most every min_refresh (a provider outage
            # must not make every request wait for a fetch, nor forged kids cause fetches).
            failed = False
            now = time.monotonic()
            if now - self._tried >= self._min_refresh:
                self._tried = now
                try:
                    await self._fetch()
                except (aiohttp.ClientError, TimeoutError, ValueError, jwt.PyJWKSetError) as exc:
                    log.warning("msteams: cannot fetch signing keys from %s: %r", self._url, exc)
                    failed = True
            key = self._keys.get(kid)  # possibly past max_age: better than refusing all
            if key is not None:
                return key, self._issuer
            if failed or self._fetched == -math.inf:
                raise auth_unavailable()
            return None

    def _fresh(self, kid: str) -> tuple[jwt.PyJWK, str] | None:
        key = self._keys.get(kid)
        if key is None or time.monotonic() - self._fetched > self._max_age:
            return None
        return key, self._issuer

    async def _fetch(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        self.fetches += 1
        meta = await self._json(self._url)
        issuer, jwks_uri = meta.get("issuer"), meta.get("jwks_uri")
        if not isinstance(issuer, str) or not isinstance(jwks_uri, str):
            raise ValueError("OpenID metadata without issuer or jwks_uri")
        keyset = jwt.PyJWKSet.from_dict(await self._json(jwks_uri))
        self._keys = {
            k.key_id: k
            for k in keyset.keys
            if k.key_id and k.public_key_use in (None, "sig") and k.algorithm_name == "RS256"
        }
        self._issuer = issuer
        self._fetched = time.monotonic()

    async def _json(self, url: str) -> dict[str, Any]:
        assert self._session is not None
        async with self._session.get(url, allow_redirects=False) as resp:
            resp.raise_for_status()
            doc = orjson.loads(await resp.read())
        if not isinstance(doc, dict):
            raise ValueError(f"{url} did not answer a JSON object")
        return doc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class ChannelAuth:
    """Verifies traffic per app and channel; one per worker process."""

    def __init__(self, client: RedisClient, settings: Settings) -> None:
        self._client = client
        self._settings = settings
        self._cipher: Fernet | None = channel_secrets.cipher(settings)
        self._timeout = settings.redis_timeout_s
        self._max_age = settings.channel_secret_max_age_s
        self._window = settings.slack_signature_window_s
        self._leeway = settings.channel_jwt_leeway_s
        self._require = settings.require_channel_auth
        self._cache: dict[tuple[str, str], _Entry] = {}
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
        request: web.Request,
        channel: str,
        app_id: str,
        read_body: Callable[[web.Request], Awaitable[bytes]],
    ) -> Verified:
        """``/hooks`` over HTTP: 401/403 as :class:`Problem`, else what was verified."""
        key = await self._key(app_id, channel)
        if key is None:
            if self._require:
                raise not_authenticated(channel)
            return UNAUTHENTICATED
        headers = request.headers
        if key.scheme == channel_secrets.HS256:
            return Verified(True, self._hs256(bearer(headers.get("Authorization")), key.secret))
        if key.scheme == "meta_sha256":
            challenge = _meta_handshake(request)
            if challenge is not None:
                return Verified(True, handshake_challenge=challenge)
        body = await read_body(request)
        if key.scheme == "slack_v0":
            self._slack(headers, body, key.secret)
        elif key.scheme == "meta_sha256":
            self._meta(headers, body, key.secret)
        elif key.scheme == "botframework_jwt":
            await self._botframework(bearer(headers.get("Authorization")), key.secret, body)
        else:  # a scheme this worker does not know (newer gateway): never a free pass
            raise invalid_signature(f"unknown scheme {key.scheme}")
        return Verified(True, body=body)

    async def verify_upgrade(self, request: web.Request, channel: str, app_id: str) -> Verified:
        """A WebSocket upgrade on ``/hooks``: a bearer header, or ``?token=`` for HS256."""
        key = await self._key(app_id, channel)
        if key is None:
            if self._require:
                raise not_authenticated(channel)
            return UNAUTHENTICATED
        header = request.headers.get("Authorization")
        if key.scheme == channel_secrets.HS256:
            token = bearer(header) if header else request.query.get(TOKEN_PARAM, "")
            if not token or len(token) > MAX_TOKEN:
                raise invalid_signature("missing bearer token or ?token=")
            return Verified(True, self._hs256(token, key.secret))
        if key.scheme == "botframework_jwt":
            await self._botframework(bearer(header), key.secret, None)
            return Verified(True)
        raise invalid_signature(f"{key.scheme} signs request bodies; a WebSocket has none")

    async def verify_notify(self, request: web.Request, channel: str, app_id: str) -> Verified:
        """``/notify``: always an HS256 JWT signed with the channel's notify key."""
        key = await self._key(app_id, channel)
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
            raise invalid_signature(_jwt_reason(exc)) from None
        return Verified(True, drop_authorization=True)

    # ---------------------------------------------------------------------- schemes

    def _slack(self, headers: Any, body: bytes, secret: str) -> None:
        ts, sig = headers.get("X-Slack-Request-Timestamp"), headers.get("X-Slack-Signature")
        if not ts or not sig:
            raise invalid_signature("missing X-Slack-Signature or X-Slack-Request-Timestamp")
        if not _TIMESTAMP.fullmatch(ts):
            raise invalid_signature("malformed X-Slack-Request-Timestamp")
        if abs(time.time() - int(ts)) > self._window:
            raise invalid_signature(f"timestamp outside the {self._window:.0f} s window")
        base = b"v0:" + ts.encode() + b":" + body
        expected = "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()
        if not _same(expected, sig):
            raise invalid_signature("X-Slack-Signature does not match")

    def _meta(self, headers: Any, body: bytes, secret: str) -> None:
        sig = headers.get("X-Hub-Signature-256")
        if not sig:
            raise invalid_signature("missing X-Hub-Signature-256")
        expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        if not _same(expected, sig):
            raise invalid_signature("X-Hub-Signature-256 does not match")

    def _hs256(self, token: str, secret: str) -> str:
        """The verified ``sub`` of an HS256 channel JWT."""
        try:
            claims = jwt.decode(
                token,
                secret,
                algorithms=["HS256"],
                options={"require": ["exp", "sub"], "verify_aud": False},
                leeway=self._leeway,
            )
        except jwt.InvalidTokenError as exc:
            raise invalid_signature(_jwt_reason(exc)) from None
        aud = claims.get("aud")
        if aud == NOTIFY_AUDIENCE or (isinstance(aud, list) and NOTIFY_AUDIENCE in aud):
            raise invalid_signature("a /notify token is not a channel user's")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not 1 <= len(sub) <= MAX_USER or not sub.isprintable():
            raise invalid_signature("sub must be 1-256 printable characters")
        return sub

    async def _botframework(self, token: str, app_id: str, body: bytes | None) -> None:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise invalid_signature("malformed token") from None
        kid = header.get("kid")
        if header.get("alg") != "RS256" or not isinstance(kid, str) or not kid:
            raise invalid_signature("not an RS256 token with a key id")
        found = await self.openid.get(kid)
        if found is None:
            raise invalid_signature("signed with a key the channel does not publish")
        key, issuer = found
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=["RS256"],
                audience=app_id,
                issuer=issuer,
                options={"require": ["exp", "iss", "aud"]},
                leeway=self._leeway,
            )
        except jwt.InvalidTokenError as exc:
            raise invalid_signature(_jwt_reason(exc)) from None
        claimed = claims.get("serviceUrl")
        if claimed is not None and body is not None:
            try:
                activity = orjson.loads(body)
            except orjson.JSONDecodeError:
                activity = None
            actual = activity.get("serviceUrl") if isinstance(activity, dict) else None
            if actual != claimed:
                raise invalid_signature("serviceUrl does not match the token")

    # ------------------------------------------------------------------ secrets

    async def _key(self, app_id: str, channel: str) -> ChannelKey | None:
        """The channel's secrets, cached for ``channel_secret_max_age_s``."""
        entry = self._cache.get((app_id, channel))
        now = time.monotonic()
        if entry is None or entry.expires <= now:
            entry = await self._fill(app_id, channel, entry)
        if entry.broken:
            raise auth_unavailable()
        return entry.key

    async def _fill(self, app_id: str, channel: str, stale: _Entry | None) -> _Entry:
        ws = keys.workspace_of(app_id)
        raw: bytes | None = None
        if ws is not None:
            field = channel_secrets.field_of(channel)
            try:
                got = await asyncio.wait_for(
                    self._client.hget(keys.app_key(ws, app_id), field), self._timeout
                )
            except (RedisError, OSError, TimeoutError) as exc:
                if stale is not None:
                    return stale
                raise MeteringUnavailable(f"redis: {exc!r}", ambiguous=False) from None
            raw = got.encode() if isinstance(got, str) else got
        expires = time.monotonic() + self._max_age
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


def _meta_handshake(request: web.Request) -> str | None:
    """``hub.challenge`` of Meta's subscription handshake, else ``None`` (verify as usual).

    Only what registration sends: a bodiless ``GET`` to the webhook itself (an empty
    tail), each of the three ``hub.*`` parameters once and nothing else, so the
    unsigned pass cannot reach another bot path or carry another question.
    """
    if request.method != "GET" or request.body_exists or request.match_info.get("tail", ""):
        return None
    q = request.query
    parts = request.rel_url.raw_query_string.count("&") + 1  # "a&" is two parts
    if not len(q) == parts == len(HANDSHAKE_PARAMS) or set(q.keys()) != HANDSHAKE_PARAMS:
        return None
    challenge = q["hub.challenge"]
    if q["hub.mode"] != "subscribe" or not 1 <= len(challenge) <= MAX_CHALLENGE:
        return None
    return challenge


def _jwt_reason(exc: jwt.InvalidTokenError) -> str:
    """A short reason that never echoes the token."""
    if isinstance(exc, jwt.ExpiredSignatureError):
        return "token expired"
    if isinstance(exc, jwt.ImmatureSignatureError):
        return "token not yet valid"
    if isinstance(exc, jwt.InvalidAudienceError):
        return "token for another audience"
    if isinstance(exc, jwt.InvalidIssuerError):
        return "token from another issuer"
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"token without the {exc.claim} claim"
    if isinstance(exc, jwt.InvalidSignatureError):
        return "token signature does not match"
    return "malformed token"
