"""The bytes the fast path writes: request heads to bots, response heads to clients.

Header text is encoded back with ``surrogateescape``, so bytes that arrived are the
bytes that leave. Values come from llhttp-parsed messages (no CR/LF) or from the
gateway itself. A request gets what aiohttp's client would give it: ``Host`` from the
URL, ``Content-Length`` for a body (``0`` for a bodiless POST/PUT/PATCH/DELETE), nothing
else added.
"""

from __future__ import annotations

from collections.abc import Iterable

from multidict import CIMultiDict
from yarl import URL

from gateway.console_cookies import sets_console_cookie
from gateway.forwarding import ANSWER_DROPPED, SERVER
from gateway.header_text import reason_bytes, utf8
from gateway.inbound import Headers
from gateway.memo import short_memo

GET_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
_SERVER_FIELD = f"Server: {SERVER}\r\n"
_SERVER_BYTES = _SERVER_FIELD.encode()
_DROP_BYTES = frozenset(name.lower().encode() for name in ANSWER_DROPPED)


def _enc(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def request_bytes(method: str, url: URL, headers: CIMultiDict[str], body: bytes | None) -> bytes:
    """The whole request to the bot: head and body, written at once."""
    if (body is not None or method not in GET_METHODS) and "Content-Length" not in headers:
        headers["Content-Length"] = str(len(body or b""))
    lines = [f"{method} {url.raw_path_qs} HTTP/1.1", f"Host: {url.host_port_subcomponent}"]
    # ": ".join, not an f-string: multidict's keys are istr, a str subclass, which an
    # f-string formats through __format__ (some 900 instructions a field); by map, no
    # Python step per field.
    lines += map(": ".join, headers.items())
    lines += ("", "")  # the head's last field line and the empty line
    head = _enc("\r\n".join(lines))
    return head + body if body else head


def response_head(
    status: int,
    reason: bytes,
    headers: Iterable[tuple[str, str]],
    date: str,
    keep_alive: bool,
) -> bytes:
    """Status line and headers; ``Date`` and ``Server`` unless given, ``Connection:
    close`` when the connection ends after this response."""
    fields = [f"{k}: {v}\r\n" for k, v in headers]
    if not any(f[:5].lower() == "date:" for f in fields):
        fields.append(f"Date: {date}\r\n")
    if not any(f[:7].lower() == "server:" for f in fields):
        fields.append(_SERVER_FIELD)
    if not keep_alive:
        fields.append("Connection: close\r\n")
    return b"HTTP/1.1 %d %b\r\n%b\r\n" % (status, reason, _enc("".join(fields)))


def answer_head(
    status: int,
    reason: bytes,
    raw: list[tuple[bytes, bytes]],
    date: str,
    keep_alive: bool,
) -> tuple[bytes, bool]:
    """The head of a bot's answer as the client gets it, and whether its body is
    re-framed chunked (it has no ``Content-Length``; as aiohttp does).

    :func:`response_head` of :func:`gateway.forwarding.downstream_headers` (plus
    ``Transfer-Encoding: chunked`` when re-framed; no ``Content-Length`` on a 204), made
    from llhttp's header pairs without text or a multidict between: the same bytes
    (tests/unit/test_wire.py compares the two). llhttp admits only token characters in a
    name, so a name's ASCII lower case is its lower case as text; ``Connection``'s list
    is read as text, as downstream_headers reads it; so is a ``Set-Cookie`` that would
    set the console's cookie, dropped as there, as is a value that is not UTF-8 or has a
    control character; a reason phrase with one is the standard one (gateway.header_text).
    A value with a control character never comes here: only the lenient parse lets one in,
    and it drops it (gateway.fastpath.upstream, gateway.header_text.writable_fields).

    One pass over the fields, each classified by its name as the bot wrote it
    (:data:`_KINDS`); a head it cannot finish so (a ``Connection`` that lists a name of
    its own, a length beside a ``Transfer-Encoding``) is made by :func:`_answer_head`.
    """
    kinds = _KINDS
    noted = 0  # 1 << kind of each field kept, and of a Transfer-Encoding
    out = [b"HTTP/1.1 %d %b\r\n" % (status, reason_bytes(status, reason))]
    for name, value in raw:
        kind = kinds.get(name)
        if kind is None:
            kind = _kind(name)
        if kind and kind < _LENGTH:  # dropped: hop-by-hop, Proxy-*, Clear-Site-Data
            if kind == _CONNECTION and _drops_of(value) is not _DROP_BYTES:
                return _answer_head(status, reason, raw, date, keep_alive)  # names its own
            noted |= 1 << kind
            continue
        if not (value.isascii() or utf8(value)):
            continue  # not UTF-8: as aiohttp cannot write it (gateway.header_text)
        if (kind == _LENGTH and status == 204) or (  # no body at all
            kind == _COOKIE and sets_console_cookie(value.decode("utf-8", "surrogateescape"))
        ):
            continue  # never the console's cookie (gateway.console_cookies)
        noted |= 1 << kind
        out += (name, b": ", value, b"\r\n")
    if noted & _TE_AND_LENGTH == _TE_AND_LENGTH:  # framing changes: the length goes
        return _answer_head(status, reason, raw, date, keep_alive)
    length = noted & (1 << _LENGTH)
    chunked = not length and status != 204 and status != 304
    if chunked:
        out.append(b"Transfer-Encoding: chunked\r\n")
    if not noted & (1 << _DATE):
        out += (b"Date: ", date.encode(), b"\r\n")
    if not noted & (1 << _SERVER):
        out.append(_SERVER_BYTES)
    if not keep_alive:
        out.append(b"Connection: close\r\n")
    out.append(b"\r\n")
    return b"".join(out), chunked


# What answer_head does with a field, by its lower-case name: kept (0), dropped (1 to 3:
# 2 and 3 also read), or kept and noted (4 and up).
_KEEP, _DROPPED, _CONNECTION, _TE, _LENGTH, _DATE, _SERVER, _COOKIE = range(8)
_TE_AND_LENGTH = 1 << _TE | 1 << _LENGTH
_NOTED = {b"content-length": _LENGTH, b"date": _DATE, b"server": _SERVER, b"set-cookie": _COOKIE,
          b"connection": _CONNECTION, b"transfer-encoding": _TE}  # fmt: skip
# Kinds by a name as a bot wrote it, remembered: bots send a few names, in one case;
# emptied when full, so that a bot writing ever new names never keeps it from the rest.
_KINDS: dict[bytes, int] = {}
_KINDS_MAX = 1024
_NAME_MAX = 64


def _kind(name: bytes) -> int:
    low = name.lower()
    kind = _NOTED.get(low, _KEEP)
    if kind < _LENGTH and (low in _DROP_BYTES or low[:6] == b"proxy-"):
        kind = kind or _DROPPED
    if len(name) <= _NAME_MAX:
        if len(_KINDS) >= _KINDS_MAX:
            _KINDS.clear()  # a bot writing ever new names: the next bots' are kept again
        _KINDS[name] = kind
    return kind


def _answer_head(
    status: int,
    reason: bytes,
    raw: list[tuple[bytes, bytes]],
    date: str,
    keep_alive: bool,
) -> tuple[bytes, bool]:
    """:func:`answer_head`, any head: a ``Connection`` listing more names, say."""
    drop, te = _hop_by_hop(raw)
    length = has_date = has_server = False
    fields = []
    for name, value in raw:
        low = name.lower()
        if low in drop or low[:6] == b"proxy-" or not (value.isascii() or utf8(value)):
            continue  # not UTF-8: as aiohttp cannot write it (gateway.header_text)
        if low == b"content-length":
            if te or status == 204:  # framing changes here, or no body at all
                continue
            length = True
        elif low == b"date":
            has_date = True
        elif low == b"server":
            has_server = True
        elif low == b"set-cookie" and sets_console_cookie(value.decode("utf-8", "surrogateescape")):
            continue  # never the console's cookie (gateway.console_cookies)
        fields.append(b"%b: %b\r\n" % (name, value))
    chunked = not length and status != 204 and status != 304
    if chunked:
        fields.append(b"Transfer-Encoding: chunked\r\n")
    if not has_date:
        fields.append(b"Date: %b\r\n" % date.encode())
    if not has_server:
        fields.append(_SERVER_BYTES)
    if not keep_alive:
        fields.append(b"Connection: close\r\n")
    reason = reason_bytes(status, reason)
    return b"HTTP/1.1 %d %b\r\n%b\r\n" % (status, reason, b"".join(fields)), chunked


def _hop_by_hop(raw: list[tuple[bytes, bytes]]) -> tuple[frozenset[bytes], bool]:
    """The lower-case names :func:`answer_head` drops, and whether the answer has a
    ``Transfer-Encoding``."""
    drop, te = _DROP_BYTES, False
    for name, value in raw:
        low = name.lower()
        if low == b"connection":
            listed = _drops_of(value)
            drop = listed if drop is _DROP_BYTES else drop | listed
        elif low == b"transfer-encoding":
            te = True
    return drop, te


# A bot sends the same value on every answer ("keep-alive"): a short one is worked out
# once (a short value lists few names, so the cache stays small).
@short_memo(maxsize=256, max_len=64)
def _drops_of(value: bytes) -> frozenset[bytes]:
    """What :func:`answer_head` always drops, plus the names one ``Connection`` value lists
    (as text, as :func:`gateway.forwarding.downstream_headers` reads them), lower case."""
    text = value.decode("utf-8", "surrogateescape")
    listed = frozenset(t.strip().lower().encode("utf-8", "surrogateescape")
                       for t in text.split(","))  # fmt: skip
    # _DROP_BYTES itself when nothing more is listed ("keep-alive"): answer_head's test.
    return _DROP_BYTES if listed <= _DROP_BYTES else _DROP_BYTES | listed


def text_headers(raw: Iterable[tuple[bytes, bytes]]) -> CIMultiDict[str]:
    """llhttp's header pairs as text; ``surrogateescape``, so :func:`_enc` gives the
    same bytes back."""
    esc = "surrogateescape"
    return CIMultiDict([(k.decode("utf-8", esc), v.decode("utf-8", esc)) for k, v in raw])


def close_delimited(src: Headers) -> bool:
    """Whether the bot's answer ends with its connection (RFC 9112 §6.3), as llhttp reads
    it: no ``Content-Length`` (even one ``Connection`` lists) and no final ``chunked``."""
    if "Transfer-Encoding" in src:
        codings = ",".join(src.getall("Transfer-Encoding")).rsplit(",", 1)
        return codings[-1].strip().lower() != "chunked"
    return "Content-Length" not in src
