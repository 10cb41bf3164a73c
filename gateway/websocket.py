"""WebSocket proxying on the ``/hooks`` routes.

A request with ``Upgrade: websocket`` must be an opening handshake (RFC 6455 §4.2.1): an
HTTP/1.1 ``GET`` without a body, ``Connection: Upgrade``, ``Sec-WebSocket-Version: 13``
and a ``Sec-WebSocket-Key`` of 16 bytes. Anything else (a ``POST`` with a body, say) is
refused at once, 400 ``invalid_upgrade``, the connection closed (its body is never read,
let alone as a next request), nothing metered or forwarded (:func:`handshake_refusal`);
so is one offering more than :data:`MAX_PROTOCOLS` sub-protocols (see below). The fast
path hands every ``Upgrade`` request to aiohttp, so both servers check the same.
The check is meant to be at least as strict as aiohttp's, so the client's side of the
handshake does not fail once the bot's has been opened.

The gateway opens a WebSocket to the bot (same URL rules as HTTP, ``ws``/``wss``),
then accepts the client's upgrade with the sub-protocol the bot chose, and pumps
messages both ways. Every client -> bot text or binary message is one metered message
(channel user from ``X-Channel-User-Id`` or the ``user`` query parameter, whose bytes
must be UTF-8: :func:`query_user`; no idempotency key), admitted before it is
forwarded. On a channel with a secret the upgrade is verified first
(:mod:`gateway.channel_auth`): an HS256 token's ``sub`` is the user, and neither a
``?token=`` nor a ``?user=`` (the token's user replaces it) is passed on to the bot; a
Bot Framework (``msteams``) channel refuses upgrades (its token names no user, and Bot
Framework never opens a WebSocket to a bot).

Before anything below, an upgrade takes a seat of its worker's and tenant's WebSocket
budget, held for the socket's life, and its bot connection is not one of the HTTP
messages' pool (:mod:`gateway.ws_budget`; past the budget: 503 ``too_many_websockets``,
nothing metered, the bot never contacted).

The upgrade itself is checked first (suspension, licence, the rate limits, read but
not counted, and credit unless the user is inside a paid session: problem+json
402/403/429, the 429 with ``Retry-After``, before the bot connection is opened), not
charged. The handshake is a
request too (path, query, headers): a bot message that comes before the client's first
message answers it, so the handshake is then admitted as one message, and that bot
message is held until it is (:class:`~gateway.ws_charges.Charges`: a bot that greets
costs one message per connection; a connection whose client speaks first, nothing more).
A bot's close frame before the client's first message (its code is passed on) answers it
too: the handshake is admitted as one message before the close is passed on (refused:
1008 with the refusal code, not the bot's). A bot that answers the upgrade with an
ordinary response (any status but 101) handled the request but served the client
nothing (it gets 502 ``upstream_unavailable``, never the bot's status, headers or body):
one message admitted, then refunded as a bot's ``5xx`` failure (``refund_on``).

What still reaches a client of a handshake for free: the sub-protocol the bot picks among
the client's offers (at most log2(8) = 3 bits), whether the bot opened the socket at all
(a refunded 502 says only that it did not), and how the bot's connection ends without
a close frame (1000 at end of stream, 1011 dropped, a protocol error's code); any answer
longer than that is charged.

Closing codes sent to the client:

* ``1008`` (policy violation) with the refusal code as reason (e.g. ``credits_exhausted``)
  when a message is refused; the refused message is not forwarded, and neither is
  anything after it (a refused handshake: no bot message is delivered); the bot gets a
  close frame first, and what it sends before answering it (its answers to the messages
  paid for) still reaches the client, within ``CLOSE_ANSWER_S``; with
  ``invalid_channel_signature`` once the upgrade's credential would no longer verify:
  its token expired (``exp`` plus the leeway), or the channel's secret was rotated,
  removed or added (checked before each client message is admitted), after the same
  close frame to the bot and its answers (:mod:`gateway.ws_credential`);
* ``1013`` (try again later) with reason ``metering_unavailable`` when Redis does not
  answer in fail mode ``closed``;
* ``1001`` (going away) when the gateway shuts down, or with reason ``idle`` when the
  client sent no text or binary message for ``ws_idle_timeout_s``, or none yet for
  ``ws_first_message_timeout_s`` (its pings and the bot's messages keep nothing open);
  the bot connection is closed with 1001 too;
* ``1011`` (internal error) with reason ``upstream_timeout`` when the bot does not take
  a client message (refunded, never delivered) or the answer to its ping within half the
  refund window (it stopped reading; :mod:`gateway.ws_pump`), or ``upstream_unavailable``
  when a message cannot be sent at all;
* the client's own code, answering its close frame: passed on to the bot, whose answers
  to messages paid for still reach the client until the bot answers (within
  ``CLOSE_ANSWER_S``; before any was paid for, the bot's side is closed at once);
* otherwise the bot's own close code is passed on (its reason is not), unless its close
  cut short a client message that is then refunded (1011 then, :mod:`gateway.ws_pump`).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
from functools import partial
from urllib.parse import unquote_to_bytes

import aiohttp
from aiohttp import HttpVersion11, web

from gateway.appkeys import SETTINGS
from gateway.bot_connector import ShuttingDown
from gateway.channel_credentials import TOKEN_PARAM, without_token
from gateway.channels import USER_HEADER
from gateway.client_gone import CLIENT_GONE, ClientGone, ClientWatch
from gateway.egress import UpstreamForbidden
from gateway.forwarding import WS_HANDSHAKE, target_url, upstream_headers
from gateway.problems import Problem, problem_response
from gateway.proxy import Proxy
from gateway.request_body import client_gone
from gateway.traffic_rules import check_loop, forbidden, missing_user
from gateway.ws_budget import WebSockets
from gateway.ws_charges import POLICY_VIOLATION, TRY_AGAIN_LATER, Charges, sendable
from gateway.ws_credential import Credential
from gateway.ws_pump import CLOSE_ANSWER_S, pump
from gateway.ws_wire import Linger, close_client
from meter.errors import InvalidChannelUser

log = logging.getLogger(__name__)
# The bot's pick among the client's offers reaches the client before anything is charged:
# at most log2(MAX_PROTOCOLS) bits of a free answer per handshake (see the module).
MAX_PROTOCOLS = 8
# How long a client may take to take the gateway's close frame and answer it: past it
# its connection is aborted (a client that does not read would hold the socket forever).
# The bot's close, this and the linger (concurrent with this) fit the default grace.
CLIENT_CLOSE_S = 5.0
_TOKEN = frozenset({TOKEN_PARAM})
_SIGNED = _TOKEN | {"user"}


def is_upgrade(request: web.Request) -> bool:
    return request.headers.get("Upgrade", "").lower() == "websocket"


def _handshake_problem(request: web.Request) -> str | None:
    if request.method != "GET" or request.version != HttpVersion11:
        return "a WebSocket opening handshake is an HTTP/1.1 GET"
    headers = request.headers
    if request.body_exists or request.content_length or "Transfer-Encoding" in headers:
        return "a WebSocket opening handshake has no body"
    tokens = {t.strip().lower() for v in headers.getall("Connection", ()) for t in v.split(",")}
    if "upgrade" not in tokens:
        return "Upgrade is not listed in Connection"
    if headers.getall("Sec-WebSocket-Version", ()) != ["13"]:
        return "Sec-WebSocket-Version must be 13"
    keys = headers.getall("Sec-WebSocket-Key", ())
    try:
        if len(keys) != 1 or len(base64.b64decode(keys[0], validate=True)) != 16:
            return "Sec-WebSocket-Key must be 16 bytes in base64"
    except binascii.Error:
        return "Sec-WebSocket-Key must be 16 bytes in base64"
    if len(_offered(request)) > MAX_PROTOCOLS:
        return f"at most {MAX_PROTOCOLS} sub-protocols may be offered"
    return None


def _offered(request: web.Request) -> list[str]:
    """The sub-protocols the client offers, in its order."""
    values = request.headers.getall("Sec-WebSocket-Protocol", ())
    return [p.strip() for v in values for p in v.split(",") if p.strip()]


def query_user(request: web.Request) -> str:
    """The first ``user`` of the query (``+`` a space, as yarl reads it), its bytes
    decoded as strict UTF-8: yarl would make invalid bytes U+FFFD, one user to metering
    for every such spelling while the bot reads the bytes (400 ``invalid_channel_user``)."""
    for part in request.rel_url.raw_query_string.split("&"):
        name, _, value = part.partition("=")
        if unquote_to_bytes(name.replace("+", " ")) == b"user":
            try:
                return unquote_to_bytes(value.replace("+", " ")).decode()
            except UnicodeDecodeError:
                raise InvalidChannelUser("user", "must be printable UTF-8 text") from None
    return ""


def upgrade_refusal(detail: str) -> web.Response:
    """400 ``invalid_upgrade``, the connection closed: nothing metered or forwarded."""
    resp = problem_response(400, "invalid_upgrade", "Invalid WebSocket upgrade", detail)
    resp.force_close()
    return resp


def handshake_refusal(request: web.Request) -> web.Response | None:
    """:func:`upgrade_refusal` for a request asking for a WebSocket that is not an opening
    handshake (see the module); None for a handshake."""
    problem = _handshake_problem(request)
    return None if problem is None else upgrade_refusal(problem)


async def proxy_websocket(
    proxy: Proxy,
    request: web.Request,
    base: str,
    prefix: str,
    sockets: WebSockets,
) -> web.StreamResponse:
    """Proxy one WebSocket connection until either side closes."""
    check_loop(request.headers)
    match = request.match_info
    channel, app_id = match["channel"], match["app_id"]
    verified = await proxy.auth.verify_upgrade(request, channel, app_id)
    user = verified.user or request.headers.get(USER_HEADER) or query_user(request)
    if not user:
        raise missing_user()
    headers, _ = upstream_headers(request, drop=WS_HANDSHAKE)
    verified.rewrite(headers)
    url = target_url(base, request.raw_path, prefix, match.get("tail", ""))
    if verified.authenticated:
        # The channel's credential is not the bot's; nor is a user the token overrides.
        url = without_token(url, _SIGNED if verified.user else _TOKEN)
    if proxy.metering:
        # Suspension, licence, rate limits and credit decide before the bot is dialled.
        await proxy.meter.check(app_id, channel, user)
    protocols = _offered(request)
    # The bot connection is WebSockets' own (gateway.ws_budget), never a place of the
    # messages' pool; the client leaving while it is opened ends the wait.
    # Its name lookups count against the app's tenant, as an HTTP message's do.
    gone = CLIENT_GONE.set(watch := ClientWatch(request, proxy.upstreams.tenant(app_id)))
    try:
        upstream = await sockets.session.ws_connect(
            url,
            headers=headers,
            protocols=protocols,
            max_msg_size=proxy.max_body,
            # Only the pump writes to the bot: it answers pings and closes itself
            # (gateway.ws_pump: nothing may follow a client message in flight).
            autoping=False,
            autoclose=False,
        )
    except ClientGone:
        raise client_gone() from None
    except UpstreamForbidden as exc:
        log.warning("websocket upstream %s refused by the egress policy: %s", url.host, exc.reason)
        raise forbidden() from None
    except aiohttp.WSServerHandshakeError as exc:
        log.info("websocket upstream %s answered the upgrade with %s", url.host, exc.status)
        if proxy.metering:
            await _answered(proxy, app_id, channel, user)
        raise Problem(
            502, "upstream_unavailable", "Bot unavailable", "the bot refused the WebSocket"
        ) from None
    except (aiohttp.ClientError, TimeoutError, ShuttingDown) as exc:
        failure = f"{type(exc).__name__} {getattr(exc, 'status', None)}"
        log.info("websocket upstream %s failed: %s", url.host, failure)
        raise Problem(
            502, "upstream_unavailable", "Bot unavailable", "the bot could not be reached"
        ) from None
    finally:
        CLIENT_GONE.reset(gone)
    client = await _accept(request, upstream, watch, proxy.max_body)
    charges = Charges(proxy, app_id, channel, user, proxy.channels.get(channel).label)
    settings = request.app[SETTINGS]
    send_s = settings.ws_send_s
    linger = Linger(settings.ws_linger_s)  # a dropped bot connection's last bytes
    try:
        credential = Credential(
            verified.expires, partial(proxy.auth.still_keyed, app_id, channel, verified)
        )
        ended = await pump(proxy, client, upstream, charges, sockets, send_s, credential, linger)
        code = sendable(ended.code)
        if not upstream.closed:
            # A refusal's code (it has a reason) is the client's business, not the bot's;
            # a client's own close with the same code (no reason) is passed on.
            refused = ended.reason and code in (POLICY_VIOLATION, TRY_AGAIN_LATER)
            bot_code = 1000 if refused else code
            within = min(send_s, CLOSE_ANSWER_S)
            await linger.close(upstream, bot_code, within, ended.bot_closed)
        if not client.closed:
            message = ended.reason.encode()[:123]
            await close_client(client, request.transport, code, message, CLIENT_CLOSE_S)
    finally:
        await linger.finish()
    return client


async def _accept(
    request: web.Request, upstream: aiohttp.ClientWebSocketResponse, watch: ClientWatch, size: int
) -> web.WebSocketResponse:
    """The client's side, with the bot's sub-protocol; the bot's closed if the client left
    while the bot answered (no socket to hold for it) or its 101 cannot be written."""
    client = web.WebSocketResponse(
        protocols=[upstream.protocol] if upstream.protocol else (),
        max_msg_size=size,
        # The client's close is answered by the handler, once the bot's answers to what
        # it paid for came (gateway.ws_charges.Charges.answers_due).
        autoclose=False,
    )
    try:
        if watch.gone():
            raise client_gone()
        await client.prepare(request)
    except BaseException:
        await upstream.close()
        raise
    return client


async def _answered(proxy: Proxy, app_id: str, channel: str, user: str) -> None:
    """The bot answered the handshake with an ordinary response instead of a 101: it
    handled a request (path, query and all), so it is admitted as one message (counted in
    the rate windows), but the client gets the gateway's 502, never that answer, so it
    was not served: refunded as a bot's failure (``5xx`` of ``refund_on``), whatever the
    status (a 403 or a 200 is no more an answer the client gets than a 500)."""
    with contextlib.suppress(Problem):
        handled = await proxy.meter.admit(app_id, channel, user, "")
        await proxy.meter.failed(handled, "5xx")
