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
* pipelined requests are answered in order, one at a time: bytes that arrive while a
  request is being served wait (reading pauses past 64 KiB), and a request's end is
  found by llhttp itself (:func:`message_end`);
* a connection must send a complete request within ``header_timeout_s`` of opening or
  of its previous response: slow headers (as aiohttp) and stalled bodies (which aiohttp
  waits for) are closed, and a request cut short is never forwarded;
* keep-alive as the request says (``Connection: close`` closes after the response, and
  what was pipelined after it is ignored);
* a half-closed client (EOF after its requests) still gets every answer, then the
  connection is closed.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any, Protocol, cast

import httptools

from gateway.fastpath.message import Message, message_end
from gateway.http_rules import HEAD_LIMIT, SINGLE_LOWER, lists_decided, valid_host

FAST_BODY = 64 * 1024
MAX_FIELD = 4096
MAX_HEADERS = 100
BACKLOG_HIGH = 64 * 1024
FAST_METHODS = frozenset({b"GET", b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS"})
_ROUTE = re.compile(rb"/hooks/([A-Za-z0-9_\-~]+)/([A-Za-z0-9_\-~.:]+)(/[^%\\\\]*)?\Z")
_DOTS = frozenset({b".", b".."})


class _Stop(Exception):
    """Stops the parser: the request is not for the fast path."""


class _Pipelined(Exception):
    """Stops the parser: another request began after a complete one."""


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
        self._parser = httptools.HttpRequestParser(self)
        self._chunks: list[bytes] = []  # bytes fed since the current request began
        self._backlog = b""  # bytes received while busy
        self._msg = Message()
        self._done: Message | None = None  # completed in the current feed
        self._count = 0
        self._size = 0  # bytes of header fields
        self._seen: set[bytes] = set()  # headers of SINGLE_LOWER seen
        self._url = b""
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
        if not self.busy and self.transport is not None:
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

    def data_received(self, data: bytes) -> None:
        if self.busy:
            self._backlog += data
            if len(self._backlog) > BACKLOG_HIGH and not self._paused and self.transport:
                self._paused = True
                self.transport.pause_reading()
            return
        self._feed(data)

    # ------------------------------------------------------------ parsing

    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            # A callback's exception arrives as the context of the parser's error.
            done = self._done
            if done is None or not (isinstance(exc.__context__, _Pipelined) or not done.keep_alive):
                # Not ours, or malformed: aiohttp answers exactly as it would alone.
                self.hand_off(b"".join(self._chunks))
                return
            # More after a complete request: pipelined, or after Connection: close (llhttp
            # refuses it), where it is ignored.
            raw = b"".join(self._chunks)
            n = message_end(raw)
            done.raw = raw[:n]
            self._backlog = raw[n:] + self._backlog if done.keep_alive else b""
            self._chunks = []
            self._parser = httptools.HttpRequestParser(self)
        done = self._done
        if done is None:
            return
        self._done = None
        self.head_since = None
        if not done.raw:
            chunks = self._chunks
            done.raw = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            self._chunks = []
        self.busy = True
        self.server.serve(self, done)

    def on_message_begin(self) -> None:
        if self._done is not None:
            raise _Pipelined
        self._msg = Message()
        self._url = b""
        self._count = 0
        self._size = 0
        self._seen = set()

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > MAX_FIELD:
            raise _Stop

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count += 1
        if self._count > MAX_HEADERS or len(name) + len(value) > MAX_FIELD:
            raise _Stop
        msg = self._msg
        msg.headers.append((name, value))
        low = name.lower()
        self._size += len(name) + len(value)
        if self._size > HEAD_LIMIT:
            raise _Stop
        if low in SINGLE_LOWER:
            if low in self._seen or (low == b"host" and not valid_host(value.decode("latin-1"))):
                raise _Stop  # aiohttp refuses it (gateway.http_rules)
            self._seen.add(low)
        if low == b"content-length":
            msg.content_length = int(value)  # llhttp checked: digits, only one
        elif low in (b"transfer-encoding", b"expect", b"upgrade"):
            raise _Stop
        elif low == b"connection" and lists_decided(value.decode("latin-1")):
            raise _Stop  # aiohttp refuses it (gateway.http_rules)

    def on_headers_complete(self) -> None:
        parser, msg = self._parser, self._msg
        method = parser.get_method()
        if method not in FAST_METHODS or parser.get_http_version() != "1.1":
            raise _Stop
        if b"host" not in self._seen:
            raise _Stop  # HTTP/1.1 without Host: aiohttp's 400
        if parser.should_upgrade():
            raise _Stop
        length = msg.content_length
        if length is not None and length > self.server.body_limit:
            raise _Stop
        path, _, query = self._url.partition(b"?")
        m = _ROUTE.match(path)
        if m is None or m[1] in _DOTS or m[2] in _DOTS or b"#" in query:
            raise _Stop
        if m[3] and b"/." in m[3]:
            raise _Stop  # dot segments: aiohttp's router decides (it may normalize)
        msg.method = method.decode()
        msg.target = self._url.decode()
        msg.channel = m[1].decode()
        msg.app_id = m[2].decode()
        msg.keep_alive = parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        msg = self._msg
        msg.body = msg.body + body if msg.body else body

    def on_message_complete(self) -> None:
        self._done = self._msg

    # ------------------------------------------------------------ answering

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def response_done(self, keep_alive: bool) -> None:
        """The answer is written: close, or serve what waits, or wait for a request."""
        self.exchange = None
        self.busy = False
        transport = self.transport
        if transport is None:
            return
        if not keep_alive or self.closing:
            transport.close()
            return
        self.head_since = self.server.loop.time()
        if self._paused:
            self._paused = False
            transport.resume_reading()
        if self._backlog:
            data, self._backlog = self._backlog, b""
            self._feed(data)
        if self.eof and not self.busy and self.transport is not None:
            self.transport.close()

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
        data += self._backlog
        self._backlog = b""
        if data:
            handler.data_received(data)
        if self.eof:
            handler.eof_received()

    def hand_off_message(self, msg: Message) -> None:
        """Hand off a complete request that routing showed is not for the fast path."""
        self.hand_off(msg.raw)
