"""The HTTP client the ``stripe`` library talks to Stripe through (asyncio, aiohttp).

The library's own ``AIOHTTPClient`` reads an answer's body outside its error handling:
a body that stalls past the timeout or breaks off escaped as aiohttp's own error (the
webhook answered 500, not 502) and left its connection unreleased. Here the whole
exchange, body included, is one ``async with``: any aiohttp error or timeout becomes the
library's ``APIConnectionError`` (a ``StripeError``: the provider's callers answer 502;
the library retries it as a network error, up to the client's
``max_network_retries``), and the connection is released whatever happens. Redirects
are never followed: a 3xx is an answer the library refuses (a provider error), so the
secret key never goes to another address than ``stripe_api_base``.

An answer's body is at most :data:`MAX_BODY` bytes (Stripe's are kilobytes): a larger
``Content-Length`` is refused unread and no more than ``MAX_BODY + 1`` bytes are ever
read, else the answer is the library's ``APIError`` (not retried). The body is asked
for and taken as sent (``Accept-Encoding: identity``; an answer with any other
``Content-Encoding`` is refused, and the session must not decompress:
``auto_decompress=False``), so a small compressed body cannot inflate to gigabytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aiohttp
import stripe

MAX_BODY = 1 << 20  # bytes of one answer's body (Stripe's answers are kilobytes)


def _too_large(what: str) -> stripe.APIError:
    return stripe.APIError(f"Stripe's answer refused: {what}")


async def _body(resp: aiohttp.ClientResponse) -> bytes:
    """The answer's body, at most :data:`MAX_BODY` bytes, as sent (not decompressed)."""
    encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise _too_large(f"Content-Encoding {encoding[:40]!r} (identity asked)")
    if resp.content_length is not None and resp.content_length > MAX_BODY:
        raise _too_large(f"a body of {resp.content_length} bytes (at most {MAX_BODY})")
    chunks: list[bytes] = []
    size = 0
    while size <= MAX_BODY:
        chunk = await resp.content.read(MAX_BODY + 1 - size)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
    raise _too_large(f"a body of more than {MAX_BODY} bytes")


class StripeHTTP(stripe.AIOHTTPClient):
    """Requests on ``session`` (shared, built with ``auto_decompress=False``), each
    bounded by ``timeout`` (seconds)."""

    def __init__(self, session: aiohttp.ClientSession, timeout: float) -> None:
        super().__init__(session=session, timeout=None)
        self._cg_session = session
        self._cg_timeout = aiohttp.ClientTimeout(total=timeout)

    async def request_async(
        self, method: str, url: str, headers: Mapping[str, str], post_data: Any = None
    ) -> tuple[bytes, int, Mapping[str, str]]:
        try:
            async with self._cg_session.request(
                method,
                url,
                headers={**headers, "Accept-Encoding": "identity"},
                data=post_data,
                timeout=self._cg_timeout,
                allow_redirects=False,  # a 3xx is an error answer: the key goes nowhere else
            ) as resp:
                return await _body(resp), resp.status, resp.headers
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise stripe.APIConnectionError(  # type: ignore[no-untyped-call]
                f"network error talking to Stripe: {type(exc).__name__}", should_retry=True
            ) from None
