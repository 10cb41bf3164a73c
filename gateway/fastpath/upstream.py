"""One keep-alive HTTP/1.1 connection to an ``http://`` bot, responses parsed by llhttp.

Each connection is an ``asyncio.Protocol`` with an ``httptools.HttpResponseParser``; the
response is delivered by callbacks to the :class:`~gateway.fastpath.exchange.Exchange`
that owns the connection for one request, which streams it to the client. A connection
whose response ended cleanly and may be kept alive returns to its
:class:`~gateway.fastpath.pool.Pool`; one that failed, was abandoned, or idled is
closed, and so is one with bytes waiting unread as the pool hands it to a message
(:meth:`UpstreamConnection.reusable`); its end (however it came) frees its place in the
pool. An answer is complete once the read it ended in is parsed (:meth:`_end`); a
status line that is not HTTP/1.x is the bot's failure (:mod:`gateway.status_lines`);
one whose head came before its request was all with the bot's kernel is passed on and
its connection closed (:mod:`gateway.unsent`, :class:`~.written.Written`).
"""

from __future__ import annotations

import asyncio
import logging
import select
from typing import Protocol, cast

import httptools

from gateway.fastpath.answer_parser import (
    BLANKS,
    HEAD_BYTES,
    INTERIM_BYTES,
    MAX_FIELD,
    MAX_HEADERS,
    InvalidAnswer,
    answer_parser,
    checked_field,
)
from gateway.fastpath.written import Written
from gateway.header_text import writable_fields
from gateway.misframed import declares_body_raw
from gateway.status_lines import StatusLines
from gateway.tenant_share import Ticket
from gateway.unread import waiting, watch
from gateway.unsent import unacked

log = logging.getLogger(__name__)


class ConnectTimeout(Exception):
    """The bot did not accept the connection in time."""


class ConnectFailed(Exception):
    """The bot's address refused or reset the connection."""


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


class UpstreamConnection(Written):
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
        self._parser = answer_parser(self)
        self._fresh = True  # the parser is at a message's start: no need of a new one
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._interim = False
        self._head_left = 0  # bytes a head may still take; 0 once it is complete
        self._head_before = 0  # head bytes of the reads before the current one
        self._head: list[bytes] = []  # what came of it, read again if it must be (_parser)
        self._lenient = False
        self._watch: select.poll | None = None  # its socket, asked before each reuse
        self._lines = StatusLines()
        self._ended: Receiver | None = None  # its answer ended in the read being parsed
        self._keep = False  # and may be kept alive (llhttp), unless ...
        self._stray = False  # ... more came after it
        self._early = False  # ... or its head came before its request was all sent

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its API.
        self.transport = cast(asyncio.Transport, transport)
        self.watch_writes(self.transport)
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
            if not self._lines.feed(data):
                self._invalid("not an HTTP/1.x answer")
                return
        self._feed(self.receiver, data)

    def _feed(self, receiver: Receiver, data: bytes) -> None:
        # receiver: the one to tell if the gateway fails (on_complete lets go of it)
        again = False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__  # what a callback raised
            if self._ended is not None:  # by what came after the answer: not the answer's
                self._stray = True
            elif cause is None or isinstance(cause, InvalidAnswer):
                self._invalid(str(cause or exc))
            else:  # the gateway's own failure (the receiver's callbacks), not the bot's
                self.close()
                receiver.broken(cause)
        except httptools.HttpParserError as exc:
            if self._ended is not None:
                self._stray = True
            elif not self._head_left or self._lenient:
                self._invalid(str(exc))
            else:
                again = True
        if self._ended is not None:
            self._end()
        elif again:  # the head failed: read again (_parser), outside the except
            self._lenient = True
            self._parser = answer_parser(self, True)  # never kept past this answer (_fresh)
            self._feed(receiver, b"".join(self._head))

    def _end(self) -> None:
        """The answer is complete; its connection is closed if bytes came after it in the
        read (a second answer, bytes past its length: a later message would read them).
        Else llhttp, strict, is at a message's start: the next message may use it."""
        receiver, self._ended = self._ended, None
        keep = self._keep and not self._stray and not self._early
        if self._early:
            log.info("upstream %s answered before it had the whole request", self.key[0])
        elif self._stray:
            log.info("upstream %s sent bytes after its answer", self.key[0])
        self._fresh = keep and not self._lenient  # see send
        self._stray = False
        if receiver is not None:
            receiver.on_complete(keep)

    def _invalid(self, why: str) -> None:
        """Not an HTTP answer the gateway passes on: the exchange fails as if lost."""
        receiver = self.receiver
        log.info("upstream %s failed: invalid response (%s)", self.key[0], why)
        self.close()
        if receiver is not None:
            receiver.on_lost()

    def send(self, receiver: Receiver, data: bytes, body: bool = False) -> None:
        self.receiver = receiver
        self.body = body
        self.last_read = self.pool.loop.time()
        if not self._fresh:  # else kept: llhttp is back at a message's start
            self._parser = answer_parser(self)
        self._fresh = False
        self._head_left = HEAD_BYTES
        self._head_before = 0
        self._head = []
        self._lines = StatusLines()
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
        self._stray = self._ended is not None  # bytes after the answer, in its read
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
            or (value and value[-1] in BLANKS)
        ):  # all checked, and blanks removed, where any of this may apply
            name, value = checked_field(name, value, self._lenient, len(headers))
        headers.append((name, value))

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
            self._early = self.unsent or (self.body and unacked(self.fd, self.outq) > 0)
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
        if receiver is not None:  # told once the rest of this read is parsed (_end)
            self._ended = receiver
            self._keep = self._parser.should_keep_alive()
