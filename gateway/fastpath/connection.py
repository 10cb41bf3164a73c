"""One client connection of the fast traffic path: bytes in, llhttp (httptools) parses.

Framing rules. The fast path serves a request only when nothing about its framing is
open to interpretation, and hands every other request, unparsed, to the aiohttp
application on the same connection (:meth:`ClientConnection.hand_off`: the bytes
received since the request began are replayed into aiohttp's protocol, which owns the
connection from then on), so the answer is exactly the one aiohttp gives:

* llhttp in its strict default mode parses; whatever it rejects (Content-Length with
  Transfer-Encoding, duplicate or invalid Content-Length, obfuscated or unknown
  Transfer-Encoding, bad chunk syntax, bare CR/LF, invalid header characters, obs-fold)
  is handed off and answered by aiohttp (400 problem+json), never guessed at here;
* served here: HTTP/1.1, method GET/POST/PUT/PATCH/DELETE/OPTIONS, an origin-form
  target ``/hooks/{channel}/{app_id}[/{tail}]`` whose channel and app segments are plain
  (no percent-encoding, no dot segments) and without a fragment, no ``Transfer-Encoding``
  (chunked bodies go to aiohttp), at most one ``Content-Length`` of at most
  :data:`FAST_BODY` bytes (and at most ``max_body_bytes``), no ``Expect``, no
  ``Upgrade`` (WebSocket), request line and each header under 4 KiB, at most 100
  headers (under aiohttp's own limits, so nothing aiohttp would refuse is served), one
  valid ``Host``, at most one of each header the gateway decides by (and no
  ``Connection`` listing one), at most ``HEAD_LIMIT`` bytes of headers (what
  :mod:`gateway.http_rules` refuses in aiohttp);
* handed off: everything else, ``/notify``, HEAD, HTTP/1.0, and, after routing, a bot
  that is not ``http://`` or a Meta subscription handshake (nothing charged before);
* a request head is read at most :data:`HEAD_BYTES` at a time: one still open past it
  (an endless header, say) cannot be served here and is handed off at once, so aiohttp
  refuses it by its own limits;
* pipelined requests are answered in order, one at a time, and none while the client is
  not reading its answers (its transport paused for writing, as aiohttp waits for
  ``drain``): bytes that arrive meanwhile wait in a :class:`Backlog`, reading paused
  while more than ``BACKLOG_HIGH`` bytes wait; a request's end is found by llhttp itself
  (:func:`message_end`);
* a connection must send a complete request within ``header_timeout_s`` of opening or
  of its previous response (written, or still buffered for a client that does not read
  it): slow headers (as aiohttp) and stalled bodies (which aiohttp waits for) are closed,
  and a request cut short is never forwarded; a connection closed so, or after its last
  answer, whose client does not take what is buffered for it within that long again is
  aborted (a client that never reads cannot hold its connection and answers for good);
* keep-alive as the request says (``Connection: close`` closes after the response, and
  what was pipelined after it is ignored);
* a half-closed client (EOF after its requests) still gets every answer, then the
  connection is closed.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol, cast

import httptools

from gateway.fastpath.backlog import Backlog, Chunk
from gateway.fastpath.message import Message, message_end
from gateway.fastpath.request import HEAD_BYTES, RequestParser

BACKLOG_HIGH = 64 * 1024


class Host(Protocol):
    """What a connection needs of its server (:class:`gateway.fastpath.server.FastServer`)."""

    loop: asyncio.AbstractEventLoop
    connections: set[ClientConnection]
    body_limit: int

    def serve(self, conn: ClientConnection, msg: Message) -> None: ...
    def aiohttp_protocol(self) -> asyncio.Protocol: ...


class ClientConnection(asyncio.Protocol):
    """Parses requests, serves the fast ones, hands the rest to aiohttp."""

    def __init__(self, server: Host) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.head_since: float | None = None  # waiting for a complete request since
        self.eof = False  # the client half-closed
        self.busy = False  # a request is being answered
        self.closing = False  # close after the current response
        self.write_paused = False
        self.exchange: Any = None  # the upstream exchange streaming into this connection
        self._req = RequestParser(server.body_limit)
        self._chunks: list[Chunk] = []  # bytes fed since the current request began
        self._fed = 0  # their size
        self._backlog = Backlog()  # bytes received, not fed yet
        self._paused = False
        self._handed = False

    # ------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its API.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else ""
        self.head_since = self.server.loop.time()
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.transport = None
        if self.exchange is not None:
            self.exchange.client_lost()

    def eof_received(self) -> bool | None:
        self.eof = True
        if not (self.busy or self.write_paused) and self.transport is not None:
            self.transport.close()  # nothing to answer (a request cut short is dropped)
        return True  # else the answers still go out; closed after the last

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.exchange is not None:
            self.exchange.pause()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.exchange is not None:
            self.exchange.resume()
        elif not self.busy:  # an answer waited for the client to read: go on
            self._next()

    def data_received(self, data: bytes) -> None:
        self._backlog.append(data)
        self._pump()

    # ------------------------------------------------------------ parsing

    def _pump(self) -> None:
        """Feed what waits while no request is being answered and the client reads its
        answers; reading paused while more than ``BACKLOG_HIGH`` bytes wait."""
        backlog, req = self._backlog, self._req
        while backlog.size and not (self.busy or self.write_paused or self._handed):
            self._feed(backlog.take(HEAD_BYTES - self._fed if req.in_head else backlog.size))
            if req.in_head and self._fed >= HEAD_BYTES and not self._handed:
                self.hand_off(b"".join(self._chunks))  # a head too long to serve here
        transport = self.transport
        if transport is None or self._handed:
            return
        if backlog.size > BACKLOG_HIGH:
            if not self._paused:
                self._paused = True
                transport.pause_reading()
        elif self._paused:
            self._paused = False
            transport.resume_reading()

    def _feed(self, data: Chunk) -> None:
        req = self._req
        self._chunks.append(data)
        self._fed += len(data)
        try:
            req.parser.feed_data(data)
        except httptools.HttpParserError:
            done = req.done
            if done is None or not (req.pipelined or not done.keep_alive):
                # Not ours, or malformed: aiohttp answers exactly as it would alone.
                self.hand_off(b"".join(self._chunks))
                return
            # More after a complete request: pipelined, or after Connection: close (llhttp
            # refuses it), where it is ignored. Only this request's bytes are joined.
            length = done.content_length or 0
            before = self._fed - len(data)
            raw = b"".join([*self._chunks[:-1], data[: max(0, HEAD_BYTES + length - before)]])
            n = message_end(raw, length)
            done.raw = raw[:n]
            if done.keep_alive:
                self._backlog.push_front(data[n - before :])
            else:
                self._backlog.clear()
            req.reset()
        done = req.done
        if done is None:
            return
        req.done = None
        req.pipelined = False
        req.in_head = True
        self.head_since = None
        if not done.raw:
            chunks = self._chunks
            done.raw = bytes(chunks[0]) if len(chunks) == 1 else b"".join(chunks)
        self._chunks = []
        self._fed = 0
        self.busy = True
        self.server.serve(self, done)

    # ------------------------------------------------------------ answering

    def stream_from(self, exchange: Any) -> None:
        """``exchange`` streams its bot's answer here: paused at once while the client is
        not reading (``pause_writing`` is told only of a change)."""
        self.exchange = exchange
        if self.write_paused:
            exchange.pause()

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def response_done(self, keep_alive: bool) -> None:
        """The answer is written: close, or serve what waits, or wait for a request;
        while the client does not read its answers, nothing more (see the module)."""
        self.exchange = None
        self.busy = False
        transport = self.transport
        if transport is None:
            return
        # The connection now waits for its client, to take this answer and to send the
        # next request: both within header_timeout_s (see the module; timed_out).
        self.head_since = self.server.loop.time()
        if not keep_alive or self.closing:
            transport.close()
            return
        if self.write_paused:
            return
        if self._backlog.size:
            # A pipelined request waits: parsed on the next loop pass, never from inside
            # the callbacks of the bot answer that ended this one. Its message runs at once
            # (gateway.fastpath.flow) and may take that bot connection back from the pool
            # while the connection's parser is still reading what followed the answer.
            self.server.loop.call_soon(self._next_pipelined)
        else:
            self._next()

    def _next_pipelined(self) -> None:
        if not (self.busy or self.write_paused):
            self._next()

    def _next(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.head_since = self.server.loop.time()
        self._pump()
        if self.eof and not self.busy and self.transport is not None and not self._handed:
            self.transport.close()

    def timed_out(self, now: float) -> None:
        """No complete request within ``header_timeout_s`` (the server's sweep): closed,
        what is still buffered for the client sent first; cut (aborted) if it is not
        taken within that long again: a client that never reads its answers holds
        neither them nor its connection for good."""
        transport = self.transport
        if transport is None:
            return
        if transport.is_closing():
            transport.abort()  # a close still waiting to flush, for a timeout now
        else:
            transport.close()
            self.head_since = now

    def close_idle(self) -> None:
        """Shutting down: close now if no request is being answered, else after it."""
        self.closing = True
        if not self.busy and self.transport is not None:
            self.transport.close()

    def hand_off(self, data: bytes) -> None:
        """Give the connection to the aiohttp application, replaying ``data`` (all bytes
        of the current request received so far, plus what followed)."""
        transport = self.transport
        if transport is None or self._handed:
            return
        self._handed = True
        self.busy = True  # nothing more is parsed here
        self.server.connections.discard(self)
        handler = self.server.aiohttp_protocol()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if self._paused:
            transport.resume_reading()
        data += self._backlog.take_all()
        if data:
            handler.data_received(data)
        if self.eof:
            handler.eof_received()

    def hand_off_message(self, msg: Message) -> None:
        """Hand off a complete request that routing showed is not for the fast path."""
        self.hand_off(msg.raw)
