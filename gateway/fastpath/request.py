"""The llhttp callbacks of a client connection: which requests the fast path serves.

:class:`RequestParser` checks a request as llhttp parses it, by the framing rules of
:mod:`gateway.fastpath.connection` (whose docstring states them), and raises
:class:`Stop` as soon as it is not one the fast path serves; a request that begins after
a complete one in the same feed raises :class:`Pipelined`.
"""

from __future__ import annotations

import re

import httptools

from gateway.fastpath.message import Message
from gateway.http_rules import CHAINED_LOWER, HEAD_LIMIT, SINGLE_LOWER, lists_decided, valid_host
from gateway.memo import short_memo

FAST_BODY = 64 * 1024
MAX_FIELD = 4096
MAX_HEADERS = 100
# The most bytes of a request head (request line and empty lines before it included) fed
# to llhttp: a head the fast path serves is shorter (its line and each field under
# MAX_FIELD, its fields under HEAD_LIMIT in all, with their framing).
HEAD_BYTES = HEAD_LIMIT + 2 * MAX_FIELD
FAST_METHODS = frozenset({b"GET", b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS"})
_ROUTE = re.compile(rb"/hooks/([A-Za-z0-9_\-~]+)/([A-Za-z0-9_\-~.:]+)(/[^%\\\\]*)?\Z")
_DOTS = frozenset({b".", b".."})
# Given twice, these are aiohttp's to decide: a decided header's second value is refused
# (gateway.http_rules), and so is one of aiohttp's own singletons (its parser's
# SINGLETON_HEADERS); a forwarding chain's lines are joined, and refused past
# CHAIN_LIMIT. A chain's single line here is under MAX_FIELD, so within it.
_AIOHTTP_SINGLETONS = frozenset(
    {b"content-location", b"content-range", b"etag", b"max-forwards", b"server", b"user-agent"}
)
_ONCE_HERE = SINGLE_LOWER | CHAINED_LOWER | _AIOHTTP_SINGLETONS


@short_memo(maxsize=256, max_len=64)  # a client sends the same Host on every request
def _valid_host(value: bytes) -> bool:
    return valid_host(value.decode("latin-1"))


class Stop(Exception):
    """Stops the parser: the request is not for the fast path."""


class Pipelined(Exception):
    """Stops the parser: another request began after a complete one."""


class RequestParser:
    """llhttp's receiver: the request being parsed (``body_limit``: the most body bytes
    served here)."""

    def __init__(self, body_limit: int) -> None:
        self.body_limit = body_limit
        self.parser = httptools.HttpRequestParser(self)
        self.in_head = True  # the current request's head is not complete
        self.pipelined = False  # a request began after a complete one, in one feed
        self.done: Message | None = None  # completed in the current feed
        self._msg = Message()
        self._size = 0  # bytes of header fields
        self._seen: set[bytes] = set()  # headers of _ONCE_HERE seen
        self._url = b""
        self._body: list[bytes] = []  # pieces of the body, joined once it is complete

    def reset(self) -> None:
        """A fresh llhttp parser, for what follows a complete request."""
        self.parser = httptools.HttpRequestParser(self)

    def on_message_begin(self) -> None:
        if self.done is not None:
            # Told by a flag, not by the parser's error: its context is whatever exception
            # was being handled when the feed began (a refusal being answered, say).
            self.pipelined = True
            raise Pipelined
        self._msg = Message()
        self._url = b""
        self._body = []
        self._size = 0
        self._seen = set()

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > MAX_FIELD:
            raise Stop

    def on_header(self, name: bytes, value: bytes) -> None:
        # llhttp strips the whitespace before a value, not after it (RFC 9110 §5.5: it is
        # not part of the value); aiohttp strips it, and so must this path, or it would
        # meter "k1 " and "k1" as two keys, users, credentials, where aiohttp sees one.
        value = value.rstrip(b" \t")
        msg = self._msg
        headers = msg.headers
        size = len(name) + len(value)
        self._size += size
        if len(headers) >= MAX_HEADERS or size > MAX_FIELD or self._size > HEAD_LIMIT:
            raise Stop
        headers.append((name, value))
        low = name.lower()
        if low in _ONCE_HERE:
            if low in self._seen or (low == b"host" and not _valid_host(value)):
                raise Stop  # aiohttp refuses it (gateway.http_rules)
            self._seen.add(low)
        if low == b"content-length":
            msg.content_length = int(value)  # llhttp checked: digits, only one
        elif low in (b"transfer-encoding", b"expect", b"upgrade"):
            raise Stop
        elif low == b"connection" and lists_decided(value.decode("utf-8", "surrogateescape")):
            # Decoded as forwarding reads it (wire.text_headers): as Latin-1, a name with
            # NBSP or a Kelvin sign passed here and forwarding still dropped it.
            raise Stop  # aiohttp refuses it (gateway.http_rules)

    def on_headers_complete(self) -> None:
        parser, msg = self.parser, self._msg
        method = parser.get_method()
        if method not in FAST_METHODS or parser.get_http_version() != "1.1":
            raise Stop
        if b"host" not in self._seen:
            raise Stop  # HTTP/1.1 without Host: aiohttp's 400
        if parser.should_upgrade():
            raise Stop
        length = msg.content_length
        if length is not None and length > self.body_limit:
            raise Stop
        path, _, query = self._url.partition(b"?")
        m = _ROUTE.match(path)
        # find(), not "in": bytes' "in" first tries its operand as an int, and a bytes
        # operand costs it a TypeError raised and cleared (some 1,800 instructions).
        if m is None or m[1] in _DOTS or m[2] in _DOTS or query.find(b"#") >= 0:
            raise Stop
        if m[3] and m[3].find(b"/.") >= 0:
            raise Stop  # dot segments: aiohttp's router decides (it may normalize)
        msg.method = method.decode()
        msg.target = self._url.decode()
        msg.channel = m[1].decode()
        msg.app_id = m[2].decode()
        msg.keep_alive = parser.should_keep_alive()
        self.in_head = False

    def on_body(self, body: bytes) -> None:
        # Kept, joined once: rebuilt per piece (body + piece), a body sent one byte per
        # segment cost n²/2 bytes copied on the shared loop (2 GiB for 64 KiB).
        self._body.append(body)

    def on_message_complete(self) -> None:
        msg = self.done = self._msg
        pieces = self._body
        if pieces:
            msg.body = pieces[0] if len(pieces) == 1 else b"".join(pieces)
            self._body = []
