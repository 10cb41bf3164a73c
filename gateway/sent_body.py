"""Request bodies for aiohttp's client that report when they were handed to the socket
(the moment a charge is confirmed as forwarded, :meth:`gateway.metering.Meter.forwarded`)."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import payload


class SentBytes(payload.BytesPayload):
    """A request body that reports when it has been handed to the socket."""

    def __init__(self, value: bytes, on_sent: Callable[[], None]) -> None:
        super().__init__(value)
        self._on_sent = on_sent

    async def write_with_length(self, writer: Any, content_length: int | None) -> None:
        await super().write_with_length(writer, content_length)
        self._on_sent()


class SentBytesIO(payload.BytesIOPayload):
    def __init__(self, value: io.BytesIO, on_sent: Callable[[], None]) -> None:
        super().__init__(value)
        self._on_sent = on_sent

    async def write_with_length(self, writer: Any, content_length: int | None) -> None:
        await super().write_with_length(writer, content_length)
        self._on_sent()


async def sent_stream(
    stream: AsyncIterator[bytes], on_sent: Callable[[], None]
) -> AsyncIterator[bytes]:
    # A streamed body is with the bot from its first chunk on (asked for more after the
    # head and that chunk were written): a slow upload must not outlive its reservation
    # and be swept although the bot gets it.
    sent = False
    async for chunk in stream:
        yield chunk
        if not sent:
            sent = True
            on_sent()
    if not sent:
        on_sent()
