"""Payload samples stamped now: a signed WhatsApp item must carry a recent ``timestamp``
(gateway.channel_stamps), and the contract's samples hold fixed, long-past ones."""

from __future__ import annotations

import re
import time

from tests.support.samples import sample

_STAMP = re.compile(rb'("timestamp":\s*")[0-9]+(")')


def stamped(body: bytes, at: float | None = None) -> bytes:
    """``body`` with each ``"timestamp": "<digits>"`` (WhatsApp's: Unix seconds as a
    string; MS Teams' ISO 8601 ones are left alone) set to ``at``, default now."""
    t = str(int(time.time() if at is None else at)).encode()
    return _STAMP.sub(lambda m: m[1] + t + m[2], body)


def sample_now(name: str) -> bytes:
    """:func:`tests.support.samples.sample`, its WhatsApp timestamps set to now."""
    return stamped(sample(name))
