"""The log formatters themselves: a text record is one line whatever it carries (no forged
line, no terminal escape), credentials are masked in both formats, and a URL is logged as
its origin."""

from __future__ import annotations

import logging
import sys

import orjson

from config.urls import url_origin
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


JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLWJ5dGVz"
SECRETS = [
    (f"https://hooks.example/in?token={'t' * 20}&x=1", "token=[redacted]&x=1"),
    ("GET /cb?code=oauth-code-123 done", "code=[redacted] done"),
    ("url=https://h/x?access_token=AT123;", "access_token=[redacted];"),
    ("https://h/x?api_key=AK123&Signature=S1gn", "api_key=[redacted]&Signature=[redacted]"),
    ("s3://b/o?X-Amz-Signature=abc123 ", "X-Amz-Signature=[redacted] "),
    ("sig=abc secret=def password=hunter2", "sig=[redacted] secret=[redacted] password="),
    ("provider key sk_live_4eC39HqLyjWDarjtT1zdp7dc", "sk_live_[redacted]"),
    ("provider key sk_test_4eC39HqLyjWDarjtT1zdp7dc", "sk_test_[redacted]"),
    ("restricted rk_live_51HxYzAbCdEf", "rk_live_[redacted]"),
    ("endpoint secret whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw.", "whsec_[redacted]."),
    (f"token {JWT} in text", "token [redacted-jwt] in text"),
    ("Authorization: Bearer abc.def", "Bearer [redacted]"),
    ("user cgu_Avshc4FqYlMdE3SiK54duBBBwn5WniaPFQNeI2w_kWs", "cgu_[redacted]"),
]


def test_credentials_are_masked_in_both_formats() -> None:
    for text, masked in SECRETS:
        for out in (
            TextFormatter(FMT).format(record("%s", text)),
            str(orjson.loads(JsonFormatter().format(record("%s", text)))["msg"]),
        ):
            assert masked in out, (text, out)
            for secret in ("t" * 20, "oauth-code", "AT123", "AK123", "S1gn", "abc123", "hunter2"):
                assert secret not in out, (text, out)
            for secret in ("4eC39", "51HxYz", "MfKQ9", "eyJ", "Avshc4"):
                assert secret not in out, (text, out)
    # ordinary text keeps its words and numbers
    plain = "GET /v1/apps 200 status_code=200 monkey=1 cache_key_count=3 0.4ms"
    assert TextFormatter(FMT).format(record("%s", plain)).endswith(plain)


def test_a_url_in_a_log_is_its_origin() -> None:
    assert (
        url_origin("https://u:p@Hooks.Example:8443/in/x?token=t#f") == "https://hooks.example:8443"
    )
    assert url_origin("http://[::1]:9/x?sig=s") == "http://[::1]:9"
    assert url_origin("http://h.example/x") == "http://h.example"
    assert url_origin("http://[::1/x") == "***"  # unparseable: nothing shown
