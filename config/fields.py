"""Value types of settings: money, durations, allow-lists, lists from text, channel rules.

Money settings are decimal strings (``"500.00"``) or whole dollars (``500``) and are held
as integer micro-dollars; list settings take comma-separated text (or a JSON list).
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, Field
from pydantic_settings import NoDecode

from config.money import InvalidAmount, parse_amount


def _money(value: object) -> int:
    if isinstance(value, bool):
        raise ValueError("must be a decimal amount such as '500.00'")
    if isinstance(value, int):
        return value * 1_000_000
    try:
        return parse_amount(value)
    except InvalidAmount:
        raise ValueError("must be a plain decimal amount such as '500.00'") from None


Micros = Annotated[int, BeforeValidator(_money)]
_HOST_PATTERN = re.compile(
    r"^(\*\.)?[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*$"
)


def _allow_list(value: object) -> object:
    """Egress allow-list entries: a list, or comma-separated text or a JSON list
    (environment)."""
    if isinstance(value, str):
        value = json.loads(value) if value.lstrip().startswith("[") else value.split(",")
    if not isinstance(value, list | tuple):
        return value
    out = []
    for item in value:
        if not isinstance(item, str):
            raise ValueError("entries must be strings")
        entry = item.strip().lower()
        if not entry:
            continue
        try:
            out.append(str(ipaddress.ip_network(entry)))
            continue
        except ValueError:
            pass
        last = entry.rsplit(".", 1)[-1]
        if not _HOST_PATTERN.fullmatch(entry) or last.isdigit() or last.startswith("0x"):
            raise ValueError(
                f"{item!r} is neither a network (CIDR, host bits zero) nor a host name"
            )
        out.append(entry)
    return out


EgressAllow = Annotated[list[str], NoDecode, BeforeValidator(_allow_list)]


def _text_list(value: object) -> object:
    """A list setting given as comma-separated text (or a JSON list) in the environment."""
    if isinstance(value, str):
        if value.lstrip().startswith("["):
            return json.loads(value)
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


RefundOn = Annotated[
    list[Literal["connect", "timeout", "5xx"]], NoDecode, BeforeValidator(_text_list)
]
Seconds = Annotated[float, Field(gt=0)]
DAY = 86_400.0


class ChannelRule(BaseModel):
    """How to read one channel's callbacks (docs/design.md §3)."""

    model_config = {"extra": "forbid"}

    # JSON pointers; a ``*`` token takes every element of an array (value of an object).
    # A billable callback whose user or key pointer finds several values is refused (422).
    user_pointer: str | None = None
    idempotency_pointer: str | None = None
    # A callback is billable unless the JSON value at a pointer matches one of its values
    # (e.g. ``{"/type": ["typing"]}``) or a pointer in ``skip_if_present`` exists.
    skip_if_equals: dict[str, list[str]] = Field(default_factory=dict)
    skip_if_present: list[str] = Field(default_factory=list)
    # Pointers that must exist for a callback to be billable (e.g. WhatsApp ``messages``).
    bill_only_if_present: list[str] = Field(default_factory=list)
    # Signed items' own Unix-seconds time (e.g. WhatsApp ``.../messages/*/timestamp``): on
    # an authenticated channel each item found at a pointer's parent must carry a recent
    # one, else 401 (gateway.channel_stamps: a replay of a body signed with no time in it).
    timestamp_pointers: list[str] = Field(default_factory=list)
    delivery_url: str | None = None
