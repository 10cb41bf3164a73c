"""Bytes of a request its bot cannot have read yet, asked as its answer comes.

A bot that answers before reading the whole of a request's body and keeps the
connection must read the rest and discard it, or close (RFC 9112 §9.3, §6.3); a careless
one reads the rest as further requests, which the client chose, and the next message
sent on that connection (another tenant's: bots are shared by address) gets their
answers. A connection whose answer came while bytes of its request were still in the
gateway (the transport's buffer) or not acknowledged by the bot's kernel (``SIOCOUTQ``:
sent and not acknowledged, or not sent) is therefore never reused. The bot cannot have
read what its kernel has not acknowledged: a bot that read its request whole acknowledged
it in, at the latest, the segment its answer came in, so a sound bot is never taken
for an early one. A body its kernel took (up to its receive buffer) and it left unread
is beyond what a client can tell.
"""

from __future__ import annotations

import asyncio
import fcntl
import sys
import termios
from array import array
from typing import cast

# Linux's SIOCOUTQ is TIOCOUTQ (0x5411); elsewhere nothing is known of the kernel's part.
_OUTQ = getattr(termios, "TIOCOUTQ", None) if sys.platform == "linux" else None


def unacked(fd: int, into: array[int] | None = None) -> int:
    """Bytes written to socket ``fd`` its peer has not acknowledged (0 if unknown).
    ``into``: a buffer of one int the caller reuses for the answer (callgrind: some 2,500
    instructions a call; 7,700 with a bytes argument copied and converted each time)."""
    if _OUTQ is None or fd < 0:
        return 0
    if into is None:
        into = array("i", [0])
    try:
        fcntl.ioctl(fd, _OUTQ, into, True)
    except OSError:
        return 0
    return into[0]


def unsent(transport: asyncio.BaseTransport | None) -> bool:
    """Whether bytes written to ``transport`` wait in its buffer, or in its socket's
    unacknowledged by the peer's kernel (see the module); a closing one: no matter."""
    if transport is None or transport.is_closing():
        return False
    # uvloop's transports have asyncio.Transport's API without subclassing it.
    if cast(asyncio.Transport, transport).get_write_buffer_size():
        return True
    sock = transport.get_extra_info("socket")
    return sock is not None and unacked(sock.fileno()) > 0
