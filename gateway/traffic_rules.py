"""The rules of a ``/hooks`` message, one implementation for both traffic servers.

A message is decided in two steps, each a function here that the aiohttp handler
(:func:`gateway.proxy.hooks`) and the fast path (:mod:`gateway.fastpath`) both call:

1. :func:`route`: loop check (508), length (413), channel authentication (401/403,
   before anything is metered), the app's upstream (404/502) and the target URL (400
   for dot segments). Nothing is charged: a server may still hand the request on.
2. :func:`admit`: the channel's rules (billable? user, idempotency key; a batch of
   messages, one admission each, all or none, or 422 when it cannot be metered so; a
   signed body whose items are too old or new to tell from a replay: 401,
   :mod:`gateway.channel_stamps`), the message digest of a keyed message, and the
   admission (402/403/409/429/503); a callback the rules skip is refused 403 for a suspended or
   unlicensed app (:meth:`gateway.upstreams.Upstreams.refusal`), else answered as
   :mod:`gateway.unbilled` says. On an authenticated channel whose rules read the user
   from the body, the bot gets the ``X-Channel-User-Id`` and ``Idempotency-Key`` that
   were metered, never a client's (:meth:`Admitted.vouch`).

The problems both servers answer with are built here as well.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import NamedTuple, Protocol

from multidict import CIMultiDict
from yarl import URL

from gateway.channel_auth import ChannelAuth, Verified, without_token
from gateway.channel_stamps import Stamps
from gateway.channels import IDEMPOTENCY_HEADER, USER_HEADER, Channel, Channels, Message
from gateway.fingerprint import keyed_digest
from gateway.forwarding import target_url
from gateway.inbound import Headers, Inbound
from gateway.metering import Charge, Meter
from gateway.metrics import Metrics
from gateway.problems import Problem, Refused, unknown_app
from gateway.unbilled import Unbilled
from gateway.upstreams import NO_UPSTREAM, Upstreams
from gateway.via import passed_here

log = logging.getLogger(__name__)

ReadBody = Callable[[], Awaitable[bytes]]


class Proxy(Protocol):
    """What the rules use of a process's traffic resources (:class:`gateway.proxy.Proxy`)."""

    auth: ChannelAuth
    upstreams: Upstreams
    channels: Channels
    meter: Meter
    metrics: Metrics
    max_body: int
    metering: bool


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


def no_upstream(app_id: str) -> Problem:
    return Problem(502, "no_upstream", "No bot runtime", f"app {app_id} has no upstream")


def missing_user() -> Problem:
    return Problem(
        400,
        "missing_channel_user",
        "Missing channel user",
        f"a billable message needs the {USER_HEADER} header or the channel's user field",
    )


def batched_delivery(why: str) -> Problem:
    return Problem(
        422,
        "batched_delivery",
        "Several messages in one delivery",
        f"the messages of this delivery cannot each be billed: {why}",
    )


def uninspectable_delivery(why: str) -> Problem:
    return Problem(
        422,
        "uninspectable_delivery",
        "Delivery cannot be inspected",
        f"what this delivery holds cannot be told, so it cannot be billed: {why}",
    )


def check_loop(headers: Headers) -> None:
    """508 for a request that carries this deployment's ``Via`` entry (docs/design.md §3;
    :mod:`gateway.via`: its received-by, whole, never a substring)."""
    vias = headers.getall("Via", ())
    if vias and passed_here(vias):
        raise loop_detected()


def check_length(content_length: int | None, limit: int) -> None:
    if content_length is not None and content_length > limit:
        raise too_large(limit)


class Route(NamedTuple):
    """Where a verified message goes."""

    verified: Verified
    url: URL
    rule: Channel


async def upstream_base(proxy: Proxy, app_id: str) -> str:
    """The app's bot base URL: 404 ``unknown_app`` (counted) without the app, 502
    ``no_upstream`` when it has no bot runtime."""
    base = await proxy.upstreams.resolve(app_id)
    if base is None:
        proxy.metrics.refused("unknown_app")
        raise unknown_app(app_id)
    if base == NO_UPSTREAM:
        raise no_upstream(app_id)
    return base


async def route(
    proxy: Proxy, inbound: Inbound, channel: str, app_id: str, read_body: ReadBody
) -> Route:
    """Step 1 (see the module): verified, and where to; nothing charged yet."""
    check_loop(inbound.headers)
    # Channel authentication first: nothing is metered or forwarded unverified.
    check_length(inbound.content_length, proxy.max_body)
    verified = await proxy.auth.verify(inbound, channel, app_id, read_body)
    base = await upstream_base(proxy, app_id)
    url = target_url(base, inbound.raw_path, f"/hooks/{channel}/{app_id}", inbound.tail)
    if verified.authenticated:
        url = without_token(url)  # the channel's credential is not the bot's
    return Route(verified, url, proxy.channels.get(channel))


class Admitted(NamedTuple):
    """Step 2's outcome: the admission (``None``: not metered), the body if read, for a
    callback the channel's rules skip, how its answer is restricted, and what the bot is
    told of its user and key (:meth:`vouch`)."""

    admission: Charge | None
    body: bytes | None
    have_body: bool
    unbilled: Unbilled | None = None
    user: str | None = None  # X-Channel-User-Id to send ("": none); None: as it came
    key: str | None = None  # Idempotency-Key to send, if one came; None: as it came

    def vouch(self, headers: CIMultiDict[str]) -> None:
        """The forwarded headers told what was metered (see :func:`admit`)."""
        if self.user is not None:
            if self.user:
                headers[USER_HEADER] = self.user
            else:
                headers.popall(USER_HEADER, None)
        if self.key is not None and IDEMPOTENCY_HEADER in headers:
            if self.key:
                headers[IDEMPOTENCY_HEADER] = self.key
            else:  # a batch's: each message has its own (gateway.channels)
                headers.popall(IDEMPOTENCY_HEADER, None)


def check_readable(proxy: Proxy, msg: Message, label: str, app_id: str) -> None:
    """422 for a billable callback that cannot be metered (see :mod:`gateway.channels`)."""
    if msg.unreadable:  # never passed unbilled for holding nothing readable
        proxy.metrics.refused("uninspectable_delivery")
        raise uninspectable_delivery(msg.unreadable)
    if msg.several:  # one admission buys one message: never several of them
        # Meta retries the same batch, refused each time: its messages never reach the
        # bot. Counted and logged (which app) for the operator to act on.
        proxy.metrics.refused("batched_delivery")
        log.warning("refused a batched %s delivery to app %s", label, app_id)
        raise batched_delivery(msg.several)


def check_fresh(proxy: Proxy, stamps: Stamps | None) -> None:
    """401 for signed items whose own times cannot be told from a replay's, counted
    (``stale_delivery``: an attack, or Meta retrying past ``IDEMPOTENCY_TTL_S``)."""
    if stamps is not None:
        try:
            proxy.auth.check_fresh(stamps)
        except Refused:
            proxy.metrics.refused("stale_delivery")
            raise


async def check_standing(proxy: Proxy, app_id: str) -> None:
    """403 for a callback not admitted to a suspended or unlicensed app: only the credit
    check is exempt (:meth:`gateway.upstreams.Upstreams.refusal`, read with its upstream)."""
    if proxy.metering and (reason := await proxy.upstreams.refusal(app_id)):
        proxy.metrics.refused(reason)
        raise Refused(reason)


async def admit(
    proxy: Proxy, inbound: Inbound, to: Route, channel: str, app_id: str, read_body: ReadBody
) -> Admitted:
    """Step 2 (see the module): classify the callback and admit a billable one."""
    rule, verified = to.rule, to.verified
    body = verified.body
    if rule.needs_body:
        raw = verified.body if verified.body is not None else await read_body()
        body = raw
        msg = rule.inspect(inbound.headers, raw, authenticated=verified.authenticated)
    else:
        msg = rule.inspect(inbound.headers, None, authenticated=verified.authenticated)
    check_fresh(proxy, msg.stamps)  # a signed replay, billable or not: 401
    if verified.user:  # the credential names the user; a header cannot override it
        if msg.batch:  # ... and so only one: the batch's messages name theirs
            msg = msg._replace(batch=(), several="the credential names one user")
        msg = msg._replace(user=verified.user)
    admission: Charge | None = None
    have_body = rule.needs_body or verified.body is not None
    if msg.billable and proxy.metering:
        check_readable(proxy, msg, rule.label, app_id)
        if msg.batch:  # one admission per message, all or none (gateway.channels)
            if not all(user for user, _ in msg.batch):
                raise missing_user()
            method, path, hs = inbound.method, inbound.raw_path, inbound.headers
            whole = keyed_digest(method, path, body, b"", hs)  # for every message without a part
            digests = [keyed_digest(method, path, body, p, hs) if p else whole for p in msg.parts]
            admission = await proxy.meter.admit_all(app_id, channel, msg.batch, digests)
            # The bot reads each message's user from the body: no header names one.
            return tuple.__new__(Admitted, (admission, body, have_body, None, "", ""))
        if not msg.user:
            raise missing_user()
        digest = ""
        if msg.key:
            # A key names one message: its redeliveries must be that message.
            if not have_body:
                body, have_body = await read_body(), True
            part = msg.parts[0] if msg.parts else b""
            digest = keyed_digest(inbound.method, inbound.raw_path, body, part, inbound.headers)
        admission = await proxy.meter.admit(app_id, channel, msg.user, msg.key, digest=digest)
    unbilled = None
    if not msg.billable:
        await check_standing(proxy, app_id)
        unbilled = Unbilled(msg.challenge)
    user = key = None
    if verified.authenticated and rule.user_pointer is not None:
        # The channel signs the body (or a token), never these headers: the user and key
        # metered are the signed ones, and the bot is told those, not the client's. Both
        # are printable once admitted (meter.admission.wire.check_channel_text); a
        # message not metered names no user the gateway vouches for.
        user, key = ("", None) if admission is None else (msg.user, msg.key)
    # tuple.__new__ is what Admitted(...) does, minus a Python frame (once per message).
    return tuple.__new__(Admitted, (admission, body, have_body, unbilled, user, key))
