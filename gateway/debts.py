"""What :mod:`gateway.owed` keeps and journals: debts (messages served without a
decision, fail mode ``open``) and voids (charges to reverse once Redis answers)."""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import orjson

from meter.admission.decision import MessageKind
from meter.redis_layer.timer import HostStamp


class Debt(NamedTuple):
    app_id: str
    channel: str
    user: str
    key: str
    token: str
    kind: MessageKind
    at: float  # when it was served: settled as of then
    digest: str = ""  # a keyed message's fingerprint (journals of before it lack one)
    host: HostStamp | None = None  # "at" is the host's clock (served before the first sync)


RELEASED_FIELDS = 7  # a Debt of 0.1.0: app_id .. at (it drops a D line of more)


def journal_lines(debt: Debt) -> list[str]:
    """A debt's journal lines, in one write: ``D`` and the 7 fields 0.1.0 reads; a digest
    adds ``K [token, digest]``, a host debt ``H [token, timer, source]``, lines versions
    before them skip (after a downgrade such a version settles a keyed debt without its
    digest, a host debt as of the host clock as if it were Redis's: charged, if not
    exactly, where a longer ``D`` line was dropped, the debt never charged)."""
    lines = ["D " + orjson.dumps(list(debt[:RELEASED_FIELDS])).decode()]
    if debt.digest:
        lines.append("K " + orjson.dumps([debt.token, debt.digest]).decode())
    if debt.host is not None:
        lines.append("H " + orjson.dumps([debt.token, *debt.host]).decode())
    return lines


class Void(NamedTuple):
    app_id: str
    rid: str  # charge record id
    token: str


def read_journal(lines: list[str]) -> tuple[list[Debt], list[Void]]:
    """What a dead process's journal (lines of :func:`journal_lines`, ``V`` voids, ``s``
    and ``v`` settlements) left owed; malformed lines are skipped."""
    debts: dict[str, Debt] = {}
    voids: dict[str, Void] = {}
    for line in lines:
        kind, _, text = line.partition(" ")
        with contextlib.suppress(ValueError, TypeError):
            if kind == "D":
                fields = orjson.loads(text)
                # Builds since 0.1.0 wrote the digest as an 8th field, "host" (true) a 9th.
                if len(fields) == 9:
                    fields[8] = HostStamp(0.0, "") if fields[8] else None
                d = Debt(*fields)
                debts[d.token] = d
            elif kind == "K":
                token, digest = orjson.loads(text)
                if token in debts:
                    debts[token] = debts[token]._replace(digest=str(digest))
            elif kind == "H":
                token, timer, source = orjson.loads(text)
                if token in debts:
                    debts[token] = debts[token]._replace(host=HostStamp(float(timer), str(source)))
            elif kind == "V":
                v = Void(*orjson.loads(text))
                voids[v.token] = v
            elif kind == "s":
                debts.pop(text, None)
            elif kind == "v":
                voids.pop(text, None)
    return list(debts.values()), list(voids.values())
