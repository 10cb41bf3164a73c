"""How owed debts are journaled (gateway/debts.py): lines every version reads."""

from __future__ import annotations

from typing import NamedTuple

import orjson

from gateway.debts import Debt, Void, journal_lines, read_journal
from meter.redis_layer.timer import HostStamp

HOST = HostStamp(123.25, "boottime:b:time:[1]")


class Debt010(NamedTuple):
    """0.1.0's Debt: its recovery was ``Debt(*orjson.loads(text))`` for a ``D`` line,
    a TypeError (more fields) suppressed: the debt dropped, its journal removed."""

    app_id: str
    channel: str
    user: str
    key: str
    token: str
    kind: str
    at: float


def recover_010(lines: list[str]) -> dict[str, Debt010]:
    """0.1.0's reading of an owed journal (kinds D, V, s, v; any other line skipped)."""
    debts: dict[str, Debt010] = {}
    for line in lines:
        kind, _, text = line.partition(" ")
        try:
            if kind == "D":
                d = Debt010(*orjson.loads(text))
                debts[d.token] = d
            elif kind == "s":
                debts.pop(text, None)
        except (ValueError, TypeError):
            pass
    return debts


def test_every_debt_is_read_after_a_downgrade_to_0_1_0() -> None:
    """A keyed debt served before the first sync: its D line has the 7 fields 0.1.0
    reads (before: 8 or 9, a TypeError there: the debt dropped, never charged), the
    digest and the timer in K and H lines it skips; this version reads all of it."""
    debt = Debt("a", "web", "u", "k", "t1", "m", 8200.5, "dg", HOST)
    lines = journal_lines(debt)
    assert lines == [
        'D ["a","web","u","k","t1","m",8200.5]',
        'K ["t1","dg"]',
        'H ["t1",123.25,"boottime:b:time:[1]"]',
    ]
    assert recover_010(lines) == {"t1": Debt010(*debt[:7])}
    assert read_journal(lines) == ([debt], [])
    for plain in (debt._replace(host=None), debt._replace(digest="", host=None)):
        assert recover_010(journal_lines(plain)) == {"t1": Debt010(*debt[:7])}
        assert read_journal(journal_lines(plain)) == ([plain], [])


HOST = HostStamp(123.25, "boottime:b:time:[1]")


def test_read_journal_lines_of_before_and_settlements() -> None:
    """A 9th field ``true`` (builds that wrote it so): a host debt whose timer is
    unknown (moved by the wall clock's offset); 7 fields; an 8th, the digest; settled
    debts and voids drop out; an H line of no debt is skipped."""
    lines = [
        'D ["a","web","u","","t1","m",1.5,"",true]',
        'D ["a","web","u","","t2","m",2.5]',
        'D ["a","web","u","","t3","m",3.5,""]',
        'D ["a","web","u","k","t6","m",6.5,"dg"]',
        'H ["t9",1.0,"x"]',
        "s t3",
        'V ["a","rid","t4"]',
        'V ["a","rid","t5"]',
        "v t5",
        "D [not json",
    ]
    debts, voids = read_journal(lines)
    assert debts == [
        Debt("a", "web", "u", "", "t1", "m", 1.5, "", HostStamp(0.0, "")),
        Debt("a", "web", "u", "", "t2", "m", 2.5),
        Debt("a", "web", "u", "k", "t6", "m", 6.5, "dg"),
    ]
    assert voids == [Void("a", "rid", "t4")]
