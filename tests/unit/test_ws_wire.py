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
