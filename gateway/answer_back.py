"""The bot's answer to an HTTP message (``/hooks``, ``/notify``) streamed back to the
client on the aiohttp server (:class:`gateway.proxy.Proxy`; the fast path's is
:mod:`gateway.fastpath.exchange`), by the rules of :mod:`gateway.proxy`.

The answer starts with its first body bytes (or its end): its head is held until then,
as the fast path does (one write, not two). So a bot that sends a head and then nothing
for ``upstream_read_timeout_s`` fails as one that sent nothing: 504 ``upstream_timeout``
(``timeout``), or 502 ``upstream_unavailable`` (``5xx``) when its connection ends
there, refunded per ``refund_on``, its head never sent (nothing of the bot's answer
reaches a client that is refunded). Once the first bytes went out, a failure cuts the
client's connection (a truncated answer) and the charge stands: the client has the
start of the answer. The head's time is observed as ``ok`` in either case.
"""

from __future__ import annotations

import logging
import time

import aiohttp
from aiohttp import web

from gateway.counting import bot_failing
from gateway.forwarding import downstream_headers
from gateway.header_text import answer_reason
from gateway.metering import Charge, Failure, Meter
from gateway.metrics import Metrics
from gateway.problems import bot_failed, bot_timeout, bot_unavailable
from gateway.request_body import BodyState

log = logging.getLogger(__name__)


async def _failed(meter: Meter, admission: Charge | None, failure: Failure) -> None:
    if admission is not None:
        await meter.failed(admission, failure)


async def stream_back(
    meter: Meter,
    metrics: Metrics,
    request: web.Request,
    upstream: aiohttp.ClientResponse,
    admission: Charge | None,
    t0: float,
    state: BodyState,
) -> web.StreamResponse:
    try:
        status = upstream.status
        if bot_failing(status):
            metrics.upstream_children["5xx"].observe(time.perf_counter() - t0)
            await _failed(meter, admission, "5xx")
            if status < 200:  # a 101 (see gateway.proxy)
                raise bot_unavailable()
            if admission is not None:
                raise bot_failed()
        else:
            metrics.upstream_children["ok"].observe(time.perf_counter() - t0)
        reason = answer_reason(status, upstream.reason or "")
        resp = web.StreamResponse(
            status=status, reason=reason, headers=downstream_headers(upstream.headers)
        )
        first = await _first_bytes(meter, upstream, admission, state)
        head = False
        try:
            await resp.prepare(request)
            head = True
            if first:
                await resp.write(first)
            async for chunk in upstream.content.iter_any():
                await resp.write(chunk)
            await resp.write_eof()
        except ConnectionError as exc:
            # The client went away (aiohttp's ClientConnectionResetError is one): a
            # fact of life under load, not an error of the gateway.
            metrics.client_disconnects.inc()
            log.debug("client went away mid-response: %r", exc)
        except (aiohttp.ClientError, TimeoutError) as exc:
            # The answer is half sent: abort so the client sees a truncated body.
            log.info("upstream failed mid-response: %r", exc)
            if request.transport is not None:
                request.transport.abort()
        except ValueError as exc:
            if head:  # not a head the writer refused
                raise
            log.info("upstream answer refused by the writer: %s", exc)  # nothing sent
            await _failed(meter, admission, "5xx")
            raise bot_unavailable() from None
        return resp
    finally:
        upstream.release()


async def _first_bytes(
    meter: Meter, upstream: aiohttp.ClientResponse, admission: Charge | None, state: BodyState
) -> bytes:
    """The answer's first body bytes (empty: it has none), read before its head goes out
    (see the module): failing, the bot failed before answering, unless the request's body
    failed meanwhile (the client's problem, charged per :mod:`gateway.proxy`; the answer is
    then closed, see :class:`BodyState`, also once its head went out: a cut answer)."""
    state.on_failed = upstream.close
    try:
        if state.failed is not None:
            raise state.failed
        return await upstream.content.readany()
    except (aiohttp.ClientError, TimeoutError) as exc:
        if state.failed is not None:
            raise state.failed from None
        log.info("upstream failed after its head: %r", exc)
        timeout = isinstance(exc, TimeoutError)
        await _failed(meter, admission, "timeout" if timeout else "5xx")
        raise (bot_timeout() if timeout else bot_unavailable()) from None
