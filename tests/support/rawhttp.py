"""A raw HTTP/1.x client for conformance tests: writes exactly the bytes given and parses
the answers itself, so a test sees every interim response, every pipelined answer in
order and whether (and when) the server closed the connection.

Usage::

    async with RawConn.open(url) as conn:
        conn.send(b"GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
        resp = await conn.response()          # one response (an interim 1xx is one too)
        assert await conn.closed()            # the server closed (generous deadline)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from multidict import CIMultiDict
from yarl import URL

DEADLINE_S = 30.0  # generous: a slow machine is not a failure


class Closed(Exception):
    """The server closed the connection before a complete response."""


@dataclass
class Response:
    version: str
    status: int
    reason: str
    headers: CIMultiDict[str]
    body: bytes = b""
    raw_head: bytes = b""
    trailers: CIMultiDict[str] = field(default_factory=CIMultiDict)

    @property
    def is_problem(self) -> bool:
        return self.headers.get("Content-Type", "").startswith("application/problem+json")


class RawConn:
    """One client connection to ``url``'s host and port."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, url: str) -> AsyncIterator[RawConn]:
        u = URL(url)
        reader, writer = await asyncio.open_connection(u.host, u.port, limit=1 << 22)
        conn = cls(reader, writer)
        try:
            yield conn
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    def shut_wr(self) -> None:
        """Half-close: the client says it sends nothing more (TCP FIN), reads on."""
        self.writer.write_eof()

    async def _line(self, deadline: float) -> bytes:
        try:
            line = await asyncio.wait_for(self.reader.readuntil(b"\n"), deadline)
        except asyncio.IncompleteReadError as exc:
            raise Closed(exc.partial) from None
        return line

    async def _exactly(self, n: int, deadline: float) -> bytes:
        try:
            return await asyncio.wait_for(self.reader.readexactly(n), deadline)
        except asyncio.IncompleteReadError as exc:
            raise Closed(exc.partial) from None

    async def response(self, deadline: float = DEADLINE_S, *, head_only: bool = False) -> Response:
        """The next response on the connection (``head_only``: its body is not read)."""
        status_line = await self._line(deadline)
        raw = status_line
        version, _, rest = status_line.rstrip(b"\r\n").partition(b" ")
        code, _, reason = rest.partition(b" ")
        headers: CIMultiDict[str] = CIMultiDict()
        while True:
            line = await self._line(deadline)
            raw += line
            if line in (b"\r\n", b"\n"):
                break
            name, _, value = line.decode("latin-1").partition(":")
            headers.add(name.strip(), value.strip())
        resp = Response(version.decode(), int(code), reason.decode("latin-1"), headers, b"", raw)
        if head_only or 100 <= resp.status < 200 or resp.status in (204, 304):
            return resp
        if "chunked" in headers.get("Transfer-Encoding", "").lower():
            body = b""
            while True:
                size = int((await self._line(deadline)).split(b";")[0].strip(), 16)
                if size == 0:
                    break
                body += await self._exactly(size, deadline)
                await self._exactly(2, deadline)
            while (line := await self._line(deadline)) not in (b"\r\n", b"\n"):
                name, _, value = line.decode("latin-1").partition(":")
                resp.trailers.add(name.strip(), value.strip())
            resp.body = body
        elif "Content-Length" in headers:
            resp.body = await self._exactly(int(headers["Content-Length"]), deadline)
        else:  # delimited by the close
            resp.body = await asyncio.wait_for(self.reader.read(), deadline)
        return resp

    async def responses(self, n: int, deadline: float = DEADLINE_S) -> list[Response]:
        return [await self.response(deadline) for _ in range(n)]

    async def closed(self, deadline: float = DEADLINE_S) -> bool:
        """Whether the server closes the connection within ``deadline`` (anything it
        still sends before closing is read and dropped)."""
        try:
            async with asyncio.timeout(deadline):
                while await self.reader.read(65536):
                    pass
        except TimeoutError:
            return False
        except ConnectionError:
            return True
        return True

    async def rest(self, deadline: float = DEADLINE_S) -> bytes:
        """Everything until the server closes (what is there by ``deadline``)."""
        out = b""
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(deadline):
                while chunk := await self.reader.read(65536):
                    out += chunk
        return out

    async def quiet(self, within_s: float = 0.5) -> bool:
        """Nothing more arrives and the connection stays open for ``within_s`` (used only
        to check that no *extra* answer follows one already received)."""
        try:
            data = await asyncio.wait_for(self.reader.read(1), within_s)
        except TimeoutError:
            return True
        except ConnectionError:
            return True
        return data == b""
