"""Console sign-in: an API token is exchanged once for a server-side session.

The browser keeps only an opaque random cookie (HttpOnly, SameSite=Strict, Secure when
the request came over TLS); the store keeps its SHA-256 with the user, the API token
signed in with (revoking that token deletes its sessions) and a synchronizer CSRF token.
A user keeps at most :data:`MAX_SESSIONS`: a sign-in beyond them ends the oldest; a
sign-in ends the session its browser had (re-authentication renews the session).
Requests the console makes to ``/v1`` carry the cookie instead of a bearer token
(:func:`cookie_auth`); every state-changing one must echo the CSRF token in
``X-CSRF-Token``. The API token itself never reaches a URL or browser storage.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from gateway import appkeys
from gateway.admin_api.http import SESSION_PRINCIPAL, SESSION_RELOAD
from gateway.admin_api.validation import read_raw
from gateway.console_cookies import COOKIE, SECURE_COOKIE, console_cookie
from gateway.problems import Problem
from meter.accounts.authz import Principal, user_principal
from meter.errors import Unauthorized
from meter.store import Store
from meter.store.console_sessions import ConsoleSession

# The names are gateway.console_cookies', which keeps them off the traffic routes.
CSRF_HEADER = "X-CSRF-Token"
PRINCIPAL = SESSION_PRINCIPAL  # request key: the session's caller
SAFE = frozenset({"GET", "HEAD", "OPTIONS"})
# Live sessions one user keeps: a new sign-in beyond it ends their oldest session, so
# signing in in a loop cannot grow the store (each row lives console_session_ttl_s).
MAX_SESSIONS = 20
_OWS = " \t"


def _hash(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def _now_ms(request: web.Request) -> int:
    return int(request.config_dict[appkeys.CLOCK]() * 1000)


def secure(request: web.Request) -> bool:
    mode = request.config_dict[appkeys.SETTINGS].console_secure_cookie
    if mode != "auto":
        return bool(mode == "always")
    return request.secure or "https" in forwarded_protos(request)


def forwarded_protos(request: web.Request) -> set[str]:
    """Every scheme a proxy in front names: ``X-Forwarded-Proto`` (one value, or a list
    where proxies append to it) and RFC 7239 ``Forwarded``'s ``proto=``. Believing any of
    them can only make the cookie stricter (a client that names https itself over plain
    HTTP is given a Secure cookie its browser refuses)."""
    found = {
        p.strip(_OWS).lower()
        for v in request.headers.getall("X-Forwarded-Proto", ())
        for p in v.split(",")
    }
    for v in request.headers.getall("Forwarded", ()):
        for pair in v.replace(",", ";").split(";"):
            key, _, value = pair.partition("=")
            if key.strip(_OWS).lower() == "proto":
                found.add(value.strip(_OWS).strip('"').lower())
    return found


async def load(request: web.Request) -> ConsoleSession | None:
    """The request's live console session, if its cookie names one."""
    # Over TLS only the __Host- cookie counts: a plain one can be planted by a sibling
    # subdomain or over plain HTTP, and would sign the victim into the planter's session.
    # Read strictly (gateway.console_cookies.console_cookie): sent twice, it is none.
    name = SECURE_COOKIE if secure(request) else COOKIE
    raw = console_cookie(request.headers.getall("Cookie", ()), name)
    if not raw or len(raw) > 200:
        return None
    store: Store = request.config_dict[appkeys.STORE]
    sess = await store.get_console_session(_hash(raw), _now_ms(request))
    if sess is None:
        return None
    token = await store.get_token(sess.token_id)
    if token is None or token.revoked_at is not None or token.user_id != sess.user_id:
        return None  # signed in with a token since revoked: signed out
    return sess


def check_csrf(request: web.Request, sess: ConsoleSession) -> None:
    sent = request.headers.get(CSRF_HEADER, "")
    if not hmac.compare_digest(sent.encode(), sess.csrf.encode()):
        raise Problem(403, "csrf_failed", "Forbidden", f"send the session's {CSRF_HEADER}")


def same_origin(request: web.Request) -> None:
    """Refuse cross-site sign-in attempts (login CSRF): a browser names the origin."""
    origin = request.headers.get("Origin")
    if origin is not None and origin.split("://", 1)[-1] != request.host:
        raise Problem(403, "cross_origin", "Forbidden", "sign in from the console itself")


@web.middleware
async def cookie_auth(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Let the console's session cookie stand for a bearer token on ``/v1``."""
    if request.path.startswith("/v1/") and "Authorization" not in request.headers:
        sess = await load(request)
        if sess is not None:
            if request.method not in SAFE:
                check_csrf(request, sess)
            request[PRINCIPAL] = Principal(user_id=sess.user_id, token_id=sess.token_id)
            request[SESSION_RELOAD] = lambda: _principal(request)
    return await handler(request)


async def _principal(request: web.Request) -> Principal | None:
    """The caller of the request's live session, if any (loaded anew)."""
    sess = await load(request)
    return None if sess is None else Principal(user_id=sess.user_id, token_id=sess.token_id)


async def _user_view(request: web.Request, sess: ConsoleSession) -> dict[str, Any]:
    store: Store = request.config_dict[appkeys.STORE]
    settings = request.config_dict[appkeys.SETTINGS]
    user = await store.get_user(sess.user_id)
    return {
        "signed_in": True,
        "user": {
            "id": sess.user_id,
            "email": user.email if user else "",
            "name": user.name if user else "",
        },
        "csrf": sess.csrf,
        "expires_at": sess.expires_at,
        "links": {
            "docs": settings.console_docs_url,
            "community": settings.console_community_url,
            "support": settings.console_support_url,
        },
        "topup": {"min": settings.topup_min, "max": settings.topup_max},
    }


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(data),
        status=status,
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


async def sign_in(request: web.Request) -> web.Response:
    """``POST /ui/session`` ``{"token": "..."}`` -> the session cookie and its CSRF token."""
    same_origin(request)
    if request.content_type != "application/json":
        raise Problem(415, "unsupported_media_type", "Send JSON", "Content-Type: application/json")
    try:
        within = request.config_dict[appkeys.SETTINGS].admin_body_timeout_s
        data = orjson.loads(await read_raw(request, within))
    except orjson.JSONDecodeError:
        data = None
    token = data.get("token") if isinstance(data, dict) else None
    if not isinstance(token, str) or not token.strip():
        raise Problem(422, "invalid_input", "Invalid input", "token: is required",
                      extra={"field": "token"})  # fmt: skip
    store: Store = request.config_dict[appkeys.STORE]
    settings = request.config_dict[appkeys.SETTINGS]
    try:
        principal = await user_principal(store, token.strip()[:512])
    except Unauthorized:
        raise Problem(401, "unauthorized", "Unauthorized", "unknown or revoked token") from None
    assert principal.user_id is not None
    assert principal.token_id is not None
    raw = secrets.token_urlsafe(32)
    now = _now_ms(request)
    sess = ConsoleSession(
        id_hash=_hash(raw),
        user_id=principal.user_id,
        token_id=principal.token_id,
        csrf=secrets.token_urlsafe(32),
        created_at=now,
        expires_at=now + int(settings.console_session_ttl_s * 1000),
    )
    if not await store.create_console_session(sess, MAX_SESSIONS):
        raise Problem(401, "unauthorized", "Unauthorized", "unknown or revoked token")
    # Signing in again renews the session: the one this browser had ends (its cookie is
    # overwritten here; a copy of it elsewhere would otherwise act on until its expiry).
    previous = await load(request)
    if previous is not None:
        await store.delete_console_session(previous.id_hash)
    resp = _json(await _user_view(request, sess), 201)
    tls = secure(request)
    resp.set_cookie(
        SECURE_COOKIE if tls else COOKIE,
        raw,
        max_age=int(settings.console_session_ttl_s),
        path="/",
        httponly=True,
        secure=tls,
        samesite="Strict",
    )
    return resp


async def current(request: web.Request) -> web.Response:
    """``GET /ui/session``: who is signed in (``signed_in: false`` when nobody: the page
    asks this first, and an error status would be logged as a browser console error)."""
    sess = await load(request)
    if sess is None:
        return _json({"signed_in": False})
    return _json(await _user_view(request, sess))


async def sign_out(request: web.Request) -> web.Response:
    """``DELETE /ui/session`` (with the CSRF token): ends the session."""
    sess = await load(request)
    resp = web.Response(status=204, headers={"Cache-Control": "no-store"})
    if sess is not None:
        check_csrf(request, sess)
        await request.config_dict[appkeys.STORE].delete_console_session(sess.id_hash)
    for name in (COOKIE, SECURE_COOKIE):
        if name in request.cookies:
            resp.del_cookie(name, path="/", secure=name == SECURE_COOKIE, samesite="Strict")
    return resp


async def require(request: web.Request) -> Principal:
    """The console caller of a ``/ui/api`` request, or 401."""
    principal = await _principal(request)
    if principal is None:
        raise Problem(401, "unauthorized", "Unauthorized", "not signed in")
    return principal
