"""What of a request is not with the bot's kernel yet (gateway/unsent.py, the fast path's
gateway/fastpath/written.py), on real loopback sockets whose peer does not read, on
asyncio's loop and on uvloop (the gateway's): the transport tells of bytes it holds
with limits of 0, and the kernel of bytes the peer has not acknowledged."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import pytest
import uvloop

from gateway.fastpath.written import Written
from gateway.unsent import unacked, unsent

HANG_S = 60.0  # only stops a hang
DATA = b"x" * (8 << 20)  # past both sockets' buffers
# Past them too (a send buffer of 4 KiB), under the transports' default limit (64 KiB).
SOME = b"x" * 40_000


def _pair(sndbuf: int) -> tuple[socket.socket, socket.socket]:
    """A connected loopback pair: ours (``sndbuf``) and theirs (a small receive buffer)."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    ours = socket.socket()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    ours.connect(listener.getsockname())
    theirs, _ = listener.accept()
    listener.close()
    ours.setblocking(False)
    theirs.setblocking(False)
    return ours, theirs


async def _read(theirs: socket.socket, n: int) -> None:
    """The peer reads ``n`` bytes."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(HANG_S):
        while n > 0:
            n -= len(await loop.sock_recv(theirs, 1 << 20))


async def _until(done: Callable[[], bool]) -> None:
    """Until ``done()`` holds (observed, the hang bound aside: an acknowledgment in flight)."""
    async with asyncio.timeout(HANG_S):
        while not done():  # noqa: ASYNC110
            await asyncio.sleep(0.001)


async def _exercise() -> None:
    loop = asyncio.get_running_loop()
    ours, theirs = _pair(4096)
    transport, proto = await loop.create_connection(Written, sock=ours)
    try:
        proto.watch_writes(transport)
        assert (proto.unsent, unsent(transport), proto.fd) == (False, False, ours.fileno())
        transport.write(b"GET / HTTP/1.1\r\n\r\n")
        await _read(theirs, 18)
        await _until(lambda: not unsent(transport))
        transport.write(SOME)
        assert proto.unsent  # told as the write left bytes
        assert unsent(transport)
        await _read(theirs, len(SOME))
        await _until(lambda: not proto.unsent)  # told once it was all out
        await _until(lambda: not unsent(transport))
    finally:
        transport.close()
        theirs.close()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
async def test_the_transport_tells_of_every_byte_it_holds(loop: str) -> None:
    if loop == "uvloop":
        await asyncio.to_thread(uvloop.run, _exercise())
    else:
        await _exercise()


async def test_the_kernel_tells_of_bytes_the_peer_has_not_acknowledged() -> None:
    ours, theirs = _pair(1 << 20)
    try:
        assert unacked(ours.fileno()) == 0
        sent = ours.send(DATA)  # the peer's window is smaller: the rest waits in ours
        assert 0 < unacked(ours.fileno()) <= sent
        await _read(theirs, sent)
        await _until(lambda: unacked(ours.fileno()) == 0)
    finally:
        ours.close()
        theirs.close()


def test_a_socket_that_cannot_say_is_taken_for_one_with_nothing_unacknowledged() -> None:
    assert unacked(-1) == 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        assert unacked(udp.fileno()) == 0
    assert not unsent(None)
