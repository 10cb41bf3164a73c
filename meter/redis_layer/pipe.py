"""A lean pipelined connection to one Redis server, for the admission hot path.

redis-py's asyncio client costs about 100 us of CPU per command (pool checkout, retry
wrapper, locks, a task and a timer per ``wait_for``), more than the gateway spends on a
whole message. :class:`RedisPipe` is one :class:`asyncio.Protocol` connection: a call is
its command written to the transport and a callback queued; replies come back in order
(RESP over one connection is FIFO) and are parsed by hiredis, the parser redis-py uses.
No task, future or timer per call.

Framing rules: a command is a RESP array of bulk strings; the n-th reply answers the
n-th command. A connection that fails, or whose oldest call goes unanswered past the
timeout, is closed and every call outstanding on it is told so (the commands may have
run: the caller treats that as ambiguous); the next call opens a new connection.

Only a plain single server (``redis://``, ``unix://``, password and database included)
goes through a pipe; TLS, Cluster and replicated durability keep redis-py.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, cast

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import Connection, UnixDomainSocketConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT

from meter.redis_layer.client import RedisClient

# A reply: what hiredis parsed, or the ResponseError of an error reply, or the
# RedisConnectionError / RedisTimeoutError of a connection that failed (``sent`` tells
# whether the command may have reached Redis).
OnReply = Callable[[Any, bool], None]


def encode(args: Sequence[EncodableT]) -> bytes:
    """One command as a RESP array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, bytes):
            b = a
        elif isinstance(a, str):
            b = a.encode()
        elif isinstance(a, int):
            b = b"%d" % a
        elif isinstance(a, float):
            b = repr(a).encode()
        else:
            b = bytes(a)
        parts.append(b"$%d\r\n%b\r\n" % (len(b), b))
    return b"".join(parts)


def bulks(args: Sequence[bytes]) -> bytes:
    """``args`` as consecutive RESP bulk strings: part of a command built ahead of time
    (:func:`encode` of a whole command is ``b"*<count>\\r\\n"`` followed by these)."""
    return b"".join([b"$%d\r\n%b\r\n" % (len(b), b) for b in args])


class _Call(NamedTuple):
    """A command sent and the callback its reply goes to (made with ``tuple.__new__``
    on the hot path: no frame per call)."""

    on_reply: OnReply
    deadline: float


class _Connection(asyncio.Protocol):
    """One connection's calls in flight; a dropped connection fails what it still owes."""

    def __init__(self, pipe: RedisPipe, timeout: float) -> None:
        self._pipe = pipe
        self._timeout = timeout
        self.transport: asyncio.Transport | None = None
        self._reader = hiredis.Reader(replyError=ResponseError)
        self._calls: collections.deque[_Call] = collections.deque()  # sent, in order
        self._timer: asyncio.TimerHandle | None = None

    def write(self, command: bytes, calls: Sequence[_Call]) -> None:
        """Send ``command`` for ``calls``. Never raises: a write that fails (uvloop's
        transport raises RuntimeError once closed, before ``connection_lost`` has run)
        fails these calls as never sent and drops the connection; the answers come from
        the event loop, never from inside the caller's ``send``."""
        try:
            if self.transport is None:
                raise RedisConnectionError("connection already dropped")
            self.transport.write(command)
        except Exception as exc:
            err = RedisConnectionError(f"writing to redis: {exc!r}")
            self._pipe.lost(self)  # the next call opens another connection
            loop = asyncio.get_running_loop()
            for c in calls:
                loop.call_soon(c.on_reply, err, False)
            loop.call_soon(self.abort, err)  # what was sent before is owed nothing now
            return
        self._calls.extend(calls)
        if self._timer is None and self._calls:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_at(self._calls[0].deadline, self._check_deadline)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        calls = self._calls
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:
                self.abort(RedisConnectionError(f"redis protocol error: {exc!r}"))
                return
            if reply is False:
                return
            if not calls:  # a reply nobody asked for: the stream is out of step
                self.abort(RedisConnectionError("redis sent an unexpected reply"))
                return
            calls.popleft().on_reply(reply, True)
            if calls is not self._calls:  # that reply aborted the connection
                return

    def connection_lost(self, exc: Exception | None) -> None:
        self.abort(RedisConnectionError(f"redis connection lost: {exc!r}"))

    def _check_deadline(self) -> None:
        self._timer = None
        if not self._calls:
            return
        loop = asyncio.get_running_loop()
        if self._calls[0].deadline <= loop.time():
            self.abort(RedisTimeoutError(f"redis did not answer within {self._timeout} s"))
        else:
            self._timer = loop.call_at(self._calls[0].deadline, self._check_deadline)

    def abort(self, err: Exception) -> None:
        """Drop the connection and fail what it still owes (replies that would come later
        have nobody to go to); the pipe's next call opens a new one."""
        self._pipe.lost(self)
        transport, self.transport = self.transport, None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        calls, self._calls = list(self._calls), collections.deque()
        if transport is not None:
            transport.abort()
        for c in calls:
            c.on_reply(err, True)


class RedisPipe:
    """Pipelined commands over one connection at a time; see the module."""

    @classmethod
    def for_client(cls, client: RedisClient, timeout: float) -> RedisPipe | None:
        """A pipe to the server ``client`` talks to, or None where redis-py must stay
        (Cluster, TLS, or any connection class other than plain TCP and Unix)."""
        if not isinstance(client, Redis):
            return None
        pool = client.connection_pool
        kw = pool.connection_kwargs
        if pool.connection_class is Connection:
            where: tuple[str, int] | str = (kw.get("host", "localhost"), kw.get("port", 6379))
        elif pool.connection_class is UnixDomainSocketConnection:
            where = kw["path"]
        else:
            return None
        setup: list[list[EncodableT]] = []
        if kw.get("password"):
            user = kw.get("username")
            setup.append(["AUTH", user, kw["password"]] if user else ["AUTH", kw["password"]])
        if kw.get("db"):
            setup.append(["SELECT", kw["db"]])
        return cls(where, setup, timeout, kw.get("socket_connect_timeout") or timeout)

    def __init__(
        self,
        where: tuple[str, int] | str,
        setup: list[list[EncodableT]],
        timeout: float,
        connect_timeout: float,
    ) -> None:
        self._where = where
        self._setup = [encode(c) for c in setup]
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._conn: _Connection | None = None  # connected
        self._connecting: asyncio.Task[None] | None = None
        self._unsent: list[tuple[bytes, _Call]] = []  # while connecting
        self._closed = False
        # The loop of the first call, every later one's (see Admitter._loop: a system
        # call per get_running_loop() on Python 3.11).
        self._loop: asyncio.AbstractEventLoop | None = None

    def _bind(self) -> asyncio.AbstractEventLoop:
        self._loop = asyncio.get_running_loop()
        return self._loop

    def call(self, args: Sequence[EncodableT], on_reply: OnReply) -> None:
        """Send one command; ``on_reply(reply, sent)`` is called exactly once, from the
        event loop, with the reply or the exception that stands for it."""
        self.send(encode(args), on_reply)

    def send(self, command: bytes, on_reply: OnReply) -> None:
        """:meth:`call` with the command already encoded (:func:`encode`)."""
        loop = self._loop or self._bind()
        c = tuple.__new__(_Call, (on_reply, loop.time() + self._timeout))
        if self._closed:
            loop.call_soon(on_reply, RedisConnectionError("pipe closed"), False)
        elif self._conn is not None:
            self._conn.write(command, (c,))
        else:
            self._unsent.append((command, c))
            if self._connecting is None:
                self._connecting = loop.create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        conn = _Connection(self, self._timeout)
        try:
            if isinstance(self._where, str):
                opening = loop.create_unix_connection(lambda: conn, self._where)
            else:
                opening = loop.create_connection(lambda: conn, *self._where)
            await asyncio.wait_for(opening, self._connect_timeout)
        except BaseException as exc:  # any failure: the calls waiting must hear of it
            # No longer connecting before they hear: a call their callbacks make must
            # start a connection of its own, not wait in _unsent for one that never comes.
            self._connecting = None
            self._fail_unsent(RedisConnectionError(f"connecting to redis {self._where}: {exc!r}"))
            if not isinstance(exc, Exception):
                raise
            return
        self._connecting = None
        if self._closed or conn.transport is None:
            # Closed meanwhile, or the server hung up at once (e.g. maxclients reached).
            err = RedisConnectionError("pipe closed" if self._closed else "redis hung up")
            conn.abort(err)
            self._fail_unsent(err)
            return
        self._conn = conn
        deadline = loop.time() + self._timeout
        if self._setup:
            conn.write(b"".join(self._setup), [_Call(self._on_setup, deadline)] * len(self._setup))
        unsent, self._unsent = self._unsent, []
        conn.write(b"".join(cmd for cmd, _ in unsent), [c for _, c in unsent])

    def _fail_unsent(self, err: Exception) -> None:
        unsent, self._unsent = self._unsent, []
        for _, c in unsent:
            c.on_reply(err, False)

    def _on_setup(self, reply: Any, sent: bool) -> None:
        if isinstance(reply, ResponseError) and self._conn is not None:
            # AUTH or SELECT refused: every command behind it would fail the same way.
            self._conn.abort(RedisConnectionError(f"redis refused the connection setup: {reply}"))

    def lost(self, conn: _Connection) -> None:
        """``conn`` is gone; the next call opens another."""
        if self._conn is conn:
            self._conn = None

    def close(self) -> None:
        """Close the connection; outstanding calls are failed."""
        self._closed = True
        if self._conn is not None:
            self._conn.abort(RedisConnectionError("pipe closed"))
