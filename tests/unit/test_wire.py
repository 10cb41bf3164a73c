"""The fast path's answer head (gateway.fastpath.wire.answer_head) is byte for byte what
the text route gives: gateway.forwarding.downstream_headers, then the fast path's own
framing (chunked when there is no length, none on a 204), then response_head. Also: what
the answer head remembers stays bounded, and a forwarded request's bytes."""

from __future__ import annotations

import random

import pytest
from multidict import CIMultiDict
from yarl import URL

from gateway.fastpath import wire
from gateway.fastpath.wire import answer_head, request_bytes, response_head, text_headers
from gateway.forwarding import downstream_headers
from gateway.header_text import answer_reason, writable_fields

DATE = "Wed, 02 Dec 2026 01:40:00 GMT"


def through_text(
    status: int, raw: list[tuple[bytes, bytes]], keep_alive: bool, reason: bytes = b"Reason"
) -> tuple[bytes, bool]:
    """The head as the fast path made it before answer_head (the reference), its reason
    phrase as the aiohttp route passes it on (aiohttp's client decodes it so)."""
    out = downstream_headers(text_headers(raw))
    phrase = answer_reason(status, reason.decode("utf-8", "surrogateescape")).encode()
    chunked = False
    if status in (204, 304):
        if status == 204:
            out.popall("Content-Length", None)
    elif "Content-Length" not in out:
        chunked = True
        out["Transfer-Encoding"] = "chunked"
    return response_head(status, phrase, list(out.items()), DATE, keep_alive), chunked


def fast_path(status: int, raw: list[tuple[bytes, bytes]], keep_alive: bool) -> tuple[bytes, bool]:
    """The head the fast path makes: a value with a control character comes only from a
    lenient parse, which drops it (gateway.fastpath.upstream); without one, as it came."""
    return answer_head(status, b"Reason", writable_fields(raw), DATE, keep_alive)


NGINX = [
    (b"Server", b"nginx/1.22.1"),
    (b"Date", b"Tue, 01 Dec 2026 00:00:00 GMT"),
    (b"Content-Type", b"application/json"),
    (b"Content-Length", b"27"),
    (b"Connection", b"keep-alive"),
]

CASES = [
    NGINX,
    [],
    [(b"content-length", b"0")],
    [(b"Transfer-Encoding", b"chunked"), (b"Content-Length", b"5")],  # the length goes
    [(b"Connection", b"X-Secret, close"), (b"X-Secret", b"s"), (b"x-secret", b"t")],
    [(b"Connection", b" \xc2\xa0X-Secret"), (b"X-Secret", b"s")],  # NBSP: text's strip()
    [(b"Connection", b"\xe2\x84\xaaeep-x"), (b"keep-x", b"k")],  # Kelvin sign lowers to k
    [(b"Connection", b"content-length"), (b"Content-Length", b"3")],  # listed: re-framed
    [(b"Connection", b"date, server"), (b"Date", b"d"), (b"Server", b"s")],
    [(b"Proxy-Foo", b"1"), (b"PROXY-bar", b"2"), (b"Proxyfoo", b"3"), (b"Keep-Alive", b"t=5")],
    [(b"TE", b"trailers"), (b"Trailer", b"x"), (b"Upgrade", b"h2c"), (b"X_Under", b"kept")],
    [(b"X-Bytes", b"\xff\xfe caf\xc3\xa9"), (b"Set-Cookie", b"a=1"), (b"Set-Cookie", b"b=2")],
    [(b"SERVER", b"own"), (b"dAtE", b"own date"), (b"Content-Length", b"1")],
    # the console's cookie is dropped by both (gateway.console_cookies), the rest kept
    [(b"Set-Cookie", b"a=1"), (b"set-cookie", b"CG_Session=x"), (b"Set-Cookie", b"b=2")],
    [(b"Set-Cookie", b"=cg_session=x"), (b"SET-COOKIE", b"__Host-cg_session=\xff")],
    # a value that is not UTF-8 is dropped by both (gateway.forwarding: aiohttp cannot
    # write it), the console's cookie so spelled included; Date and Server then made
    [(b"Set-Cookie", b"cg_sess\xffion=x"), (b"Date", b"\xff"), (b"Server", b"s\xed\xa0\x80")],
    # a control character but HTAB: dropped by both (aiohttp's writer refuses it)
    [(b"X-A", b"a\x01b"), (b"Set-Cookie", b"cg_sess\x7fion=x"), (b"X-T", b"a\tb")],
    [(b"Date", b"d\x1b"), (b"Server", b"\x00"), (b"Connection", b"x-a\x0b"), (b"X-A", b"1")],
]


@pytest.mark.parametrize("status", [200, 201, 204, 304, 404, 500])
@pytest.mark.parametrize("keep_alive", [True, False])
@pytest.mark.parametrize("raw", CASES)
def test_the_answer_head_is_what_the_text_route_makes(
    raw: list[tuple[bytes, bytes]], status: int, keep_alive: bool
) -> None:
    assert fast_path(status, raw, keep_alive) == through_text(status, raw, keep_alive)


REASONS = [b"OK", b"", b"Not Found", b"O\x01K", b"O\x00K", b"O\tK", b"O\x7fK", b"caf\xe9",
           b"caf\xc3\xa9", b"\xed\xa0\x80", b"\xc2\xa0", b"a\x1bb", b"Reason"]  # fmt: skip


@pytest.mark.parametrize("status", [200, 299, 404, 503])
@pytest.mark.parametrize("reason", REASONS)
def test_the_reason_phrase_is_what_the_text_route_passes(reason: bytes, status: int) -> None:
    """A control character or a byte that is not UTF-8: the standard phrase (none for a
    status without one), on both (gateway.header_text)."""
    head, _ = answer_head(status, reason, NGINX, DATE, True)
    assert head == through_text(status, NGINX, True, reason)[0]
    line = head.split(b"\r\n", 1)[0]
    line.decode()
    assert not {*range(32), 127} & set(line)


NAMES = [b"Connection", b"connection", b"Content-Length", b"content-length",
         b"Transfer-Encoding", b"Date", b"Server", b"Keep-Alive", b"Proxy-Auth", b"TE",
         b"Upgrade", b"X-A", b"x-a", b"X-B", b"Set-Cookie", b"Trailer", b"Via"]  # fmt: skip
VALUES = [b"", b"1", b"x-a", b"X-A, x-b", b"close", b"keep-alive", b"chunked", b" x-b ,",
          b"te, upgrade", b"content-length", b"server", b"\xc3\xa9", b"\xff", b"a,,b",
          b"cg_session=1", b"x=1, __Host-CG_SESSION=2", b"a\x01", b"\x7f", b"x\tb",
          b"x-a\x1b, x-b"]  # fmt: skip


def test_random_heads_agree() -> None:
    rng = random.Random(20261202)
    for _ in range(3000):
        raw = [(rng.choice(NAMES), rng.choice(VALUES)) for _ in range(rng.randrange(9))]
        status = rng.choice([200, 204, 304, 302, 503])
        keep = rng.random() < 0.5
        assert fast_path(status, raw, keep) == through_text(status, raw, keep), raw


def test_connection_values_are_remembered_within_bounds() -> None:
    for n in range(1000):  # a bot varying its Connection value
        raw = [(b"Connection", b"x-%d" % n), (b"X-%d" % n, b"secret"), (b"Content-Length", b"0")]
        head, _ = answer_head(200, b"OK", raw, DATE, True)
        assert b"secret" not in head
    info = wire._drops_of.cache_info()
    assert info.currsize <= info.maxsize == 256
    long = b"x-long," * 20
    head, _ = answer_head(200, b"OK", [(b"Connection", long), (b"X-Long", b"s")], DATE, True)
    assert b"X-Long" not in head
    assert wire._drops_of.cache_info().misses == info.misses  # worked out, not kept


def test_a_bots_many_names_never_take_the_memo_from_the_next_bot() -> None:
    """One bot writing ever new names (any tenant's) fills the memo of names; it must not
    keep it: the names other bots write are remembered again, within the bound."""
    for n in range(2 * wire._KINDS_MAX):
        answer_head(200, b"OK", [(b"X-Junk-%d" % n, b"v")], DATE, True)
    for _ in range(2):
        answer_head(200, b"OK", [(b"X-Next-Bot", b"v"), (b"Content-Length", b"0")], DATE, True)
    assert b"X-Next-Bot" in wire._KINDS
    assert len(wire._KINDS) <= wire._KINDS_MAX


def test_a_forwarded_request_is_its_fields_one_per_line() -> None:
    url = URL("http://127.0.0.1:9000/bot/chat?q=1", encoded=True)
    empty: CIMultiDict[str] = CIMultiDict()
    assert request_bytes("GET", url, empty, None) == (
        b"GET /bot/chat?q=1 HTTP/1.1\r\nHost: 127.0.0.1:9000\r\n\r\n"
    )
    headers = text_headers([(b"X-A", b"1"), (b"x-b", b"caf\xc3\xa9 \xff"), (b"X-A", b"2")])
    headers["Via"] = "1.1 creditgate"  # set: an istr key, as forwarded_headers sets them
    assert request_bytes("POST", url, headers, b"{}") == (
        b"POST /bot/chat?q=1 HTTP/1.1\r\nHost: 127.0.0.1:9000\r\nX-A: 1\r\n"
        b"x-b: caf\xc3\xa9 \xff\r\nX-A: 2\r\nVia: 1.1 creditgate\r\nContent-Length: 2\r\n\r\n{}"
    )
