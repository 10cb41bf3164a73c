"""A traffic request's body as it arrives on the aiohttp server, and how it fails on the
client's side (:mod:`gateway.proxy`).

Reading a body fails by the client's doing, never the gateway's nor the bot's, so each
failure is answered as the client's problem (outcome ``client_error``,
:func:`gateway.counting.outcome_of`): a body that stops arriving for ``body_timeout_s``
is 408 ``body_timeout``; one whose framing turns invalid (a malformed chunk) 400
``invalid_body``; one whose client goes away meanwhile (a reset, a connection closed
before the body ended) 499 ``client_gone``, counted in ``client_disconnects``. Anyone
can do any of these, before the request is authenticated too (a signed channel's body
is read before its signature is checked), so none may look like the gateway failing.

A streamed body fails inside aiohttp's client, which wraps the error in its own
(``ClientConnectionError``, the original as its cause): :class:`BodyState` records the
client's problem as it is raised, so the proxy answers that, not the bot's failure.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage

from gateway import chunk_framing as framing
from gateway.http_rules import body_stalled, send_continue
from gateway.metrics import Metrics
from gateway.problems import Problem


class BodyFailed(Exception):
    """A streamed request body failed by the client's doing (its problem: in the
    :class:`BodyState`)."""


class BodyState:
    """What went wrong with a request body while it was streamed to the bot: its
    client's problem (``failed``) and whether it was over the size limit (``too_large``,
    which stays charged whatever the bot got). ``on_failed`` is called (soon) when it
    fails: aiohttp tells its reader of the bot's answer nothing once the answer's head
    came (and stops the read timeout), so the reader is closed from here
    (:mod:`gateway.answer_back`), never left waiting for good."""

    __slots__ = ("failed", "on_failed", "too_large")

    def __init__(self) -> None:
        self.failed: Problem | None = None
        self.too_large = False
        self.on_failed: Callable[[], object] | None = None

    def fail(self, problem: Problem) -> None:
        self.failed = problem
        if self.on_failed is not None:  # not from inside aiohttp's body writer
            asyncio.get_running_loop().call_soon(self.on_failed)


def client_gone() -> Problem:
    return Problem(499, "client_gone", "Client closed request")


def invalid_body(exc: BadHttpMessage) -> Problem:
    return Problem(400, "invalid_body", "Invalid request body", type(exc).__name__)


async def chunks(
    request: web.Request, metrics: Metrics, stall_s: float, first_within: float
) -> AsyncIterator[bytes]:
    """The body as it arrives, its client's failures raised as their problem (see the
    module): 408 once none comes for ``stall_s``, or the first not within
    ``first_within``. A client that sent ``Expect: 100-continue`` is asked for it first."""
    content = request.content
    within = first_within
    try:
        await send_continue(request)
        while True:
            try:
                async with asyncio.timeout(min(within, stall_s)):
                    chunk = await content.readany()
            except TimeoutError:
                raise body_stalled(stall_s) from None
            if not chunk:
                refused = framing.refused(request)  # ended by its bound while waited for
                if refused is not None:
                    raise refused
                return
            within = stall_s
            yield chunk
    except ConnectionError:  # aiohttp's "Connection lost", a reset, a write to a closed one
        metrics.client_disconnects.inc()
        raise client_gone() from None
    except BadHttpMessage as exc:  # a malformed chunk, a body cut short by a close
        if request.transport is None or request.transport.is_closing():
            metrics.client_disconnects.inc()
            raise client_gone() from None
        raise invalid_body(exc) from None
