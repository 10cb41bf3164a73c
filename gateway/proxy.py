"""HTTP proxying of ``/hooks`` (channel -> bot) and ``/notify`` (bot -> channel).

A request is admitted before anything is forwarded; the bot is called only for an
admitted or non-billable message. Bodies stream both ways: small request bodies with a
known length are passed as bytes (cheaper), others are streamed (and counted against
``max_body_bytes`` while streaming); responses are written back chunk by chunk as they
arrive. A bot that fails is answered 502/504 and its message refunded per ``refund_on``:

* connection refused or reset before a response: ``connect``, 502 (504 for a connect
  timeout);
* no response within ``upstream_read_timeout_s``: ``timeout``, 504;
* a 5xx response: ``5xx``, 502; the bot's body is never passed on for a metered message
  (a bot cannot answer for free by answering 5xx).
* an address the egress policy refuses (:mod:`gateway.egress`): 502
  ``upstream_forbidden``, refunded like ``connect``, nothing sent.

A failure after the response started cannot be answered any more: the client connection
is aborted (truncated body) and nothing is refunded (the bot did answer).

A charged message is confirmed as forwarded (:meth:`Meter.forwarded`) right after its
request was handed to the bot's socket: a buffered body once written, a streamed one
from its first chunk, a request without a body just before sending. A charge never
confirmed is refunded by the sweeper. A body over ``max_body_bytes`` found while
streaming is answered 413 and stays charged (the client's doing; the bot got its start).
A request that already passed this gateway (its ``Via`` names it) is refused 508
``loop_detected`` before anything is metered.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import payload, web
from yarl import URL

from gateway.channel_auth import ChannelAuth, Verified, without_token
from gateway.channels import USER_HEADER, Channels
from gateway.egress import UpstreamForbidden
from gateway.forwarding import VIA_TOKEN, downstream_headers, target_url, upstream_headers
from gateway.metering import Admission, Failure, Meter
from gateway.metrics import Metrics
from gateway.problems import Problem, Refused, unknown_app
from gateway.upstreams import NO_UPSTREAM, Upstreams

log = logging.getLogger(__name__)
SMALL_BODY = 64 * 1024
Body = bytes | io.BytesIO | AsyncIterator[bytes] | None


class BodyTooLarge(Exception):
    """A streamed request body passed ``max_body_bytes``."""


def too_large(limit: int) -> Problem:
    return Problem(413, "body_too_large", "Body too large", f"the limit is {limit} bytes")


def forbidden() -> Problem:
    return Problem(
        502,
        "upstream_forbidden",
        "Upstream forbidden",
        "the upstream address may not be reached from the gateway",
    )


def loop_detected() -> Problem:
    return Problem(
        508,
        "loop_detected",
        "Loop detected",
        "this request already passed through the gateway: an upstream points back at it",
    )


def check_loop(request: web.Request) -> None:
    """508 for a request that carries this gateway's ``Via`` entry (docs/design.md §3)."""
    for via in request.headers.getall("Via", ()):
        if VIA_TOKEN in via:
            raise loop_detected()


def bot_failed() -> Problem:
    return Problem(502, "upstream_error", "Bot failed", "the bot answered with an error")


class _SentBytes(payload.BytesPayload):
    """A request body that reports when it has been handed to the socket."""

    def __init__(self, value: bytes, on_sent: Callable[[], None]) -> None:
        super().__init__(value)
        self._on_sent = on_sent

    async def write_with_length(self, writer: Any, content_length: int | None) -> None:
        await super().write_with_length(writer, content_length)
        self._on_sent()


class _SentBytesIO(payload.BytesIOPayload):
    def __init__(self, value: io.BytesIO, on_sent: Callable[[], None]) -> None:
        super().__init__(value)
        self._on_sent = on_sent

    async def write_with_length(self, writer: Any, content_length: int | None) -> None:
        await super().write_with_length(writer, content_length)
        self._on_sent()


async def _sent_stream(
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


def message_digest(request: web.Request, body: Body) -> str:
    """What a redelivery must repeat: method, path with query, and body (16 hex digits)."""
    h = hashlib.blake2b(digest_size=8)
    h.update(request.method.encode())
    h.update(b" " + request.raw_path.encode(errors="surrogateescape") + b"\n")
    if isinstance(body, bytes):
        h.update(body)
    return h.hexdigest()


def missing_user() -> Problem:
    return Problem(
        400,
        "missing_channel_user",
        "Missing channel user",
        f"a billable message needs the {USER_HEADER} header or the channel's user field",
    )


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

    async def read_body(self, request: web.Request) -> bytes:
        """The whole request body, at most ``max_body`` bytes (413 beyond)."""
        buf = bytearray()
        async for chunk in request.content.iter_any():
            buf += chunk
            if len(buf) > self.max_body:
                raise too_large(self.max_body)
        return bytes(buf)

    async def _limited(self, request: web.Request, state: list[bool]) -> AsyncIterator[bytes]:
        n = 0
        async for chunk in request.content.iter_any():
            n += len(chunk)
            if n > self.max_body:
                state[0] = True
                raise BodyTooLarge
            yield chunk

    def check_length(self, request: web.Request) -> None:
        length = request.content_length
        if length is not None and length > self.max_body:
            raise too_large(self.max_body)

    async def body_of(self, request: web.Request, state: list[bool]) -> Body:
        """What to send upstream: small bodies as bytes, others as a counted stream."""
        length = request.content_length
        if length is not None and length <= SMALL_BODY:
            return await self.read_body(request) if length else None
        if not request.body_exists:
            return None
        return self._limited(request, state)

    async def forward(
        self,
        request: web.Request,
        url: URL,
        body: Body,
        admission: Admission | None,
        state: list[bool],
        verified: Verified | None = None,
    ) -> web.StreamResponse:
        """Send the request upstream and stream the answer back."""
        headers, _ = upstream_headers(request)
        if verified is not None:
            verified.rewrite(headers)
        if isinstance(body, bytes) and len(body) > SMALL_BODY:
            body = io.BytesIO(body)  # aiohttp writes big bytes bodies in one blocking call
        data: Body | payload.Payload = body
        if admission is not None:

            def sent() -> None:
                self.meter.forwarded(admission)

            if isinstance(body, bytes):
                data = _SentBytes(body, sent)
            elif isinstance(body, io.BytesIO):
                data = _SentBytesIO(body, sent)
            elif body is None:
                sent()  # no body: the headers go out with no await in between
            else:
                data = _sent_stream(body, sent)
        failure: Failure
        t0 = time.perf_counter()
        try:
            upstream = await self.session.request(
                request.method, url, headers=headers, data=data, allow_redirects=False
            )
        except UpstreamForbidden as exc:
            # The egress policy refused the address: nothing was sent, the bot not called.
            log.warning("upstream %s refused by the egress policy: %s", url.host, exc.reason)
            await self._failed(admission, "connect")
            raise forbidden() from None
        except aiohttp.ConnectionTimeoutError:
            failure, status = "connect", 504
        except aiohttp.ClientConnectorError:
            failure, status = "connect", 502
        except (aiohttp.ServerTimeoutError, TimeoutError):
            failure, status = "timeout", 504
        except (aiohttp.ClientError, BodyTooLarge) as exc:
            if state[0]:
                # The client sent too much: its failure, and the bot got the start of it.
                self.meter.forwarded(admission)
                raise too_large(self.max_body) from None
            log.info(
                "upstream %s failed: %s %s",
                url.host,
                type(exc).__name__,
                getattr(exc, "status", None),
            )
            failure, status = "5xx", 502
        else:
            if verified is not None and verified.handshake_challenge is not None:
                return await verified.answer_handshake(upstream)  # only the challenge
            return await self._stream_back(request, upstream, admission, t0)
        self.metrics.upstream_children[failure].observe(time.perf_counter() - t0)
        await self._failed(admission, failure)
        if status == 504:
            raise Problem(
                504, "upstream_timeout", "Bot timed out", "the bot did not answer in time"
            )
        raise Problem(
            502, "upstream_unavailable", "Bot unavailable", "the bot could not be reached"
        )

    async def _failed(self, admission: Admission | None, failure: Failure) -> None:
        if admission is not None:
            await self.meter.failed(admission, failure)

    async def _stream_back(
        self,
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        admission: Admission | None,
        t0: float,
    ) -> web.StreamResponse:
        try:
            status = upstream.status
            if status >= 500:
                self.metrics.upstream_children["5xx"].observe(time.perf_counter() - t0)
                await self._failed(admission, "5xx")
                if admission is not None:
                    raise bot_failed()
            else:
                self.metrics.upstream_children["ok"].observe(time.perf_counter() - t0)
            resp = web.StreamResponse(
                status=status, reason=upstream.reason, headers=downstream_headers(upstream.headers)
            )
            try:
                await resp.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await resp.write(chunk)
                await resp.write_eof()
            except ConnectionError as exc:
                # The client went away (aiohttp's ClientConnectionResetError is one): a
                # fact of life under load, not an error of the gateway.
                self.metrics.client_disconnects.inc()
                log.debug("client went away mid-response: %r", exc)
            except (aiohttp.ClientError, TimeoutError) as exc:
                # The answer is half sent: abort so the client sees a truncated body.
                log.info("upstream failed mid-response: %r", exc)
                if request.transport is not None:
                    request.transport.abort()
            return resp
        finally:
            upstream.release()


def _prefix(kind: str, channel: str, app_id: str) -> str:
    return f"/{kind}/{channel}/{app_id}"


async def hooks(proxy: Proxy, request: web.Request) -> web.StreamResponse:
    """``ANY /hooks/{channel}/{app_id}[/{tail}]``: meter, then proxy to the bot."""
    match = request.match_info
    channel, app_id = match["channel"], match["app_id"]
    rule = proxy.channels.get(channel)
    metrics = proxy.metrics
    outcome = "error"
    metrics.in_flight.inc()
    try:
        check_loop(request)
        # Channel authentication first: nothing is metered or forwarded unverified.
        proxy.check_length(request)
        verified = await proxy.auth.verify(request, channel, app_id, proxy.read_body)
        base = await proxy.upstreams.resolve(app_id)
        if base is None:
            metrics.refused("unknown_app")
            raise unknown_app(app_id)
        if base == NO_UPSTREAM:
            raise Problem(502, "no_upstream", "No bot runtime", f"app {app_id} has no upstream")
        url = target_url(base, request, _prefix("hooks", channel, app_id))
        if verified.authenticated:
            url = without_token(url)  # the channel's credential is not the bot's
        state = [False]
        body: Body = verified.body
        if rule.needs_body:
            raw = verified.body if verified.body is not None else await proxy.read_body(request)
            body = raw
            msg = rule.inspect(request.headers, raw, authenticated=verified.authenticated)
        else:
            msg = rule.inspect(request.headers, None, authenticated=verified.authenticated)
        if verified.user:  # the credential names the user; a header cannot override it
            msg = msg._replace(user=verified.user)
        admission = None
        have_body = rule.needs_body or verified.body is not None
        if msg.billable and proxy.metering:
            if not msg.user:
                raise missing_user()
            digest = ""
            if msg.key:
                # A key names one message: its redeliveries must be that message.
                if not have_body:
                    body, have_body = await proxy.read_body(request), True
                digest = message_digest(request, body)
            admission = await proxy.meter.admit(app_id, channel, msg.user, msg.key, digest=digest)
        if not have_body:
            body = await proxy.body_of(request, state)
        resp = await proxy.forward(request, url, body, admission, state, verified)
        outcome = "unmetered" if admission is None else "admitted"
        return resp
    except Refused:
        outcome = "refused"
        raise
    finally:
        metrics.in_flight.dec()
        metrics.count(rule.label, outcome)


async def notify(proxy: Proxy, request: web.Request) -> web.StreamResponse:
    """``ANY /notify/{channel}/{app_id}[/{tail}]``: one ``notification`` unit, then out to
    the channel's ``delivery_url``."""
    match = request.match_info
    channel, app_id = match["channel"], match["app_id"]
    rule = proxy.channels.get(channel)
    metrics = proxy.metrics
    outcome = "error"
    metrics.in_flight.inc()
    try:
        check_loop(request)
        verified = await proxy.auth.verify_notify(request, channel, app_id)
        if not rule.delivery_url:
            raise Problem(
                404, "no_delivery_url", "No delivery endpoint", f"channel {channel} has none"
            )
        url = target_url(rule.delivery_url, request, _prefix("notify", channel, app_id))
        proxy.check_length(request)
        headers = request.headers
        # The recipient is not part of the price of a notification; it is recorded if given.
        user = headers.get(USER_HEADER) or "-"
        key = headers.get("Idempotency-Key") or headers.get("X-Request-Id") or ""
        admission = None
        state = [False]
        body: Body = None
        if proxy.metering:
            digest = ""
            if key:
                body = await proxy.read_body(request)
                digest = message_digest(request, body)
            admission = await proxy.meter.admit(app_id, channel, user, key, "n", digest=digest)
        if body is None:
            body = await proxy.body_of(request, state)
        resp = await proxy.forward(request, url, body, admission, state, verified)
        outcome = "unmetered" if admission is None else "admitted"
        return resp
    except Refused:
        outcome = "refused"
        raise
    finally:
        metrics.in_flight.dec()
        metrics.count(rule.label, outcome)
