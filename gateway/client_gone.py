"""A message whose client left before its bot connection came is never sent (aiohttp path).

aiohttp's server does not cancel a handler whose client went away (``handler_cancellation``
stays off: a cancel can land anywhere in the metering code), so a message waiting in the
client connector's queue for a place (``limit_per_host``: ``upstream_connections_per_bot``)
would be sent, and charged, once a place frees although nobody waits for the answer. The
fast path's pool ends such a wait at once (:mod:`gateway.fastpath.pool`). Here the
question is asked where the connector's queue ends: :class:`ClientCheckingConnector` hands
a connection over only if the request's client is still there (the predicate the handler
put in :data:`CLIENT_GONE` for that request); else it gives the connection back (kept
alive, to the next waiter) and raises :class:`ClientGone` before a byte is written, and
the proxy refunds the message (``connect``). The waiter is not cancelled in the queue:
aiohttp's queue loses the wake-up of a waiter cancelled in the pass it is woken in,
leaving the next one waiting for a place that is free. So a gone message keeps its
place in the queue until it is its turn (or until the connect timeout: 504, refunded).
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING

import aiohttp

if TYPE_CHECKING:
    from aiohttp.client_reqrep import ClientRequest
    from aiohttp.connector import Connection
    from aiohttp.tracing import Trace

# Whether the client of the request being sent has gone; None outside a traffic request.
CLIENT_GONE: ContextVar[Callable[[], bool] | None] = ContextVar("client_gone", default=None)


class ClientGone(Exception):
    """The client went away before its message was sent; nothing was written."""


class ClientCheckingConnector(aiohttp.TCPConnector):
    """A ``TCPConnector`` that hands a connection over only to a client still there."""

    async def connect(
        self,
        req: ClientRequest,
        traces: list[Trace],
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109
    ) -> Connection:
        conn = await super().connect(req, traces, timeout)
        gone = CLIENT_GONE.get()
        if gone is not None and gone():
            conn.release()  # unused: kept alive and handed to the next waiter
            raise ClientGone
        return conn
