"""What channel authentication answers (:mod:`gateway.channel_auth`): the refusals, the
:class:`Verified` outcome, and the credential helpers both traffic servers share."""

from __future__ import annotations

import hmac
from collections.abc import MutableMapping
from typing import NamedTuple

import aiohttp
import jwt
from aiohttp import web
from yarl import URL

from gateway.channels import MAX_CHALLENGE, USER_HEADER
from gateway.forwarding import CHANNEL_AUTH_HEADER
from gateway.inbound import Inbound
from gateway.problems import Problem, Refused, bad_handshake_answer

MAX_TOKEN = 8192
NOTIFY_AUDIENCE = "creditgate:notify"  # ``aud`` of /notify tokens, refused on /hooks
TOKEN_PARAM = "token"
HANDSHAKE_PARAMS = frozenset({"hub.mode", "hub.verify_token", "hub.challenge"})


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
    expires: float = 0.0  # a token's exp plus the leeway (epoch s): past it, it fails; 0: none
    key: object = None  # the channel key it verified with (a WebSocket checks it stays)

    def rewrite(self, headers: MutableMapping[str, str]) -> None:
        """Make the headers sent on match what was verified, and say whether anything was
        (``CHANNEL_AUTH_HEADER``)."""
        # Meta's subscription handshake is unsigned (its verify token is the bot's to check).
        signed = self.authenticated and self.handshake_challenge is None
        headers[CHANNEL_AUTH_HEADER] = "verified" if signed else "none"
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
            raise bad_handshake_answer("webhook subscription handshake")
        return web.Response(status=upstream.status, body=want, content_type="text/plain")


UNAUTHENTICATED = Verified(False)


def bearer(header: str | None) -> str:
    """The token of ``Authorization: Bearer <token>``; 401 without one."""
    if not header:
        raise invalid_signature("missing Authorization: Bearer token")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN:
        raise invalid_signature("malformed Authorization header")
    return token


def same(expected: str, given: str) -> bool:
    return hmac.compare_digest(expected.encode(), given.encode("utf-8", "replace"))


def without_token(url: URL, names: frozenset[str] = frozenset({TOKEN_PARAM})) -> URL:
    """``url`` without ``token`` query parameters (or those ``names``), the rest of the
    query byte for byte.

    A parameter is dropped by its *decoded* name (``%74oken``, ``tok%65n`` are ``token``
    to the verifier, which reads ``request.query``): each ``&``-separated part is decoded
    by yarl exactly as the request's query was.
    """
    query = url.raw_query_string
    if not query:
        return url
    kept = [p for p in query.split("&") if not p or not names & _decoded_names(p)]
    if len(kept) == query.count("&") + 1:
        return url
    base = str(url.with_query(None))
    return URL(base + ("?" + "&".join(kept) if kept else ""), encoded=True)


def _decoded_names(part: str) -> set[str]:
    return set(URL.build(query_string=part, encoded=True).query.keys())


def meta_handshake(request: Inbound) -> str | None:
    """``hub.challenge`` of Meta's subscription handshake, else ``None`` (verify as usual).

    Only what registration sends: a bodiless ``GET`` to the webhook itself (an empty
    tail), each of the three ``hub.*`` parameters once and nothing else, so the
    unsigned pass cannot reach another bot path or carry another question.
    """
    if request.method != "GET" or request.body_exists or request.tail:
        return None
    q = request.query
    parts = request.raw_query_string.count("&") + 1  # "a&" is two parts
    if not len(q) == parts == len(HANDSHAKE_PARAMS) or set(q.keys()) != HANDSHAKE_PARAMS:
        return None
    challenge = q["hub.challenge"]
    if q["hub.mode"] != "subscribe" or not 1 <= len(challenge) <= MAX_CHALLENGE:
        return None
    return challenge


def jwt_reason(exc: jwt.InvalidTokenError) -> str:
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
