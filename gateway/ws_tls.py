"""The buffers of a bot's WebSocket connection, plain or TLS, for :mod:`gateway.ws_wire`.

Over TLS what aiohttp writes passes two buffers of the gateway's own before the
kernel's: the TLS layer's (plaintext not yet encrypted, records not yet handed on) and
the socket transport's under it, which the TLS transport's count leaves out. A frame is
with the kernel only once both are empty; a send that returned while its records were
still there was counted as taken, and dropping the connection discarded them (charged,
never sent). So a TLS connection is made as exact as a plain one: the socket transport
pauses the TLS layer at its first buffered byte (high-water 0), the TLS layer pauses
aiohttp at its own (high-water 1: 0 would pause it at once, empty, until some later
event), and :func:`flushed` waits after each send until the socket transport is empty
too (:func:`buffered`: both counts).

asyncio and uvloop keep the socket transport under TLS private (asyncio's
``_ssl_protocol._transport``, uvloop's a Cython attribute, found among the TLS
protocol's references); tests/unit/test_ws_tls.py fails loudly if either changes.
Not found, the connection is left as it is (:func:`exact` is False). A plain
connection has the one buffer, its transport's.
"""

from __future__ import annotations

import gc
from typing import Any


def tls(transport: Any) -> bool:
    return transport is not None and transport.get_extra_info("sslcontext") is not None


def under(transport: Any) -> Any | None:
    """The socket transport under the TLS ``transport``; None if not TLS or not found."""
    if not tls(transport):
        return None
    layer = getattr(transport, "_ssl_protocol", None)  # asyncio
    if layer is not None:
        return getattr(layer, "_transport", None)
    layer = transport.get_extra_info("uvloop.sslproto")
    for ref in gc.get_referents(layer) if layer is not None else ():
        if ref is not transport and callable(getattr(ref, "get_write_buffer_size", None)):
            return ref
    return None


def exact(transport: Any) -> bool:
    """Make ``transport`` pause its writer at the first buffered byte (of either layer
    over TLS: see the module); False (nothing changed) when TLS over a layer unknown."""
    if not tls(transport):
        transport.set_write_buffer_limits(high=0)
        return True
    raw = under(transport)
    if raw is None:
        return False
    raw.set_write_buffer_limits(high=0)
    transport.set_write_buffer_limits(high=1, low=0)
    return True


def loose(transport: Any) -> None:
    """Undo :func:`exact`: each layer's own defaults."""
    for layer in (under(transport), transport):
        if layer is not None and not layer.is_closing():
            layer.set_write_buffer_limits()


def buffered(transport: Any) -> int:
    """Bytes written to ``transport`` the kernel has not taken yet, in either layer."""
    raw = under(transport)
    left = int(transport.get_write_buffer_size())
    return left if raw is None else left + int(raw.get_write_buffer_size())


async def flushed(transport: Any, protocol: Any) -> None:
    """Until nothing written to the :func:`exact` TLS ``transport`` is left in either
    layer (at once for a plain one): aiohttp's ``protocol`` is paused (the TLS layer's
    high-water 0: it pauses at once) and waited on, the TLS layer resuming it once the
    socket transport under it drained (raises as aiohttp's drain does once the
    connection is lost). Not cut short by the TLS layer closing (the bot's close_notify:
    asyncio then resumes the writer as the socket transport drains once, its buffer
    refilled from the TLS layer's, which a drop discards): what is left is still ours
    until the kernel takes it or the connection is gone (then the layer's is empty)."""
    if under(transport) is None:
        return
    while buffered(transport):
        transport.set_write_buffer_limits(high=0)
        try:
            await protocol._drain_helper()
        finally:
            if not transport.is_closing():
                transport.set_write_buffer_limits(high=1, low=0)
