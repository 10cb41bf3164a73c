"""How the gateway's aiohttp protocol (:mod:`gateway.http_server`) feeds its parser, so
that every chunked body's chunks and framing are counted (:mod:`gateway.chunk_framing`).

* **A slice at a time.** At most :data:`~gateway.chunk_framing.SLICE` bytes between two
  counts: one call could parse a whole read (256 KiB, 40,000 one-byte chunks) first.
* **Held while the parser cannot take them.** aiohttp's parser pauses when reading is
  paused (a body's reader is behind) and when its queue of pipelined requests is full
  (32: it stops after each request it completes): it keeps what it is fed and parses it
  all in one call once resumed, and a body begun and ended in that call was counted
  nowhere (100 KB of extension behind 200 pipelined GETs was taken, up to a socket
  read's worth). What it cannot take waits here instead, fed a slice at a time as it
  resumes (aiohttp then calls ``data_received`` with nothing); the transport is paused
  meanwhile, so this holds at most a read.
"""

from __future__ import annotations

import asyncio
import itertools

from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.streams import StreamReader

from gateway.chunk_framing import SLICE, Framing, parser_failed
from gateway.request_body import invalid_body
from gateway.upgrade_tail import UpgradeTail


class ChunkFeed(UpgradeTail):
    """aiohttp's protocol, feeding its parser so that chunked bodies are counted."""

    _framing: Framing | None = None  # the chunked body being parsed (gateway.chunk_framing)
    _quiet: asyncio.Future[None] | None = None  # set once the client of a refused body stops
    _refused: StreamReader | None = None  # the body refused: nothing parsed after it
    _handled: StreamReader | None = None  # the body of the request whose handler runs
    _held = b""  # received, not fed yet (the parser cannot take it): from _held_at on
    _held_at = 0

    def data_received(self, data: bytes) -> None:
        if self._refused is not None:
            return  # once a body is refused, nothing more is parsed
        if not data:
            self._parse(data)  # the parser resumes: what it kept (at most a slice)
        at = 0
        if self._held:
            data, at = (
                (self._held[self._held_at :] + data, 0) if data else (self._held, self._held_at)
            )
            self._held = b""
        size = len(data)
        while at < size and self._refused is None and not (self._close or self._force_close):
            if not self._upgraded and (
                self._reading_paused or len(self._messages) >= self._max_msg_queue_size
            ):
                self._held, self._held_at = data, at  # fed as the parser resumes
                return
            end = size if self._upgraded else at + SLICE
            self._parse(data[at:end] if at or end < size else data)
            at = end

    def _parse(self, data: bytes) -> None:
        queued = len(self._messages)
        super().data_received(data)
        if self._framing is not None:
            self._framing.fed(len(data))
            self._count(self._framing, parser_failed(self._messages, queued))
        for msg, payload in itertools.islice(self._messages, queued, None):  # begun here
            if getattr(msg, "chunked", False) and type(payload) is StreamReader:
                self._count(Framing(payload))  # (aiohttp gives every chunked body one)

    def _count(self, framing: Framing, failed: BadHttpMessage | None = None) -> None:
        """Refuse a chunked body over its bounds, or whose framing the parser ``failed``
        on; else watch it until it is complete."""
        # Reading paused: the parser may hold back some of what it was fed, unparsed.
        problem = framing.over(parsed=not self._reading_paused)
        if problem is None and failed is not None and not framing.payload.is_eof():
            problem = invalid_body(failed)  # its own error (a complete body's is not)
        if problem is not None:
            self._framing = None
            framing.refuse(problem, handled=framing.payload is self._handled)
            self._refused = framing.payload
            self._quiet = self._loop.create_future()
            # Closed after its answer (_linger); a request still queued behind the one
            # being answered (pipelined) is answered first (_handle_request closes).
            if not any(payload is self._refused for _, payload in self._messages):
                self.close()
        else:
            self._framing = None if framing.payload.is_eof() else framing
