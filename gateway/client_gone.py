"""Whether the client of the traffic request being forwarded went away (aiohttp path).

aiohttp's server does not cancel a handler whose client went away (``handler_cancellation``
stays off: a cancel can land anywhere in the metering code), so a message waiting for a
bot connection (:mod:`gateway.bot_connector`) would wait on, and then be sent and
charged, although nobody waits for the answer. The proxy puts a :class:`ClientWatch` of
the request in :data:`CLIENT_GONE` around ``session.request``; the connector ends the
wait with :class:`ClientGone` as soon as the client's connection is lost (the server's
protocol calls back, :class:`LostCallbacks`), and checks again before it hands a
connection over, so nothing is written for a client that left; the proxy refunds the
message. A client that half-closes after its request is not gone (docs/design.md): its
connection is not lost until its answer is written.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING

from gateway.unread import StrayBytes, transport_unread
from meter.redis_layer.keys import workspace_of

if TYPE_CHECKING:
    from aiohttp import web


class ClientGone(Exception):
    """The client went away before its message was sent; nothing was written."""


class LostCallbacks:
    """For the server's per-connection protocol: callbacks run once its connection is
    lost (:meth:`lost`, called by the protocol's ``connection_lost``)."""

    _on_lost: set[Callable[[], None]] | None = None  # set on the instance when first used

    def on_lost(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Run ``callback`` when the connection is lost; returns what forgets it."""
        if self._on_lost is None:
            self._on_lost = set()
        callbacks = self._on_lost
        callbacks.add(callback)
        return lambda: callbacks.discard(callback)

    def lost(self) -> None:
        callbacks, self._on_lost = self._on_lost, None
        for callback in callbacks or ():
            callback()


class ClientWatch:
    """The client connection of one traffic request, and what to call once the request
    has its bot connection (``on_connected``: a bodiless charged message is confirmed as
    forwarded then, its head written with no wait in between, not before the wait).
    ``tenant``: whose share of the bot connections the request takes
    (:mod:`gateway.tenant_share`): as given (:meth:`gateway.upstreams.Upstreams.tenant`),
    else the workspace of the app in the request's route."""

    __slots__ = ("_held", "_request", "on_connected", "tenant")

    def __init__(self, request: web.Request, tenant: str | None = None) -> None:
        self._request = request
        self.on_connected: Callable[[], None] | None = None
        self.tenant = tenant or workspace_of(request.match_info.get("app_id", ""))
        self._held: asyncio.Transport | None = None

    def hold(self, transport: asyncio.Transport) -> None:
        """A kept bot connection was handed to this request, whose body goes out later
        (a task's step, a streamed body's first chunk): nothing is read from it until
        then (:meth:`sending`), so what the bot sends meanwhile waits in its socket,
        never read as this request's answer (:mod:`gateway.unread`). Over TLS they are
        still taken from the socket into the TLS layer's buffer (asyncio's and uvloop's
        SSL protocols read on while the application's reading is paused): not seen."""
        if transport.is_reading():
            transport.pause_reading()
            self._held = transport

    def sending(self) -> None:
        """The request's first bytes are written now: :class:`StrayBytes` (nothing
        written) if bytes wait in its held connection's socket, else reading resumes."""
        transport, self._held = self._held, None
        if transport is None or transport.is_closing():
            return
        if transport_unread(transport):
            raise StrayBytes("the bot sent bytes before this request")
        transport.resume_reading()

    def release(self) -> None:
        """The request is over: a connection still held (never sent on) reads again."""
        transport, self._held = self._held, None
        if transport is not None and not transport.is_closing():
            transport.resume_reading()

    def connected(self) -> None:
        """The request has its bot connection: run ``on_connected`` (once)."""
        if self.on_connected is not None:
            callback, self.on_connected = self.on_connected, None
            callback()

    def gone(self) -> bool:
        transport = self._request.transport
        return transport is None or transport.is_closing()

    def on_lost(self, callback: Callable[[], None]) -> Callable[[], None] | None:
        """Run ``callback`` when the client's connection is lost, if its protocol tells
        (the gateway's does); returns what forgets it."""
        protocol = self._request.protocol
        return protocol.on_lost(callback) if isinstance(protocol, LostCallbacks) else None


# The client of the request being sent; None outside a traffic request.
CLIENT_GONE: ContextVar[ClientWatch | None] = ContextVar("client_gone", default=None)
