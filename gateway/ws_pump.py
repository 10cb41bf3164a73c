"""The two directions of one proxied WebSocket (:mod:`gateway.websocket` opens both sides).

Client -> bot: each text or binary message is admitted
(:class:`~gateway.ws_charges.Charges`), then written to the bot's connection and
confirmed as forwarded once its whole frame is with the kernel (:mod:`gateway.ws_wire`:
a send waits for that), which delivers it to a bot that reads it. A send that waits on a
bot that stopped reading waits at most ``send_s`` (``ws_send_timeout_s``; unset, half the
refund window, never longer than the idle timeout). Past it the bot's connection is dropped
(:class:`~gateway.ws_wire.Linger`: the transport's buffer discarded, what the kernel
took still sent, never reset), and the client closed 1011 ``upstream_timeout``; the
message is refunded, whatever ``refund_on`` says, if the frame's tail was still in the
transport's buffer (discarded by the drop: the bot never gets it whole), and confirmed
if it was not (the kernel delivers it; the deadline and the last bytes leaving can fall
in the same loop pass). Only the pump writes to the bot's connection while a message is
in flight (the bot's pings are answered between messages, under the same lock and
deadline: a pong the bot does not take drops its connection and closes the client 1011
``upstream_timeout`` too; aiohttp's own answers are turned off), and a send is complete
only once the buffer is empty, so nothing confirmed before is ever discarded with it.
The one other writer is aiohttp's own close frame when the bot's side ends or breaks the
protocol mid-send: the buffer's count then no longer tells, and the message is kept
charged (the bot must never get one that is not paid). So a message is charged exactly
once and the bot never gets one that is not paid: a message is confirmed as soon as it
is taken, which is long before the sweeper's deadline (``refund_window_s`` after the
charge), so the sweeper never refunds one the bot may read; a refunded one can no longer
reach the bot. A send cut short because the other direction ended is confirmed the same
way if its frame was taken, and otherwise drops the bot's connection (the unconfirmed
message is then the sweeper's to refund). Over TLS, the same (:mod:`gateway.ws_tls`).
A bot reading raw bytes can answer a frame's start, so no bot message is passed to the
client while a frame is in flight: it waits for the send, and is never passed once the
send failed and the message is not charged (the bot could have answered it); nor is the
code of a close that cut such a send short (the client gets 1011).

Bot -> client: each message is delivered once the connection has paid its way
(:meth:`~gateway.ws_charges.Charges.bot_message`); bot messages are not metered.

The upgrade's credential (:mod:`gateway.ws_credential`) ending (its token expired, the
channel's key changed) ends the client's side as a refused message does: the bot gets a
close frame, its answers still reach the client until it answers. So does the client's
own close frame once the connection has paid its way (its code passed on to the bot:
:meth:`~gateway.ws_charges.Charges.answers_due`). Whether its close frame
came is part of what the pump returns (:class:`Ended`): the handshake then needs no more
than the gateway's own answer, if not written yet.
"""

from __future__ import annotations

import asyncio
from typing import Any, NamedTuple

import aiohttp
from aiohttp import WSMsgType, web

from gateway.metering import Admission
from gateway.proxy import Proxy
from gateway.ws_budget import GOING_AWAY, WebSockets
from gateway.ws_charges import Charges, Closing
from gateway.ws_credential import Credential
from gateway.ws_wire import (
    Linger,
    abort,
    answers_then_close,
    buffered_again,
    close_written,
    pending,
    sent,
    unbuffered,
)

INTERNAL_ERROR = 1011
# How long the bot may take to answer the gateway's close (aiohttp's own wait restarted at
# each of its messages), at most the send deadline: past it its connection is dropped.
CLOSE_ANSWER_S = 10.0
SHUTTING_DOWN = "shutting down"


class Ended(NamedTuple):
    """How a pump ended: the client's close code and reason, and whether the bot's close
    frame came (answered or not by the gateway's own yet)."""

    code: int
    reason: str
    bot_closed: bool


async def pump(
    proxy: Proxy,
    client: web.WebSocketResponse,
    upstream: aiohttp.ClientWebSocketResponse,
    charges: Charges,
    sockets: WebSockets,
    send_s: float,
    credential: Credential,
    linger: Linger,
) -> Ended:
    """Both directions until one ends (the credential's end or a refusal ends the client's
    side, and the bot's then has its close answered): how it ended. A bot connection
    dropped is left to ``linger`` (its caller waits for it once the client is told)."""
    dropped = asyncio.Event()  # set as a stalled send drops the bot's connection
    wire = _Wire(upstream, linger)
    tasks = [
        asyncio.create_task(
            _client_to_bot(proxy, client, wire, charges, sockets, send_s, dropped, credential)
        ),
        asyncio.create_task(_bot_to_client(wire, client, charges, send_s)),
    ]
    try:
        # The gateway going away ends the pump too (gateway.ws_budget), a stalled send
        # included: its handler then closes both sides within the shutdown grace.
        waited: list[asyncio.Future[Any]] = [*tasks, sockets.going_away()]
        await asyncio.wait(waited, return_when=asyncio.FIRST_COMPLETED)
        if dropped.is_set():
            # The bot's side ends with the connection dropped under it: the refund is
            # finished, and the reason is the stalled send's.
            await asyncio.wait(tasks[:1])
        first = next((task for task in tasks if task.done()), None)
        if first is tasks[0] and (bot_code := charges.answers_due(client, *first.result())):
            within = min(send_s, CLOSE_ANSWER_S)
            going = sockets.going_away()
            relay = tasks[1]
            if not await answers_then_close(upstream, wire.lock, relay, going, within, bot_code):
                wire.drop()
    finally:
        # Cancelled itself (the handler), the pump leaves nothing running behind it.
        pending = [task for task in tasks if not task.done()]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        buffered_again(upstream)
    code, reason = (GOING_AWAY, SHUTTING_DOWN) if first is None else first.result()
    if first is tasks[1] and wire.withheld:  # the bot's close code answers no refunded frame
        code, reason = INTERNAL_ERROR, "upstream_unavailable"
    return Ended(code, reason, wire.bot_closed)


class _Wire:
    """The bot's connection and the lock its writers take: a client message from its
    write until it is taken (or not), a pong between messages."""

    def __init__(self, upstream: aiohttp.ClientWebSocketResponse, linger: Linger) -> None:
        self.upstream = upstream
        self.lock = asyncio.Lock()
        self.exact = unbuffered(upstream)
        self.bot_closed = False  # the bot's close frame came
        self.between = asyncio.Event()  # no client frame in flight: bot messages pass
        self.between.set()
        self.withheld = False  # a frame failed uncharged: no bot message passes any more
        self._linger = linger

    def drop(self) -> None:
        """Drop the bot's connection, the frame's tail still in the transport's buffer
        discarded; what the kernel took still goes out (:class:`~gateway.ws_wire.Linger`;
        over TLS, where nothing is exact, a plain abort)."""
        if self.exact:
            self._linger.drop(self.upstream)
        else:
            abort(self.upstream)

    def taken(self) -> bool:
        """Whether the frame written last is entirely with the kernel (see the module)."""
        if not self.exact:
            return False
        if close_written(self.upstream):  # perhaps after it: the count cannot tell
            return True
        return not pending(self.upstream)


async def _client_to_bot(
    proxy: Proxy,
    client: web.WebSocketResponse,
    wire: _Wire,
    charges: Charges,
    sockets: WebSockets,
    send_s: float,
    dropped: asyncio.Event,
    credential: Credential,
) -> tuple[int, str]:
    until, first = credential.until(), True
    while True:
        try:
            msg, admission = await charges.next_message(client, sockets, credential, until, first)
        except Closing as exc:
            return exc.code, exc.reason
        if msg is None:
            break
        first = False
        upstream = wire.upstream
        send = upstream.send_str if msg.type is WSMsgType.TEXT else upstream.send_bytes
        written = False  # the frame is written in the send's first step (no compression)
        try:
            async with asyncio.timeout(send_s), wire.lock:
                written = True
                wire.between.clear()
                await send(msg.data)
                await sent(upstream)  # over TLS: the layer under it is empty too
        except TimeoutError:
            dropped.set()
            await _stalled(proxy, wire, charges, admission, written)
            return INTERNAL_ERROR, "upstream_timeout"
        except (aiohttp.ClientError, ConnectionError):
            wire.withheld = True
            if admission is not None:
                await proxy.meter.failed(admission, "connect")
            charges.count("bot_error")
            return INTERNAL_ERROR, "upstream_unavailable"
        except asyncio.CancelledError:
            if written and wire.taken():
                _confirm(proxy, charges, admission)
            else:
                wire.withheld = written
                wire.drop()  # not confirmed: the sweeper refunds it, so it must not arrive
            raise
        finally:
            wire.between.set()
        _confirm(proxy, charges, admission)
    return client.close_code or 1000, ""


def _confirm(proxy: Proxy, charges: Charges, admission: Admission | None) -> None:
    proxy.meter.forwarded(admission)
    charges.count("admitted")


async def _stalled(
    proxy: Proxy, wire: _Wire, charges: Charges, admission: Admission | None, written: bool
) -> None:
    """A send past its deadline: the bot's connection dropped, the message confirmed if
    its frame was taken all the same (the kernel delivers it), refunded otherwise."""
    taken = written and wire.taken()
    wire.withheld = written and not taken  # the bot may have read its start
    wire.drop()  # first: once refunded, the message must never reach the bot
    if taken:
        _confirm(proxy, charges, admission)
    elif admission is not None:
        await proxy.meter.withdrawn(admission)
    charges.count("bot_error")


async def _bot_to_client(
    wire: _Wire, client: web.WebSocketResponse, charges: Charges, send_s: float
) -> tuple[int, str]:
    # While a message waits for the handshake's admission, nothing more is read from the
    # bot: its next messages wait, in order, in the socket (bounded as any other read).
    upstream = wire.upstream
    while (msg := await upstream.receive()).type not in (WSMsgType.CLOSING, WSMsgType.CLOSED):
        wire.bot_closed = msg.type is WSMsgType.CLOSE
        if msg.type is WSMsgType.PING:  # answered here, never while a message is in flight
            if not await _pong(wire, msg.data, send_s):
                charges.count("bot_error")
                return INTERNAL_ERROR, "upstream_timeout"
            continue
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
        await wire.between.wait()
        if wire.withheld:
            continue
        try:
            await (client.send_str if msg.type is WSMsgType.TEXT else client.send_bytes)(msg.data)
        except ConnectionError:  # a close frame went to the client (its own close answered)
            return client.close_code or 1000, ""
        except asyncio.CancelledError:
            # aiohttp's writers on the client's connection share one wait for it to take
            # more: another's cancelled (a receive's own close, past the idle timeout),
            # this one is too. Not this task's cancel: the client's side ended.
            if _cancelled():
                raise
            return client.close_code or 1000, ""
    return upstream.close_code or 1000, ""


def _cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def _pong(wire: _Wire, data: bytes, send_s: float) -> bool:
    """Answer the bot's ping, waiting for the lock and for the bot to take it at most
    ``send_s`` in all (as a client message); False past it, the bot's connection dropped
    if the pong was written (under the lock: nothing is written after it)."""
    try:
        async with asyncio.timeout(send_s) as deadline, wire.lock:
            try:
                await wire.upstream.pong(data)
            except asyncio.CancelledError:
                if deadline.expired():
                    wire.drop()
                raise
            except (aiohttp.ClientError, ConnectionError):
                pass
    except TimeoutError:
        return False
    return True
