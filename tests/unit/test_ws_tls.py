"""gateway/ws_tls.py reaches under asyncio's and uvloop's TLS transports (private):
these fail loudly if either loop changes what it relies on. A TLS connection over a
socket pair: a send counts as taken only once neither of the gateway's two buffers
holds any of it (it counted once aiohttp's writer returned, records still buffered),
nor once the bot ended TLS under it (a close_notify) with records still buffered."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import uvloop
from aiohttp import WSMsgType
from aiohttp._websocket.writer import WebSocketWriter
from aiohttp.base_protocol import BaseProtocol

from gateway import ws_tls, ws_wire
from tests.support.settings import HOST
from tests.support.tls import bot_context, make_ca

FRAME = 1 << 20  # far more than the socket pair's buffers hold


class _Bot(asyncio.Protocol):
    """The TLS peer: counts the plaintext it reads."""

    def __init__(self) -> None:
        self.got = 0
        self.more = asyncio.Event()

    def data_received(self, data: bytes) -> None:
        self.got += len(data)
        self.more.set()


def _tls_pair(
    directory: Path,
) -> tuple[ssl.SSLContext, ssl.SSLContext, socket.socket, socket.socket]:
    """A bot's and a client's TLS contexts (a CA of their own under ``directory``) and a
    connected socket pair whose buffers are small: ours sends 4 KiB, theirs takes 4 KiB."""
    ca = make_ca(directory)
    server_context = bot_context(ca, directory)
    client_context = ssl.create_default_context(cafile=str(ca.cert_file))
    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return server_context, client_context, ours, theirs


async def _exercise(directory: Path) -> None:
    loop = asyncio.get_running_loop()
    server_context, client_context, ours, theirs = _tls_pair(directory)
    bot = _Bot()
    accepting = asyncio.ensure_future(
        loop.connect_accepted_socket(lambda: bot, theirs, ssl=server_context)
    )
    transport, protocol = await loop.create_connection(
        lambda: BaseProtocol(loop), sock=ours, ssl=client_context, server_hostname=HOST
    )
    bot_transport, _ = await accepting
    upstream: Any = SimpleNamespace(_writer=WebSocketWriter(protocol, transport, use_mask=True))
    try:
        assert ws_tls.under(transport) is not None
        assert ws_tls.under(transport) is not transport
        assert ws_wire.unbuffered(upstream)
        bot_transport.pause_reading()
        sending = asyncio.ensure_future(_send(upstream, b"y" * FRAME))
        await asyncio.sleep(0)  # the send runs until it waits
        assert ws_wire.pending(upstream)  # written, most of it still the gateway's
        assert ws_wire.buffered(upstream) > 0
        assert not sending.done()  # not taken: its send still waits
        bot_transport.resume_reading()
        await asyncio.wait_for(sending, 60)  # a bound for a hang only
        assert ws_wire.buffered(upstream) == 0
        assert not ws_wire.pending(upstream)
        while bot.got < FRAME:  # the kernel has it all: the bot reads it whole
            bot.more.clear()
            await asyncio.wait_for(bot.more.wait(), 60)
        ws_wire.buffered_again(upstream)
        assert ws_tls.under(transport).get_write_buffer_limits()[1] > 0
    finally:
        transport.abort()
        bot_transport.abort()
        with contextlib.suppress(OSError):
            theirs.close()


async def _send(upstream: Any, data: bytes) -> None:
    await upstream._writer.send_frame(data, WSMsgType.BINARY)
    await ws_wire.sent(upstream)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
async def test_a_tls_send_waits_until_both_layers_are_empty(loop: str, tmp_path: Path) -> None:
    if loop == "uvloop":
        await asyncio.to_thread(uvloop.run, _exercise(tmp_path))
    else:
        await _exercise(tmp_path)


async def _plain() -> None:
    ours, theirs = socket.socketpair()
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_accepted_socket(lambda: BaseProtocol(loop), ours)
    try:
        assert ws_tls.under(transport) is None  # not TLS: ws_wire's own count
    finally:
        transport.abort()
        theirs.close()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
async def test_a_plain_transport_has_no_layer_under_it(loop: str) -> None:
    if loop == "uvloop":
        await asyncio.to_thread(uvloop.run, _plain())
    else:
        await _plain()


async def _bot_handshake(sock: socket.socket, sslobj: ssl.SSLObject, bio: Any) -> None:
    """The bot's side of the TLS handshake, over a raw socket through memory BIOs."""
    loop = asyncio.get_running_loop()
    incoming, outgoing = bio
    while True:
        try:
            sslobj.do_handshake()
            break
        except ssl.SSLWantReadError:
            if pending := outgoing.read():
                await loop.sock_sendall(sock, pending)
            incoming.write(await loop.sock_recv(sock, 1 << 16))
    if pending := outgoing.read():  # its Finished, the session tickets
        await loop.sock_sendall(sock, pending)


async def _close_notify_mid_send(directory: Path) -> None:
    loop = asyncio.get_running_loop()
    server_context, client_context, ours, theirs = _tls_pair(directory)
    theirs.setblocking(False)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    sslobj = server_context.wrap_bio(incoming, outgoing, server_side=True)
    handshake = asyncio.ensure_future(_bot_handshake(theirs, sslobj, (incoming, outgoing)))
    transport, protocol = await loop.create_connection(
        lambda: BaseProtocol(loop), sock=ours, ssl=client_context, server_hostname=HOST
    )
    await handshake
    upstream: Any = SimpleNamespace(_writer=WebSocketWriter(protocol, transport, use_mask=True))
    try:
        assert ws_wire.unbuffered(upstream)
        sending = asyncio.ensure_future(_send(upstream, b"y" * FRAME))
        await asyncio.sleep(0)  # the send runs until it waits: most of it still ours
        assert not sending.done()
        # The bot ends its side of TLS (close_notify, which it may: TLS 1.3 half-close)
        # and reads raw bytes, discarding them, until the gateway's send says it is done.
        with contextlib.suppress(ssl.SSLWantReadError):
            sslobj.unwrap()
        await loop.sock_sendall(theirs, outgoing.read())
        async with asyncio.timeout(60):  # a bound for a hang only
            while not sending.done():
                reading = asyncio.ensure_future(loop.sock_recv(theirs, 1024))
                await asyncio.wait([reading, sending], return_when=asyncio.FIRST_COMPLETED)
                if not reading.done():
                    reading.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await reading
        # Taken (returned without error) only once nothing is left to discard: it
        # returned as the TLS layer closed, its records still in the transport under it
        # (asyncio: 1 MiB of them), which the gateway's drop then discarded. (An error,
        # the connection lost, would be not taken: refunded.)
        if sending.exception() is None:
            assert ws_wire.buffered(upstream) == 0
    finally:
        transport.abort()
        with contextlib.suppress(OSError):
            theirs.close()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
async def test_a_send_is_not_taken_as_the_bot_ends_tls_under_it(loop: str, tmp_path: Path) -> None:
    if loop == "uvloop":
        await asyncio.to_thread(uvloop.run, _close_notify_mid_send(tmp_path))
    else:
        await _close_notify_mid_send(tmp_path)
