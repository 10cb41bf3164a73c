"""What of a request is still on its way to the bot as its answer comes (the fast path's
half of :mod:`gateway.unsent`)."""

from __future__ import annotations

import asyncio
from array import array


class Written(asyncio.Protocol):
    """A bot connection's writing side. Its answer came early if bytes of its request
    wait in the transport's buffer (:attr:`unsent`, told by the transport: its limits
    are 0) or, for a request with a body (:attr:`body`), in the socket unacknowledged
    by the bot's kernel (:func:`~gateway.unsent.unacked`: one ``ioctl`` per answer)."""

    unsent = False
    body = False  # the request being answered has a body
    fd = -1
    outq: array[int]  # unacked()'s answer, reused

    def watch_writes(self, transport: asyncio.Transport) -> None:
        """From ``connection_made``: the transport tells of any byte it holds."""
        transport.set_write_buffer_limits(0, 0)
        sock = transport.get_extra_info("socket")
        self.fd = sock.fileno() if sock is not None else -1
        self.outq = array("i", [0])

    def pause_writing(self) -> None:
        self.unsent = True

    def resume_writing(self) -> None:
        self.unsent = False
