"""The access log: one INFO line per request on logger ``creditgate.access``.

``POST /hooks/web/demo_tight 402 credits_exhausted 3.1ms``: method, path as sent (still
percent-encoded, as the fast path logs it: a client's ``%0A`` stays three characters; never
the query string, which may carry a secret), status, the problem code of a refusal or error,
and the time to the response. Headers (tokens) and bodies are never logged. On by
default when stderr is a terminal (``CREDITGATE_ACCESS_LOG``).
"""

from __future__ import annotations

import logging

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from gateway.problems import PROBLEM_CODE

LOGGER = logging.getLogger("creditgate.access")


class AccessLogger(AbstractAccessLogger):
    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        code = response.get(PROBLEM_CODE)
        self.logger.info(
            "%s %s %d%s %.1fms",
            request.method,
            request.raw_path.partition("?")[0],
            response.status,
            f" {code}" if code else "",
            time * 1000,
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)
