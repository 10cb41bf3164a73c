"""One keep-alive HTTP/1.1 connection to an ``http://`` bot, responses parsed by llhttp.

Each connection is an ``asyncio.Protocol`` with an ``httptools.HttpResponseParser``; the
response is delivered by callbacks to the :class:`~gateway.fastpath.exchange.Exchange`
that owns the connection for one request, which streams it to the client. A connection
whose response ended cleanly and may be kept alive returns to its
:class:`~gateway.fastpath.pool.Pool`; one that failed, was abandoned, or idled is
closed, and so is one with bytes waiting unread as the pool hands it to a message
(:meth:`UpstreamConnection.reusable`); its end (however it came) frees its place in the
pool.
"""

from __future__ import annotations

import asyncio
import logging
import select
from typing import Protocol, cast

import httptools

from gateway.header_text import writable_fields
from gateway.misframed import declares_body_raw
from gateway.tenant_share import Ticket
from gateway.unread import waiting, watch

log = logging.getLogger(__name__)
# A response head is refused (502) past aiohttp's client limits (max_line_size,
# max_field_size, max_headers), so the fast path passes on no head that aiohttp would
# refuse; HEAD_BYTES bounds what llhttp buffers before a field ends (interim 1xx heads
# included): a bot cannot grow the gateway's memory with an endless head. It is twice
# the most those limits allow, so body bytes read with a head never make it refused.
MAX_FIELD = 8190
MAX_HEADERS = 128
HEAD_BYTES = 4 * MAX_FIELD * (MAX_HEADERS + 1)
# Interim (1xx) heads before the final one, all together: they are kept with it (read
# again if it must be), so a bot sending 102s without end held up to HEAD_BYTES per
# connection. Past this (checked as each ends, against the reads before its last), the
# answer is the bot's failure (502, refunded); a 100, 102s or 103s take far less.
INTERIM_BYTES = 64 * 1024
_BLANKS = (32, 9)  # SP, HTAB


def _parser(conn: UpstreamConnection, lenient: bool = False) -> httptools.HttpResponseParser:
    """llhttp as aiohttp's client parser reads a bot's answer (``_http_parser`` outside dev
    mode: optional CR before LF, blanks after a chunk size, and ``lenient`` headers: a
    folded line, a control character in a value, blanks before the colon of a framing
    field), so both traffic servers read it alike. A head is first read without
    ``lenient`` headers and read again with them only where it fails (rare): what the
    leniency lets in is then dropped (gateway.header_text), or for a name's blanks
    removed (:meth:`UpstreamConnection.on_header`)."""
    parser = httptools.HttpResponseParser(conn)
    parser.set_dangerous_leniencies(
        lenient_headers=lenient,
        lenient_optional_cr_before_lf=True,
        lenient_spaces_after_chunk_size=True,
    )
    return parser


class ConnectTimeout(Exception):
    """The bot did not accept the connection in time."""


class ConnectFailed(Exception):
    """The bot's address refused or reset the connection."""


class InvalidAnswer(Exception):
    """Raised in a parser callback: the bot's answer is not one the gateway passes on."""


class Owner(Protocol):
    """What a connection needs of its pool (:class:`gateway.fastpath.pool.Pool`)."""

    loop: asyncio.AbstractEventLoop

    def lost(self, conn: UpstreamConnection) -> None: ...


class Receiver(Protocol):
    """What an upstream connection tells the request that uses it."""

    def on_head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None: ...
    def on_body(self, chunk: bytes) -> None: ...
    def on_complete(self, keep_alive: bool) -> None: ...
    def on_lost(self) -> None: ...
    def broken(self, exc: BaseException) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    """One connection to a bot; serves one exchange at a time."""

    def __init__(self, pool: Owner, key: tuple[str, int]) -> None:
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.receiver: Receiver | None = None
        self.closed = False
        self.counted = False  # holds one of its bot's places in the pool
        self.ticket: Ticket | None = None  # its message's place in its tenant's share
        self.paused = False  # not reading: its exchange's client is not reading either
        self.idle_since = 0.0
        self.last_read = 0.0
        self._parser = _parser(self)
        self._fresh = True  # the parser is at a message's start: no need of a new one
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._interim = False
        self._head_left = 0  # bytes a head may still take; 0 once it is complete
        self._head_before = 0  # head bytes of the reads before the current one
        self._head: list[bytes] = []  # what came of it, read again if it must be (_parser)
        self._lenient = False
        self._watch: select.poll | None = None  # its socket, asked before each reuse

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its API.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        self._watch = watch(sock.fileno()) if sock is not None else None

    def reusable(self) -> bool:
        """Open, with nothing unread: a message may be sent on it now (by the pool, as it
        hands it out). A byte waiting in the socket came after the last answer ended and
        before this message: an answer nobody asked for (a bot's duplicate, say), which
        the loop had not read yet; sent on, the message would get it for its own. A close
        waiting there (a bot's short keep-alive timeout) would fail it. Either way the
        connection is closed instead (its end frees its place; :mod:`gateway.unread`)."""
        transport = self.transport
        if self.closed or transport is None or transport.is_closing():
            return False
        if self._watch is not None and waiting(self._watch):
            log.info("upstream %s sent bytes or closed between answers", self.key[0])
            self.close()
            return False
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        self.free_ticket()
        if self.counted:
            self.counted = False
            self.pool.lost(self)
        receiver, self.receiver = self.receiver, None
        if receiver is not None:
            receiver.on_lost()

    def data_received(self, data: bytes) -> None:
        if self.receiver is None:  # a bot talking out of turn: not reusable
            self.close()
            return
        self.last_read = self.pool.loop.time()
        if self._head_left:
            self._head_before = HEAD_BYTES - self._head_left
            self._head_left -= min(len(data), self._head_left)
            if not self._head_left:
                self._invalid("response head too large")
                return
            self._head.append(data)
        self._feed(self.receiver, data)

    def _feed(self, receiver: Receiver, data: bytes) -> None:
        # receiver: the one to tell if the gateway fails (on_complete lets go of it)
        try:
            self._parser.feed_data(data)
            return
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__  # what a callback raised
            if cause is None or isinstance(cause, InvalidAnswer):
                self._invalid(str(cause or exc))
            else:  # the gateway's own failure (the receiver's callbacks), not the bot's
                self.close()
                receiver.broken(cause)
            return
        except httptools.HttpParserError as exc:
            if not self._head_left or self._lenient:
                self._invalid(str(exc))
                return
        self._lenient = True  # the head failed: read again (_parser), outside the except
        self._parser = _parser(self, True)  # never kept past this answer (_fresh)
        self._feed(receiver, b"".join(self._head))

    def _invalid(self, why: str) -> None:
        """Not an HTTP answer the gateway passes on: the exchange fails as if lost."""
        receiver = self.receiver
        log.info("upstream %s failed: invalid response (%s)", self.key[0], why)
        self.close()
        if receiver is not None:
            receiver.on_lost()

    def send(self, receiver: Receiver, data: bytes) -> None:
        self.receiver = receiver
        self.last_read = self.pool.loop.time()
        if not self._fresh:  # else kept: llhttp is back at a message's start
            self._parser = _parser(self)
        self._fresh = False
        self._head_left = HEAD_BYTES
        self._head_before = 0
        self._head = []
        self._lenient = False
        assert self.transport is not None
        self.transport.write(data)

    def close(self) -> None:
        """Abandon the connection (its response, if any, is not read further)."""
        self.receiver = None
        self.free_ticket()
        if self.transport is not None:
            self.transport.abort()

    def free_ticket(self) -> None:
        """Its message is done with it: its place in the tenant's share is free."""
        ticket, self.ticket = self.ticket, None
        if ticket is not None:
            ticket.free()

    def pause(self) -> None:
        if self.transport is not None and not self.paused:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None and self.paused:
            self.paused = False
            self.transport.resume_reading()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._fresh = False  # bytes after an answer (out of turn): a new parser next
        self._reason = b""
        self._headers = []

    def on_status(self, reason: bytes) -> None:
        self._reason += reason
        if len(self._reason) > MAX_FIELD:
            raise InvalidAnswer("status line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self._headers
        if (
            self._lenient
            or len(name) > MAX_FIELD
            or len(value) > MAX_FIELD
            or len(headers) == MAX_HEADERS
            or (value and value[-1] in _BLANKS)
        ):  # all checked, and blanks removed, where any of this may apply
            name, value = self._field(name, value)
        headers.append((name, value))

    def _field(self, name: bytes, value: bytes) -> tuple[bytes, bytes]:
        if self._lenient and name[-1:] in (b" ", b"\t"):
            # "Content-Length : 5": the lenient parse reads it as that field (and frames by
            # it); a proxy removes the whitespace before passing it on (RFC 9112 §5.1), so
            # the client never gets a second framing field, nor this path a wrong one.
            name = name.rstrip(b" \t")
        if value and value[-1] in _BLANKS:  # not part of the value (RFC 9110 §5.5)
            value = value.rstrip(b" \t")  # as aiohttp strips them
        if len(name) > MAX_FIELD or len(value) > MAX_FIELD:
            raise InvalidAnswer("header field too long")
        if len(self._headers) == MAX_HEADERS:
            raise InvalidAnswer("too many headers")
        if self._lenient and 0 in value:  # a NUL: aiohttp's client refuses it
            raise InvalidAnswer("NUL in a header value")
        return name, value

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 100 or status == 101:  # no request asked to switch protocols
            raise InvalidAnswer(f"status {status}")
        self._interim = status < 200
        if not self._interim:
            if declares_body_raw(status, self._headers):  # 502, closed (gateway.misframed)
                raise InvalidAnswer("a 204 that declares a body")
            self._head_left = 0
            self._head = []
            headers = writable_fields(self._headers) if self._lenient else self._headers
            if self.receiver is not None:
                self.receiver.on_head(status, self._reason, headers)

    def on_body(self, body: bytes) -> None:
        if self.receiver is not None:
            self.receiver.on_body(body)

    def on_message_complete(self) -> None:
        if self._interim:  # 100 Continue and the like: the real answer follows
            self._interim = False
            if self._head_before > INTERIM_BYTES:
                raise InvalidAnswer("interim answers too large")
            return
        receiver, self.receiver = self.receiver, None
        if receiver is not None:
            keep = self._parser.should_keep_alive()
            # The next message may use this parser (see send): llhttp, strict, is at a
            # message's start again; not a lenient one, nor one that reads on after this.
            self._fresh = keep and not self._lenient
            receiver.on_complete(keep)
