"""Where ``creditgate export`` writes: stdout, or a file that only ever appears whole.

A file is written beside its final name and renamed over it once the export ended well
(``os.replace``: atomic on one file system), so an export that fails midway (the store
gone, a row it cannot read) leaves at ``--output`` neither a shorter file that looks
whole nor nothing where the last good export was: that one stays as it was, and the
command exits non-zero. It is owner-only while it is written (a mode given later takes
back no descriptor someone opened on it meanwhile), on disk before it is renamed and the
rename on disk after (a machine that crashes then shows the old file or the new one).
A replaced file keeps its permission bits; a new one gets ``open()``'s (0666 less the
umask).

A symlink is followed (the file it names is replaced), unless another user put it in a
shared sticky folder such as ``/tmp`` (the kernel's ``fs.protected_symlinks`` rule, kept
here whatever the sysctl says: the path is resolved here, and the rename would not ask
the kernel): else anyone could aim an export run by root at any file. A path that is no
regular file (a FIFO, a device) or a descriptor the command was given (``/dev/stdout``,
``/dev/fd/N``: through ``/proc``) is written in place, appended to as the shell opened it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
import sys
from collections.abc import Iterator
from typing import BinaryIO

MAX_LINKS = 40  # as the kernel's ELOOP limit


@contextlib.contextmanager
def output(path: str) -> Iterator[BinaryIO]:
    """``path`` (``-``: stdout) to write the export to, as this module says."""
    if path == "-":
        yield sys.stdout.buffer
        sys.stdout.flush()
        return
    target = resolve(path)
    try:
        st: os.stat_result | None = os.stat(path if target is None else target)
    except FileNotFoundError:
        st = None
    if target is None or (st is not None and not stat.S_ISREG(st.st_mode)):
        # "ab": a file behind /dev/stdout that the shell opened with >> keeps what it held.
        with open(path if target is None else target, "ab") as f:
            yield f
        return
    folder, name = os.path.split(target)
    part = os.path.join(folder, f".{name}.{secrets.token_hex(4)}.partial")
    # O_EXCL | O_NOFOLLOW: never through a file or link someone else put at that name.
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fchmod(fd, stat.S_IMODE(st.st_mode) if st is not None else 0o666 & ~_umask())
            os.fsync(fd)
        os.replace(part, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(part)
        raise
    _sync_folder(folder)


def resolve(path: str) -> str | None:
    """``path`` with every symlink followed (as ``os.path.realpath``), or None when it
    leads through ``/proc`` (a descriptor's magic link: no path names what it opens).
    ``PermissionError`` for a link in a sticky, world-writable folder that is owned
    neither by this process's user nor by the folder's owner."""
    pending = (path if os.path.isabs(path) else os.path.join(os.getcwd(), path)).split("/")
    pending.reverse()
    done = "/"
    links = 0
    while pending:
        part = pending.pop()
        if part in ("", "."):
            continue
        if part == "..":
            done = os.path.dirname(done)
            continue
        here = os.path.join(done, part)
        try:
            st = os.lstat(here)
        except FileNotFoundError:
            return os.path.join(here, *reversed(pending))
        if not stat.S_ISLNK(st.st_mode):
            done = here
            continue
        if done == "/proc" or done.startswith("/proc/"):
            return None
        _may_follow(here, done, st)
        links += 1
        if links > MAX_LINKS:
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
        link = os.readlink(here)
        if link.startswith("/"):
            done = "/"
        pending.extend(reversed(link.split("/")))
    return done


def _may_follow(link: str, folder: str, st: os.stat_result) -> None:
    """The kernel's ``protected_symlinks`` rule for following ``link`` (in ``folder``)."""
    where = os.stat(folder)
    shared = where.st_mode & stat.S_ISVTX and where.st_mode & stat.S_IWOTH
    if shared and st.st_uid not in (os.geteuid(), where.st_uid):
        why = "a symbolic link another user made in a shared folder: not followed"
        raise PermissionError(errno.EACCES, why, link)


def _umask() -> int:
    """This process's umask, read without setting it (``os.umask`` sets it, for every
    thread, meanwhile)."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _sync_folder(folder: str) -> None:
    """The rename on disk (a folder that cannot be opened or synced is left as it is)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
