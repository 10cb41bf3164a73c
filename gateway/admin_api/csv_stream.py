"""A CSV answer streamed part by part (chunked), that stays what the caller may read.

The first part is read before the answer starts (a store that fails then is a 503).
After that the answer can only be cut: the connection ends without the final chunk, so
a client never takes a cut file for whole. It is cut when reading a part fails (the
store), when the caller may no longer read it (``allowed``, asked before every part
after the first: a token revoked, a console session ended, a member removed meanwhile),
and when the client does not take a part within ``write_timeout_s`` (a client that
stops reading holds neither the connection nor what it was allowed when it began).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing

from aiohttp import web

log = logging.getLogger(__name__)
Allowed = Callable[[], Awaitable[bool]]


async def stream_csv(
    request: web.Request,
    parts: AsyncGenerator[str, None],
    *,
    allowed: Allowed,
    write_timeout_s: float,
) -> web.StreamResponse:
    """``parts`` (the first with the header row) as one chunked ``text/csv`` answer."""
    path = request.raw_path.partition("?")[0]
    async with aclosing(parts):
        first = await anext(parts, "")
        resp = web.StreamResponse(headers={"Content-Type": "text/csv; charset=utf-8"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        slow = f"{path}: the client took no part within {write_timeout_s:g} s"
        if not await _write(resp, first, write_timeout_s):
            return _cut(request, resp, slow)
        async for text in parts:
            if not await allowed():
                return _cut(request, resp, f"{path}: the caller may no longer read it")
            if not await _write(resp, text, write_timeout_s):
                return _cut(request, resp, slow)
        try:
            async with asyncio.timeout(write_timeout_s):
                await resp.write_eof()
        except TimeoutError:
            return _cut(request, resp, slow)
    return resp


async def _write(resp: web.StreamResponse, text: str, within_s: float) -> bool:
    """Whether the client took ``text`` (the write drained) within ``within_s``."""
    try:
        async with asyncio.timeout(within_s):
            await resp.write(text.encode())
    except TimeoutError:
        return False
    return True


def _cut(request: web.Request, resp: web.StreamResponse, why: str) -> web.StreamResponse:
    """The answer ended without its final chunk: the connection aborted, what is still
    buffered for it dropped (aiohttp then finds it closed and sends nothing more)."""
    log.warning("streamed CSV cut: %s", why)
    if request.transport is not None:
        request.transport.abort()
    return resp
