"""The chunk bounds (gateway.chunk_framing) read private parts of aiohttp (the pinned
3.14.5): each chunk end its C parser records in the body's stream
(``StreamReader._http_chunk_splits``), the protocol's ``_messages``,
``_reading_paused``, ``_upgraded``, and the parser's error queued as an ``_ErrInfo``
with its ``exc``; the framing bound counts on the parser taking all it is fed unless
reading is paused, and on its taking chunk extensions and leading zeros without a bound
of its own (else the bound would be aiohttp's). Should an upgrade change any of it, this
fails here, before any server runs, rather than letting floods through."""

from __future__ import annotations

import asyncio

import httptools
import pytest
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.http_parser import HttpRequestParser
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from aiohttp.web_protocol import RequestHandler, _ErrInfo

from gateway.chunk_framing import (
    FRAMING_FREE,
    FRAMING_PER_CHUNK,
    FREE,
    PER_CHUNK,
    Framing,
    parser_failed,
)

HEAD = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"


def _parsed(wire: bytes, then: bytes = b"", *, paused: bool = False) -> Framing:
    """The body of ``wire`` as the protocol counts it, ``then`` fed after (as its next
    slice: counted), with reading paused first if ``paused``."""
    loop = asyncio.new_event_loop()
    try:
        proto = BaseProtocol(loop)
        parser = HttpRequestParser(proto, loop, 2**16, auto_decompress=False)
        proto._parser = parser
        messages, _, _ = parser.feed_data(HEAD + wire)
        msg, payload = messages[0]
        assert msg.chunked
        assert type(payload) is StreamReader  # what the protocol counts
        framing = Framing(payload)
        if paused:
            proto.pause_reading()
        if then:
            parser.feed_data(then)
            framing.fed(len(then))
        return framing
    finally:
        loop.close()


def test_each_chunk_end_is_recorded_and_counted() -> None:
    framing = _parsed(b"1\r\nx\r\n" * 2000)  # 2,000 > 1,024 + 2,000 // 64
    problem = framing.over(parsed=True)
    assert problem is not None
    assert problem.code == "too_many_chunks"
    assert framing._chunks == 2000


def test_a_body_within_the_bound_is_not_over() -> None:
    framing = _parsed(b"40\r\n" + b"y" * PER_CHUNK + b"\r\n" * 1 + b"1\r\nx\r\n" * FREE)
    assert framing.over(parsed=True) is None


def test_extensions_and_leading_zeros_are_parsed_without_a_bound_and_counted() -> None:
    """llhttp takes a megabyte of extension or of zeros in a chunk's size, records no
    data for it and raises nothing: only the framing count refuses it."""
    for wire in (b"5;n=" + b"v" * 1_000_000, b"0" * 1_000_000):
        framing = _parsed(b"", wire)
        assert framing.payload.total_bytes == 0
        assert not framing.payload.is_eof()
        problem = framing.over(parsed=True)
        assert problem is not None
        assert problem.code == "chunk_framing_too_large"


def test_framing_within_its_bound_is_not_over() -> None:
    """Each chunk's size line and CRLFs, and extensions up to the allowance, pass."""
    chunks = b"".join(b"%08x;e=1\r\n%b\r\n" % (PER_CHUNK, b"y" * PER_CHUNK) for _ in range(100))
    assert len(b"%08x;e=1\r\n\r\n" % 0) <= FRAMING_PER_CHUNK
    framing = _parsed(b"", chunks + b"1;n=" + b"v" * (FRAMING_FREE - 10))
    assert framing.over(parsed=True) is None
    assert framing.payload.total_bytes == 100 * PER_CHUNK


def test_a_paused_parser_holds_back_what_it_is_fed() -> None:
    """Reading paused, the parser stops after the next piece of data and keeps the rest
    unparsed: the framing is not counted then (the wire fed is not the wire parsed)."""
    data = b"".join(b"40\r\n" + b"y" * 64 + b"\r\n" for _ in range(1000))
    framing = _parsed(b"", data, paused=True)
    assert framing.payload.total_bytes < 64 * 1000
    assert framing.over(parsed=False) is None


def test_the_protocol_attributes_read_exist() -> None:
    for name in ("_messages", "_reading_paused", "_upgraded", "_close", "_force_close"):
        assert hasattr(RequestHandler, name), name


# Chunk extensions llhttp refuses (RFC 9112 §7.1.1 has none of them) and odd ones it
# takes. The fast path (httptools, its own llhttp) hands every chunked body to aiohttp
# before parsing it; should it ever parse one, it must agree with aiohttp on each.
EXTENSIONS = {
    b"3;a b": False,
    b"3; a": False,
    b"3;a = b": False,
    b"3;a,b": False,
    b"3;": False,
    b"3;a;": False,
    b"3;a\x00": False,
    b"3;a=\x7f": False,
    b"3;a=\xff": False,
    b"3;a\rb": False,
    b'3;a="x': False,
    b'3;a="x\x01"': False,
    b'3;a="x"y': False,
    b"3\t;a": False,
    b"3;=v": True,
    b"3;;a": True,
    b'3;a="\\x"': True,
    b"3;a=b;c": True,
}


def _aiohttp_takes(wire: bytes) -> bool:
    loop = asyncio.new_event_loop()
    try:
        proto = BaseProtocol(loop)
        parser = HttpRequestParser(proto, loop, 2**16, auto_decompress=False)
        proto._parser = parser
        try:
            messages, _, _ = parser.feed_data(HEAD + wire)
        except BadHttpMessage:
            return False
        return bool(messages[0][1].is_eof())
    finally:
        loop.close()


def _httptools_takes(wire: bytes) -> bool:
    class Done:
        complete = False

        def on_message_complete(self) -> None:
            self.complete = True

    done = Done()
    try:
        httptools.HttpRequestParser(done).feed_data(HEAD + wire)
    except httptools.HttpParserError:
        return False
    return done.complete


@pytest.mark.parametrize("ext", list(EXTENSIONS), ids=repr)
def test_both_parsers_agree_on_chunk_extensions(ext: bytes) -> None:
    wire = ext + b"\r\nabc\r\n0\r\n\r\n"
    assert _aiohttp_takes(wire) is EXTENSIONS[ext]
    assert _httptools_takes(wire) is EXTENSIONS[ext]


def test_a_parser_error_is_queued_as_a_message_with_its_exception() -> None:
    """aiohttp's protocol queues the parser's error as an ``_ErrInfo`` with ``exc``
    (gateway.chunk_framing.parser_failed finds it there to fail the body being read)."""
    exc = BadHttpMessage("bad chunk")
    queued = [
        (object(), EMPTY_PAYLOAD),
        (_ErrInfo(status=400, exc=exc, message="x"), EMPTY_PAYLOAD),
    ]
    assert parser_failed(queued, 0) is exc
    assert parser_failed(queued[:1], 0) is None
    assert parser_failed(queued, 2) is None
