"""Query values of the admin API, and the query of the usage and sessions routes.

Query values arrive as text. Every number or time in a query is bounded here, so an
out-of-range value is a 422 naming the parameter, never an overflow further in.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from gateway.admin_api.schemas import AppId, Body, optional
from meter.redis_layer import keys

MIN_TIME_MS = 0  # 1970-01-01T00:00:00Z
MAX_TIME_MS = 7_258_118_400_000  # 2200-01-01T00:00:00Z
_EPOCH_MS = re.compile(r"[0-9]{1,15}")
TIME_HINT = "must be an ISO 8601 date or date-time, or epoch ms, from 1970 to 2200"


def parse_time(text: str) -> int:
    """Epoch ms from epoch-ms digits or an ISO 8601 date / date-time (UTC unless zoned);
    ``ValueError`` outside :data:`MIN_TIME_MS`..:data:`MAX_TIME_MS`."""
    if _EPOCH_MS.fullmatch(text):
        ms = int(text)
    else:
        try:
            t = datetime.fromisoformat(text)
            if t.tzinfo is None:
                t = t.replace(tzinfo=UTC)
            ms = int(t.timestamp() * 1000)
        except (ValueError, OverflowError, OSError):
            raise ValueError(TIME_HINT) from None
    if not MIN_TIME_MS <= ms <= MAX_TIME_MS:
        raise ValueError(TIME_HINT)
    return ms


def _time_text(text: str) -> str:
    parse_time(text)
    return text


def query_int(lo: int, hi: int, description: str = "") -> Any:
    """A bounded integer query parameter (decimal digits, ``lo``..``hi``), e.g. a page
    ``limit``: declare ``limit: query_int(1, 500) | SkipJsonSchema[None] = optional()``
    and read it with ``int(q.limit)``."""

    def check(text: str) -> str:
        if not re.fullmatch(r"-?[0-9]{1,19}", text) or not lo <= int(text) <= hi:
            raise ValueError(f"must be a whole number from {lo} to {hi}")
        return text

    return Annotated[
        str,
        Field(max_length=20, pattern=r"^-?[0-9]+$", description=description or None),
        AfterValidator(check),
    ]


QueryTime = Annotated[str, Field(min_length=1, max_length=40), AfterValidator(_time_text)]


class UsageQuery(Body):
    """Query of the usage and sessions routes (strings, as they come in the URL)."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)
    from_: QueryTime | SkipJsonSchema[None] = optional(
        alias="from",
        description="start, ISO 8601 date or date-time (UTC) or epoch ms, 1970-2200; "
        "default 30 days before `to`",
    )
    to: QueryTime | SkipJsonSchema[None] = optional(
        description="end (exclusive), same formats; default now"
    )
    granularity: Literal["hour", "day", "week", "month"] | SkipJsonSchema[None] = optional()
    app_id: AppId | SkipJsonSchema[None] = optional()
    channel: Annotated[str, Field(pattern=keys.CHANNEL_RE.pattern)] | SkipJsonSchema[None] = (
        optional()
    )
