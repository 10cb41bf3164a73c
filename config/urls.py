"""Redis, store and Stripe URLs: what forms are accepted, and how to show one (or any URL)
without its secret."""

from __future__ import annotations

import ipaddress
from urllib.parse import unquote, urlsplit, urlunsplit

REDIS_SCHEMES = ("redis://", "rediss://", "redis+cluster://", "unix://")
STORE_HINT = (
    "use sqlite:///relative/path.db, sqlite:////absolute/path.db or postgresql://user@host/db"
)


def mask_url(url: str) -> str:
    """``url`` with its password (and a token-like query) replaced by ``***``."""
    try:
        parts = urlsplit(url)
        netloc, query = parts.netloc, parts.query
        if "@" not in netloc and "password" not in query.lower():
            return url  # nothing secret (and sqlite:/// keeps its three slashes)
        if "@" in netloc:
            userinfo, host = netloc.rsplit("@", 1)
            user = userinfo.split(":", 1)[0]
            masked = "***" if ":" not in userinfo else f"{user}:***"
            netloc = f"{masked}@{host}"
        if "password" in query.lower():
            query = "***"
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return "***"  # unparseable: show nothing that might be a secret


def url_origin(url: str) -> str:
    """``scheme://host[:port]`` of ``url``, all a log shows of a URL that may carry a
    secret (user info, path and query left out)."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port
    except ValueError:
        return "***"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{port}" if port else "")


def sqlite_path(url: str) -> str:
    """The file path of a ``sqlite://`` URL; ValueError names the accepted forms."""
    path = unquote(url.removeprefix("sqlite://").split("?", 1)[0])
    if not path.startswith("/") or len(path) < 2:
        raise ValueError(f"{mask_url(url)!r} has no file path: {STORE_HINT}")
    return path[1:]


def check_store_url(url: str) -> str:
    """``url`` if creditgate can open that kind of store, else ValueError (one line)."""
    if url.startswith("sqlite://"):
        sqlite_path(url)
        return url
    if url.startswith(("postgresql://", "postgres://")):
        return url
    scheme = url.split("://", 1)[0] if "://" in url else url
    raise ValueError(f"{scheme!r} stores are not supported ({mask_url(url)!r}): {STORE_HINT}")


def check_redis_url(url: str) -> str:
    if url.startswith(REDIS_SCHEMES):
        return url
    raise ValueError(
        f"{mask_url(url)!r} is not a Redis URL: use redis://host:6379/0, rediss://, "
        "redis+cluster://host:port or unix:///path"
    )


def _loopback_ip(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_stripe_api_base(url: str) -> str:
    """``url`` if it is https (or http to a loopback host: a local stand-in), else
    ValueError: the secret key goes in every request to it."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        parts, host = urlsplit(""), ""
    if parts.scheme == "https" and host:
        return url
    if parts.scheme == "http" and (host == "localhost" or _loopback_ip(host)):
        return url
    raise ValueError(
        f"stripe_api_base {mask_url(url)!r} must be an https URL (http only to a loopback "
        "host, a local stand-in): the secret key goes in every request"
    )
