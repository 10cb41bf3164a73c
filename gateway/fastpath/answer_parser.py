"""The llhttp parser a bot's answer is read with on the fast path, and its header checks."""

from __future__ import annotations

import httptools

# A response head is refused (502) past aiohttp's client limits (max_line_size,
# max_field_size, max_headers), so the fast path passes on no head that aiohttp would
# refuse; HEAD_BYTES bounds what llhttp buffers before a field ends (interim 1xx heads
# included): a bot cannot grow the gateway's memory with an endless head. It is twice
# the most those limits allow, so body bytes read with a head never make it refused.
MAX_FIELD = 8190
MAX_HEADERS = 128
HEAD_BYTES = 4 * MAX_FIELD * (MAX_HEADERS + 1)
BLANKS = (32, 9)  # SP, HTAB
# Interim (1xx) heads before the final one, all together: they are kept with it (read
# again if it must be), so a bot sending 102s without end held up to HEAD_BYTES per
# connection. Past this (checked as each ends, against the reads before its last), the
# answer is the bot's failure (502, refunded); a 100, 102s or 103s take far less.
INTERIM_BYTES = 64 * 1024


def answer_parser(conn: object, lenient: bool = False) -> httptools.HttpResponseParser:
    """llhttp as aiohttp's client parser reads a bot's answer (``_http_parser`` outside dev
    mode: optional CR before LF, blanks after a chunk size, and ``lenient`` headers: a
    folded line, a control character in a value, blanks before the colon of a framing
    field), so both traffic servers read it alike. A head is first read without
    ``lenient`` headers and read again with them only where it fails (rare): what the
    leniency lets in is then dropped (gateway.header_text), or for a name's blanks
    removed (:meth:`gateway.fastpath.upstream.UpstreamConnection.on_header`); ``conn``
    gets its callbacks."""
    parser = httptools.HttpResponseParser(conn)
    parser.set_dangerous_leniencies(
        lenient_headers=lenient,
        lenient_optional_cr_before_lf=True,
        lenient_spaces_after_chunk_size=True,
    )
    return parser


class InvalidAnswer(Exception):
    """Raised in a parser callback: the bot's answer is not one the gateway passes on."""


def checked_field(name: bytes, value: bytes, lenient: bool, count: int) -> tuple[bytes, bytes]:
    """A header field as passed on, the ``count``-th before it, or :class:`InvalidAnswer`
    (read with ``lenient`` headers or not, see :func:`answer_parser`)."""
    if lenient and name[-1:] in (b" ", b"\t"):
        # "Content-Length : 5": the lenient parse reads it as that field (and frames by
        # it); a proxy removes the whitespace before passing it on (RFC 9112 §5.1), so
        # the client never gets a second framing field, nor this path a wrong one.
        name = name.rstrip(b" \t")
    if value and value[-1] in BLANKS:  # not part of the value (RFC 9110 §5.5)
        value = value.rstrip(b" \t")  # as aiohttp strips them
    if len(name) > MAX_FIELD or len(value) > MAX_FIELD:
        raise InvalidAnswer("header field too long")
    if count == MAX_HEADERS:
        raise InvalidAnswer("too many headers")
    if lenient and 0 in value:  # a NUL: aiohttp's client refuses it
        raise InvalidAnswer("NUL in a header value")
    return name, value
