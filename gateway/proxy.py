"""HTTP proxying of ``/hooks`` (channel -> bot) and ``/notify`` (bot -> channel).

A request is admitted before anything is forwarded; the bot is called only for an
admitted or non-billable message. Bodies stream both ways: small request bodies with a
known length are passed as bytes (cheaper), others are streamed (and counted against
``max_body_bytes`` while streaming); responses are written back chunk by chunk as they
arrive. A bot that fails is answered 502/504 and its message refunded per ``refund_on``:

* connection refused or reset before a response: ``connect``, 502 (504: connect timeout);
* no response within ``upstream_read_timeout_s``: ``timeout``, 504;
* a 5xx response: ``5xx``, 502; the bot's body is never passed on for a metered message
  (a bot cannot answer for free by answering 5xx); an invalid answer (one aiohttp's writer
  refuses too, a 204 that declares a body: :mod:`gateway.misframed`, a status line not
  HTTP/1.x: :mod:`gateway.status_lines`) or a 101 no request asked for (``Upgrade`` is
  not forwarded) is ``5xx``, 502 whether metered or not.
* an address the egress policy refuses (:mod:`gateway.egress`): 502
  ``upstream_forbidden``, refunded like ``connect``, nothing sent.
A failure after the response started cannot be answered any more: the client connection
is aborted (truncated body) and nothing is refunded (the bot did answer). The response
starts with its first body bytes (or its end), its head held until then: a bot that sends
a head and then nothing fails as one that sent nothing (:mod:`gateway.answer_back`).

A charged message is confirmed as forwarded (:meth:`Meter.forwarded`) once its request is
with the bot's socket: a buffered body once its first 64 KiB are written (a bot could hold
the last byte back past the refund window), a streamed one from its first chunk, one
without a body once it has its bot connection (not while it waits); the sweeper refunds a
charge never confirmed. A body read after its charge must be in (streamed: begun) within
``charged_body_s``, at most a quarter of the refund window, so none is swept while sent. A
body over ``max_body_bytes`` found while streaming is 413 and stays charged (the client's
doing; the bot got its start); one that stops arriving for ``body_timeout_s`` is 408, one
turned invalid 400, one whose client left 499 (:mod:`gateway.request_body`): the client's
failures, not the bot's (never observed as one), refunded by the sweeper if never
forwarded, kept charged once the bot got its start (its first chunk: a bot never answers
for free, as its answer is never passed on). A chunked body of too many chunks, or of
too much framing (chunk extensions, trailers), is 413 (:mod:`gateway.chunk_framing`):
refused, or refunded at once, if found before that.
A non-billable callback gets a fixed status, never the bot's (:mod:`gateway.unbilled`);
a looping request (:mod:`gateway.traffic_rules`) is refused before anything is metered.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
from aiohttp import payload, web
from yarl import URL

from gateway import chunk_framing as framing
from gateway import misframed
from gateway import traffic_rules as rules
from gateway.answer_back import stream_back
from gateway.bot_connector import ShuttingDown
from gateway.channel_auth import ChannelAuth, Verified
from gateway.channels import Channels
from gateway.client_gone import CLIENT_GONE, ClientGone, ClientWatch
from gateway.counting import Forwarded, counted
from gateway.egress import UpstreamForbidden
from gateway.forwarding import upstream_headers
from gateway.http_rules import body_stalled
from gateway.inbound import inbound_of
from gateway.metering import Charge, Failure, Meter
from gateway.metrics import Metrics
from gateway.problems import Problem, bot_timeout, bot_unavailable
from gateway.request_body import BodyFailed, BodyState, chunks, client_gone
from gateway.sent_body import SentBytes, sent_stream
from gateway.traffic_rules import check_length, forbidden, too_large
from gateway.unbilled import answer
from gateway.upstreams import Upstreams

log = logging.getLogger(__name__)
SMALL_BODY = 64 * 1024
Body = bytes | AsyncIterator[bytes] | None
Sent = Body | payload.Payload


@dataclass(slots=True)
class Proxy:
    """Everything the traffic handlers use, built once per process."""

    session: aiohttp.ClientSession
    upstreams: Upstreams
    channels: Channels
    meter: Meter
    metrics: Metrics
    max_body: int
    auth: ChannelAuth
    metering: bool = True
    body_timeout: float = 30.0
    charged_body_s: float = 30.0  # see the module: a body trickled in past the window

    async def read_body(self, request: web.Request, within: float | None = None) -> bytes:
        """The whole request body, at most ``max_body`` bytes (413 beyond, 408 when it stalls
        or, with ``within``, takes longer in all; others: :mod:`gateway.request_body`)."""
        buf = bytearray()
        timeout = self.body_timeout
        try:
            async with asyncio.timeout(within):
                async for chunk in chunks(request, self.metrics, timeout, timeout):
                    buf += chunk
                    if len(buf) > self.max_body:
                        raise too_large(self.max_body)
        except TimeoutError:
            raise body_stalled(timeout) from None
        return bytes(buf)

    async def _limited(self, request: web.Request, state: BodyState) -> AsyncIterator[bytes]:
        """The body streamed to the bot; the client's failure recorded in ``state``."""
        n = 0
        body = chunks(request, self.metrics, self.body_timeout, self.charged_body_s)
        try:
            async for chunk in body:
                n += len(chunk)
                if n > self.max_body:
                    state.too_large = True
                    raise too_large(self.max_body)
                yield chunk
        except Problem as exc:
            state.fail(exc)
            raise BodyFailed from exc

    def check_length(self, request: web.Request) -> None:
        check_length(request.content_length, self.max_body)

    async def body_of(self, request: web.Request, state: BodyState) -> Body:
        """What to send upstream of a message charged already: small bodies as bytes,
        others as a counted stream (see ``charged_body_s``)."""
        length = request.content_length
        if length is not None and length <= SMALL_BODY:
            return await self.read_body(request, self.charged_body_s) if length else None
        if not request.body_exists:
            return None
        return self._limited(request, state)

    def _confirming(self, body: Body, admission: Charge | None, watch: ClientWatch) -> Sent:
        """The body to send, wrapped so a charged message is confirmed as forwarded as
        soon as its request is handed to the bot's socket, and so a kept connection is
        read again only as its first bytes go out (:meth:`ClientWatch.sending`)."""
        sent = functools.partial(self.meter.forwarded, admission)
        if isinstance(body, bytes):
            return SentBytes(body, sent, watch.sending)
        if body is None:  # once connected: the head then goes out with no await between
            watch.on_connected = sent
            return None
        return sent_stream(body, sent, watch.sending)

    async def forward(
        self,
        request: web.Request,
        url: URL,
        body: Body,
        admission: Charge | None,
        state: BodyState,
        verified: Verified | None = None,
        admitted: rules.Admitted | None = None,
    ) -> web.StreamResponse:
        """Send the request upstream and stream the answer back (an unbilled callback's:
        only what :mod:`gateway.unbilled` lets through)."""
        headers, _ = upstream_headers(request)
        if verified is not None:
            verified.rewrite(headers)
        unbilled = None
        if admitted is not None:
            unbilled = admitted.unbilled
            if admitted.user is not None:  # what was metered (an authenticated channel's)
                admitted.vouch(headers)
        # The tenant (the workspace's owner) whose share of bot connections it takes.
        watch = ClientWatch(request, self.upstreams.tenant(request.match_info["app_id"]))
        data = self._confirming(body, admission, watch)
        t0 = time.perf_counter()
        gone = CLIENT_GONE.set(watch)
        try:
            upstream = await self.session.request(
                request.method, url, headers=headers, data=data, allow_redirects=False
            )
            misframed.refuse(upstream)
        except ClientGone:  # left while its message waited for a bot connection
            self.metrics.client_disconnects.inc()
            await self._failed(admission, "connect")  # never sent
            raise client_gone() from None
        except ShuttingDown:  # still waiting for a place when the grace ended: never sent
            await self._failed(admission, "connect")
            raise bot_unavailable() from None
        except UpstreamForbidden as exc:
            # The egress policy refused the address: nothing was sent, the bot not called.
            log.warning("upstream %s refused by the egress policy: %s", url.host, exc.reason)
            await self._failed(admission, "connect")
            raise forbidden() from None
        except (aiohttp.ClientError, TimeoutError, BodyFailed) as exc:
            failure, status = self._failure_of(exc, url, admission, state)
        else:
            if verified is not None and verified.handshake_challenge is not None:
                return await verified.answer_handshake(upstream)  # only the challenge
            if unbilled is not None:
                return await answer(unbilled, upstream, self.metrics, t0)
            return await stream_back(
                self.meter, self.metrics, request, upstream, admission, t0, state
            )
        finally:
            CLIENT_GONE.reset(gone)
            watch.release()
        self.metrics.upstream_children[failure].observe(time.perf_counter() - t0)
        await self._failed(admission, failure)
        if status == 504:
            raise bot_timeout()
        raise bot_unavailable()

    def _failure_of(
        self, exc: Exception, url: URL, admission: Charge | None, state: BodyState
    ) -> tuple[Failure, int]:
        """The bot's failure an error stands for, and the status to answer. The client's own
        (its body failed, aiohttp's error wrapping it or not) is raised as its problem,
        charged per the module."""
        if state.failed is not None:
            if state.too_large:
                self.meter.forwarded(admission)
            raise state.failed from None
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            return "connect", 504
        if isinstance(exc, aiohttp.ClientConnectorError):
            return "connect", 502
        if isinstance(exc, aiohttp.ServerTimeoutError | TimeoutError):
            return "timeout", 504
        log.info("upstream %s failed: %s", url.host, type(exc).__name__)
        return "5xx", 502

    async def _failed(self, admission: Charge | None, failure: Failure) -> None:
        if admission is not None:
            await self.meter.failed(admission, failure)


async def hooks(proxy: Proxy, request: web.Request) -> web.StreamResponse:
    """``ANY /hooks/{channel}/{app_id}[/{tail}]``: meter, then proxy to the bot."""
    channel = request.match_info["channel"]
    rule = proxy.channels.get(channel)
    return await counted(proxy.metrics, rule.label, _hook(proxy, request, channel))


async def _hook(proxy: Proxy, request: web.Request, channel: str) -> Forwarded:
    app_id = request.match_info["app_id"]
    read_body = functools.partial(proxy.read_body, request)
    inbound = inbound_of(request)
    framing.check(request)  # a chunked body refused as it arrived: before anything else
    to = await rules.route(proxy, inbound, channel, app_id, read_body)
    admitted = await rules.admit(proxy, inbound, to, channel, app_id, read_body)
    admission, state = admitted.admission, BodyState()
    await framing.refund_refused(request, proxy.meter, admission)  # found meanwhile
    body = admitted.body if admitted.have_body else await proxy.body_of(request, state)
    out = await proxy.forward(request, to.url, body, admission, state, to.verified, admitted)
    return out, admission
