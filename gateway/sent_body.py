"""Request bodies for aiohttp's client that report when they were handed to the socket
(the moment a charge is confirmed as forwarded, :meth:`gateway.metering.Meter.forwarded`),
and call ``before`` just before (:meth:`gateway.client_gone.ClientWatch.sending`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import payload

CHUNK = 0x10000  # what is written before waiting for the bot to read (aiohttp's LIMIT)


def _nothing() -> None:
    pass


class SentBytes(payload.Payload):
    """A request body that reports when its first bytes are handed to the socket (with
    the head, no wait in between), then writes the rest as the bot reads it.

    Not after the last byte: a bot that stops reading a large body would hold the
    confirmation back past the refund window, have its message swept (refunded), then
    read the rest and answer for free.

    A :class:`~aiohttp.payload.Payload` of its own, not a ``BytesPayload``: that one
    warns (``ResourceWarning``) of a body over 1 MiB, which ``max_body_bytes`` allows
    and which is written chunk by chunk here anyway.
    """

    _value: bytes
    _autoclose = True  # bytes in memory: nothing to close

    def __init__(
        self, value: bytes, on_sent: Callable[[], None], before: Callable[[], None] = _nothing
    ) -> None:
        super().__init__(value, content_type="application/octet-stream")
        self._size = len(value)
        self._on_sent = on_sent
        self._before = before

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return self._value.decode(encoding, errors)

    async def as_bytes(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return self._value

    async def write(self, writer: Any) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(self, writer: Any, content_length: int | None) -> None:
        data = memoryview(self._value)
        if content_length is not None:
            data = data[:content_length]
        self._before()
        await writer.write(data[:CHUNK], drain=False)  # written, not waited for
        self._on_sent()
        for at in range(CHUNK, len(data), CHUNK):
            await writer.write(data[at : at + CHUNK])


async def sent_stream(
    stream: AsyncIterator[bytes], on_sent: Callable[[], None], before: Callable[[], None] = _nothing
) -> AsyncIterator[bytes]:
    # A streamed body is with the bot from its first chunk on (asked for more after the
    # head and that chunk were written): a slow upload must not outlive its reservation
    # and be swept although the bot gets it. ``before``: called as the head goes out
    # (with the first chunk, or alone at the end of an empty stream), nothing between.
    sent = False
    async for chunk in stream:
        if not sent:
            before()
        yield chunk
        if not sent:
            sent = True
            on_sent()
    if not sent:
        before()
        on_sent()
