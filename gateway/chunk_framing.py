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
"""

from __future__ import annotations

from bisect import bisect_right

from aiohttp.streams import StreamReader
from aiohttp.web import Request

from gateway.metering import Charge, Meter
from gateway.problems import Problem

FREE = 1024  # chunks any chunked body may have
PER_CHUNK = 64  # plus one chunk per this many bytes of it
SLICE = 16 * 1024  # the most bytes fed to the parser between two counts


def too_many_chunks() -> Problem:
    return Problem(
        413,
        "too_many_chunks",
        "Too many chunks",
        f"a chunked body may have {FREE} chunks plus one per {PER_CHUNK} bytes of it:"
        " send larger chunks, or a Content-Length",
    )


class Framing:
    """One chunked body being parsed, and its chunks so far."""

    __slots__ = ("_chunks", "_last", "payload")

    def __init__(self, payload: StreamReader) -> None:
        self.payload = payload
        self._chunks = 0
        self._last = -1  # where the last chunk counted ends, in the body

    def over(self) -> bool:
        """Whether the body has more chunks than the bound lets it have so far."""
        payload = self.payload
        # Where each chunk not read yet ends, ascending (what aiohttp's readchunk() uses):
        # those past the last one counted are new.
        ends = payload._http_chunk_splits
        if ends and ends[-1] > self._last:
            self._chunks += len(ends) - bisect_right(ends, self._last)
            self._last = ends[-1]
        return self._chunks > FREE + payload.total_bytes // PER_CHUNK

    def refuse(self) -> None:
        """End the body's stream (the protocol parses no more of it), failed with the
        problem: a read waiting now gets what was parsed, or the end (aiohttp's lingering
        read of a body left unread ends there); any read after, the problem
        (:func:`gateway.request_body.chunks` checks at the end too)."""
        self.payload.feed_eof()
        self.payload.set_exception(too_many_chunks())


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
