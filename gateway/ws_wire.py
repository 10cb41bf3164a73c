"""What the gateway knows of the bytes written to a bot's WebSocket connection.

A client message is confirmed (charged) only once its whole frame is with the kernel,
which then delivers it even if the connection is aborted; aborting discards only what
is still in the transport's own (user-space) buffer. So while the pump runs, the bot's
connection is :func:`unbuffered`: its transport pauses its writer as soon as anything
is left in that buffer (high-water mark 0) and resumes it once the buffer is empty, and
aiohttp's writer waits for that on every send, not only past 64 KiB of output. Each
completed send therefore leaves nothing behind, and at a send's deadline
:func:`buffered` tells exactly whether the frame's tail is still ours to discard.

aiohttp has no public way to do any of this: its writer (``_writer``: ``transport``,
``_limit``) and the transport under it are private. That access is kept here, and
``tests/unit/test_ws_wire.py`` fails loudly if aiohttp changes them.

Over TLS the transport's count leaves out the ciphertext queued under it, so nothing
exact can be said: such a connection is left as it is (:func:`unbuffered` is False) and
a send past its deadline is treated as not taken (aborted, refunded) as before.
"""

from __future__ import annotations

from typing import Any

import aiohttp

# aiohttp's own default for the writer's drain check (its DEFAULT_CHUNK_SIZE).
_WRITER_LIMIT = 2**16


def _writer(upstream: aiohttp.ClientWebSocketResponse) -> Any:
    return upstream._writer


def _transport(upstream: aiohttp.ClientWebSocketResponse) -> Any:
    return _writer(upstream).transport


def unbuffered(upstream: aiohttp.ClientWebSocketResponse) -> bool:
    """Make every send wait until its frame has left the transport's buffer (see the
    module); False (nothing changed) when that cannot be known: TLS, no transport."""
    transport = _transport(upstream)
    if transport is None or transport.get_extra_info("sslcontext") is not None:
        return False
    transport.set_write_buffer_limits(high=0)
    _writer(upstream)._limit = 0
    return True


def buffered_again(upstream: aiohttp.ClientWebSocketResponse) -> None:
    """Undo :func:`unbuffered` (a close frame sent afterwards must not wait on a bot
    that does not read: aiohttp bounds the close by its own timeout)."""
    transport = _transport(upstream)
    if transport is not None and not transport.is_closing():
        transport.set_write_buffer_limits()
    _writer(upstream)._limit = _WRITER_LIMIT


def buffered(upstream: aiohttp.ClientWebSocketResponse) -> int:
    """Bytes written to the bot's connection that the kernel has not taken yet."""
    transport = _transport(upstream)
    return 0 if transport is None else int(transport.get_write_buffer_size())


def pending(upstream: aiohttp.ClientWebSocketResponse) -> bool:
    """Whether anything written to an :func:`unbuffered` connection is still (or was,
    when the connection was lost: the transport's buffer is then gone) in the
    transport's buffer: aiohttp's protocol is paused exactly while it is (high-water 0)."""
    protocol = _writer(upstream).protocol
    if protocol.transport is None:
        return bool(protocol._paused)
    return buffered(upstream) > 0


def close_written(upstream: aiohttp.ClientWebSocketResponse) -> bool:
    """Whether aiohttp wrote (or tried to write) a close frame: it does so by itself when
    the bot's side ends or breaks the protocol, whatever else is in flight."""
    return bool(_writer(upstream)._closing)


def abort(upstream: aiohttp.ClientWebSocketResponse) -> None:
    """Drop the bot's connection now, what is still in the transport's buffer discarded
    (``close()`` would send it first); what the kernel holds is still delivered."""
    _transport(upstream).abort()
