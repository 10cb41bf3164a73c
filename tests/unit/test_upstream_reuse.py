"""A kept bot connection reads each answer with a parser at a message's start: its
llhttp parser is kept from one answer to the next (gateway.fastpath.upstream), except
after a lenient read, where the next message gets a new strict one; a connection that
read bytes past an answer (a stray answer glued to it, read in part) is not kept at all.
Kept with its parser, the next answer would be read as the end of the stray one, or with
the leniency that lets a control character in unchecked."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any
from unittest import mock

from gateway.fastpath.upstream import UpstreamConnection

OWN = b"HTTP/1.1 201 Created\r\nX-Own: yes\r\nContent-Length: 2\r\n\r\nok"


class Receiver:
    def __init__(self) -> None:
        self.head: Any = None
        self.body = b""
        self.kept: bool | None = None

    def on_head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self.head = status, list(headers)

    def on_body(self, chunk: bytes) -> None:
        self.body += chunk

    def on_complete(self, keep_alive: bool) -> None:
        self.kept = keep_alive

    def on_lost(self) -> None:
        self.head = "lost"

    def broken(self, exc: BaseException) -> None:
        raise exc


def connection() -> UpstreamConnection:
    pool = SimpleNamespace(loop=SimpleNamespace(time=lambda: 0.0), lost=lambda conn: None)
    conn = UpstreamConnection(pool, ("bot", 80))  # type: ignore[arg-type]
    conn.transport = mock.Mock()
    return conn


def exchange(conn: UpstreamConnection, answer: bytes) -> Receiver:
    receiver = Receiver()
    conn.send(receiver, b"GET / HTTP/1.1\r\nHost: bot\r\n\r\n")
    conn.data_received(answer)
    return receiver


def test_answers_in_turn_are_each_read_whole() -> None:
    conn = connection()
    for n in range(3):
        got = exchange(conn, b"HTTP/1.1 200 OK\r\nX-N: %d\r\nContent-Length: 1\r\n\r\n%d" % (n, n))
        assert got.head == (200, [(b"X-N", b"%d" % n), (b"Content-Length", b"1")])
        assert (got.body, got.kept) == (b"%d" % n, True)


def test_a_stray_answer_read_in_part_is_never_kept() -> None:
    conn = connection()
    # Read as the start of a value: kept, the parser would take the next answer for it.
    stray = b"HTTP/1.1 200 OK\r\nX-Stray: "
    first = exchange(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na" + stray)
    assert (first.head, first.body, first.kept) == ((200, [(b"Content-Length", b"1")]), b"a", False)
    second = exchange(conn, OWN)  # were it kept all the same: a new parser reads this one
    assert second.head == (201, [(b"X-Own", b"yes"), (b"Content-Length", b"2")])
    assert second.body == b"ok"


def test_after_a_lenient_read_the_next_answer_is_read_strictly() -> None:
    conn = connection()
    first = exchange(conn, b"HTTP/1.1 200 OK\r\nX-A: a\x01b\r\nContent-Length: 0\r\n\r\n")
    assert first.head == (200, [(b"Content-Length", b"0")])  # read leniently, dropped
    second = exchange(conn, b"HTTP/1.1 200 OK\r\nX-B: c\x01d\r\nContent-Length: 0\r\n\r\n")
    assert second.head == (200, [(b"Content-Length", b"0")])  # not passed on unchecked
