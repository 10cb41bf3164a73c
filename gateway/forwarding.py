"""What a proxy changes on the way through: target URL and headers (RFC 9110 §7.6.1).

Hop-by-hop headers (``Connection`` and every header it lists, ``Keep-Alive``,
``Proxy-*``, ``TE``, ``Trailer``, ``Transfer-Encoding``, ``Upgrade``) are dropped both
ways, and request header names with ``_`` on the way in (as nginx does);
``X-Forwarded-For`` and ``Via`` are appended to, ``X-Forwarded-Proto``/``-Host`` are
set (a client's ``-Host`` dropped when the request names no host), ``X-Creditgate-App``
names the app and ``X-Creditgate-Channel-Auth`` says whether the channel's credential was
verified (a client's of either is replaced), and an ``X-Request-Id`` is generated when
the request has none. A client's ``Forwarded`` (RFC 7239) is appended
to and its ``X-Real-IP`` replaced by the peer: the last address the bot reads is always
the one the gateway saw.

The console's session cookie never crosses (:mod:`gateway.console_cookies`): it is taken
out of a forwarded ``Cookie`` header (other cookies pass), and a bot's ``Set-Cookie`` for
it is dropped, on every traffic path. Nor does a bot's ``Clear-Site-Data``: its
``"cookies"`` clears every cookie of the registrable domain, the console's session and
the other tenants' cookies on a shared traffic host included, which no one tenant's bot
may decide.

A header field whose value is not UTF-8 is dropped, both ways and on both traffic servers
(:mod:`gateway.header_text`): aiohttp decodes such bytes to lone surrogates and its writer
leaves them out, so what it sent on was a value nobody sent (a bot's
``Set-Cookie: cg_sess\xffion=x`` reached the browser as ``cg_session=x``, past the
console-cookie check), while the fast path, writing bytes, passed them as they came. So
is a bot's field whose value has a control character other than HTAB, which aiohttp's
writer refuses. Field names are tokens (both parsers refuse anything else).

``Expect`` is met by the gateway itself and never forwarded (as nginx does): the client's
``100-continue`` is answered when its body is read (:mod:`gateway.http_rules`), and the bot
gets the complete request; forwarded, it would make the gateway's client wait for a 100
the bot may never send, until the read timeout.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable
from urllib.parse import quote, unquote

from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from gateway import via as _via
from gateway.console_cookies import (
    mentions_console_cookie,
    sets_console_cookie,
    without_console_cookies,
)
from gateway.header_text import clean, writable
from gateway.inbound import Headers
from gateway.memo import short_memo

HOP_BY_HOP: tuple[str, ...] = (
    "Connection",
    "Keep-Alive",
    "Proxy-Authenticate",
    "Proxy-Authorization",
    "Proxy-Connection",
    "TE",
    "Trailer",
    "Transfer-Encoding",
    "Upgrade",
)
_HOP = frozenset(name.lower() for name in HOP_BY_HOP)
# What of a bot's answer never reaches the client (see the module; ``Connection``'s list
# aside): the hop-by-hop headers and Clear-Site-Data.
ANSWER_DROPPED: tuple[str, ...] = (*HOP_BY_HOP, "Clear-Site-Data")
_ANSWER_DROP = frozenset(name.lower() for name in ANSWER_DROPPED)
# The app a forwarded request is for, set by the gateway (a client's is dropped): a bot
# that another tenant's app points at can tell the messages are not its own.
APP_HEADER = "X-Creditgate-App"
# Whether the channel's credential was verified ("verified") or the channel has no
# secret ("none"), set by gateway.channel_credentials.Verified.rewrite (a client's is
# dropped): a bot cannot tell an app's secured channel from another name of the same
# app's route, which anyone may call unauthenticated unless REQUIRE_CHANNEL_AUTH.
CHANNEL_AUTH_HEADER = "X-Creditgate-Channel-Auth"
# Request headers the client side re-creates for the upstream connection, the
# expectation the gateway meets itself (see the module), and the gateway's own.
REQUEST_ONLY = _HOP | {"host", "expect", APP_HEADER.lower(), CHANNEL_AUTH_HEADER.lower()}
# The WebSocket handshake is negotiated anew with the upstream.
WS_HANDSHAKE = (
    "Sec-WebSocket-Key",
    "Sec-WebSocket-Version",
    "Sec-WebSocket-Extensions",
    "Sec-WebSocket-Protocol",
    "Sec-WebSocket-Accept",
)

# The ``Server`` of every answer the gateway makes, and of a bot's answer that names no
# server of its own (a bot's own passes unchanged): the product, never a version.
SERVER = "creditgate"

# Request ids: this process's prefix and a count, shared with the fast path, which
# writes them as bytes (gateway.fastpath.head).
REQUEST_IDS = itertools.count(1)
REQUEST_ID_PREFIX = os.urandom(6).hex()
_id_format = REQUEST_ID_PREFIX + "-%x"


def new_request_id() -> str:
    """Unique per process and request; cheaper than a UUID on the hot path."""
    return _id_format % next(REQUEST_IDS)


def _end_to_end(src: Headers, hop: frozenset[str], request: bool = False) -> CIMultiDict[str]:
    """``src`` without the hop-by-hop headers: ``hop`` (lower case), every header a
    ``Connection`` header lists, and ``Proxy-*``; one pass over ``src``. A ``request``'s
    header names with ``_`` are dropped too (nginx's default): a bot whose server maps
    ``_`` and ``-`` to one name (WSGI, CGI) would read a client's ``X_Channel_User_Id``
    beside, or instead of, the ``X-Channel-User-Id`` the gateway vouches for. A value
    that is not UTF-8 goes too, and an answer's with a control character but HTAB (see
    the module)."""
    drop = hop
    if "Connection" in src:
        listed = {
            token.strip().lower() for conn in src.getall("Connection") for token in conn.split(",")
        }
        drop = drop | listed
    # v.isascii() first: clean()'s call only for the rare value that is not ASCII.
    if request:
        return CIMultiDict([(k, v) for k, v in src.items()
                            if (low := k.lower()) not in drop and low[:6] != "proxy-"
                            and "_" not in k and (v.isascii() or clean(v))])  # fmt: skip
    return CIMultiDict([(k, v) for k, v in src.items()
                        if (low := k.lower()) not in drop and low[:6] != "proxy-"
                        and writable(v)])  # fmt: skip


def forwarded_headers(
    src: Headers,
    peer: str,
    scheme: str,
    *,
    drop: Iterable[str] = (),
    app: str = "",
) -> tuple[CIMultiDict[str], str]:
    """End-to-end request headers plus the X-Forwarded-* set (and ``APP_HEADER`` naming
    ``app``), and the request id."""
    out = _end_to_end(
        src, REQUEST_ONLY.union(name.lower() for name in drop) if drop else REQUEST_ONLY, True
    )
    xff = _joined(src, "X-Forwarded-For")
    out["X-Forwarded-For"] = f"{xff}, {peer}" if xff else peer
    out["X-Forwarded-Proto"] = scheme
    host = src.get("Host")
    if host:
        out["X-Forwarded-Host"] = host
    elif "X-Forwarded-Host" in out:  # no host to tell: a client's would pass as the gateway's
        del out["X-Forwarded-Host"]
    fwd = _joined(src, "Forwarded")
    if fwd:
        out["Forwarded"] = f"{fwd}, for={forwarded_node(peer)}"
    if "X-Real-IP" in src:  # one address by convention: only the peer's is true
        out["X-Real-IP"] = peer
    vias = [v for v in src.getall("Via", ()) if v.isascii() or clean(v)]  # as _joined
    # This deployment's entry last (gateway.via): a loop back is answered 508. The
    # client's entries are rebuilt, never passed as text (gateway.via.forwarded).
    out["Via"] = _via.forwarded(vias) if vias else _via.entry
    if app:
        out[APP_HEADER] = app
    if "Cookie" in out and mentions_console_cookie(out.getall("Cookie")):
        out = _without_console_cookies(out)
    rid = src.get("X-Request-Id")
    if not rid or not clean(rid):  # a value not UTF-8 was dropped: a new one
        rid = new_request_id()
        out["X-Request-Id"] = rid
    return out, rid


def _without_console_cookies(src: CIMultiDict[str]) -> CIMultiDict[str]:
    """The console's cookies out of every ``Cookie`` line (a line left empty goes), the
    fields kept in their order."""
    out: CIMultiDict[str] = CIMultiDict()
    for k, v in src.items():
        if k.lower() == "cookie":
            v = without_console_cookies(v)
            if not v:
                continue
        out.add(k, v)
    return out


def _joined(src: Headers, name: str) -> str:
    """Every line of list header ``name``, as one list (RFC 9110 §5.3): a chain sent as
    several lines is forwarded whole, not cut at its first line; a line that is not UTF-8
    is left out (see the module)."""
    values = src.getall(name, ())
    if not values:
        return ""
    if len(values) == 1:
        value = values[0]
        return value if value.isascii() or clean(value) else ""
    return ", ".join([v for v in values if v.isascii() or clean(v)])


def forwarded_node(peer: str) -> str:
    """``peer`` as a ``Forwarded`` node (RFC 7239 §6): IPv6 quoted in brackets."""
    if not peer:
        return "unknown"
    return f'"[{peer}]"' if ":" in peer else peer


def upstream_headers(
    request: web.Request, *, drop: Iterable[str] = ()
) -> tuple[CIMultiDict[str], str]:
    """:func:`forwarded_headers` of an aiohttp request (a traffic route's: its app)."""
    app = request.match_info.get("app_id", "")
    return forwarded_headers(
        request.headers, request.remote or "", request.scheme, drop=drop, app=app
    )


def downstream_headers(src: Headers) -> CIMultiDict[str]:
    """End-to-end response headers of the upstream's answer, less ``Clear-Site-Data`` and
    any ``Set-Cookie`` of the console's cookie. A name read with whitespace before its
    colon (``Content-Length : 5``: aiohttp's lenient client parser frames by it) loses it,
    as a proxy must (RFC 9112 §5.1): the client never gets two framing fields."""
    if any(k[-1:] in (" ", "\t") for k in src):
        src = CIMultiDict([(k.rstrip(" \t"), v) for k, v in src.items()])
    out = _end_to_end(src, _ANSWER_DROP)
    if "Set-Cookie" in out and mentions_console_cookie(out.getall("Set-Cookie")):
        out = CIMultiDict([(k, v) for k, v in out.items()
                           if k.lower() != "set-cookie" or not sets_console_cookie(v)])  # fmt: skip
    if "Transfer-Encoding" in src:  # framing changes here; a stray length would lie
        out.popall("Content-Length", None)
    return out


class InvalidTail(ValueError):
    """A route tail with ``.`` or ``..`` segments (raw or percent-encoded)."""


_DOT_SEGMENTS = frozenset({".", ".."})


def _has_dot_segment(tail: str) -> bool:
    if "." not in tail and "%" not in tail:
        return False  # a dot segment needs a "." before or after decoding ("%2e")
    # Decoded first, then split on every separator a server might honour: "%2e%2E" is
    # ".." to every server that normalizes paths, and "x%2F..%2F" is "x/../" to one that
    # decodes before it normalizes (aiohttp, many frameworks); "\\" is a separator to some.
    # A segment's ";" parameters are cut first: "..;x" is ".." to Tomcat and Spring.
    decoded = unquote(tail).replace("\\", "/")
    return any(seg.partition(";")[0] in _DOT_SEGMENTS for seg in decoded.split("/"))


def target_url(base: str, raw_path: str, prefix: str, tail_decoded: str) -> URL:
    """``base`` with the route's tail appended exactly, plus the query string.

    A query of ``base`` itself stays a query: the tail goes on its path, the request's
    query after its own (``http://bot/h?code=k`` + ``/x?q=1`` is ``/h/x?code=k&q=1``);
    its fragment is dropped (never sent).

    ``prefix`` is the route's fixed part (``/hooks/<channel>/<app_id>``) and
    ``tail_decoded`` its ``{tail}`` as the router decoded it; the raw
    (still percent-encoded) tail is reused so the upstream sees the exact bytes. With no
    tail the upstream URL is used as it is: no slash is added (a Slack Bolt app at
    ``/slack/events`` answers 404 to ``/slack/events/``). A tail with ``.``/``..``
    segments raises :class:`InvalidTail`: it would climb out of the app's URL space.
    """
    path, _, query = raw_path.partition("?")
    if path.startswith(prefix) and (len(path) == len(prefix) or path[len(prefix)] == "/"):
        tail = path[len(prefix) :]
    else:  # the client percent-encoded part of the prefix itself
        tail = "/" + quote(tail_decoded, safe="/:@!$&'()*+,;=-._~")
        if tail == "/":
            tail = ""
    if tail and _has_dot_segment(tail):
        raise InvalidTail(tail)
    own = ""
    if "?" in base or "#" in base:  # e.g. a function key "?code=...": the tail goes before it
        base, _, own = base.partition("#")[0].partition("?")
    if tail and base.endswith("/"):
        base = base[:-1]  # "http://bot/api/" + "/x" is "http://bot/api/x", not "api//x"
    url = base + tail
    query = f"{own}&{query}" if own and query else own or query
    if query:
        url += "?" + query
    return _url_of(url)


URL_CACHE_MAX_LEN = 512


# Recent target URLs are kept (an app's bot is mostly sent to a handful): a URL parsed
# once keeps what yarl worked out of it (host, port, path), which each message used to
# redo. A client varying its path or query costs only the misses.
@short_memo(maxsize=512, max_len=URL_CACHE_MAX_LEN)
def _url_of(text: str) -> URL:
    return URL(text, encoded=True)
