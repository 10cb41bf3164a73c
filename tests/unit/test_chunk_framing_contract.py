"""The chunk bound (gateway.chunk_framing) reads private parts of aiohttp (the pinned
3.14.5): each chunk end its C parser records in the body's stream
(``StreamReader._http_chunk_splits``), and the protocol's ``_messages``,
``_reading_paused``, ``_upgraded``. Should an upgrade rename or stop filling any of
them, this fails here, before any server runs, rather than letting floods through."""

from __future__ import annotations

import asyncio

from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_parser import HttpRequestParser
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler

from gateway.chunk_framing import FREE, PER_CHUNK, Framing

HEAD = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"


def _parsed(wire: bytes) -> Framing:
    loop = asyncio.new_event_loop()
    try:
        proto = BaseProtocol(loop)
        parser = HttpRequestParser(proto, loop, 2**16, auto_decompress=False)
        proto._parser = parser
        messages, _, _ = parser.feed_data(HEAD + wire)
        msg, payload = messages[0]
        assert msg.chunked
        assert type(payload) is StreamReader  # what the protocol counts
        return Framing(payload)
    finally:
        loop.close()


def test_each_chunk_end_is_recorded_and_counted() -> None:
    framing = _parsed(b"1\r\nx\r\n" * 2000)  # 2,000 > 1,024 + 2,000 // 64
    assert framing.over()
    assert framing._chunks == 2000


def test_a_body_within_the_bound_is_not_over() -> None:
    framing = _parsed(b"40\r\n" + b"y" * PER_CHUNK + b"\r\n" * 1 + b"1\r\nx\r\n" * FREE)
    assert not framing.over()


def test_the_protocol_attributes_read_exist() -> None:
    for name in ("_messages", "_reading_paused", "_upgraded", "_close", "_force_close"):
        assert hasattr(RequestHandler, name), name
