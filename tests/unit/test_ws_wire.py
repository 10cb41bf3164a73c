"""gateway/ws_wire.py reaches into aiohttp's WebSocket writer (private): these fail
loudly if aiohttp changes what it relies on, on both loops the gateway runs."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import socket
from types import SimpleNamespace
from typing import Any

import pytest
import uvloop
from aiohttp import ClientWebSocketResponse, WSMsgType
from aiohttp._websocket.writer import WebSocketWriter
from aiohttp.base_protocol import BaseProtocol

from gateway import ws_wire


def test_the_client_response_keeps_its_writer() -> None:
    assert "self._writer = writer" in inspect.getsource(ClientWebSocketResponse.__init__)


async def _exercise() -> None:
    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    theirs.setblocking(False)
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.connect_accepted_socket(lambda: BaseProtocol(loop), ours)
    upstream: Any = SimpleNamespace(_writer=WebSocketWriter(protocol, transport, use_mask=True))
    try:
        assert ws_wire.unbuffered(upstream)
        assert upstream._writer._limit == 0
        # A small frame goes to the kernel at once: nothing left, nothing to wait for.
        await upstream._writer.send_frame(b"x", WSMsgType.BINARY)
        assert ws_wire.buffered(upstream) == 0
        assert not ws_wire.pending(upstream)
        # A frame the kernel cannot take: the send waits until all of it has left.
        send = asyncio.ensure_future(
            upstream._writer.send_frame(b"y" * (1 << 20), WSMsgType.BINARY)
        )
        await asyncio.sleep(0)
        assert not send.done()
        assert ws_wire.buffered(upstream) > 0
        assert ws_wire.pending(upstream)
        while not send.done():
            with contextlib.suppress(BlockingIOError):
                theirs.recv(1 << 16)
            await asyncio.sleep(0)
        await send
        assert ws_wire.buffered(upstream) == 0
        assert not ws_wire.pending(upstream)
        assert not ws_wire.close_written(upstream)
        ws_wire.buffered_again(upstream)
        assert upstream._writer._limit > 0
        await upstream._writer.close(1000)
        assert ws_wire.close_written(upstream)
        ws_wire.abort(upstream)
        await asyncio.sleep(0)
        assert transport.is_closing()
    finally:
        transport.close()
        theirs.close()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
async def test_the_writer_waits_until_its_frame_left_the_buffer(loop: str) -> None:
    if loop == "uvloop":
        await asyncio.to_thread(uvloop.run, _exercise())
    else:
        await _exercise()


class _Told(BaseProtocol):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.lost = asyncio.Event()

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        self.lost.set()  # the transport's socket is closed


async def _paused(ours: socket.socket) -> tuple[Any, Any]:
    """A transport on ``ours`` that reads nothing: what the peer sends stays unread."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.connect_accepted_socket(lambda: _Told(loop), ours)
    transport.pause_reading()
    return transport, SimpleNamespace(_writer=WebSocketWriter(protocol, transport, use_mask=True))


async def _dropped(linger: bool) -> tuple[int, int]:
    """A connection with unread input and more written than its peer has read, dropped
    (``linger``: by :class:`ws_wire.Linger`, else aborted): what the peer then reads of
    what the kernel took, and how much that was."""
    loop = asyncio.get_running_loop()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    ours = socket.create_connection(listener.getsockname())
    theirs, _ = listener.accept()
    listener.close()
    transport, upstream = await _paused(ours)
    theirs.sendall(b"unread" * 100)  # the peer talks; nobody reads it
    written = 0
    while not transport.get_write_buffer_size():  # until the kernel takes no more
        transport.write(b"m" * 4096)
        written += 4096
        await asyncio.sleep(0)
    taken = written - transport.get_write_buffer_size()
    dropping = ws_wire.Linger(60.0)  # a bound for a hang only: the peer ends first
    if linger:
        dropping.drop(upstream)
    else:
        ws_wire.abort(upstream)
    await upstream._writer.protocol.lost.wait()
    theirs.setblocking(False)
    got = 0
    with contextlib.suppress(ConnectionError):
        while chunk := await loop.sock_recv(theirs, 1 << 16):
            got += len(chunk)
    theirs.close()
    await asyncio.wait_for(dropping.finish(), 60)
    return got, taken


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
async def test_a_dropped_connection_delivers_what_the_kernel_took(loop: str) -> None:
    """Unread input made the close a reset, which discards the kernel's send queue."""
    run = (lambda c: asyncio.to_thread(uvloop.run, c)) if loop == "uvloop" else (lambda c: c)
    got, taken = await run(_dropped(linger=True))
    assert got == taken
    got, taken = await run(_dropped(linger=False))
    assert got < taken  # the old abort: the reset this module now avoids


async def _silent() -> bool:
    """A peer that never reads nor ends: the linger ends at its bound."""
    loop = asyncio.get_running_loop()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    ours = socket.create_connection(listener.getsockname())
    theirs, _ = listener.accept()
    listener.close()
    _, upstream = await _paused(ours)
    dropping = ws_wire.Linger(0.01)
    dropping.drop(upstream)
    try:
        await asyncio.wait_for(dropping.finish(), 60)
        theirs.setblocking(False)
        return await loop.sock_recv(theirs, 1) == b""  # the end of the stream came
    finally:
        theirs.close()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
async def test_a_linger_ends_at_its_bound(loop: str) -> None:
    if loop == "uvloop":
        assert await asyncio.to_thread(uvloop.run, _silent())
    else:
        assert await _silent()


async def _stopping_mid_close() -> bool:
    """A bot that stopped reading, its connection full: the gateway stops while the close
    frame waits to be taken. Whether the wait ended with the stop."""
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    transport, upstream = await _paused(ours)
    try:
        assert ws_wire.unbuffered(upstream)
        while not transport.get_write_buffer_size():  # until the kernel takes no more
            transport.write(b"m" * 4096)
            await asyncio.sleep(0)
        relay, going = loop.create_future(), loop.create_future()
        # The answer's bound (600 s) is a bound for a hang only: the stop must cut it.
        answering = asyncio.ensure_future(
            ws_wire.answers_then_close(upstream, asyncio.Lock(), relay, going, 600.0)
        )
        await asyncio.sleep(0)
        assert not answering.done()  # the close frame waits for the bot to read
        going.set_result(None)
        try:
            return await asyncio.wait_for(answering, 30)
        except TimeoutError:
            return False
    finally:
        transport.abort()
        theirs.close()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
async def test_the_gateway_stopping_cuts_a_close_the_bot_does_not_take(loop: str) -> None:
    """The close frame's write waited the whole CLOSE_ANSWER_S whatever the stop, then
    the handler's close waited for the bot as long again: past the shutdown grace (20 s),
    the handler was cancelled, the client never told, the bot's connection reset."""
    if loop == "uvloop":
        assert await asyncio.to_thread(uvloop.run, _stopping_mid_close())
    else:
        assert await _stopping_mid_close()
