"""A bot's answer is HTTP/1.0 or HTTP/1.1, or it is the bot's failure (502, refunded).

llhttp, which reads a bot's answer on both traffic servers (the fast path's httptools
and aiohttp's client), also takes ``RTSP/1.0``, ``ICE/1.0``, ``HTTP/0.9`` and
``HTTP/2.0`` status lines, and tells neither of its callers which protocol it read
(``RTSP/1.0`` gives version 1.0, as ``HTTP/1.0`` does): such an answer was passed on
as HTTP. It is another protocol's message, or not a message at all, so each status
line of an answer (its interim heads', then its final head's) is read here from the
answer's bytes as they come (:class:`StatusLines`), before the parser's verdict.
What follows the final head is not looked at.
"""

from __future__ import annotations

import re

_LINE = re.compile(rb"HTTP/1\.[01] (\d\d\d)")
# What the start of such a line may be while more of it is to come.
_START = re.compile(rb"H(T(T(P(/(1(\.([01]( (\d(\d)?)?)?)?)?)?)?)?)?)?\Z")
_BLANK = re.compile(rb"\r?\n\r?\n")  # a head's end, CR optional as llhttp reads it
_CRLF = b"\r\n"


class StatusLines:
    """Fed an answer's bytes from its first (:meth:`feed`); one per answer."""

    __slots__ = ("_in_head", "_rest", "done")

    def __init__(self) -> None:
        self._rest = b""  # a status line's start, or a head's last bytes (its end may span)
        self._in_head = False  # past an interim head's status line, before its end
        self.done = False  # the final head's status line was read: nothing more to check

    def feed(self, data: bytes) -> bool:
        """False once a status line is not ``HTTP/1.0`` or ``HTTP/1.1`` (with a status
        code); True while each so far is, or may still be."""
        if self.done:
            return True
        buf = self._rest + data if self._rest else data
        while True:
            if self._in_head:
                end = _BLANK.search(buf)
                if end is None:
                    self._rest = buf[-3:]  # a blank line's start: at most 3 bytes
                    return True
                self._in_head = False
                buf = buf[end.end() :]
            buf = buf.lstrip(_CRLF)  # before a message: skipped by llhttp
            line = _LINE.match(buf)
            if line is None:
                self._rest = buf
                return len(buf) < 12 and (not buf or _START.match(buf) is not None)
            code = line[1]
            if code[:1] != b"1" or code == b"101":  # the final head's (101 refused later)
                self.done = True
                self._rest = b""
                return True
            self._in_head = True  # an interim head: the next status line follows it
            buf = buf[line.end() :]
