"""How the gateway's ports run their aiohttp applications: timeouts and protocol errors.

* **Slow clients.** aiohttp closes a connection whose handler is idle (no complete
  request head yet) ``keepalive_timeout`` seconds after it opened or after its last
  response, however many bytes trickle in meanwhile. ``header_timeout_s`` is that
  limit, so a slow-header (slowloris) connection is closed within it.
* **Half-closed clients.** A client may send its request and then shut down its side
  (TCP FIN) while it waits for the answer: every request it sent in full is answered,
  then the connection is closed. aiohttp closes at the FIN and the answer is lost. A
  request whose body was cut short by the FIN is not answered (closed at once), nor is
  an upgrade (a WebSocket's client that shut its side has left).
* **Clients that do not read.** A connection whose client takes nothing of what is
  written to it for ``header_timeout_s`` (writing paused: its handler waits on
  ``drain``; or closing with answers still buffered) is aborted, as on the fast path;
  aiohttp waited without bound, the connection, its handler and what was buffered or
  pipelined held for good. A WebSocket (upgraded) is left to its pump.
* **Clients that leave.** A connection lost runs the callbacks registered for it
  (:class:`gateway.client_gone.LostCallbacks`): a message waiting for a bot connection
  stops waiting at once.
* **Protocol errors.** What the low-level HTTP parser rejects (malformed request line
  or headers, oversized fields) is answered as problem+json without echoing the input;
  aiohttp's own answer is text/plain with the offending bytes in it.
* **No version.** aiohttp names its and Python's versions in the ``Server`` of every
  answer that has none; the gateway's answers say ``Server: creditgate`` (a bot's own
  ``Server`` passes unchanged), as the fast path's do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, cast

from aiohttp import hdrs, web
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from config import Settings
from gateway.access_log import LOGGER as ACCESS_LOGGER
from gateway.access_log import AccessLogger
from gateway.appkeys import METRICS
from gateway.chunk_feed import ChunkFeed
from gateway.client_gone import LostCallbacks
from gateway.forwarding import SERVER
from gateway.logs import access_log_on
from gateway.problems import INTERIM_BYTES, problem_response

log = logging.getLogger(__name__)


class _ProblemRequestHandler(LostCallbacks, ChunkFeed):
    """aiohttp's per-connection protocol, answering its own errors as problem+json and
    half-closed clients in full, telling when the connection is lost (see the module)."""

    _peer_eof = False  # the client sent FIN (no __slots__ here: attributes more)
    stall_s = 0.0  # header_timeout_s (set by _ProblemServer); 0: no bound
    _own: asyncio.Transport | None = None  # aiohttp drops self.transport as it closes
    _cut: asyncio.TimerHandle | None = None
    _left = 0  # bytes buffered for the client when the bound started

    def _hush(self) -> None:
        if self._quiet is not None and not self._quiet.done():
            self._quiet.set_result(None)  # the client sends no more: _linger ends

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._own = cast(asyncio.Transport, transport)
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._hush()
        self._uncut()
        self._own = None
        super().connection_lost(exc)
        self.lost()

    def pause_writing(self) -> None:
        super().pause_writing()
        self._cut_later()  # the client takes nothing more: aborted unless it reads

    def resume_writing(self) -> None:
        super().resume_writing()
        self._uncut()

    async def start(self) -> None:
        try:
            await super().start()
        finally:  # closing: what is still buffered must be taken within the bound too
            self._cut_later()

    def _cut_later(self) -> None:
        if self.stall_s and self._cut is None and self._own is not None:
            self._left = self._own.get_write_buffer_size()
            self._cut = self._loop.call_later(self.stall_s, self._stalled)

    def _uncut(self) -> None:
        if self._cut is not None:
            self._cut.cancel()
            self._cut = None

    def _stalled(self) -> None:
        self._cut = None
        own = self._own
        if own is None or self._upgraded:
            return
        if own.get_write_buffer_size() < self._left:  # it reads, slowly: bounded again
            self._cut_later()
            return
        log.info("client took nothing for %.0fs: connection aborted", self.stall_s)
        own.abort()

    def eof_received(self) -> bool | None:  # type: ignore[override]
        self._hush()
        if self._upgraded:
            # Switching protocols (a WebSocket): a client that shut its side can say
            # nothing more in the new one, and its reader must see the end (closing
            # runs connection_lost, which tells it); kept open, the socket would be held
            # with its bot connection until the idle timeout.
            return None
        current = self._current_request
        payloads = [payload for _, payload in self._messages]
        if current is not None:
            payloads.append(current.content)
        idle = self._waiter is not None and not self._waiter.done() and not self._messages
        if idle or any(not payload.is_eof() for payload in payloads):
            return None  # nothing complete to answer: the transport closes
        self._peer_eof = True
        return True  # keep the write side open until the last answer is out

    async def _handle_request(self, *args: Any, **kwargs: Any) -> Any:
        request = args[0]
        if self._refused is not None and request.content is self._refused:
            self.close()  # refused while queued behind another: the last answered
        self._handled = request.content
        try:
            answered = await super()._handle_request(*args, **kwargs)
            if self._refused is not None and request.content is self._refused:
                await self._linger()  # its answer is written
            return answered
        finally:
            self._handled = None  # (aiohttp reads what is left of it after, lingering)
            if self._peer_eof and not self._messages:
                self.close()  # the last answer is written: close after it

    async def _linger(self) -> None:
        """What the client of a refused body still sends is dropped unparsed until it
        stops (EOF) or for ``lingering_time``: it reads its answer, not a reset."""
        quiet = self._quiet
        assert quiet is not None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._lingering_time):
                await asyncio.shield(quiet)

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if isinstance(exc, ConnectionError):
            # The client went away while its request was read or answered: counted and
            # logged at DEBUG, not an error with a traceback (hundreds under load).
            _count_disconnect(request)
            log.debug("client went away: %r", exc)
        elif status >= 500:
            self.logger.error("error handling a request", exc_info=exc)
        else:  # a client's malformed request: its bytes are not logged
            log.debug("malformed request (%d %s)", status, type(exc).__name__)
        if request.writer.output_size > request.get(INTERIM_BYTES, 0):  # not a 100 alone
            raise ConnectionError("response already started: cannot send the error")
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        code = "internal_error" if status >= 500 else "malformed_request"
        resp = problem_response(status, code, phrase, None)
        resp.headers[hdrs.SERVER] = SERVER  # no application: no on_response_prepare
        resp.force_close()
        return resp


async def _server_name(request: web.Request, response: web.StreamResponse) -> None:
    """``Server: creditgate`` where aiohttp put its own (it fills in a missing one before
    this signal runs). Its own is its ``SERVER_SOFTWARE`` object itself: a bot's
    ``Server``, parsed from the bot's bytes, is another string even when it reads the
    same (a bot on this Python and aiohttp), and passes unchanged, as on the fast path."""
    if response.headers.get(hdrs.SERVER) is SERVER_SOFTWARE:
        response.headers[hdrs.SERVER] = SERVER


def _count_disconnect(request: BaseRequest) -> None:
    app = getattr(request, "app", None)
    metrics = app.get(METRICS) if app is not None else None
    if metrics is not None:
        metrics.client_disconnects.inc()


class _ProblemServer(web.Server):
    stall_s = 0.0

    def __call__(self) -> RequestHandler:
        # Bodies are never inflated by the protocol, on any port: a chunk whose bytes
        # inflate to nothing records no chunk end (gateway.chunk_framing could not count
        # it), and the traffic servers pass bodies on as they came.
        kwargs = {**self._kwargs, "auto_decompress": False}
        handler = _ProblemRequestHandler(self, loop=self._loop, **kwargs)
        handler.stall_s = self.stall_s
        return handler


class GatewayRunner(web.AppRunner):
    """``web.AppRunner`` with the gateway's connection handling (see the module).
    ``on_grace`` runs as the shutdown grace starts (after the application's on_shutdown,
    right before aiohttp waits for its handlers)."""

    on_grace: Callable[[], None] | None = None

    async def shutdown(self) -> None:
        await super().shutdown()
        if self.on_grace is not None:
            self.on_grace()

    def __init__(self, app: web.Application, settings: Settings, **kwargs: Any) -> None:
        if access_log_on(settings):
            kwargs.setdefault("access_log_class", AccessLogger)
            kwargs.setdefault("access_log", ACCESS_LOGGER)
        kwargs.setdefault("access_log", None)
        kwargs.setdefault("keepalive_timeout", settings.header_timeout_s)
        self._stall_s = settings.header_timeout_s
        kwargs.setdefault("lingering_time", settings.body_linger_s)
        if _server_name not in app.on_response_prepare:
            app.on_response_prepare.append(_server_name)
        super().__init__(app, **kwargs)

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # Same object, one method differs: the protocol it creates per connection.
        server.__class__ = _ProblemServer
        cast(_ProblemServer, server).stall_s = self._stall_s
        return server
