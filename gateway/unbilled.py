"""What a callback that is not billable may answer (docs/design.md §3).

A channel's skip rules (:mod:`gateway.channels`) pass some signed callbacks to the bot
unmetered. The tenant holds its channel secrets and can sign any body that matches a
skip rule, question and all (an MS Teams token does not even cover the body), so such
a callback buys no text: only the class of the answer (below) and when it came (a bot
can choose its delay: about 8 bits a call by timing; not closed), never its status or answer:

* a 5xx is answered 502 ``upstream_error`` (and a 1xx 502 ``upstream_unavailable``),
  as for a metered message: never the bot's failed body;
* any 2xx is answered ``200 OK`` and any other status (3xx, 4xx) ``400 Bad Request``,
  both with an empty body (``Content-Length: 0``) and none of the bot's headers: never
  the bot's own status, body, reason or headers (each carries text: a bot choosing one
  of ~300 statuses would answer 8 bits a call). What the caller learns is only whether
  the bot took the callback. Every configured channel's skipped callbacks get this;
* Slack's URL verification (the built-in ``slack`` channel, ``type`` =
  ``url_verification`` with a ``challenge``): a 2xx whose body, within its first
  :data:`MAX_ANSWER` bytes, contains the request's own challenge is answered 200
  ``{"challenge": "<value>"}`` (a JSON answer Slack accepts); anything else is 502
  ``invalid_handshake_answer``, as for Meta's handshake (:mod:`gateway.channel_auth`).

Such a callback is not admitted: the app's standing (suspended, product not licensed)
is checked by :func:`gateway.traffic_rules.admit` before the bot is called.

At most :data:`MAX_ANSWER` (+ a chunk) of the bot's body is read, so that a short answer
leaves its connection reusable; the rest is never read. Both traffic servers use
:class:`Held` (the fast path from its callbacks, the aiohttp one in :func:`answer`).
"""

from __future__ import annotations

import time
from http import HTTPStatus
from typing import NamedTuple

import aiohttp
import orjson
from aiohttp import web

from gateway.metrics import Metrics
from gateway.problems import (
    Problem,
    bad_handshake_answer,
    bot_failed,
    bot_timeout,
    bot_unavailable,
)

MAX_ANSWER = 16 * 1024
# The only statuses a callback the bot answered (not 5xx) gets (see the module).
TOOK = 200
DECLINED = 400
JSON = "application/json"


class Unbilled(NamedTuple):
    """A skipped callback being forwarded: how its answer is restricted."""

    challenge: str | None = None  # Slack's URL verification: all the answer may carry


class Answer(NamedTuple):
    """What goes back instead of the bot's answer."""

    status: int
    body: bytes = b""

    @property
    def content_type(self) -> str | None:
        return JSON if self.body else None

    @property
    def reason(self) -> bytes:
        try:
            return HTTPStatus(self.status).phrase.encode()
        except ValueError:
            return b""

    def headers(self) -> list[tuple[str, str]]:
        """Content-Type and Content-Length (the server adds its own, e.g. ``Date``)."""
        length = [("Content-Length", str(len(self.body)))]
        return [("Content-Type", JSON), *length] if self.body else length


class Held:
    """The bot's answer to an unbilled callback, read but never passed on."""

    __slots__ = ("got", "status", "unbilled")

    def __init__(self, unbilled: Unbilled) -> None:
        self.unbilled = unbilled
        self.status = 0
        self.got = bytearray()

    def head(self, status: int) -> bool:
        """The bot's status; whether its body is read (not a failure's)."""
        self.status = status
        return 200 <= status < 500

    def add(self, chunk: bytes) -> bool:
        """A chunk of the bot's body; whether enough of it was read."""
        self.got += chunk
        return len(self.got) > MAX_ANSWER

    def answer(self) -> Answer | Problem:
        status, challenge = self.status, self.unbilled.challenge
        if status < 200:  # a 101 nobody asked for (Upgrade is not forwarded)
            return bot_unavailable()
        if status >= 500:
            return bot_failed()
        if challenge is None:
            return Answer(TOOK if status < 300 else DECLINED)
        if status < 300 and challenge.encode() in self.got[:MAX_ANSWER]:
            return Answer(TOOK, orjson.dumps({"challenge": challenge}))
        return bad_handshake_answer("URL verification")


async def answer(
    unbilled: Unbilled, upstream: aiohttp.ClientResponse, metrics: Metrics, t0: float
) -> web.Response:
    """The aiohttp server's answer to ``upstream``, the bot's answer to an unbilled
    callback (see the module); raises the problem it is answered with instead."""
    held = Held(unbilled)
    try:
        read = held.head(upstream.status)
        metrics.upstream_children["ok" if read else "5xx"].observe(time.perf_counter() - t0)
        if read:
            async for chunk in upstream.content.iter_any():
                if held.add(chunk):
                    break
    except TimeoutError:
        raise bot_timeout() from None
    except aiohttp.ClientError:
        raise bot_unavailable() from None
    finally:
        upstream.release()
    out = held.answer()
    if isinstance(out, Problem):
        raise out
    return web.Response(status=out.status, body=out.body or None, content_type=out.content_type)
