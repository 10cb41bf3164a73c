"""The bound on a chunked request body's number of chunks, which the gateway's aiohttp
protocol (:mod:`gateway.http_server`) keeps on both ports and both traffic servers (the
fast path hands every chunked request to that protocol, unparsed).

Each chunk of a chunked body costs the server's parser and the body's stream a few
Python calls whatever its size: a body sent one byte per chunk (``1\\r\\nx\\r\\n``, six
bytes on the wire a byte of body) cost a worker some 0.6 µs a chunk, 0.6 s of CPU for
a 1 MiB body within ``max_body_bytes``, where the same body with a ``Content-Length``
costs a few milliseconds: a client could pin a worker with a few MB. So a chunked body
may have at most :data:`FREE` chunks plus one per :data:`PER_CHUNK` bytes of it, at every
point as it arrives (so 2,000 one-byte chunks are refused even if a 1 MiB chunk would
have followed them). A body in chunks of 64 bytes or more never reaches the bound, nor
does one of fewer than 1,025 chunks; the worst body it lets through (1 MiB in 64-byte
chunks) costs some 10-20 ms.

The protocol counts the chunks as its parser reads them (aiohttp's stream records where
each ends), feeding the parser at most :data:`SLICE` bytes between two counts, so a body
is found over the bound within a few thousand chunks of it: its stream then fails with
a 413 ``too_many_chunks`` problem and nothing more is parsed on the connection, which
closes after the answer.

How the refusal is charged follows any body's failure (:mod:`gateway.proxy`): a body
read before admission (a keyed message's, a channel's that reads it) is refused with
nothing charged; a streamed one found over the bound before it reached the bot is
refused before admission, or refunded at once if found while it was admitted; found
after the bot had its start, it stays charged, as a body that turns invalid then does.

A chunked body's framing is bounded too: the bytes on the wire that are none of its
data (each chunk's size line with its extensions, ``5;name=value``, and leading zeros,
the CRLF after its data, the trailer fields after the last chunk). aiohttp's parser
(llhttp) bounds neither a chunk's extensions nor its size's leading zeros and hands
neither to Python: a body of five bytes in one chunk with a 200 MB extension was parsed
whole (0.2 s of a worker's CPU, 1 ns a byte), answered 200, forwarded and charged as a
five-byte message; any number of bytes would have been. So a chunked body's framing may
be at most :data:`FRAMING_FREE` bytes plus :data:`FRAMING_PER_CHUNK` a chunk counted so
far, at every point as it arrives (a chunk without extensions has at most 20: a size of
16 hex digits and two CRLFs), else 413 ``chunk_framing_too_large``, refused and charged
as ``too_many_chunks``. The protocol counts the wire bytes it feeds the parser for the
body (from the slice after the one its head ended in, up to the one it ends in: a slice
either side uncounted; what the parser cannot take yet waits in the protocol,
:mod:`gateway.chunk_feed`, so a call parses at most a slice and what the parser kept of
the one before) less the body's data, only while the parser keeps nothing back (reading
not paused: a paused parser holds what it was fed unparsed). A pause the
stream asks for past 4,096 unread chunk ends takes effect at the next piece of data,
which may come a slice later, with reading resumed by then: that slice is counted in
full, at most 16 KiB too many where the allowance is over 128 KiB.

A body whose framing the parser fails on (:func:`parser_failed`) is ended the same way,
with 400 ``invalid_body``, at once rather than after ``body_timeout_s``.
"""

from __future__ import annotations

import itertools
from bisect import bisect_right
from collections.abc import Iterable

from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web import Request

from gateway.metering import Charge, Meter
from gateway.problems import Problem

FREE = 1024  # chunks any chunked body may have
PER_CHUNK = 64  # plus one chunk per this many bytes of it
SLICE = 16 * 1024  # the most bytes fed to the parser between two counts
FRAMING_FREE = 8 * 1024  # bytes of framing (no data) any chunked body may have
FRAMING_PER_CHUNK = 32  # plus this many per chunk


def too_many_chunks() -> Problem:
    return Problem(
        413,
        "too_many_chunks",
        "Too many chunks",
        f"a chunked body may have {FREE} chunks plus one per {PER_CHUNK} bytes of it:"
        " send larger chunks, or a Content-Length",
    )


def chunk_framing_too_large() -> Problem:
    return Problem(
        413,
        "chunk_framing_too_large",
        "Chunk framing too large",
        f"a chunked body's framing (chunk sizes, chunk extensions, trailer fields) may be"
        f" {FRAMING_FREE} bytes plus {FRAMING_PER_CHUNK} a chunk: send no chunk extensions",
    )


class Framing:
    """One chunked body being parsed: its chunks so far, and the wire bytes fed to the
    parser for it since it began (:meth:`fed`)."""

    __slots__ = ("_base", "_chunks", "_last", "_wire", "payload")

    def __init__(self, payload: StreamReader) -> None:
        self.payload = payload
        self._chunks = 0
        self._last = -1  # where the last chunk counted ends, in the body
        self._base = payload.total_bytes  # its data parsed before the wire is counted
        self._wire = 0

    def fed(self, size: int) -> None:
        """``size`` more bytes of the body's wire were fed to the parser."""
        self._wire += size

    def over(self, *, parsed: bool) -> Problem | None:
        """The problem of a body over its bounds so far (the chunks; the framing too if
        the parser has ``parsed`` all it was fed and the body is not complete), if any."""
        payload = self.payload
        # Where each chunk not read yet ends, ascending (what aiohttp's readchunk() uses):
        # those past the last one counted are new.
        ends = payload._http_chunk_splits
        if ends and ends[-1] > self._last:
            self._chunks += len(ends) - bisect_right(ends, self._last)
            self._last = ends[-1]
        if self._chunks > FREE + payload.total_bytes // PER_CHUNK:
            return too_many_chunks()
        # (A complete body's last slice may hold the next request's bytes: not counted.)
        if parsed and not payload.is_eof():
            framing = self._wire - (payload.total_bytes - self._base)
            if framing > FRAMING_FREE + FRAMING_PER_CHUNK * self._chunks:
                return chunk_framing_too_large()
        return None

    def refuse(self, problem: Problem, *, handled: bool) -> None:
        """End the body's stream (the protocol parses no more of it), failed with the
        problem. While its handler runs (``handled``), a read waiting now fails with the
        problem too: ended first, the read got the end, and ``request.read()`` (the admin
        API's) took what came before as the whole body and acted on it. Else a read
        waiting now (aiohttp's lingering read of a body left unread) ends quietly; any
        read after, the problem (:func:`gateway.request_body.chunks` checks at the end)."""
        if handled:
            self.payload.set_exception(problem)
        self.payload.feed_eof()
        self.payload.set_exception(problem)


def parser_failed(messages: Iterable[tuple[object, object]], queued: int) -> BadHttpMessage | None:
    """The parser's error in the messages after the first ``queued``, if any: aiohttp
    queues it as a message of its own (answered 400 after the requests before it) and
    tells no body of it, so a chunked body whose framing turned invalid after its head
    was handed on waited for ``body_timeout_s``, its connection held, then 408."""
    for msg, _ in itertools.islice(messages, queued, None):
        exc = getattr(msg, "exc", None)
        if not isinstance(msg, RawRequestMessage) and isinstance(exc, BadHttpMessage):
            return exc
    return None


def refused(request: Request) -> Problem | None:
    """The problem a request's body was refused with as it arrived, if any."""
    exc = request.content.exception()
    return exc if isinstance(exc, Problem) else None


def check(request: Request) -> None:
    """Before a message is metered: raise the problem its body was refused with."""
    problem = refused(request)
    if problem is not None:
        raise problem


async def refund_refused(request: Request, meter: Meter, admission: Charge | None) -> None:
    """Once a message is admitted, before anything goes to its bot: a body refused
    meanwhile is refunded at once (the bot never sees it) and its problem raised."""
    problem = refused(request)
    if problem is None:
        return
    if admission is not None:
        await meter.withdrawn(admission)
    raise problem
