"""Bytes a bot sent that wait unread in a kept connection's socket.

A kept connection to a bot is handed to the next message only when nothing waits in its
socket: a byte there came after the last answer ended and before this message was sent
(a bot's duplicate answer, say) and the loop has not read it yet; sent on, the message
would read it as its own answer (another tenant's, maybe: bots are shared by address).
Both traffic paths ask before reuse: the fast path's pool
(:meth:`gateway.fastpath.upstream.UpstreamConnection.reusable`) and aiohttp's
(:class:`gateway.bot_connector.BotConnector`). ``FIONREAD`` takes no byte; one ioctl
per reuse.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import sys
import termios

log = logging.getLogger(__name__)


class StrayBytes(Exception):
    """Bytes wait in a kept connection's socket as its request's first bytes would go
    out (aiohttp's client: :meth:`gateway.client_gone.ClientWatch.sending`): nothing is
    written, the request fails (502, refunded) and the connection is closed."""


def unread(fd: int) -> bool:
    """Whether bytes wait unread in socket ``fd``. A socket that cannot say is left to
    the loop, as before (its failure ends it)."""
    try:
        count = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
    except OSError:
        return False
    return int.from_bytes(count, sys.byteorder) > 0


def transport_unread(transport: asyncio.BaseTransport | None) -> bool:
    """Whether bytes wait unread in ``transport``'s socket (a TLS transport's: the
    encrypted bytes under it; asyncio's and uvloop's ``get_extra_info("socket")``)."""
    if transport is None:
        return False
    sock = transport.get_extra_info("socket")
    if sock is None or not unread(sock.fileno()):
        return False
    log.info("upstream %s sent bytes between answers: closed", transport.get_extra_info("peername"))
    return True
