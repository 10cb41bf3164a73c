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
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aiohttp
import stripe


class StripeHTTP(stripe.AIOHTTPClient):
    """Requests on ``session`` (shared), each bounded by ``timeout`` (seconds)."""

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
                headers=headers,
                data=post_data,
                timeout=self._cg_timeout,
                allow_redirects=False,  # a 3xx is an error answer: the key goes nowhere else
            ) as resp:
                return await resp.read(), resp.status, resp.headers
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise stripe.APIConnectionError(  # type: ignore[no-untyped-call]
                f"network error talking to Stripe: {type(exc).__name__}", should_retry=True
            ) from None
