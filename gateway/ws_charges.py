"""What one proxied WebSocket connection is charged: each client message, and the
handshake when the bot answers it.

Bot -> client messages are not metered; the client's messages are, one each, admitted
before they are forwarded. The opening handshake is a request as well (path, query,
headers: a question can ride on it), so a bot message (or close frame: its code is
passed on) that comes before the client's first message answers the handshake: the
handshake is then admitted as one message (same app, channel and user, no idempotency
key) before that bot message is delivered; until then nothing more is read from the bot.
Admitted, the bot's messages flow from then on; refused, none is delivered and the
connection is closed as for a refused client message.

A connection whose client speaks first pays for its messages only: a bot message that
comes while the client's first message is being admitted waits for that admission. A bot
that speaks first (a greeting) costs one message per connection. The first admission of
a connection is taken under a lock, so the two never race into two charges for one
answer, and a refusal ends both directions (nothing admitted after it). The client's
messages are read and admitted by :meth:`Charges.next_message`, which ends the
connection once its credential no longer holds (:mod:`gateway.ws_credential`).
"""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web

from gateway.counting import outcome_of
from gateway.metering import Admission
from gateway.problems import Problem, Refused
from gateway.proxy import Proxy
from gateway.ws_budget import GOING_AWAY, WebSockets
from gateway.ws_credential import INVALID_CREDENTIAL, Credential

POLICY_VIOLATION = 1008
TRY_AGAIN_LATER = 1013


class Closing(Exception):
    """A message was not admitted: close the connection with this code and reason."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


class Charges:
    """The admissions of one connection (see the module)."""

    def __init__(self, proxy: Proxy, app_id: str, channel: str, user: str, label: str) -> None:
        self._proxy = proxy
        self._app_id, self._channel, self._user = app_id, channel, user
        self._label = label
        self._first = asyncio.Lock()
        self._paid = not proxy.metering  # nothing is charged: nothing to wait for
        self._closing: Closing | None = None

    def count(self, outcome: str) -> None:
        self._proxy.metrics.count(self._label, outcome)

    async def client_message(self, until: float | None = None) -> Admission | None:
        """Admit a client message before it is forwarded; raises :class:`Closing`, also
        once the loop's clock reaches ``until`` as it is admitted (refunded: never sent).
        The first one's refund is decided under the lock: a bot message that waited for
        it (a greeting) is then no answer paid for (``_paid``), but the handshake's."""
        if self._paid:
            return await self._admit_until(until)
        async with self._first:
            admission = await self._admit_until(until)
            self._paid = True
            return admission

    async def bot_message(self) -> None:
        """Before a bot message is delivered: the connection has paid its way, or this
        message answers the handshake, admitted now as one message; raises :class:`Closing`."""
        if self._paid:
            return
        async with self._first:
            if self._paid:
                return
            admission = await self._admit()
            self._proxy.meter.forwarded(admission)  # the bot has answered: the charge stands
            self.count("admitted")
            self._paid = True

    async def next_message(
        self,
        client: web.WebSocketResponse,
        sockets: WebSockets,
        credential: Credential,
        until: float | None,
        first: bool,
    ) -> tuple[aiohttp.WSMessage | None, Admission | None]:
        """The client's next message (``first``: it sent none yet) and its admission
        (None: the client closed); raises :class:`Closing` for an idle client, a refusal
        or a credential no longer good: once the loop's clock reaches ``until`` (the
        token's expiry) nothing is read, admitted or sent."""
        loop = asyncio.get_running_loop()
        try:
            msg = await sockets.next_message(client, first=first, until=until)
        except TimeoutError:
            if until is not None and loop.time() >= until:
                raise self.refuse(POLICY_VIOLATION, INVALID_CREDENTIAL) from None
            raise Closing(GOING_AWAY, "idle") from None
        if msg is None:
            return None, None
        if (until is not None and loop.time() >= until) or not await credential.current():
            raise self.refuse(POLICY_VIOLATION, INVALID_CREDENTIAL)
        return msg, await self.client_message(until)

    def answers_due(self, client: web.WebSocketResponse, code: int, reason: str) -> int:
        """The code of the close frame the bot gets before the client's side is closed
        when what the bot sends until it answers still reaches the client; 0 when the
        bot's side is closed without that. Due after a refusal (``code`` 1008, as the
        pump's client side ended: the answers to messages paid for) and after the
        client's own close frame (``reason`` empty, the client's close not answered yet:
        its code passed on) once the connection has paid its way: RFC 6455 §5.5.1 lets
        an endpoint finish what it sends before it answers a close, and the bot's answer
        to a paid message on its way as the client closed is the client's (it was lost).
        Not before: a greeting that races a client's close unheard would be charged.
        A refusal has its reason; a client's own close with 1008 has none (no refusal)."""
        if code == POLICY_VIOLATION and reason:
            return 1000
        if reason or client.closed or client.close_code is None or not self._paid:
            return 0
        return sendable(code)

    def refuse(self, code: int, reason: str) -> Closing:
        """A refusal that is not the meter's (the credential): nothing is admitted after
        it either, a bot message answering the handshake (the bot's farewell, its answer
        to the gateway's close frame) included. The closing to end the connection with."""
        if self._closing is None:
            self._closing = Closing(code, reason)
        return self._closing

    async def _admit_until(self, until: float | None) -> Admission | None:
        admission = await self._admit()
        if until is not None and asyncio.get_running_loop().time() >= until:
            if admission is not None:  # admitted as the credential expired: never sent
                await self._proxy.meter.withdrawn(admission)
            raise self.refuse(POLICY_VIOLATION, INVALID_CREDENTIAL)
        return admission

    async def _admit(self) -> Admission | None:
        if self._closing is not None:
            raise self._closing
        if not self._proxy.metering:
            return None
        try:
            return await self._proxy.meter.admit(self._app_id, self._channel, self._user, "")
        except Refused as exc:
            self.count(outcome_of(exc))
            closing = Closing(POLICY_VIOLATION, exc.reason)
        except Problem as exc:  # metering unavailable: the gateway's own error
            self.count(outcome_of(exc))
            closing = Closing(TRY_AGAIN_LATER, exc.code)
        self._closing = closing
        raise closing


def sendable(code: int) -> int:
    """1005/1006/1015 only describe a close; they must not be sent in a close frame."""
    if code in (1005, 1006, 1015) or not (1000 <= code < 5000):
        return 1011 if code in (1006, 1015) else 1000
    return code
