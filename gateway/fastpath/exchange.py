"""One ``/hooks`` message on the fast path, from its parsed bytes to the last byte back.

:func:`serve_message` runs the rules both servers share (:mod:`gateway.traffic_rules`:
loop, length, channel authentication, routing, channel rules, admission), then sends the
request to the bot on a pooled connection and returns; the answer arrives by callbacks
on the :class:`Exchange`, which writes it to the client as it comes (a response is never
buffered whole), so no task or future lives per request past the forward. The bot's
failures, counted ``bot_error``, are those of :mod:`gateway.proxy`: connect refused or
timed out -> 502/504 and refunded (``connect``; waiting for a place, at the bot's or the
worker's connection cap, counts toward the connect timeout; a message whose client leaves
meanwhile is refunded, never sent, ``client_error``: see :mod:`.pool`), no answer within
``upstream_read_timeout_s`` -> 504 (``timeout``), the connection lost before an answer or
a 5xx to a metered message -> 502 (``5xx``, the bot's body withheld); a failure after the
answer started (its first body bytes or its end; its head is kept until then, so a head
and then nothing is a failure before answering: :mod:`gateway.answer_back`) aborts the
client connection. A skipped callback's answer is held (:mod:`gateway.unbilled`).
The charge is confirmed as forwarded once handed to the socket. A failure of the
gateway's own while answering is ``error``, 500 (:meth:`Exchange.broken`).
"""

from __future__ import annotations

import logging
import time
from http import HTTPStatus

from gateway import problems
from gateway.access_log import LOGGER as ACCESS_LOGGER
from gateway.fastpath.connection import ClientConnection
from gateway.fastpath.message import Message
from gateway.fastpath.pool import ClientGone, Wait
from gateway.fastpath.serving import FastServer
from gateway.fastpath.upstream import UpstreamConnection
from gateway.fastpath.wire import answer_head, close_delimited, response_head, text_headers
from gateway.metering import Charge, Failure
from gateway.problems import CONTENT_TYPE, Problem, problem_body
from gateway.unbilled import Held

log = logging.getLogger(__name__)


class Exchange:
    """The state of one message being answered; an upstream connection's receiver."""

    __slots__ = (
        "admission",
        "chunked",
        "close_delimited",
        "code",
        "conn",
        "done",
        "head",
        "held",
        "label",
        "msg",
        "outcome",
        "server",
        "started",
        "status",
        "t0",
        "upstream",
        "wait",
    )

    def __init__(self, server: FastServer, conn: ClientConnection, msg: Message, label: str):
        self.server = server
        self.conn = conn
        self.msg = msg
        self.label = label
        self.admission: Charge | None = None
        self.upstream: UpstreamConnection | None = None
        self.wait: Wait | None = None  # waiting for a bot connection (Pool.acquire)
        self.started = time.perf_counter()
        self.t0 = 0.0
        self.outcome = "error"
        self.head = b""
        self.status = 0
        self.code = ""
        self.chunked = False
        self.close_delimited = False
        self.done = False
        self.held: Held | None = None  # an unbilled callback's answer: never passed on

    # ------------------------------------------------------------ answering

    def respond_problem(self, problem: Problem) -> None:
        p = problem
        body = problem_body(p.status, p.code, p.title, p.detail, p.extra)
        headers = [("Content-Type", CONTENT_TYPE), ("Content-Length", str(len(body)))]
        if problem.headers:
            headers.extend(problem.headers.items())
        self._write_head(problem.status, HTTPStatus(problem.status).phrase.encode(), headers)
        self._write(body)
        self.code = problem.code
        self.finish(True)

    def _write_head(self, status: int, reason: bytes, headers: list[tuple[str, str]]) -> None:
        """Kept until the first body bytes (or the end): one socket write, not two."""
        self.status = status
        keep = self.msg.keep_alive and not self.conn.closing
        self.head = response_head(status, reason, headers, self.server.date(), keep)

    def _write(self, data: bytes) -> None:
        head = self.head
        if head:
            self.head = b""
            data = head + data
        self.conn.write(data)

    def finish(self, keep_alive: bool) -> None:
        if self.done:
            return
        self.done = True
        if self.head:  # an answer without a body
            self._write(b"")
        metrics = self.server.proxy.metrics
        metrics.in_flight.dec()
        metrics.count(self.label, self.outcome)
        if self.server.access_log and ACCESS_LOGGER.isEnabledFor(logging.INFO):
            path = self.msg.target.partition("?")[0]
            code = f" {self.code}" if self.code else ""
            ms = (time.perf_counter() - self.started) * 1000
            ACCESS_LOGGER.info("%s %s %d%s %.1fms", self.msg.method, path, self.status, code, ms)
        self.conn.response_done(keep_alive and self.msg.keep_alive)

    # ------------------------------------------------------------ forwarding

    def start(self, upstream: UpstreamConnection, data: bytes, t0: float, body: bool) -> None:
        self.upstream = upstream
        self.t0 = t0
        self.conn.stream_from(self)
        # Last: the caller journals the message as forwarded right after (a kill -9 in
        # between refunds a message the bot got; see meter.admission.reservations).
        upstream.send(self, data, body)

    def check_timeout(self, now: float) -> None:
        """The bot sent nothing for ``upstream_read_timeout_s``: 504, or a truncated answer.
        Called by the server's sweep (a timer per message cost a libuv handle each)."""
        upstream = self.upstream
        if upstream is None or self.done or now < upstream.last_read + self.server.read_timeout:
            return
        upstream.close()
        self.upstream = None
        if self.status and not self.head:  # half answered: the client sees a truncated body
            log.info("upstream timed out mid-response")
            self.conn.abort()
            self.finish(False)
        elif self.status:
            log.info("upstream timed out after its head")
            self._unanswered("timeout", problems.bot_timeout())
        else:
            self._failed("timeout", problems.bot_timeout())

    def _failed(self, failure: Failure, problem: Problem) -> None:
        self.server.proxy.metrics.upstream_children[failure].observe(time.perf_counter() - self.t0)
        self.outcome = "bot_error"
        self.server.spawn(self._refund_then(failure, problem))

    def _unanswered(self, failure: Failure, problem: Problem) -> None:
        """The bot failed after its head (kept, unsent), before any body: answered and
        refunded as before a head (its time observed ``ok``); the head is never sent."""
        self.head, self.chunked, self.close_delimited = b"", False, False
        self.outcome = "bot_error"
        self.server.spawn(self._refund_then(failure, problem))

    async def _refund_then(self, failure: Failure, problem: Problem) -> None:
        if self.admission is not None:
            await self.server.proxy.meter.failed(self.admission, failure)
        self.respond_problem(problem)

    # ------------------------------------------------------------ upstream callbacks

    def on_head(self, status: int, reason: bytes, raw: list[tuple[bytes, bytes]]) -> None:
        metrics = self.server.proxy.metrics
        if status >= 500:
            metrics.upstream_children["5xx"].observe(time.perf_counter() - self.t0)
            if self.admission is not None:  # a bot cannot answer for free by failing
                self._drop_upstream()
                self.outcome = "bot_error"
                self.server.spawn(self._refund_then("5xx", problems.bot_failed()))
                return
        else:
            metrics.upstream_children["ok"].observe(time.perf_counter() - self.t0)
        if self.conn.transport is None:  # the client is gone
            self.client_lost()
            return
        if self.held is not None:  # read, answered once read (gateway.unbilled)
            self.close_delimited = close_delimited(text_headers(raw))
            if not self.held.head(status):  # a failure: answered at once
                self._drop_upstream()
                self.on_complete(False)
            return
        keep = self.msg.keep_alive and not self.conn.closing
        self.head, self.chunked = answer_head(status, reason, raw, self.server.date(), keep)
        self.status = status  # once its head is made (see broken())
        if self.chunked:
            self.close_delimited = close_delimited(text_headers(raw))

    def on_body(self, chunk: bytes) -> None:
        if self.held is not None:
            if self.held.add(chunk):  # enough read: the rest is never read
                self._drop_upstream()
                self.on_complete(False)
        elif self.chunked:
            self._write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
        else:
            self._write(chunk)

    def on_complete(self, keep_alive: bool) -> None:
        upstream, self.upstream = self.upstream, None
        if self.chunked:
            self._write(b"0\r\n\r\n")
        if upstream is not None:
            if keep_alive:
                self.server.pool.release(upstream)
            else:
                upstream.close()
        if self.held is not None and not self.done:
            self._answer_held(self.held)
        self.finish(True)

    def on_lost(self) -> None:
        self.upstream = None
        if self.done:
            return
        if self.close_delimited:  # set once a head came: the answer ended with it
            self.on_complete(False)
        elif not self.status:
            log.info("upstream closed the connection before answering")
            self._failed("5xx", problems.bot_unavailable())
        elif self.head:
            log.info("upstream closed the connection after its head")
            self._unanswered("5xx", problems.bot_unavailable())
        else:
            log.info("upstream failed mid-response")
            self.conn.abort()
            self.finish(False)

    def broken(self, exc: BaseException) -> None:
        """The gateway failed answering (an exception in a callback above; the upstream
        connection is closed): 500 if nothing was sent yet, else the client connection is
        aborted; the charge stands, as on the aiohttp server."""
        log.error("error answering a request", exc_info=exc)
        self.upstream = None
        if self.done:
            return
        self.outcome = "error"
        if self.status and not self.head:  # the answer started: cut it
            self.conn.abort()
            self.finish(False)
            return
        self.head, self.chunked, self.held = b"", False, None
        self.respond_problem(Problem(500, "internal_error", "Internal Server Error"))

    def _answer_held(self, held: Held) -> None:
        out = held.answer()
        if isinstance(out, Problem):  # the bot's failure (gateway.counting.BOT_PROBLEMS)
            self.outcome = "bot_error"
            self.respond_problem(out)
            return
        self._write_head(out.status, out.reason, out.headers())
        if out.body:
            self._write(out.body)

    def _drop_upstream(self) -> None:
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            upstream.close()

    def waiting(self, wait: Wait | None) -> None:
        """The message waits for a connection to its bot (``wait``), or no longer does:
        meanwhile the client going away ends the wait (:meth:`client_lost`)."""
        self.wait = wait
        self.conn.exchange = self if wait is not None else None
        if wait is not None and self.conn.transport is None:
            wait.set_exception(ClientGone())  # gone already

    def client_lost(self) -> None:
        """The client went away: leave the queue for a bot connection, or stop reading
        the bot's answer."""
        wait = self.wait
        if wait is not None:
            if not wait.done():
                wait.set_exception(ClientGone())
            return
        if self.done:
            return
        self._drop_upstream()  # the bot has the request: its charge stands
        self.server.proxy.metrics.client_disconnects.inc()
        log.debug("client went away mid-response")
        self.finish(False)

    def pause(self) -> None:
        if self.upstream is not None:
            self.upstream.pause()

    def resume(self) -> None:
        if self.upstream is not None:
            self.upstream.resume()
