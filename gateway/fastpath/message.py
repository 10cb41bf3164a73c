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


def message_end(raw: bytes) -> int:
    """Length of the first request in ``raw`` as llhttp frames it (pipelining only)."""

    class Probe:
        done = False

        def on_message_complete(self) -> None:
            self.done = True

    def completes(n: int) -> bool:
        probe = Probe()
        with contextlib.suppress(httptools.HttpParserError):
            httptools.HttpRequestParser(probe).feed_data(raw[:n])
        return probe.done

    lo, hi = 1, len(raw)
    while lo < hi:
        mid = (lo + hi) // 2
        if completes(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo
