"""How owed debts are journaled (gateway/debts.py): lines every version reads."""

from __future__ import annotations

from gateway.debts import Debt, Void, read_journal
from meter.redis_layer.clock import HostStamp

HOST = HostStamp(123.25, "boottime:b:time:[1]")


def test_read_journal_lines_of_before_and_settlements() -> None:
    """A 9th field ``true`` (the version that wrote it so): a host debt whose timer is
    unknown (moved by the wall clock's offset); 7 fields (before digests); settled
    debts and voids drop out; an H line of no debt is skipped."""
    lines = [
        'D ["a","web","u","","t1","m",1.5,"",true]',
        'D ["a","web","u","","t2","m",2.5]',
        'D ["a","web","u","","t3","m",3.5,""]',
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
    ]
    assert voids == [Void("a", "rid", "t4")]
