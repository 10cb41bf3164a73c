"""A request the fast path serves, and where a request ends in a pipelined buffer."""

from __future__ import annotations

import contextlib

import httptools


class Message:
    """A complete request the fast path serves."""

    __slots__ = (
        "app_id",
        "body",
        "channel",
        "content_length",
        "headers",
        "keep_alive",
        "method",
        "raw",
        "target",
    )

    def __init__(self) -> None:
        self.method = ""
        self.target = ""
        self.channel = ""
        self.app_id = ""
        self.headers: list[tuple[bytes, bytes]] = []
        self.content_length: int | None = None
        self.body = b""
        self.keep_alive = True
        self.raw = b""  # the request's bytes, for a hand-off after routing

    async def read_body(self) -> bytes:
        """The body, read in full already (for the routing rules, which may ask)."""
        return self.body


def message_end(raw: bytes, length: int) -> int:
    """Length of the first request in ``raw`` as llhttp frames it (pipelining only).

    ``raw`` begins with the request, which llhttp parsed (strict: no CR or LF inside a
    line), and ``length`` is its Content-Length: its end is where its head ends plus
    ``length``, confirmed by llhttp itself (the shortest prefix it completes on), so
    the work is the request's size, never the size of what follows it."""
    start = len(raw) - len(raw.lstrip(b"\r\n"))  # empty lines before a request
    head = raw.find(b"\r\n\r\n", start)
    n = head + 4 + length
    if head >= 0 and n <= len(raw) and _completes(raw, n) and not _completes(raw, n - 1):
        return n
    lo, hi = 1, len(raw)  # not where expected: searched, as llhttp frames it
    while lo < hi:
        mid = (lo + hi) // 2
        if _completes(raw, mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


class _Probe:
    done = False

    def on_message_complete(self) -> None:
        self.done = True


def _completes(raw: bytes, n: int) -> bool:
    """Whether llhttp completes a request on ``raw[:n]``."""
    probe = _Probe()
    with contextlib.suppress(httptools.HttpParserError):
        httptools.HttpRequestParser(probe).feed_data(memoryview(raw)[:n])
    return probe.done
