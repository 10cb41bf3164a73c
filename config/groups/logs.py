"""Logging: level, format and the access log.

A group of fields of :class:`config.settings.Settings`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class LogsSettings(BaseModel):
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # First run / operator UX: "auto" is text when stderr is a terminal, else JSON; the
    # access log (one INFO line per request, refusals with their code, never a token or
    # a body) defaults to on when stderr is a terminal.
    log_format: Literal["json", "text", "auto"] = "auto"
    access_log: bool | None = None
