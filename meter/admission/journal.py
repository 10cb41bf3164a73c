"""Per-process append-only journals in ``state_dir``: what must survive a crash of the
process until Redis has it (forward confirmations, fail-open debts, pending voids).

A process owns its journal (``<kind>-<pid>-<random>.log``, made as ``.<that name>`` and
renamed once locked) under an exclusive ``flock`` for as long as it lives. Each
:meth:`Journal.append` is one ``write(2)`` on an ``O_APPEND`` descriptor: the kernel
holds the bytes from then on, so a ``kill -9`` of the process loses nothing;
:meth:`Journal.sync` adds ``fsync`` against a crash of the machine. A later process
takes over the journals whose lock is free (:func:`take_over_dead`), acts on their
lines, and removes them; a journal removed between its opening and its locking (another
process took it over) is skipped.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


class Journal:
    """This process's journal of one kind."""

    def __init__(self, state_dir: str | Path, kind: str) -> None:
        folder = Path(state_dir)
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{kind}-{os.getpid()}-{secrets.token_hex(4)}.log"
        self.path = folder / name
        # Made under a name take_over_dead() does not look at, locked, then named: under
        # its own name it was unlocked between open and flock, and a sweeper pass (every
        # few seconds) that tried it then took it for dead and removed it from under its
        # new owner, whose lines a later crash would then lose.
        making = folder / f".{name}"
        self._fd = os.open(making, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        # Held while this process lives: take_over_dead() skips journals whose owner lives.
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(making, self.path)
        self.size = 0
        self.failing = False  # the last append_or_log failed

    def append(self, line: str) -> None:
        """One line (no newline inside), handed to the kernel before this returns."""
        self._write((line + "\n").encode())

    def append_all(self, lines: list[str]) -> None:
        """Several lines in one ``write(2)``: a process killed after it lost none of
        them, one killed before it wrote none (never part of a batch)."""
        self._write("".join(line + "\n" for line in lines).encode())

    def _write(self, data: bytes) -> None:
        """``data`` whole, or ``OSError`` with the file as it was. A full disk (or a file
        size limit) can take the first part of a write and return a short count: the
        part is cut off again, else the next append would join the line left without
        its newline and the journal's reader would take two records for one garbled."""
        written = os.write(self._fd, data)  # O_APPEND: starts at self.size, ours alone
        if written != len(data):
            os.ftruncate(self._fd, self.size)
            raise OSError(errno.ENOSPC, f"short write: {written} of {len(data)} bytes")
        self.size += len(data)

    def append_or_log(self, lines: list[str]) -> bool:
        """:meth:`append_all`, or ``False`` with an error logged when the write fails (a
        full or read-only disk), for a caller that must go on without its journal."""
        try:
            self.append_all(lines)
        except OSError as exc:
            if not self.failing:  # once per spell, not once per line
                log.error("journal %s not written (%s): a crash loses its lines", self.path, exc)
            self.failing = True
            return False
        self.failing = False
        return True

    def sync(self) -> None:
        os.fsync(self._fd)

    def truncate(self) -> None:
        """Forget everything: the caller knows all of it reached Redis."""
        os.ftruncate(self._fd, 0)
        self.size = 0

    def close(self, *, remove: bool) -> None:
        os.close(self._fd)
        if remove:
            with contextlib.suppress(OSError):
                self.path.unlink()


@dataclass
class DeadJournal:
    """A journal whose process is gone, locked by the caller until :meth:`done`."""

    path: Path
    lines: list[str]
    _fd: int

    def done(self) -> None:
        """Its lines are taken care of: remove it."""
        with contextlib.suppress(OSError):
            self.path.unlink()
        self.release()

    def release(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)


def take_over_dead(state_dir: str | Path, kind: str) -> list[DeadJournal]:
    """Journals of ``kind`` whose owner is gone, oldest name first, locked now."""
    folder = Path(state_dir)
    found: list[DeadJournal] = []
    if not folder.is_dir():
        return found
    for path in sorted(folder.glob(f"{kind}-*.log")):
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)  # its process is alive
            continue
        if not _still_named(fd, path):  # taken over and removed since it was opened
            os.close(fd)
            continue
        with os.fdopen(os.dup(fd), "rb") as f:
            # A torn last line (the process died mid-write) is ignored.
            raw_lines = f.read().split(b"\n")[:-1]  # the part after the last newline is torn
        lines = [raw.decode(errors="replace") for raw in raw_lines if raw]
        found.append(DeadJournal(path, lines, fd))
    return found


def _still_named(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd``: a process that took it over
    between our open and our lock removed it (then unlocked), and the lock we got is on
    a removed file whose lines that process took already."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)
