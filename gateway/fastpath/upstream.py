"""Keep-alive HTTP/1.1 connections to ``http://`` bots, responses parsed by llhttp.

Each connection is an ``asyncio.Protocol`` with an ``httptools.HttpResponseParser``; the
response is delivered by callbacks to the :class:`~gateway.fastpath.exchange.Exchange`
that owns the connection for one request, which streams it to the client. A connection
whose response ended cleanly and may be kept alive returns to the pool; one that failed,
was abandoned, or idled ``IDLE_S`` is closed. Connections are opened only to addresses
the egress policy allows: IP literals checked as aiohttp's client middleware checks
them, host names resolved by :class:`~gateway.egress.GuardedResolver` at each connect.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Protocol, cast

import httptools

from gateway.egress import GuardedResolver, Verdicts
from meter.accounts.addresses import parse_ip
from meter.accounts.egress import Policy

log = logging.getLogger(__name__)
IDLE_S = 30.0  # an idle connection is closed after this long (aiohttp's keepalive_timeout)
MAX_IDLE_PER_HOST = 256
# A response head is refused (502) past aiohttp's client limits (max_line_size,
# max_field_size, max_headers), so the fast path passes on no head that aiohttp would
# refuse; HEAD_BYTES bounds what llhttp buffers before a field ends (interim 1xx heads
# included): a bot cannot grow the gateway's memory with an endless head. It is twice
# the most those limits allow, so body bytes read with a head never make it refused.
MAX_FIELD = 8190
MAX_HEADERS = 128
HEAD_BYTES = 4 * MAX_FIELD * (MAX_HEADERS + 1)


class ConnectTimeout(Exception):
    """The bot did not accept the connection in time."""


class ConnectFailed(Exception):
    """The bot's address refused or reset the connection."""


class Receiver(Protocol):
    """What an upstream connection tells the request that uses it."""

    def on_head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None: ...
    def on_body(self, chunk: bytes) -> None: ...
    def on_complete(self, keep_alive: bool) -> None: ...
    def on_lost(self) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    """One connection to a bot; serves one exchange at a time."""

    def __init__(self, pool: Pool, key: tuple[str, int]) -> None:
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.receiver: Receiver | None = None
        self.closed = False
        self.idle_since = 0.0
        self.last_read = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._interim = False
        self._head_left = 0  # bytes a head may still take; 0 once it is complete

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its API.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        receiver, self.receiver = self.receiver, None
        if receiver is not None:
            receiver.on_lost()

    def data_received(self, data: bytes) -> None:
        if self.receiver is None:  # a bot talking out of turn: not reusable
            self.close()
            return
        self.last_read = self.pool.loop.time()
        if self._head_left:
            self._head_left -= min(len(data), self._head_left)
            if not self._head_left:
                self._invalid("response head too large")
                return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._invalid(str(exc.__context__ or exc))

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
        self._parser = httptools.HttpResponseParser(self)
        self._head_left = HEAD_BYTES
        assert self.transport is not None
        self.transport.write(data)

    def close(self) -> None:
        """Abandon the connection (its response, if any, is not read further)."""
        self.receiver = None
        if self.transport is not None:
            self.transport.abort()

    def pause(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._reason = b""
        self._headers = []

    def on_status(self, reason: bytes) -> None:
        self._reason += reason
        if len(self._reason) > MAX_FIELD:
            raise ValueError("status line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) > MAX_FIELD or len(value) > MAX_FIELD:
            raise ValueError("header field too long")
        if len(self._headers) == MAX_HEADERS:
            raise ValueError("too many headers")
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 100 or status == 101:  # no request asked to switch protocols
            raise ValueError(f"status {status}")
        self._interim = status < 200
        if not self._interim:
            self._head_left = 0
            if self.receiver is not None:
                self.receiver.on_head(status, self._reason, self._headers)

    def on_body(self, body: bytes) -> None:
        if self.receiver is not None:
            self.receiver.on_body(body)

    def on_message_complete(self) -> None:
        if self._interim:  # 100 Continue and the like: the real answer follows
            self._interim = False
            return
        receiver, self.receiver = self.receiver, None
        if receiver is not None:
            receiver.on_complete(self._parser.should_keep_alive())


class Pool:
    """Idle connections per ``(host, port)``, and connecting under the egress policy."""

    def __init__(self, policy: Policy, *, connect_timeout: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.verdicts = Verdicts(policy)
        self._resolver = GuardedResolver(policy)
        self._connect_timeout = connect_timeout
        self._idle: dict[tuple[str, int], list[UpstreamConnection]] = {}

    def take(self, host: str, port: int) -> UpstreamConnection | None:
        """A kept-alive connection, if one is idle."""
        idle = self._idle.get((host, port))
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                return conn
        return None

    async def connect(self, host: str, port: int) -> UpstreamConnection:
        """A new connection; :class:`UpstreamForbidden`, :class:`ConnectTimeout` or
        :class:`ConnectFailed` when none can be had."""
        if parse_ip(host) is not None:
            addresses = [host]
        else:
            found = await self._resolver.resolve(host, port, socket.AF_UNSPEC)
            addresses = [r["host"] for r in found]
        last: Exception = ConnectFailed(host)
        key = (host, port)
        for address in addresses:
            try:
                _, conn = await asyncio.wait_for(
                    self.loop.create_connection(
                        lambda: UpstreamConnection(self, key), address, port
                    ),
                    self._connect_timeout,
                )
                return conn
            except TimeoutError:
                last = ConnectTimeout(host)
            except OSError as exc:
                last = ConnectFailed(f"{host}: {exc}")
        raise last

    def release(self, conn: UpstreamConnection) -> None:
        if conn.closed or conn.transport is None:
            return
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) >= MAX_IDLE_PER_HOST:
            conn.close()
            return
        conn.idle_since = self.loop.time()
        idle.append(conn)

    def sweep(self, now: float) -> None:
        """Close connections idle for more than ``IDLE_S``."""
        for idle in self._idle.values():
            if idle and now - idle[0].idle_since > IDLE_S:
                keep = [c for c in idle if now - c.idle_since <= IDLE_S]
                for c in idle:
                    if now - c.idle_since > IDLE_S:
                        c.close()
                idle[:] = keep

    def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
