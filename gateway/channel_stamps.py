"""Signed items that carry their own time: WhatsApp messages and statuses (docs/design.md §3).

Meta's ``X-Hub-Signature-256`` signs the body alone, with no time in it: a captured
signed body verifies for ever. A replayed message is charged once while its idempotency
record lives (``IDEMPOTENCY_TTL_S``, a redelivery of its wamid); past it the same body
was a new message, charged again, once a window, for ever; and a replayed delivery
``status``, never metered, reached the bot for free as often as it was sent. Each
WhatsApp message and status carries its own ``timestamp`` (Unix seconds, a string),
signed with the body. So on an authenticated channel whose rule has
``timestamp_pointers`` (built in for ``whatsapp``), every item their parents find (under
any spelling of its keys, as billing finds it) must carry the field, each spelling of it
1-12 ASCII digits (or a JSON integer), within the window :func:`refusal` checks; else
the whole delivery is refused 401 ``invalid_channel_signature`` (its other messages too,
as any refusal of a batch) before anything is metered or the bot called. Meta retries a
refused delivery as it was: a delivery refused for its time stays refused, and Meta gives
up after its retry period (7 days); operators keep ``IDEMPOTENCY_TTL_S`` at least that.
"""

from __future__ import annotations

import math
import re
from typing import Any, NamedTuple

from gateway.json_pointer import Pointer, each_field, values

_DIGITS = re.compile(r"[0-9]{1,12}")  # ASCII only: str.isdigit() accepts "²"
MAX_SECONDS = 10**12


class Stamps(NamedTuple):
    """The oldest and newest time of a body's timestamped items, or why one has none."""

    oldest: float
    newest: float
    bad: str = ""


def seconds(value: Any) -> int | None:
    """A timestamp's Unix seconds: a string of 1-12 ASCII digits (Meta's) or a JSON
    integer below 10^12; None for anything else (a float, ``true``, milliseconds)."""
    if isinstance(value, str):
        return int(value) if _DIGITS.fullmatch(value) else None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < MAX_SECONDS:
        return value
    return None


def read(doc: Any, pointers: tuple[Pointer, ...]) -> Stamps | None:
    """The times of the items ``pointers`` name in ``doc`` (each pointer's parent is an
    item, its last token the item's time); None when it holds no such item. May raise
    :class:`~gateway.json_pointer.TooComplex` (a walk's bound; the items' fields share one)."""
    oldest, newest = math.inf, -math.inf
    for pointer in pointers:
        field = pointer[-1]
        # One bound for all the items' fields: each item a walk of its own, a signed
        # (free) body of 40,000 statuses cost a worker a second.
        for found in each_field(values(doc, pointer[:-1], fold=True), field):
            if not found:
                return Stamps(0, 0, f"an item has no {field}")
            for value in found:
                t = seconds(value)
                if t is None:
                    return Stamps(0, 0, f"an item's {field} is not Unix seconds")
                oldest, newest = min(oldest, t), max(newest, t)
    return None if newest < oldest else Stamps(oldest, newest)


def refusal(stamps: Stamps, now: float, ttl: float, skew: float) -> str:
    """Why items of these times cannot be told from a replay ("" when they can).

    Older than ``ttl`` (the idempotency window) less ``skew``: the message's record may
    be gone (Redis keeps it ``ttl`` from its first admission, never before the message's
    time), and the margin keeps that true while the channel's clock runs up to ``skew``
    ahead of this one. More than ``skew`` in the future: such an item would pass as
    recent for longer than its record lives."""
    if stamps.bad:
        return stamps.bad
    if stamps.oldest < now - (ttl - skew):
        return f"an item's timestamp is older than the {ttl - skew:.0f} s replay window"
    if stamps.newest > now + skew:
        return f"an item's timestamp is more than {skew:.0f} s in the future"
    return ""
