"""Scheme ``botframework_jwt`` of :mod:`gateway.channel_auth`: the Bot Framework's bearer
JWT, verified from the request's head alone (:func:`verify_token`), then tied to the
activity in the body (:func:`bind_activity`), as botbuilder's ChannelValidation does.

The token is checked before the body is asked for: a forged, stale or foreign token is
refused 401 with no ``100 Continue`` and no body read, as every credential the head
carries (a bearer HS256 token, a missing or stale Slack signature)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jwt
import orjson

from gateway.channel_credentials import invalid_signature, jwt_reason
from gateway.openid_keys import OpenIdKeys

SERVICE_URL_CLAIM = "serviceurl"  # Bot Framework's name (botbuilder's SERVICE_URL_CLAIM)


class Token(NamedTuple):
    """A verified token's claims, and the channels its signing key is endorsed for."""

    claims: dict[str, Any]
    endorsements: frozenset[str]


async def verify_token(openid: OpenIdKeys, token: str, app_id: str, leeway: float) -> Token:
    """RS256 with a key the provider publishes, its issuer, audience ``app_id`` (the
    bot's App ID), unexpired, with a ``serviceurl`` claim; else 401."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError:
        raise invalid_signature("malformed token") from None
    kid = header.get("kid")
    if header.get("alg") != "RS256" or not isinstance(kid, str) or not kid:
        raise invalid_signature("not an RS256 token with a key id")
    found = await openid.get(kid)
    if found is None:
        raise invalid_signature("signed with a key the channel does not publish")
    try:
        claims = jwt.decode(
            token,
            found.key,
            algorithms=["RS256"],
            audience=app_id,
            issuer=found.issuer,
            options={"require": ["exp", "iss", "aud"]},
            leeway=leeway,
        )
    except jwt.InvalidTokenError as exc:
        raise invalid_signature(jwt_reason(exc)) from None
    claimed = claims.get(SERVICE_URL_CLAIM, claims.get("serviceUrl"))
    if not isinstance(claimed, str) or not claimed:
        raise invalid_signature(f"the token has no {SERVICE_URL_CLAIM} claim")
    return Token(claims, found.endorsements)


def bind_activity(token: Token, body: bytes) -> None:
    """Tie the activity, which the token does not sign, to the token: a replayed token
    must not carry an activity whose ``serviceUrl`` (where the bot posts its reply, with
    its credentials) is another's."""
    claimed = token.claims.get(SERVICE_URL_CLAIM, token.claims.get("serviceUrl"))
    try:
        activity = orjson.loads(body)
    except orjson.JSONDecodeError:
        activity = None
    if not isinstance(activity, dict):
        raise invalid_signature("the body is not a Bot Framework activity")
    # Every spelling a case-insensitive deserializer (Newtonsoft's) would read as it.
    for name, value in activity.items():
        if name.lower() == SERVICE_URL_CLAIM and value != claimed:
            raise invalid_signature("serviceUrl does not match the token")
    # Its channelId too (Newtonsoft takes the last spelling, others the first): every
    # spelling must agree, and a channel named must be one the key is endorsed for.
    channel_ids = [v for name, v in activity.items() if name.lower() == "channelid"]
    if any(v != channel_ids[0] for v in channel_ids):
        raise invalid_signature("the activity names several channelIds")
    if (
        channel_ids
        and channel_ids[0] not in (None, "")
        and (not isinstance(channel_ids[0], str) or channel_ids[0] not in token.endorsements)
    ):
        raise invalid_signature("the signing key is not endorsed for the activity's channelId")
