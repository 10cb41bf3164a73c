"""A client that stops reading its answers, on both traffic servers: it may not hold its
connection, and the answers buffered for it, for ever (gateway.fastpath.connection;
gateway.http_server for aiohttp's, which waited on the client's drain without a bound).

Before, once the last answer was handed to a connection whose client did not read it,
no timeout applied: the connection, its buffered answers and what it had pipelined
behind were kept for good (one client's thousands of such connections, each answered at
no cost to it, held the worker's memory and descriptors). Now the clock of
``header_timeout_s`` runs from the answer: the connection is closed (what is buffered
sent first) and, if its client does not take that within the timeout again, aborted.

The client never reads a byte; the kernel's TCP state of its socket tells whether the
gateway ended the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator

import pytest

from tests.support.bot import SeededGateway
from tests.support.settings import HOST

pytestmark = pytest.mark.usefixtures("traffic_server")

HEADER_TIMEOUT_S = 1.0
HANG_S = 60.0  # a hang bound, not a speed check: the cut comes after 2 x HEADER_TIMEOUT_S
TCP_ESTABLISHED = 1


def tcp_state(sock: socket.socket) -> int:
    """The kernel's TCP state of ``sock`` (tcpi_state), read without reading any data."""
    return int(struct.unpack("B", sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[:1])[0])


@contextlib.asynccontextmanager
async def never_reading(url: str, data: bytes) -> AsyncIterator[socket.socket]:
    """A client connection with a small receive buffer that sends ``data`` and never reads."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (HOST, int(url.rsplit(":", 1)[1])))
    _, writer = await asyncio.open_connection(sock=sock)
    writer.write(data)  # not drained: the gateway stops reading it once it waits
    try:
        yield sock
    finally:
        writer.transport.abort()


async def cut_off(sock: socket.socket) -> bool:
    """Whether the gateway ends the connection (a FIN or a reset) within HANG_S."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + HANG_S
    while tcp_state(sock) == TCP_ESTABLISHED:
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.05)  # polls the kernel's state, bounded above
    return True


async def test_a_client_that_never_reads_pipelined_refusals_is_cut_off(
    seeded_gateway: SeededGateway,
) -> None:
    """Refusals cost the client nothing (unknown app: 404, no bot, no charge): far more of
    them than the kernel and the gateway buffer, so the gateway stops and waits."""
    one = b"GET /hooks/web/stalled_nosuch HTTP/1.1\r\nHost: gw\r\n\r\n"
    async with (
        seeded_gateway("stalled", {}, header_timeout_s=HEADER_TIMEOUT_S) as gw,
        never_reading(gw.url, one * 20_000) as sock,
    ):
        assert await cut_off(sock)
