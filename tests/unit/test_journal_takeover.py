"""Taking over dead processes' journals (meter/admission/journal.py)."""

from __future__ import annotations

import fcntl
from pathlib import Path

import pytest

from meter.admission import journal
from meter.admission.journal import DeadJournal, take_over_dead

LINES = ['D ["a","web","u","","t1","m",1.0]', 'D ["a","web","u2","","t2","m",1.0]']


def test_a_journal_taken_over_between_our_open_and_our_lock_is_not_taken_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Process B opens a dead journal; before B locks it, process A locks it, takes it
    over, removes it and unlocks. B's lock then succeeds on the removed file: B must skip
    it (before: B took the same debts again, settled twice: the money by token de-dup,
    but creditgate_charged_microdollars_total counted them twice)."""
    (tmp_path / "owed-99999-dead.log").write_text("".join(f"{line}\n" for line in LINES))
    real = fcntl.flock
    by_a: list[DeadJournal] = []

    def flock(fd: int, op: int) -> None:
        if not by_a:  # B is between its open and its lock: A takes the journal over
            monkeypatch.setattr(journal.fcntl, "flock", real)
            by_a.extend(take_over_dead(tmp_path, "owed"))
            for dead in by_a:
                dead.done()
        real(fd, op)

    monkeypatch.setattr(journal.fcntl, "flock", flock)
    by_b = take_over_dead(tmp_path, "owed")
    assert [dead.lines for dead in by_a] == [LINES]
    assert by_b == []
    assert list(tmp_path.iterdir()) == []


def test_a_live_journal_is_skipped_and_a_dead_one_taken(tmp_path: Path) -> None:
    live = journal.Journal(tmp_path, "owed")
    try:
        live.append(LINES[0])
        (tmp_path / "owed-1-dead.log").write_text(LINES[1] + "\n" + "torn")
        taken = take_over_dead(tmp_path, "owed")
        assert [(d.path.name, d.lines) for d in taken] == [("owed-1-dead.log", [LINES[1]])]
        for dead in taken:
            dead.done()
        assert list(tmp_path.iterdir()) == [live.path]
    finally:
        live.close(remove=True)


def test_a_journal_being_made_is_never_taken_for_dead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new process opens its journal, then locks it: a sweeper pass in between (each
    pass takes dead journals over) must leave it alone. Before, the journal had its own
    name and no lock then: taken for dead and removed from under its owner (or, still
    held by the sweeper, its owner's lock failed and the process did not start)."""
    real = fcntl.flock
    taken: list[DeadJournal] = []

    def flock(fd: int, op: int) -> None:  # the owner is between its open and its lock
        monkeypatch.setattr(journal.fcntl, "flock", real)
        taken.extend(take_over_dead(tmp_path, "owed"))
        real(fd, op)

    monkeypatch.setattr(journal.fcntl, "flock", flock)
    try:
        live = journal.Journal(tmp_path, "owed")
    finally:
        for dead in taken:
            dead.release()
    try:
        assert taken == []
        live.append(LINES[0])
        assert live.path.read_text() == LINES[0] + "\n"
        assert take_over_dead(tmp_path, "owed") == []  # locked: its owner lives
        assert list(tmp_path.iterdir()) == [live.path]
    finally:
        live.close(remove=True)
