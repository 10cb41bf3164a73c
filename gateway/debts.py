"""What :mod:`gateway.owed` keeps and journals: debts (messages served without a
decision, fail mode ``open``) and voids (charges to reverse once Redis answers)."""

from __future__ import annotations

from typing import NamedTuple

import orjson

from meter.admission.decision import MessageKind


class Debt(NamedTuple):
    app_id: str
    channel: str
    user: str
    key: str
    token: str
    kind: MessageKind
    at: float  # when it was served: settled as of then
    digest: str = ""  # a keyed message's fingerprint (journals of before it lack one)
    host: bool = False  # "at" is the host's clock (served before the clock's first sync)


def journal_line(debt: Debt) -> str:
    """A debt's journal line: ``host`` only when true (versions before it read the rest)."""
    return orjson.dumps(list(debt) if debt.host else list(debt)[:-1]).decode()


class Void(NamedTuple):
    app_id: str
    rid: str  # charge record id
    token: str
