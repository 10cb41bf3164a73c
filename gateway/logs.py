"""Logging set-up: one JSON object per line in production, plain text for people.

Every line goes through :func:`redact`: whatever looks like a credential (the value after
``Bearer``/``Basic``, a user token ``cgu_...``, a payment provider's ``sk_live_...``,
``rk_test_...`` or ``whsec_...``, a JWT, the value of a ``token=``, ``api_key=``,
``client_secret=``, ``sig=``, ``code=``, ``password=`` ... parameter) is replaced before
it is written, a last line of defence behind code that never logs tokens in the first
place.

A text line is one record: control characters (C0, DEL, C1, Unicode line separators) are
written as escapes (``\\x1b``, ``\\n``), so text a client chose (a path, a header) can
neither forge a line that looks like the operator's nor drive the terminal; a traceback
is one line too, as in the JSON format.
"""

from __future__ import annotations

import logging
import re
import sys
import time

import orjson

from config import Settings

_VALUE = r"[^\s'\",;&#]+"
# (pattern, replacement), applied in order.
_SECRETS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(?i)\b(bearer|basic)(\s+|%20|=)[^\s'\",;]+"), r"\1\2[redacted]"),
    (re.compile(r"\bcgu_[A-Za-z0-9_\-]+"), "cgu_[redacted]"),
    (re.compile(r"\b([sr]k_(?:live|test))_[A-Za-z0-9]+"), r"\1_[redacted]"),
    (re.compile(r"\bwhsec_[A-Za-z0-9+/=_\-]+"), "whsec_[redacted]"),
    (re.compile(r"\beyJ[\w-]+\.[\w-]+\.[\w-]+"), "[redacted-jwt]"),
    # A URL's (or a form's) credential parameter: token=, access_token=, api-key=, sig=...
    # ("code" only alone: an OAuth code, not status_code=404).
    (
        re.compile(
            r"(?i)(?<![\w-])((?:[\w-]*[_-])?(?:token|key|secret|sig|signature|password)|code)="
            + _VALUE
        ),
        r"\1=[redacted]",
    ),
)


def stderr_is_terminal() -> bool:
    """Whether a person is likely reading stderr (it is a terminal)."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def redact(text: str) -> str:
    """``text`` with credentials masked."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(entry).decode()


_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(m: re.Match[str]) -> str:
    ch = m.group()
    return _NAMED.get(ch) or (f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")


def escape_controls(text: str) -> str:
    """``text`` on one line: every control character written as an escape."""
    return _CONTROLS.sub(_escape, text)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return escape_controls(redact(super().format(record)))


def setup_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    fmt = settings.log_format
    if fmt == "auto":
        fmt = "text" if stderr_is_terminal() else "json"
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)


def access_log_on(settings: Settings) -> bool:
    """The access log is on when set, else when a person watches stderr."""
    return stderr_is_terminal() if settings.access_log is None else settings.access_log
