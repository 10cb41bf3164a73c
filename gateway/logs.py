"""Logging set-up: one JSON object per line in production, plain text for people."""

from __future__ import annotations

import logging
import sys
import time

import orjson

from config import Settings
from config.settings import stderr_is_terminal


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def setup_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    fmt = settings.log_format
    if fmt == "auto":
        fmt = "text" if stderr_is_terminal() else "json"
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)


def access_log_on(settings: Settings) -> bool:
    """The access log is on when set, else when a person watches stderr."""
    return stderr_is_terminal() if settings.access_log is None else settings.access_log
