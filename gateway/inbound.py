"""One inbound traffic request as the framework-neutral rules see it.

Both traffic servers (aiohttp, :mod:`gateway.fastpath`) describe a request with an
:class:`Inbound`, so channel authentication, routing and admission
(:mod:`gateway.traffic_rules`) are one implementation whichever parsed the bytes.
Header values are text decoded as aiohttp decodes them (UTF-8, ``surrogateescape``).
"""

from __future__ import annotations

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy, MultiDictProxy
from yarl import URL

Headers = CIMultiDict[str] | CIMultiDictProxy[str]


class Inbound:
    """Method, raw target, headers and peer of a request; the body is read separately."""

    __slots__ = (
        "_query",
        "body_exists",
        "content_length",
        "headers",
        "method",
        "raw_path",
        "remote",
        "scheme",
        "tail",
    )

    def __init__(
        self,
        method: str,
        raw_path: str,
        headers: Headers,
        *,
        remote: str,
        scheme: str,
        content_length: int | None,
        body_exists: bool,
        tail: str,
    ) -> None:
        self.method = method
        self.raw_path = raw_path  # path and query, still percent-encoded
        self.headers = headers
        self.remote = remote
        self.scheme = scheme
        self.content_length = content_length
        self.body_exists = body_exists
        self.tail = tail  # the route's {tail}, decoded (aiohttp's match_info)
        self._query: MultiDictProxy[str] | None = None

    @property
    def raw_query_string(self) -> str:
        return self.raw_path.partition("?")[2]

    @property
    def query(self) -> MultiDictProxy[str]:
        """The query decoded exactly as aiohttp decodes ``request.query`` (yarl)."""
        if self._query is None:
            url = URL.build(query_string=self.raw_query_string, encoded=True)
            self._query = MultiDictProxy(url.query)
        return self._query


def inbound_of(request: web.Request) -> Inbound:
    """The :class:`Inbound` of an aiohttp request."""
    return Inbound(
        request.method,
        request.raw_path,
        request.headers,
        remote=request.remote or "",
        scheme=request.scheme,
        content_length=request.content_length,
        body_exists=request.body_exists,
        tail=request.match_info.get("tail", ""),
    )
