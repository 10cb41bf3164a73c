"""aiohttp's client protocol for bot connections (:mod:`gateway.bot_connector`): each
status line of an answer is ``HTTP/1.0`` or ``HTTP/1.1`` (:mod:`gateway.status_lines`),
as on the fast path (:mod:`gateway.fastpath.upstream`), else the answer fails
(``HttpProcessingError``: 502, refunded as ``5xx``) and its connection is closed. An
answer whose final status line came while its request was not all with the bot's
kernel (:mod:`gateway.unsent`) is passed on, and its connection closed after it
(``force_close``: aiohttp's connector never keeps one that ``should_close``).
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp.client_proto import ResponseHandler
from aiohttp.http_exceptions import HttpProcessingError

from gateway.status_lines import StatusLines
from gateway.unsent import unsent

log = logging.getLogger(__name__)


class BotAnswers(ResponseHandler):
    """See the module."""

    _lines: StatusLines | None = None

    def set_response_params(self, **kw: Any) -> None:
        super().set_response_params(**kw)
        self._lines = StatusLines()  # called as each request is sent: its answer is next

    def data_received(self, data: bytes) -> None:
        lines = self._lines
        if lines is not None and not lines.done:
            if not lines.feed(data):
                self._lines = None
                if self.transport is not None:
                    self.transport.close()
                self.set_exception(HttpProcessingError(message="not an HTTP/1.x answer"))
                return
            if lines.done and unsent(self.transport):
                log.info("upstream answered before it had the whole request")
                self.force_close()
        super().data_received(data)
