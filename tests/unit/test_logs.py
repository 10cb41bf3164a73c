"""The log formatters themselves: a text record is one line whatever it carries (no forged
line, no terminal escape), and credentials are masked in both formats."""

from __future__ import annotations

import logging
import sys

import orjson

from gateway.logs import JsonFormatter, TextFormatter

FMT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def record(msg: str, *args: object, exc: bool = False) -> logging.LogRecord:
    info = None
    if exc:
        try:
            raise ValueError("bad\n2026-12-01 17:59:59,000 INFO forged")
        except ValueError:
            info = sys.exc_info()
    return logging.LogRecord("creditgate.t", logging.INFO, __file__, 1, msg, args, info)


def test_a_text_record_is_one_line_without_control_characters() -> None:
    text = TextFormatter(FMT).format(
        record("GET %s", "/x\n2026-12-01 17:59:59,000 INFO creditgate.access POST /f 200\x1b[2J")
    )
    assert "\n" not in text, text
    assert "\x1b" not in text, text
    forged = "/x\\n2026-12-01 17:59:59,000 INFO creditgate.access POST /f 200\\x1b[2J"
    assert text.endswith(f"GET {forged}")
    weird = "".join(map(chr, [*range(32), 0x7F, 0x85, 0x9B, 0x2028, 0x2029]))
    out = TextFormatter(FMT).format(record("%s", weird))
    assert not any(ch in out for ch in weird), out
    for escape in ("\\x00", "\\t", "\\r", "\\n", "\\x7f", "\\x9b", "\\u2028"):
        assert escape in out, out
    assert "é ü 日本" in TextFormatter(FMT).format(record("é ü 日本"))  # printable text as is


def test_a_traceback_stays_in_its_record() -> None:
    text = TextFormatter(FMT).format(record("failed", exc=True))
    assert "\n" not in text, text
    assert "Traceback" in text
    assert "bad\\n2026-12-01" in text
    entry = orjson.loads(JsonFormatter().format(record("failed", exc=True)))
    assert "bad\n2026-12-01" in str(entry["exc"])  # JSON escapes it itself
