"""The fast path reads a bot's answer head as aiohttp's client does (the aiohttp traffic
server's): the same fields, values and reason phrase, or a refusal by both
(gateway.fastpath.upstream: llhttp with aiohttp's leniencies, a NUL refused, trailing
blanks stripped), less the fields with a control character, which both drop (the fast
path as it reads them: gateway.header_text.writable_fields). What each then writes is
tests/unit/test_wire.py's."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest
from aiohttp._http_parser import HttpResponseParser

from gateway.fastpath.upstream import UpstreamConnection
from gateway.header_text import writable_fields

H = b"HTTP/1.1 200 OK\r\n"
E = b"Content-Length: 0\r\n\r\n"
HEADS = [
    H + b"X-A: a \t \r\nX-B:\t b\t\r\n" + E,  # blanks around a value
    H + b"X-A: a\r\n b\r\n\tc\r\n" + E,  # folded lines
    H + b"X-A: a\r\n Set-Cookie: cg_session=S\r\n" + E,
    b"HTTP/1.1 200 OK\nX-A: a\nContent-Length: 0\n\n",  # bare LFs
    H + b"X-A: a\nX-B: b\r\n" + E,
    H + b"X-A: a\x01b\r\nX-B: \x7f\x1b\x0b\r\nX-C: c\r\n" + E,  # control characters
    H + b"Connection: x-c\x01, x-a\r\nX-A: a\r\nX-B: b\r\n" + E,  # still lists x-a
    H + b"X-A: a\x00b\r\n" + E,  # a NUL: refused by both
    H + b"X-A: a\rb\r\n" + E,  # a lone CR: refused by both
    H + b"X-L: caf\xe9\r\nX-U: caf\xc3\xa9\r\n" + E,
    b"HTTP/1.1 200 O\x01K\r\n" + E,
    b"HTTP/1.1 200 caf\xe9\r\n" + E,
    b"HTTP/1.1 404\r\n" + E,
    H + b"Transfer-Encoding: chunked\r\n\r\n5  \r\nhello\r\n0\r\n\r\n",
    H + b"Set-Cookie : x=1\r\n" + E,  # refused by both
    H + b"Content-Length: 1\r\nContent-Length: 1\r\n\r\nx",  # refused by both
]


def through_aiohttp(data: bytes) -> Any:
    loop = asyncio.new_event_loop()
    try:
        parser = HttpResponseParser(mock.Mock(), loop, 2**16)
        messages, _, _ = parser.feed_data(data)
        msg = messages[0][0]
        return msg.reason.encode("utf-8", "surrogateescape"), writable_fields(msg.raw_headers)
    except Exception:
        return "refused"
    finally:
        loop.close()


class Receiver:
    def __init__(self) -> None:
        self.head: Any = "refused"

    def on_head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self.head = reason, list(headers)

    def on_body(self, chunk: bytes) -> None:
        pass

    def on_complete(self, keep_alive: bool) -> None:
        pass

    def on_lost(self) -> None:
        self.head = "refused"

    def broken(self, exc: BaseException) -> None:
        raise exc


def through_fast_path(data: bytes) -> Any:
    pool = SimpleNamespace(loop=SimpleNamespace(time=lambda: 0.0), lost=lambda conn: None)
    conn = UpstreamConnection(pool, ("bot", 80))  # type: ignore[arg-type]
    conn.transport = mock.Mock()
    receiver = Receiver()
    conn.send(receiver, b"GET / HTTP/1.1\r\n\r\n")
    conn.data_received(data)
    return receiver.head


@pytest.mark.parametrize("data", HEADS)
def test_an_answer_head_is_read_as_aiohttp_reads_it(data: bytes) -> None:
    assert through_fast_path(data) == through_aiohttp(data)
