"""The two directions of one proxied WebSocket (:mod:`gateway.websocket` opens both sides).

Client -> bot: each text or binary message is admitted (:class:`~gateway.ws_charges.Charges`),
then handed to the bot's socket and confirmed as forwarded once sent. A send that waits
on a bot that stopped reading (aiohttp's send waits for the socket to drain, and the bot
decides how long) waits at most ``send_s``: half the refund window, never longer than the
idle timeout. Past it the bot's connection is aborted, its buffered frame discarded with
it (``close()`` would flush it first), and only then is the message refunded, whatever
``refund_on`` says: it never reached the bot. The client is closed 1011
``upstream_timeout``. So a message is charged exactly once and the bot never gets one
that is not paid: a message is confirmed only once sent, which is long before the
sweeper's deadline (``refund_window_s`` after the charge), so the sweeper never refunds
one the bot may read; a refunded one can no longer reach the bot. A send cut short
because the other direction ended aborts the bot's connection the same way (the
unconfirmed message is then the sweeper's to refund).

Bot -> client: each message is delivered once the connection has paid its way
(:meth:`~gateway.ws_charges.Charges.bot_message`); bot messages are not metered.

The upgrade's credential (:class:`Credential`) holds for the socket's life only while
it would still verify: the socket is closed 1008 ``invalid_channel_signature`` once the
token's ``exp`` (plus the leeway) passes, and before a client message is admitted once
the channel's key is no longer the one it verified with (rotated, removed, added): the
per-worker key cache reads it again at most every ``channel_secret_max_age_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import NamedTuple

import aiohttp
from aiohttp import WSMsgType, web

from gateway.proxy import Proxy
from gateway.ws_budget import GOING_AWAY, WebSockets
from gateway.ws_charges import POLICY_VIOLATION, Charges, Closing

INTERNAL_ERROR = 1011
INVALID_CREDENTIAL = "invalid_channel_signature"


class Credential(NamedTuple):
    """What the upgrade verified, checked for the socket's life: ``expires``, past which
    its token no longer verifies (epoch s; 0: no token), and ``current()``, whether the
    channel's key is still the one it verified with."""

    expires: float
    current: Callable[[], Awaitable[bool]]


async def pump(
    proxy: Proxy,
    client: web.WebSocketResponse,
    upstream: aiohttp.ClientWebSocketResponse,
    charges: Charges,
    sockets: WebSockets,
    send_s: float,
    credential: Credential,
) -> tuple[int, str]:
    """Both directions until one ends (or the credential expires): the close code and
    reason it ended with."""
    dropped = asyncio.Event()  # set as a stalled send drops the bot's connection
    tasks = [
        asyncio.create_task(
            _client_to_bot(proxy, client, upstream, charges, sockets, send_s, dropped, credential)
        ),
        asyncio.create_task(_bot_to_client(upstream, client, charges)),
    ]
    if credential.expires:
        tasks.append(asyncio.create_task(_expiry(credential.expires)))
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    if dropped.is_set():
        # The bot's side ends with the connection dropped under it: the refund is
        # finished, and the reason is the stalled send's.
        await asyncio.wait(tasks[:1])
    first = next(task for task in tasks if task.done())
    for task in tasks:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return first.result()


async def _expiry(expires: float) -> tuple[int, str]:
    await asyncio.sleep(max(0.0, expires - time.time()))
    return POLICY_VIOLATION, INVALID_CREDENTIAL


def abort(upstream: aiohttp.ClientWebSocketResponse) -> None:
    """Drop the bot's connection now, what is still buffered for it discarded (``close()``
    would send it first). aiohttp has no public way to: its writer's transport."""
    upstream._writer.transport.abort()


async def _client_to_bot(
    proxy: Proxy,
    client: web.WebSocketResponse,
    upstream: aiohttp.ClientWebSocketResponse,
    charges: Charges,
    sockets: WebSockets,
    send_s: float,
    dropped: asyncio.Event,
    credential: Credential,
) -> tuple[int, str]:
    msg = None
    while True:
        try:
            msg = await sockets.next_message(client, first=msg is None)
        except TimeoutError:
            return GOING_AWAY, "idle"
        if msg is None:
            break
        if not await credential.current():
            return POLICY_VIOLATION, INVALID_CREDENTIAL
        try:
            admission = await charges.client_message()
        except Closing as exc:
            return exc.code, exc.reason
        send = upstream.send_str if msg.type is WSMsgType.TEXT else upstream.send_bytes
        try:
            async with asyncio.timeout(send_s):
                await send(msg.data)
        except TimeoutError:
            dropped.set()
            abort(upstream)  # first: once refunded, the message must never reach the bot
            if admission is not None:
                await proxy.meter.withdrawn(admission)
            charges.count("bot_error")
            return INTERNAL_ERROR, "upstream_timeout"
        except (aiohttp.ClientError, ConnectionError):
            if admission is not None:
                await proxy.meter.failed(admission, "connect")
            charges.count("bot_error")
            return INTERNAL_ERROR, "upstream_unavailable"
        except asyncio.CancelledError:
            abort(upstream)  # not confirmed: the sweeper refunds it, so it must not arrive
            raise
        proxy.meter.forwarded(admission)
        charges.count("admitted")
    return client.close_code or 1000, ""


async def _bot_to_client(
    upstream: aiohttp.ClientWebSocketResponse, client: web.WebSocketResponse, charges: Charges
) -> tuple[int, str]:
    # While a message waits for the handshake's admission, nothing more is read from the
    # bot: its next messages wait, in order, in the socket (bounded as any other read).
    while (msg := await upstream.receive()).type not in (WSMsgType.CLOSING, WSMsgType.CLOSED):
        if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CLOSE):
            continue
        try:
            # A close frame's code is passed on: it answers the handshake as a message
            # would when the client has not spoken yet.
            await charges.bot_message()
        except Closing as exc:
            return exc.code, exc.reason
        if msg.type is WSMsgType.CLOSE:
            break
        await (client.send_str if msg.type is WSMsgType.TEXT else client.send_bytes)(msg.data)
    return upstream.close_code or 1000, ""


def sendable(code: int) -> int:
    """1005/1006/1015 only describe a close; they must not be sent in a close frame."""
    if code in (1005, 1006, 1015) or not (1000 <= code < 5000):
        return 1011 if code in (1006, 1015) else 1000
    return code
