"""Where ``creditgate export`` writes: stdout, or a file that only ever appears whole.

A file is written beside its final name and renamed over it once the export ended well
(``os.replace``: atomic on one file system), so an export that fails midway (the store
gone, a row it cannot read) leaves at ``--output`` neither a shorter file that looks
whole nor nothing where the last good export was: that one stays as it was, and the
command exits non-zero. A replaced file keeps its permission bits; a new one gets
``open()``'s (0666 less the umask). A symlink is followed (the file it names is replaced);
a path that is no regular file (``/dev/stdout``, a FIFO) is written in place, as before.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import sys
from collections.abc import Iterator
from typing import BinaryIO


@contextlib.contextmanager
def output(path: str) -> Iterator[BinaryIO]:
    """``path`` (``-``: stdout) to write the export to, as this module says."""
    if path == "-":
        yield sys.stdout.buffer
        sys.stdout.flush()
        return
    target = os.path.realpath(path)
    try:
        mode: int | None = os.stat(target).st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and not stat.S_ISREG(mode):
        with open(target, "wb") as f:
            yield f
        return
    folder, name = os.path.split(target)
    part = os.path.join(folder, f".{name}.{secrets.token_hex(4)}.partial")
    # O_EXCL | O_NOFOLLOW: never through a file or link someone else put at that name.
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            if mode is not None:
                os.fchmod(f.fileno(), stat.S_IMODE(mode))
            yield f
        os.replace(part, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(part)
        raise
