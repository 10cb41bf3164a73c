"""gateway.status_lines: each status line of a bot's answer is HTTP/1.0 or HTTP/1.1,
whatever reads the answer is cut into."""

from __future__ import annotations

import pytest

from gateway.status_lines import StatusLines

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
ANSWERS = {
    b"HTTP/1.1 200 OK\r\n\r\n": True,
    b"HTTP/1.0 204 \r\n\r\n": True,
    b"\r\nHTTP/1.1 200 OK\r\n\r\n": True,  # a blank line before: llhttp skips it
    b"HTTP/1.1 100 Continue\r\n\r\n" + OK: True,
    b"HTTP/1.1 103 Early Hints\nLink: </a>\n\nHTTP/1.1 102 P\r\n\r\n" + OK: True,
    b"HTTP/1.1 101 Switching Protocols\r\n\r\nRTSP/1.0 200 OK": True,  # final (refused later)
    OK + b"RTSP/1.0 200 OK\r\n\r\n": True,  # after the final head: not looked at
    b"RTSP/1.0 200 OK\r\n\r\n": False,
    b"ICE/1.0 200 OK\r\n\r\n": False,
    b"HTTP/0.9 200 OK\r\n\r\n": False,
    b"HTTP/2.0 200 OK\r\n\r\n": False,
    b"HTTP/1.1 100 Continue\r\n\r\nRTSP/1.0 200 OK\r\n\r\n": False,
    b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nICE/1.0 200 OK\r\n\r\n": False,
    b"RTSP/1.0 100 Continue\r\n\r\n" + OK: False,
}


@pytest.mark.parametrize("answer", ANSWERS, ids=[a[:40].decode() for a in ANSWERS])
def test_every_status_line_is_read_however_the_answer_is_cut(answer: bytes) -> None:
    for cut in range(len(answer) + 1):
        for second in range(cut, len(answer) + 1):
            lines = StatusLines()
            parts = (answer[:cut], answer[cut:second], answer[second:])
            got = all(lines.feed(part) for part in parts)
            assert got is ANSWERS[answer], (cut, second)


def test_a_short_start_waits_for_more() -> None:
    lines = StatusLines()
    assert lines.feed(b"HTTP/1.")
    assert not lines.done
    assert lines.feed(b"1 200")
    assert lines.done
