"""A 204 whose head says a body follows: refused on both traffic servers (502, refunded).

RFC 9110 §15.3.5: a 204 cannot contain content; RFC 9112 §6.1 and RFC 9110 §8.6: a
server MUST NOT send ``Transfer-Encoding`` or ``Content-Length`` in a 204. A recipient
reads it as ending at its head (RFC 9112 §6.3, rule 1), so what the bot wrote after it
(the chunks or bytes it announced) can only be read as the start of the next answer on
that connection. Each server read it its own way: the fast path passed the 204 on (and
closed the connection on the bytes after it), aiohttp's client failed the whole answer
when those bytes came in the same read (502) and passed the 204 when they came later:
the same answer 204 or 502 by the bot's timing.

A safe gateway decides by the head alone: such a 204 (``Transfer-Encoding``, or a
``Content-Length`` other than 0) is the bot's invalid answer, answered 502 and refunded
(nothing of it reaches the client: its headers could carry an answer a refund would
make free), and its connection is closed, never reused. ``Content-Length: 0`` on a 204,
which many frameworks send, passes. A 304 may carry both (the selected representation's
framing, RFC 9110 §8.6, RFC 7230 §3.3.1) and passes, bodiless.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import aiohttp


def declares_body(status: int, headers: Mapping[str, str]) -> bool:
    """A 204 with ``Transfer-Encoding`` or a ``Content-Length`` other than 0 (aiohttp's
    client: its headers, case-insensitive)."""
    if status != 204:
        return False
    length = headers.get("Content-Length")
    return "Transfer-Encoding" in headers or (length is not None and bool(length.strip("0 \t")))


def declares_body_raw(status: int, headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """As :func:`declares_body`, for the fast path's raw header fields."""
    if status != 204:
        return False
    for name, value in headers:
        low = name.lower()
        if low == b"transfer-encoding" or (low == b"content-length" and value.strip(b"0 \t")):
            return True
    return False


def refuse(upstream: aiohttp.ClientResponse) -> None:
    """Close ``upstream`` and raise its invalid answer (a ``ClientResponseError``: 502,
    refunded) if it is a 204 that declares a body."""
    if declares_body(upstream.status, upstream.headers):
        upstream.close()  # never reused: the announced body may still come
        raise aiohttp.ClientResponseError(
            upstream.request_info, (), status=204, message="a 204 that declares a body"
        )
