"""What waits unread in a kept connection's socket: bytes a bot sent, or its close.

A kept connection to a bot is handed to the next message only when nothing waits in its
socket:

* a byte there came after the last answer ended and before this message was sent (a
  bot's duplicate answer, say) and the loop has not read it yet; sent on, the message
  would read it as its own answer (another tenant's, maybe: bots are shared by address);
* the bot's close (FIN or reset) that arrived but the loop has not read yet: a bot whose
  keep-alive timeout is shorter than the gateway's (Node.js closes an idle connection
  after 5 s) closes it as a message comes; sent on, the message fails (502, refunded)
  where a fresh connection would have served it. ``FIONREAD`` counts no close, so the
  socket is polled for readability instead, which either makes true.

Both traffic paths ask before reuse: the fast path's pool
(:meth:`gateway.fastpath.upstream.UpstreamConnection.reusable`) and aiohttp's
(:class:`gateway.bot_connector.BotConnector`); the message then gets another connection.
One ``poll`` with no wait per reuse; nothing is read.
"""

from __future__ import annotations

import asyncio
import logging
import select

log = logging.getLogger(__name__)


class StrayBytes(Exception):
    """Bytes or the bot's close wait in a kept connection's socket as its request's
    first bytes would go out (aiohttp's client:
    :meth:`gateway.client_gone.ClientWatch.sending`): nothing is written, the request
    fails (502, refunded) and the connection is closed."""


# Readable: bytes or a close (FIN: POLLIN, POLLRDHUP) waiting; reset or error: POLLERR,
# POLLHUP, which poll reports whether asked for or not.
_WAITING = select.POLLIN | select.POLLPRI | getattr(select, "POLLRDHUP", 0)


def unread(fd: int) -> bool:
    """Whether bytes or the peer's close wait unread in socket ``fd``. A socket that
    cannot say is left to the loop, as before (its failure ends it)."""
    poller = select.poll()
    try:
        poller.register(fd, _WAITING)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return False


def watch(fd: int) -> select.poll | None:
    """What :func:`waiting` asks about socket ``fd``, made once for a socket asked before
    each reuse (a poll object holds no descriptor of its own; None: ``fd`` cannot say)."""
    poller = select.poll()
    try:
        poller.register(fd, _WAITING)
    except (OSError, ValueError):
        return None
    return poller


def waiting(poller: select.poll) -> bool:
    """:func:`unread` of the socket ``poller`` watches (:func:`watch`)."""
    try:
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return False


def transport_unread(transport: asyncio.BaseTransport | None) -> bool:
    """Whether bytes or the bot's close wait unread in ``transport``'s socket (a TLS
    transport's: the encrypted bytes under it; ``get_extra_info("socket")``)."""
    if transport is None:
        return False
    sock = transport.get_extra_info("socket")
    if sock is None or not unread(sock.fileno()):
        return False
    peer = transport.get_extra_info("peername")
    log.info("upstream %s sent bytes or closed between answers", peer)
    return True
