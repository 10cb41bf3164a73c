"""What the gateway knows of the bytes written to a bot's WebSocket connection.

A client message is confirmed (charged) only once its whole frame is with the kernel,
which then delivers it to a bot that reads it, even once the connection is dropped
(below); dropping discards only what is still in the transport's own (user-space)
buffer. So while the pump runs, the bot's connection is :func:`unbuffered`: its
transport pauses its writer as soon as anything is left in that buffer (high-water
mark 0) and resumes it once the buffer is empty, and aiohttp's writer waits for that on
every send, not only past 64 KiB of output. Each completed send therefore leaves
nothing behind, and at a send's deadline :func:`buffered` tells exactly whether the
frame's tail is still ours to discard.

aiohttp has no public way to do any of this: its writer (``_writer``: ``transport``,
``_limit``) and the transport under it are private. That access is kept here, and
``tests/unit/test_ws_wire.py`` fails loudly if aiohttp changes them.

"The kernel delivers it" holds only if the connection is never reset: Linux answers
``close()`` with a reset when input is left unread on the socket (a bot that sends while
it stops reading), and a reset throws away the kernel's whole send queue, messages long
charged included. So a connection is dropped (or closed without the bot's answer) by
:class:`Linger`: the transport's buffer is discarded (the transport aborted) while a
duplicate of its socket keeps the connection open; the socket is half-closed at once
(what the kernel holds goes out, then the end of the stream), and what the bot sends is
read and discarded until it ends its side or ``ws_linger_s`` passes, and only then
closed. A bot that reads again within that time gets every message it was charged for;
one that does not loses what its connection still held (the kernel may still deliver it,
unless the bot sends more after the close, which resets the connection): those messages
stay charged, as handed to the bot's own connection (the gateway cannot tell what a bot
read, only what its kernel took). A handler cancelled (the gateway stopping) closes its
lingering socket at once. The head of a frame whose tail was discarded goes out too (it
cannot be taken back from the kernel): a bot reading raw bytes may see the start of that
refunded message, never its end (no WebSocket library delivers an unfinished frame).

Over TLS the same holds with the TLS layer's buffer counted too (:mod:`gateway.ws_tls`:
each send also waits until the socket transport under it is empty); where that layer
cannot be reached nothing exact can be said: the connection is left as it is
(:func:`unbuffered` is False) and a send past its deadline is treated as not taken:
refunded, the connection aborted.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

import aiohttp
from aiohttp import web

from gateway import ws_tls

# aiohttp's own default for the writer's drain check (its DEFAULT_CHUNK_SIZE).
_WRITER_LIMIT = 2**16
_ABNORMAL = 1006  # aiohttp's close code for a close the bot never answered


def _writer(upstream: aiohttp.ClientWebSocketResponse) -> Any:
    return upstream._writer


def _transport(upstream: aiohttp.ClientWebSocketResponse) -> Any:
    return _writer(upstream).transport


def unbuffered(upstream: aiohttp.ClientWebSocketResponse) -> bool:
    """Make every send wait until its frame has left the transport's buffer (see the
    module; over TLS with :func:`sent`); False (nothing changed) when that cannot be
    known: no transport, or TLS over a transport not found."""
    transport = _transport(upstream)
    if transport is None or not ws_tls.exact(transport):
        return False
    _writer(upstream)._limit = 0
    return True


async def sent(upstream: aiohttp.ClientWebSocketResponse) -> None:
    """After a send to an :func:`unbuffered` connection: over TLS, until the socket
    transport under the TLS layer is empty too (aiohttp's send waited for the layer)."""
    await ws_tls.flushed(_transport(upstream), _writer(upstream).protocol)


def buffered_again(upstream: aiohttp.ClientWebSocketResponse) -> None:
    """Undo :func:`unbuffered` (a close frame sent afterwards must not wait on a bot
    that does not read: aiohttp bounds the close by its own timeout)."""
    transport = _transport(upstream)
    if transport is not None:
        ws_tls.loose(transport)
    _writer(upstream)._limit = _WRITER_LIMIT


def buffered(upstream: aiohttp.ClientWebSocketResponse) -> int:
    """Bytes written to the bot's connection that the kernel has not taken yet."""
    transport = _transport(upstream)
    return 0 if transport is None else ws_tls.buffered(transport)


def pending(upstream: aiohttp.ClientWebSocketResponse) -> bool:
    """Whether anything written to an :func:`unbuffered` connection is still (or was,
    when the connection was lost: the transport's buffer is then gone) in the
    transport's buffer: aiohttp's protocol is paused exactly while it is (high-water 0;
    over TLS nothing tells once the connection is lost: not taken)."""
    protocol = _writer(upstream).protocol
    if protocol.transport is None:
        return bool(protocol._paused) or ws_tls.tls(_transport(upstream))
    return buffered(upstream) > 0


async def answers_then_close(
    upstream: aiohttp.ClientWebSocketResponse,
    lock: asyncio.Lock,
    relay: asyncio.Future[Any],
    going: asyncio.Future[Any],
    within_s: float,
    code: int = 1000,
) -> bool:
    """A client message refused (or its credential no longer good, or the client's own
    close frame came): nothing more goes to the bot but a close frame with ``code``
    (under the pump's ``lock``: after a pong being written), and what the bot sends
    before it answers that close, its answers to messages already paid for, still
    reaches the client (``relay``, which ends at the bot's close frame), within
    ``within_s`` (cut short by the gateway stopping, ``going``, as the pump is); the
    client is closed after (1008, or its own close answered). ``upstream.close()`` would
    stop the read under way and drop what comes before the bot's close frame. False:
    the bot did not answer in time (its connection is to be dropped, not closed: it has
    had its wait). The close frame's own write, waiting on a bot that does not read, is
    cut short by the stop too: the handler's close of the bot must still fit the
    shutdown grace."""
    closing = asyncio.ensure_future(_close_frame(upstream, lock, code))
    try:
        async with asyncio.timeout(within_s):
            await asyncio.wait([closing, going], return_when=asyncio.FIRST_COMPLETED)
            if closing.done() and closing.exception() is None:
                await asyncio.wait([relay, going], return_when=asyncio.FIRST_COMPLETED)
    except TimeoutError:
        pass
    finally:
        if not closing.done():
            closing.cancel()  # the write's tail stays in the buffer: dropped or closed after
            await asyncio.wait([closing])
        closing.add_done_callback(_retrieved)
    error = None if closing.cancelled() else closing.exception()
    if error is not None and not isinstance(error, aiohttp.ClientError | ConnectionError):
        raise error
    return relay.done() or going.done()  # an error: gone meanwhile, the relay ends too


async def _close_frame(
    upstream: aiohttp.ClientWebSocketResponse, lock: asyncio.Lock, code: int
) -> None:
    async with lock:
        await _writer(upstream).close(code, b"")


def close_written(upstream: aiohttp.ClientWebSocketResponse) -> bool:
    """Whether aiohttp wrote (or tried to write) a close frame: it does so by itself when
    the bot's side ends or breaks the protocol, whatever else is in flight."""
    return bool(_writer(upstream)._closing)


def abort(upstream: aiohttp.ClientWebSocketResponse) -> None:
    """Drop the bot's connection now, what is still in the transport's buffer discarded
    (``close()`` would send it first); what the kernel holds is delivered only if the
    socket holds no unread input (see :class:`Linger`, which makes sure of it)."""
    _transport(upstream).abort()


class Linger:
    """Ends one bot connection (see the module), dropped (:meth:`drop`) or closed
    (:meth:`close`): the transport's buffer discarded, the kernel's send queue delivered,
    the connection closed once the bot ends its side or ``bound_s`` passed
    (:meth:`finish` waits for that)."""

    def __init__(self, bound_s: float) -> None:
        self.bound_s = bound_s
        self._task: asyncio.Task[None] | None = None

    def drop(self, upstream: aiohttp.ClientWebSocketResponse) -> None:
        self._end(upstream, self._duplicate(upstream), linger=True)

    async def close(
        self,
        upstream: aiohttp.ClientWebSocketResponse,
        code: int,
        within_s: float,
        bot_closed: bool = False,
    ) -> None:
        """A close frame, the bot's answer awaited at most ``within_s`` (aiohttp's own
        wait restarts at every other message the bot sends); unanswered (a bot that
        does not read), the connection is then dropped as by :meth:`drop`. Only one close
        frame is ever written: once the bot's came (``bot_closed``), it is answered if
        the gateway's was not written yet and nothing more is awaited (aiohttp's
        ``close()`` would write a second one, then wait for a second close frame when the
        bot's had no status code); once the gateway's was written (a refusal's, whose
        wait for the answer was cut short), what the bot still sends is the linger's."""
        kept = self._duplicate(upstream)  # before aiohttp closes its descriptor
        written = close_written(upstream)
        try:
            async with asyncio.timeout(within_s):
                if not written and bot_closed:
                    with contextlib.suppress(aiohttp.ClientError, ConnectionError):
                        await _writer(upstream).close(code, b"")  # gone: nothing to answer
                elif not written:
                    await upstream.close(code=code)
        except TimeoutError:
            pass
        except BaseException:
            if kept is not None:
                kept.close()
            raise
        if bot_closed or written:
            linger = not bot_closed
        else:
            linger = upstream.close_code in (None, _ABNORMAL)
        self._end(upstream, kept, linger)
        if not upstream.closed:  # aiohttp's own state, its transport gone: nothing written
            await upstream.close()

    def _duplicate(self, upstream: aiohttp.ClientWebSocketResponse) -> socket.socket | None:
        transport = _transport(upstream)
        if self._task is not None or (ws_tls.tls(transport) and not ws_tls.under(transport)):
            return None
        with contextlib.suppress(OSError, AttributeError):
            return transport.get_extra_info("socket").dup()  # type: ignore[no-any-return]
        return None

    def _end(
        self, upstream: aiohttp.ClientWebSocketResponse, kept: socket.socket | None, linger: bool
    ) -> None:
        # Closes the transport's descriptor (the duplicate holds on), discarding what is
        # left in its buffer: a frame's tail, a close frame a bot that does not read.
        _transport(upstream).abort()
        if kept is None:
            return
        try:
            if not linger:  # the bot answered the close: it read everything before it
                raise OSError
            kept.shutdown(socket.SHUT_WR)  # after what the kernel holds: the end of stream
        except OSError:  # or reset, never connected: nothing left to deliver
            kept.close()
            return
        self._task = asyncio.get_running_loop().create_task(self._linger(kept))

    async def _linger(self, kept: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.bound_s):
                while await loop.sock_recv(kept, 1 << 16):
                    pass  # discarded: unread, it would make the close a reset
        except (OSError, TimeoutError):
            pass
        finally:
            kept.close()

    async def finish(self) -> None:
        """Until the dropped connection (if any) is closed; closed at once if this task is
        being cancelled (the gateway stopping). A CancelledError that is no cancel of the
        task (aiohttp raises one from a client's drain after a cancelled send) waits."""
        task = self._task
        if task is None:
            return
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            task.cancel()
        try:
            await asyncio.wait([task])
        except asyncio.CancelledError:
            task.cancel()
            raise


async def close_client(
    client: web.WebSocketResponse,
    transport: asyncio.Transport | None,
    code: int,
    message: bytes,
    within_s: float,
) -> None:
    """Close the client's side (``transport``: its connection) in at most ``within_s``:
    aiohttp waits, unbounded, for a client that does not read to take the close frame.
    Past the bound, or this task cancelled, the connection is aborted (nothing of the
    client's is metered: what it did not read is lost to it alone). The close runs in a
    task of its own: aiohttp's writers on one connection share one wait, and a
    CancelledError from another's cancel (the pump's) ends only that task."""
    closing = asyncio.ensure_future(client.close(code=code, message=message))
    try:
        await asyncio.wait([closing], timeout=within_s)
    finally:
        if not closing.done() and transport is not None:
            transport.abort()  # the wait ends with the connection (as lost)
        closing.add_done_callback(_retrieved)


def _retrieved(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()
