"""Which header text the gateway writes as it came, the same on both traffic servers.

aiohttp decodes a byte that is not UTF-8 to a lone surrogate, which its writer leaves out
(a value nobody sent), and its writer refuses a control character other than HTAB
(``ValueError``: the answer was a 500 with its message charged) while its client parser,
lenient, passes one in a bot's answer. So a header field of a bot's answer whose value
has either is dropped (:func:`writable`; :mod:`gateway.forwarding` for the aiohttp server,
:func:`gateway.fastpath.wire.answer_head` for the fast path, whose parser is as lenient),
and a reason phrase with either, or with a tab, is replaced by the status's standard
phrase (:func:`answer_reason`, :func:`reason_bytes`): never forwarded with a control
character. A NUL in a bot's field value makes its answer invalid on both (502).
"""

from __future__ import annotations

import re
from http import HTTPStatus

_CTL = re.compile("[\x00-\x08\x0a-\x1f\x7f]").search
_CTL_BYTES = re.compile(b"[\x00-\x08\x0a-\x1f\x7f]").search
_REASON_CTL = re.compile("[\x00-\x1f\x7f]").search
_REASON_CTL_BYTES = re.compile(b"[\x00-\x1f\x7f]").search
# aiohttp's, for a response made without a reason (web_response.REASON_PHRASES).
PHRASES = {status.value: status.phrase for status in HTTPStatus}
_PHRASE_BYTES = {code: phrase.encode() for code, phrase in PHRASES.items()}
_STANDARD = frozenset(_PHRASE_BYTES.values())
# Hop-by-hop fields whose value decides the fate of others (what Connection lists, the
# Content-Length Transfer-Encoding cancels): never passed on, whatever their value.
_DECIDING = frozenset({b"connection", b"transfer-encoding"})


def clean(value: str) -> bool:
    """Whether a header value is text as it arrived: no byte that was not UTF-8 (each is
    a lone surrogate once decoded, which aiohttp's writer drops)."""
    if value.isascii():
        return True
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def writable(value: str) -> bool:
    """Whether a bot's field value is passed on: UTF-8, no control character but HTAB."""
    return (value.isprintable() or not _CTL(value)) and clean(value)


def writable_bytes(value: bytes) -> bool:
    """:func:`writable` of the bytes the fast path's parser gives."""
    return not _CTL_BYTES(value) and (value.isascii() or utf8(value))


def writable_fields(raw: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """llhttp's header pairs without the fields whose value has a control character but
    HTAB (``Connection`` and ``Transfer-Encoding`` kept: dropped from the answer anyway,
    they still decide what else goes, as in aiohttp's downstream_headers)."""
    return [(k, v) for k, v in raw if k.lower() in _DECIDING or not _CTL_BYTES(v)]


def answer_reason(status: int, reason: str) -> str:
    """The reason phrase a bot's answer is passed on with (see the module)."""
    if reason.isprintable() or (not _REASON_CTL(reason) and clean(reason)):
        return reason  # printable: no control character, no surrogate
    return PHRASES.get(status, "")


def reason_bytes(status: int, reason: bytes) -> bytes:
    """:func:`answer_reason` of the bytes the fast path's parser gives."""
    if reason in _STANDARD:
        return reason
    if not _REASON_CTL_BYTES(reason) and (reason.isascii() or utf8(reason)):
        return reason
    return _PHRASE_BYTES.get(status, b"")


def utf8(value: bytes) -> bool:
    try:
        value.decode()
    except UnicodeDecodeError:
        return False
    return True
