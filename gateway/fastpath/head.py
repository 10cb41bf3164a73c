"""The request the fast path forwards to the bot, its head made from the client's bytes.

:func:`forward_bytes` gives, byte for byte, what the text route (:func:`by_text`) gives:
the message's headers as text through :func:`gateway.forwarding.forwarded_headers`,
:meth:`Verified.rewrite <gateway.channel_credentials.Verified.rewrite>`,
:meth:`Admitted.vouch <gateway.traffic_rules.Admitted.vouch>` and
:func:`.wire.request_bytes`, whose rules (gateway.forwarding's docstring) it keeps,
without a multidict or text between. A field passed on is the client's bytes; one the
gateway sets takes the place of the client's line (with the gateway's spelling of its
name, as a multidict's item assignment does) or follows the client's fields, in the order
the text route sets them.

One pass over llhttp's pairs, each classified by its name as the client wrote it
(:data:`_KINDS`; llhttp admits only token characters in a name, so its ASCII lower case
is its lower case as text). A message it cannot finish so is made by the text route: a
field the gateway sets or reads given twice or with a value that is not UTF-8 (the text
route joins or drops such lines; this path's parser refuses most twice already,
gateway.fastpath.request), a ``Connection`` that lists more than the gateway drops
anyway (``close`` names a field too), a ``Cookie`` naming the console's cookie.
tests/unit/test_fastpath_head.py compares the two, and with the code they replaced.
"""

from __future__ import annotations

from yarl import URL

from gateway import via
from gateway.channel_credentials import Verified
from gateway.channels import IDEMPOTENCY_HEADER, USER_HEADER
from gateway.console_cookies import mentions_console_cookie
from gateway.fastpath.message import Message
from gateway.fastpath.wire import GET_METHODS, request_bytes
from gateway.forwarding import (
    APP_HEADER,
    CHANNEL_AUTH_HEADER,
    REQUEST_ID_PREFIX,
    REQUEST_IDS,
    REQUEST_ONLY,
    forwarded_headers,
    forwarded_node,
    new_request_id,
)
from gateway.header_text import utf8
from gateway.inbound import Headers
from gateway.memo import short_memo
from gateway.traffic_rules import Admitted

# What forward_bytes does with a field, by its name: passes it (0), drops it (1), passes
# and reads it (2), reads it (3), reads it and may drop it (4), gives up (5); 6 and up: a
# field passed, read, maybe set or dropped, at most one line of each (its place kept);
# from _XFF on, those gateway.forwarding sets (none given: all appended in one format).
_KEEP, _DROP, _COOKIE, _HOST, _CONNECTION, _ODD = range(6)
_LENGTH, _USER, _KEY, _AUTH, _XFF, _XFP, _XFH, _FORWARDED, _REAL_IP, _VIA, _RID = range(6, 17)
_NAMES = {b"host": _HOST, b"connection": _CONNECTION, b"cookie": _COOKIE,
          b"content-length": _LENGTH, b"x-forwarded-for": _XFF, b"x-forwarded-proto": _XFP,
          b"x-forwarded-host": _XFH, b"forwarded": _FORWARDED, b"x-real-ip": _REAL_IP,
          b"via": _VIA, b"x-request-id": _RID, USER_HEADER.lower().encode(): _USER,
          IDEMPOTENCY_HEADER.lower().encode(): _KEY, b"authorization": _AUTH}  # fmt: skip
_DROPPED = frozenset(name.encode() for name in REQUEST_ONLY)
# Kinds by a name as a client wrote it, remembered: clients send a few names, in one
# case; emptied when full, so that a client writing ever new names never keeps it from
# the rest.
_KINDS: dict[bytes, int] = {}
_KINDS_MAX = 1024
_NAME_MAX = 64
_USER_NAME = USER_HEADER.encode()
_KEY_NAME = IDEMPOTENCY_HEADER.encode()
_APP = APP_HEADER.encode() + b": "
_AUTH_VERIFIED = CHANNEL_AUTH_HEADER.encode() + b": verified\r\n"
_AUTH_NONE = CHANNEL_AUTH_HEADER.encode() + b": none\r\n"
# What gateway.forwarding adds to a request that has none of the fields it sets (the
# usual): one format.
_ADDED = (b"X-Forwarded-For: %b\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: %b\r\n"
          b"Via: %b\r\n" + _APP + b"%b\r\nX-Request-Id: " + REQUEST_ID_PREFIX.encode()
          + b"-%x\r\n")  # fmt: skip


def _kind(name: bytes) -> int:
    if not name.isascii():
        return _ODD  # never from llhttp: the text route decides
    low = name.lower()
    kind = _NAMES.get(low, _KEEP)
    if (
        kind != _HOST
        and kind != _CONNECTION
        and (low in _DROPPED or low[:6] == b"proxy-" or b"_" in name)
    ):
        kind = _DROP
    if len(name) <= _NAME_MAX:
        if len(_KINDS) >= _KINDS_MAX:
            _KINDS.clear()  # a client writing ever new names: the next ones are kept again
        _KINDS[name] = kind
    return kind


# A client sends the same Connection on every request ("keep-alive"): a short value is
# read once (a short value lists few names, so the cache stays small).
@short_memo(maxsize=256, max_len=64)
def _drops_no_more(value: bytes) -> bool:
    """Whether what ``value`` lists (as gateway.forwarding reads it) is dropped anyway."""
    text = value.decode("utf-8", "surrogateescape")
    return all(token.strip().lower() in REQUEST_ONLY for token in text.split(","))


def _enc(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _set(out: list[bytes], at: dict[int, int], kind: int, name: bytes, value: bytes) -> None:
    """``name: value`` in place of the field of ``kind``, or after the others."""
    i = at.get(kind)
    if i is None:
        at[kind] = len(out)
        out += (name, b": ", value, b"\r\n")
    else:
        out[i] = name
        out[i + 2] = value


def forward_bytes(
    msg: Message,
    text: Headers,
    peer: str,
    url: URL,
    verified: Verified,
    admitted: Admitted,
    body: bytes | None,
) -> bytes:
    """The whole request to the bot (see the module); ``text``: ``msg``'s headers as
    text, for the text route."""
    method = msg.method
    start = f"{method} {url.raw_path_qs} HTTP/1.1\r\nHost: {url.host_port_subcomponent}\r\n"
    out = [start.encode("utf-8", "surrogateescape")]
    at: dict[int, int] = {}  # kind -> index of its field's name in out
    read = _client_fields(msg.headers, out, at)
    if read is None:
        return by_text(msg, text, peer, url, verified, admitted, body)
    # Then the gateway's, in the text route's order: gateway.forwarding.forwarded_headers,
    # rewrite and vouch, request_bytes's Content-Length.
    app = msg.app_id
    if read and app and (not at or max(at) < _XFF):  # the usual: all appended
        esc = "surrogateescape"  # no _enc(): a call less for each
        fields = (peer.encode("utf-8", esc), read, via.entry.encode("utf-8", esc),
                  app.encode("utf-8", esc), next(REQUEST_IDS))  # fmt: skip
        out.append(_ADDED % fields)
    else:
        _forwarding(out, at, _enc(peer), read, peer)
        if app:
            out += (_APP, _enc(app), b"\r\n")
        i = at.get(_RID)
        if i is None or not out[i + 2]:
            _set(out, at, _RID, b"X-Request-Id", _enc(new_request_id()))
    if verified.user or verified.drop_authorization or admitted.user is not None:
        _channel(out, at, verified, admitted)
    else:  # the usual: Verified.rewrite's one field
        signed = verified.authenticated and verified.handshake_challenge is None
        out.append(_AUTH_VERIFIED if signed else _AUTH_NONE)
    if _LENGTH not in at and (body is not None or method not in GET_METHODS):
        out += (b"Content-Length: ", b"%d" % len(body or b""), b"\r\n")
    out.append(b"\r\n")
    if body:
        out.append(body)
    return b"".join(out)


def _client_fields(
    raw: list[tuple[bytes, bytes]], out: list[bytes], at: dict[int, int]
) -> bytes | None:
    """The client's fields passed on into ``out`` (those of kind _LENGTH and up noted in
    ``at``), and its Host (b"": none); None: for the text route."""
    kinds = _KINDS
    host: bytes | None = None
    cookies = []
    for name, value in raw:
        kind = kinds.get(name)
        if kind is None:
            kind = _kind(name)
        if kind == _KEEP:
            if value.isascii() or utf8(value):  # else dropped (gateway.header_text)
                out += (name, b": ", value, b"\r\n")
        elif kind > _ODD:
            if kind in at or not (value.isascii() or utf8(value)):
                return None  # joined or dropped by the text route
            at[kind] = len(out)
            out += (name, b": ", value, b"\r\n")
        elif kind == _COOKIE:
            if value.isascii() or utf8(value):
                out += (name, b": ", value, b"\r\n")
                cookies.append(value.decode())
        elif kind == _HOST and host is None:
            host = value
        elif kind == _DROP or (kind == _CONNECTION and _drops_no_more(value)):
            continue
        else:
            return None
    if cookies and mentions_console_cookie(cookies):
        return None
    return host or b""


def _forwarding(
    out: list[bytes], at: dict[int, int], address: bytes, host: bytes, peer: str
) -> None:
    """The X-Forwarded-* set, Forwarded, X-Real-IP and Via (gateway.forwarding)."""
    i = at.get(_XFF)
    chain = address if i is None or not out[i + 2] else out[i + 2] + b", " + address
    _set(out, at, _XFF, b"X-Forwarded-For", chain)
    _set(out, at, _XFP, b"X-Forwarded-Proto", b"http")
    if host:
        _set(out, at, _XFH, b"X-Forwarded-Host", host)
    else:  # a client's would pass as the gateway's (gateway.forwarding)
        _drop(out, at, _XFH)
    i = at.get(_FORWARDED)
    if i is not None and out[i + 2]:
        out[i] = b"Forwarded"
        out[i + 2] += b", for=" + _enc(forwarded_node(peer))
    i = at.get(_REAL_IP)
    if i is not None:
        out[i], out[i + 2] = b"X-Real-IP", address
    i = at.get(_VIA)
    if i is None:
        out += (b"Via: ", _enc(via.entry), b"\r\n")
    else:
        out[i], out[i + 2] = b"Via", _enc(via.forwarded([out[i + 2].decode()]))


def _channel(out: list[bytes], at: dict[int, int], verified: Verified, admitted: Admitted) -> None:
    """What channel authentication says (Verified.rewrite), then what was metered
    (Admitted.vouch)."""
    signed = verified.authenticated and verified.handshake_challenge is None
    out.append(_AUTH_VERIFIED if signed else _AUTH_NONE)
    if verified.user:
        _set(out, at, _USER, _USER_NAME, _enc(verified.user))
    if verified.drop_authorization:
        _drop(out, at, _AUTH)
    user = admitted.user
    if user is None:
        return
    if user:
        _set(out, at, _USER, _USER_NAME, _enc(user))
    else:
        _drop(out, at, _USER)
    key = admitted.key
    if key is not None and _KEY in at:
        if key:
            _set(out, at, _KEY, _KEY_NAME, _enc(key))
        else:
            _drop(out, at, _KEY)


def _drop(out: list[bytes], at: dict[int, int], kind: int) -> None:
    """The field of ``kind`` out (its place kept: the indices of the others hold)."""
    i = at.pop(kind, None)
    if i is not None:
        out[i : i + 4] = (b"", b"", b"", b"")


def by_text(
    msg: Message,
    text: Headers,
    peer: str,
    url: URL,
    verified: Verified,
    admitted: Admitted,
    body: bytes | None,
) -> bytes:
    """:func:`forward_bytes` by way of text headers: any message."""
    headers, _ = forwarded_headers(text, peer, "http", app=msg.app_id)
    verified.rewrite(headers)
    if admitted.user is not None:  # what was metered (an authenticated channel's)
        admitted.vouch(headers)
    return request_bytes(msg.method, url, headers, body)
