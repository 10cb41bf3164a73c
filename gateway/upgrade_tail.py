"""What follows a declined upgrade, parsed as everything else is (:mod:`gateway.http_server`).

A request asking for another protocol (``Upgrade: websocket``) makes aiohttp keep what
follows it unparsed, for that protocol. Answered with anything but 101 (a route without
a WebSocket, a refusal), the connection stays HTTP: aiohttp then fed those bytes to its
parser itself, past the protocol's ``data_received``, so a chunked request begun in them
was never watched (:mod:`gateway.chunk_framing`): its framing and chunks went uncounted
to its end, however many (on the admin port, which keeps such a connection alive). Here
they go through ``data_received`` as any bytes do, sliced and counted.
"""

from __future__ import annotations

from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse


class UpgradeTail(RequestHandler):
    """aiohttp's protocol, replaying a declined upgrade's tail through ``data_received``."""

    async def finish_response(
        self, request: BaseRequest, resp: StreamResponse, start_time: float | None
    ) -> tuple[StreamResponse, bool]:
        # aiohttp's own condition for a declined upgrade (an accepted one has a
        # payload parser): it then finds nothing left to feed.
        if (
            self._upgraded
            and not self._messages
            and self._payload_parser is None
            and self._parser is not None
        ):
            self._parser.set_upgraded(False)
            self._upgraded = False
            tail, self._message_tail = self._message_tail, b""
            if tail:
                self.data_received(tail)  # may meet another upgrade: its tail kept again
            if self._buffer_paused and len(self._messages) < self._max_msg_queue_size:
                self._resume_reading_if_drained()  # the tail held reading paused
        return await super().finish_response(request, resp, start_time)
