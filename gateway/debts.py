"""What :mod:`gateway.owed` keeps and journals: debts (messages served without a
decision, fail mode ``open``) and voids (charges to reverse once Redis answers)."""

from __future__ import annotations

import contextlib
import logging
from typing import NamedTuple

import orjson

from meter.admission.decision import MessageKind
from meter.admission.journal import Journal
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


log = logging.getLogger("gateway.owed")
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


def void_line(void: Void) -> str:
    return "V " + orjson.dumps(list(void)).decode()


def owed_lines(debts: list[Debt], voids: list[Void]) -> list[str]:
    """The journal of what is owed, and nothing else."""
    return [line for d in debts for line in journal_lines(d)] + [void_line(v) for v in voids]


def rewritten(old: Journal, kind: str, debts: list[Debt], voids: list[Void]) -> Journal | None:
    """A new journal beside ``old`` holding what is owed; None, logged, when it cannot
    be written (a full disk: raised, it ended the settling task)."""
    try:
        new = Journal(old.path.parent, kind)
    except OSError as exc:
        log.error("journal %s not rewritten: %r", old.path, exc)
        return None
    try:
        new.append_all(owed_lines(debts, voids))
    except OSError as exc:
        new.close(remove=True)
        log.error("journal %s not rewritten: %r", old.path, exc)
        return None
    return new


def read_journal(lines: list[str]) -> tuple[list[Debt], list[Void]]:
    """What a dead process's journal (lines of :func:`journal_lines`, ``V`` voids, ``s``
    and ``v`` settlements) left owed; malformed lines are skipped, a field of the wrong
    type too (a debt or void with one, settled, raised out of the settling task: every
    debt and void behind it left unsettled for the life of the process)."""
    debts: dict[str, Debt] = {}
    voids: dict[str, Void] = {}
    for line in lines:
        kind, _, text = line.partition(" ")
        with contextlib.suppress(ValueError, TypeError):
            if kind == "D":
                d = _debt(orjson.loads(text))
                debts[d.token] = d
            elif kind == "K":
                token, digest = _texts(orjson.loads(text), 2)
                if token in debts:
                    debts[token] = debts[token]._replace(digest=digest)
            elif kind == "H":
                token, timer, source = orjson.loads(text)
                stamp = HostStamp(_number(timer), *_texts([source], 1))
                if _texts([token], 1)[0] in debts:
                    debts[token] = debts[token]._replace(host=stamp)
            elif kind == "V":
                v = Void(*_texts(orjson.loads(text), 3))
                voids[v.token] = v
            elif kind == "s":
                debts.pop(text, None)
            elif kind == "v":
                voids.pop(text, None)
    return list(debts.values()), list(voids.values())


def _texts(fields: object, n: int) -> list[str]:
    """``fields``, a list of ``n`` strings; ValueError otherwise."""
    if not isinstance(fields, list) or len(fields) != n:
        raise ValueError("fields")
    if not all(isinstance(f, str) for f in fields):
        raise ValueError("not a string")
    return fields


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("not a number")
    return float(value)


def _debt(fields: object) -> Debt:
    """A ``D`` line's fields as a Debt. Builds since 0.1.0 wrote the digest as an 8th
    field, "host" (true) a 9th."""
    if not isinstance(fields, list) or not RELEASED_FIELDS <= len(fields) <= 9:
        raise ValueError("fields")
    app_id, channel, user, key, token = _texts(fields[:5], 5)
    kind: MessageKind = fields[5]
    if kind not in ("m", "n", "c"):
        raise ValueError("kind")
    digest = _texts(fields[7:8], 1)[0] if len(fields) > 7 else ""
    host = HostStamp(0.0, "") if len(fields) == 9 and fields[8] else None
    return Debt(app_id, channel, user, key, token, kind, _number(fields[6]), digest, host)
